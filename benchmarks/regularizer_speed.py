"""What each regularizer costs in training speed: tokens/s of training windows (forward,
backward, update, as `rnnlm train` runs them) of one model with no regularizer, each regularizer
alone, all of them together (`regularizers`) and with weight averaging as well (`all`), measured
in the same process in interleaved rounds (so that a noisy machine slows every variant alike),
and each variant's ratio to the plain model.

    python benchmarks/regularizer_speed.py --train PTB/ptb.train.txt [--set model.hidden_dim=650 ...]
        [--windows 40] [--rounds 3] [--json results.jsonl]

The model is the tied 2×200 LSTM of configs/ptb-awd-200.yaml without its regularizers (change
it with --set, e.g. --set model.hidden_dim=650 --set model.embedding_dim=650 --set model.output=class).
Weight averaging's cost (one pass over the weights per update) is measured as the variant
`average` (averaging from the first update).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnnlm_cli import average, checkpoint, data, model, train  # noqa: E402
from rnnlm_cli.config import apply_overrides, config_from_dict  # noqa: E402

BASE = {"model": {"cell": "lstm", "embedding_dim": 200, "hidden_dim": 200, "layers": 2, "tie_weights": True,
                  "output": "softmax", "init": "uniform"},
        "train": {"batch_size": 20, "bptt": 35, "lr": 20.0, "clip_norm": 0.25}}
REGULARIZERS = ["model.dropout=0.4", "model.dropout_input=0.3", "model.dropout_between=0.2",
                "model.dropout_locked=true", "model.dropout_embedding=0.1", "model.weight_drop=0.5", "train.ar=2",
                "train.tar=1", "train.weight_decay=1.2e-6"]
VARIANTS = {
    "none": [],
    "dropout": ["model.dropout=0.4", "model.dropout_input=0.3", "model.dropout_between=0.2"],
    "dropout locked": ["model.dropout=0.4", "model.dropout_input=0.3", "model.dropout_between=0.2",
                       "model.dropout_locked=true"],
    "embedding dropout": ["model.dropout_embedding=0.1"],
    "weight drop": ["model.weight_drop=0.5"],
    "ar+tar": ["train.ar=2", "train.tar=1"],
    "weight decay": ["train.weight_decay=1.2e-6"],
    "average": ["train.average=1"],
    "regularizers": REGULARIZERS,  # every regularizer of the list, without averaging
    "all": REGULARIZERS + ["train.average=1"],
}


def make_config(sets, train_path=None):
    raw = apply_overrides({k: dict(v) for k, v in BASE.items()}, sets)
    if train_path:
        raw["data"] = {"train": str(train_path), "valid": str(train_path)}
    return config_from_dict(raw, "regularizer_speed")


def run_windows(config, params, batches, vocab_size, n_windows, start):
    """n_windows training steps from window `start` -> seconds."""
    tc, m = config.train, config.model
    state = checkpoint.TrainingState.new(config, {k: v.copy() for k, v in params.items()})
    average.begin_epoch(state, tc)
    trained = model.trainable(state.params, m)
    workspace = {}
    windows = data.iter_windows(batches, tc.bptt, start=start)
    t0 = time.perf_counter()
    for _, (inputs, targets) in zip(range(n_windows), windows):
        masks = train.window_masks(state.rng, config, inputs, vocab_size, workspace)
        _, grads, state.hidden = train.window_gradient(state.params, m, inputs, targets, state.hidden, workspace,
                                                       masks, ar=tc.ar, tar=tc.tar)
        train.apply_gradient(state.params, grads, state.opt_state, tc.lr, tc, workspace)
        average.update(state, trained)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="a training text (e.g. ptb.train.txt)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="changes to the base model")
    ap.add_argument("--windows", type=int, default=40, help="timed windows per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", default=[], help="variants to run (default: all)")
    ap.add_argument("--json", help="append one JSON line with the figures to this file")
    args = ap.parse_args()
    base = make_config(args.set, Path(args.train).resolve())
    vocab, streams = train.prepare_data(base)  # through the token cache, as rnnlm train reads it
    batches = data.batchify(np.asarray(streams["train"][0]), base.train.batch_size)
    params = model.init_params(base.model, len(vocab), base.train.seed, base.train.dtype)
    names = args.only or list(VARIANTS)
    configs = {name: make_config(args.set + VARIANTS[name]) for name in names}
    per_window = base.train.batch_size * base.train.bptt
    run_windows(configs[names[0]], params, batches, len(vocab), 5, 0)  # warm-up
    speeds = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            seconds = run_windows(configs[name], params, batches, len(vocab), args.windows, 10 + r * args.windows)
            speeds[name].append(args.windows * per_window / seconds)
    plain = statistics.median(speeds["none"]) if "none" in speeds else None
    m = base.model
    print(f"{m.cell} {m.layers}x{m.hidden_dim}, E {m.embedding_dim}, output {m.output}, tied {m.tie_weights}, "
          f"batch {base.train.batch_size} x bptt {base.train.bptt}, {args.rounds} rounds of {args.windows} windows")
    print(f"{'variant':<18} {'tokens/s':>9} {'vs none':>8}")
    figures = {}
    for name in names:
        speed = statistics.median(speeds[name])
        figures[name] = {"tokens_per_sec": speed, "ratio": speed / plain if plain else None}
        ratio = f"{speed / plain:8.3f}" if plain else ""
        print(f"{name:<18} {speed:>9.0f} {ratio}")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps({"benchmark": "regularizer_speed", "sets": args.set, "figures": figures}) + "\n")


if __name__ == "__main__":
    main()
