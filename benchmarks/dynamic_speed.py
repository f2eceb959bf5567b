"""What dynamic evaluation costs against static evaluation: the seconds of one pass over a text
at batch 1, static (as `rnnlm eval` reads it: windows of train.bptt) and dynamic (as `rnnlm
eval --dynamic LR --dynamic-rule R --dynamic-segment K` reads it), measured in the same
process in interleaved rounds (so that a noisy machine slows every variant alike), and each
variant's time as a multiple of static's.

    python benchmarks/dynamic_speed.py MODEL_DIR TEXT [--tokens 20000] [--segment 5]
        [--rules sgd,rms] [--decay 0] [--default-segment] [--rounds 3] [--stats 10000]
        [--stats-from FILE] [--breakdown] [--profile VARIANT] [--json results.jsonl]

e.g. on Penn Treebank, the models of configs/ptb-lstm-200-dropout.yaml and ptb-lstm-tied-long.yaml:

    python benchmarks/dynamic_speed.py runs/ptb-lstm-200-dropout data/ptb/ptb.valid.txt --default-segment
    python benchmarks/dynamic_speed.py runs/ptb-lstm-tied-long data/ptb/ptb.valid.txt --decay 0.002

The rms rule's statistics (read once, before the timing, from the first --stats tokens of the
model's training text or of --stats-from; their seconds are printed apart) do not enter the
ratio. --breakdown splits each dynamic variant's time into its parts (the lazy decay's
refresh, the forward pass, the backward pass, the update), --profile VARIANT prints the
cProfile of one pass of that variant (`static`, `sgd@5`, `rms@5`, ...).
"""
import argparse
import contextlib
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnnlm_cli import data, dynamic, evaluate, model, modeldir  # noqa: E402

CLOCK = [time.perf_counter]  # --clock cpu: time.process_time


def variants(config, args):
    """{name: dynamic.Settings or None (static)}, in the order they run each round."""
    out = {"static": None}
    rules = [r for r in args.rules.split(",") if r]
    segments = [args.segment] + ([config.train.bptt] if args.default_segment and config.train.bptt != args.segment
                                 else [])
    for segment in segments:
        for rule in rules:
            lr = args.lr if args.lr is not None else (2e-5 if rule == "rms" else 0.05)
            out[f"{rule}@{segment}"] = dynamic.Settings(lr, rule=rule, segment=segment, decay=args.decay,
                                                        stats=args.stats, stats_from=args.stats_from)
    return out


def one_pass(config, params, ids, plan, reset=None):
    """Seconds of one reading of ids (batch 1): static as `eval` does it, or with the plan
    (`reset`: the <eos> id of a model trained with data.independent)."""
    t0 = CLOCK[0]()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if plan is None:
            evaluate.evaluate_ids(params, config.model, ids, 1, config.train.bptt, reset)
        else:
            evaluate.stream_log_probs(params, config.model, ids, config.train.bptt, 1, reset, plan)
    return CLOCK[0]() - t0


@contextlib.contextmanager
def phase_timers(totals):
    """Wrap the functions stream_log_probs calls for each segment so that their seconds add up
    into totals[phase] (refresh, forward, backward, update)."""
    wrapped = [(dynamic, "refresh"), (model, "forward"), (model, "backward"), (dynamic, "update")]
    originals = [getattr(module, name) for module, name in wrapped]

    def timed(name, fn):
        def run(*a, **k):
            t0 = CLOCK[0]()
            try:
                return fn(*a, **k)
            finally:
                totals[name] = totals.get(name, 0.0) + CLOCK[0]() - t0
        return run

    for (module, name), fn in zip(wrapped, originals):
        setattr(module, name, timed(name, fn))
    try:
        yield totals
    finally:
        for (module, name), fn in zip(wrapped, originals):
            setattr(module, name, fn)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("text", help="the text to read (e.g. ptb.valid.txt)")
    ap.add_argument("--tokens", type=int, default=20000, help="read the first N tokens of the text (0: all)")
    ap.add_argument("--segment", type=int, default=5, help="--dynamic-segment K of the dynamic variants")
    ap.add_argument("--default-segment", action="store_true",
                    help="also the variants at the default segment (the model's train.bptt)")
    ap.add_argument("--rules", default="sgd,rms")
    ap.add_argument("--lr", type=float, default=None, help="the learning rate (default: 0.05 sgd, 2e-5 rms)")
    ap.add_argument("--decay", type=float, default=0.0, help="--dynamic-decay of the dynamic variants")
    ap.add_argument("--stats", type=int, default=10000, help="training tokens for the rms statistics")
    ap.add_argument("--stats-from", default=None, help="the text of the rms statistics (default: the model's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall seconds (what a user waits), or the process's CPU seconds (all threads: the work "
                         "done, steadier on a busy machine; with RNNLM_THREADS=1 the two agree on an idle one)")
    ap.add_argument("--breakdown", action="store_true", help="time the parts of each dynamic variant (one pass)")
    ap.add_argument("--profile", metavar="VARIANT", help="print the cProfile of one pass of this variant")
    ap.add_argument("--json", help="append one JSON line with the figures to this file")
    args = ap.parse_args()
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter

    config, vocab, params = modeldir.load_model(args.model_dir)
    ids, _ = data.encode_file(args.text, vocab, config.data.tokenizer)
    if args.tokens:
        ids = ids[:args.tokens + 1]
    reset = evaluate.reset_id(config, vocab)
    m = config.model
    print(f"{args.model_dir}: {m.cell} {m.layers}x{m.hidden_dim}, output {m.output}, tied {m.tie_weights}, "
          f"V {len(vocab)}, bptt {config.train.bptt}; {len(ids) - 1} targets of {args.text}; "
          f"decay {args.decay}; {args.clock} seconds")
    plans = {}
    for name, settings in variants(config, args).items():
        if settings is None:
            plans[name] = None
            continue
        t0 = time.perf_counter()
        plans[name] = evaluate.dynamic_plan(config, vocab, params, settings)
        if settings.rule == "rms":
            print(f"  {name}: statistics of {plans[name].stats_targets} targets in {time.perf_counter() - t0:.1f} s")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_pass(config, params, ids, plans[args.profile], reset)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return

    one_pass(config, params, ids[:200], plans[list(plans)[-1]], reset)  # warm up (the thread pool, the caches)
    seconds = {name: [] for name in plans}
    for _ in range(args.rounds):
        for name, plan in plans.items():
            seconds[name].append(one_pass(config, params, ids, plan, reset))
    static = statistics.median(seconds["static"])
    print(f"\n{'variant':<10} {'seconds':>8} {'x static':>9}  {'per round':<24}")
    rows = {}
    for name, times in seconds.items():
        ratios = [t / s for t, s in zip(times, seconds["static"])]
        rows[name] = {"seconds": statistics.median(times), "ratio": statistics.median(times) / static,
                      "ratios": ratios}
        print(f"{name:<10} {rows[name]['seconds']:8.2f} {rows[name]['ratio']:9.2f}  "
              f"{' '.join(f'{r:.2f}' for r in ratios):<24}")

    if args.breakdown:
        print(f"\n{'variant':<10} " + " ".join(f"{p:>9}" for p in ("refresh", "forward", "backward", "update",
                                                                     "other")) + "   (x static)")
        for name, plan in plans.items():
            if plan is None:
                continue
            with phase_timers({}) as totals:
                total = one_pass(config, params, ids, plan, reset)
            parts = [totals.get(p, 0.0) for p in ("refresh", "forward", "backward", "update")]
            parts.append(total - sum(parts))
            print(f"{name:<10} " + " ".join(f"{p / static:9.2f}" for p in parts))
            rows[name]["breakdown"] = dict(zip(("refresh", "forward", "backward", "update", "other"), parts))

    if args.json:
        record = {"benchmark": "dynamic_speed", "model_dir": str(args.model_dir), "text": str(args.text),
                  "targets": len(ids) - 1, "segment": args.segment, "decay": args.decay,
                  "time": time.strftime("%Y-%m-%d %H:%M:%S"), "variants": rows}
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
