#!/usr/bin/env python3
"""Speed benchmark: rnnlm (plain numpy) against the equivalent PyTorch model on the CPU.

    python benchmarks/bench.py --train PTB/ptb.train.txt --valid PTB/ptb.valid.txt \\
        --repeats 3 --json benchmarks/results.jsonl

Every measurement runs in its own subprocess (its own peak RSS, its own thread settings), and
the two implementations are measured in interleaved pairs (ours, torch, ours, torch, ...) so
that load from other users of a shared machine hits both alike; ratios are taken per pair and
their median reported. Per repeat it runs:

- `gemm`:  numpy float32 matmuls of the very shapes one training window multiplies: the peak
           GFLOP/s a BLAS-bound implementation could reach here, and the GEMM-only bound on
           training tokens/s;
- `ours`:  rnnlm's training step (window_gradient + apply_gradient) on the training stream (warm-up, then timed windows), then
           evaluate_ids with batch 1 (exact streaming) and batched, on the start of valid;
- `torch`: benchmarks/torch_peer.py, the same model in PyTorch (embedding, nn.RNN, linear,
           cross-entropy, clip_grad_norm_, plain SGD) on the same corpus, sizes and threads.

Without --config the model is the reference one (REFERENCE_SETS below, on the built-in default
config); --set overrides either. FLOPs per training token (FLOP_NOTE) are those of the matmuls
plus the softmax; the same count is used for both implementations.

`--profile N` instead profiles N of our training windows with cProfile (after the warm-up) and
prints where the time goes. `--worker KIND` is internal: the subprocess side.

Needs the installed package (rnnlm_cli) and numpy; torch is optional (`--no-torch`, or not
importable: ours only). threadpoolctl, if importable, reports which OpenBLAS kernel runs.
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The reference model of issue 5: E = H = 200, tanh, 1 layer, batch 20, bptt 35, SGD, float32,
# full softmax; lr and clip as pytorch/examples word_language_model (no effect on speed).
REFERENCE_SETS = [
    "model.cell=elman", "model.activation=tanh", "model.embedding_dim=200", "model.hidden_dim=200",
    "model.layers=1", "model.loss=cross_entropy", "model.output=softmax",
    "vocab.min_count=1", "vocab.max_size=null",
    "train.batch_size=20", "train.bptt=35", "train.optimizer=sgd", "train.lr=20",
    "train.clip_norm=0.25", "train.dtype=float32", "train.seed=1", "train.eval_batch_size=10",
]

FLOP_NOTE = ("FLOPs per training token = 6·Σ_l(D_l·H + H·H) + 6·H·V (forward 2, backward 4 per "
             "multiply-add: x·W_x, h·W_h, h·output.W) + 7·V (softmax, cross-entropy gradient, "
             "output bias); per eval token 2·Σ_l(D_l·H + H·H) + 2·H·V + 4·V. "
             "D_0 = E, D_l = H above. E = H = 200, V = 10,000: 12.55 MFLOP train, 4.20 eval.")

# A run during whose training other processes kept more than this many cores busy shared the CPU.
NOISY_CORES = 0.15

# What --quick changes (a smoke test of a few seconds per subprocess).
QUICK = {"warmup": 3, "train_seconds": 1.5, "eval1_tokens": 700, "evalb_tokens": 7000,
         "repeats": 1, "help_runs": 3, "gemm_seconds": 0.05, "quiet_wait": 5.0,
         "retries": 0}


# --------------------------------------------------------------------------------------------
# Helpers shared with torch_peer.py (stdlib only at import time)


def peak_rss_mb():
    """This process's peak resident set size so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


GATES = {"elman": 1, "lstm": 4, "gru": 3}  # blocks of H columns in W_x and W_h


def flops_per_token(E, H, V, layers, gates=1):
    """(training, evaluation) FLOPs per target token, as in FLOP_NOTE (an LSTM's matrices have
    gates = 4 blocks of H columns, a GRU's 3; their elementwise gate work is not counted)."""
    rnn = sum(gates * ((E if l == 0 else H) * H + H * H) for l in range(layers))
    return 6 * (rnn + H * V) + 7 * V, 2 * (rnn + H * V) + 4 * V


def cpu_snapshot():
    """(wall, this process's CPU seconds over all its threads, the whole machine's busy CPU
    seconds from /proc/stat or None): two snapshots tell how many cores we kept busy and how
    many other processes took meanwhile (the noise of a shared machine)."""
    busy = None
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        pass
    return time.perf_counter(), time.process_time(), busy


def cpu_usage(before, after):
    """Cores busy on average between two cpu_snapshot()s: self_cores (this process) and
    other_cores (the rest of the machine, steal time included; None without /proc/stat)."""
    wall = after[0] - before[0]
    own = (after[1] - before[1]) / wall
    others = None if before[2] is None else max(0.0, (after[2] - before[2]) / wall - own)
    return {"self_cores": round(own, 2), "other_cores": None if others is None else round(others, 2)}


def cycle_windows(make_epoch):
    """Endless (new_epoch, inputs, targets) over repeated epochs of make_epoch()'s windows."""
    while True:
        new_epoch = True
        for inputs, targets in make_epoch():
            yield new_epoch, inputs, targets
            new_epoch = False


def time_training(step, windows, warmup, seconds, max_windows=0):
    """Run `warmup` windows untimed, then time windows until `seconds` have passed (or exactly
    max_windows of them when > 0). step(new_epoch, inputs, targets) -> (loss, targets done).
    -> dict of windows, tokens, seconds, tok_s, median-window tok_s, the last loss, minor page
    faults per window and the cores busy (cpu_usage)."""
    for _ in range(warmup):
        step(*next(windows))
    times, tokens, loss = [], 0, float("nan")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    snap = cpu_snapshot()
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        loss, n = step(*next(windows))
        times.append(time.perf_counter() - t0)
        tokens += n
        done = len(times) >= max_windows if max_windows > 0 else time.perf_counter() - start >= seconds
        if done:
            break
    total = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    per_window = tokens / len(times)
    return {"windows": len(times), "tokens": tokens, "seconds": round(total, 4),
            "tok_s": tokens / total, "tok_s_median_window": per_window / statistics.median(times),
            "last_loss": loss, "page_faults_per_window": round(faults / len(times)),
            **cpu_usage(snap, cpu_snapshot())}


def gemm_list(E, H, V, N, T, layers, gates=1):
    """The matmuls of one training window: (name, m, k, n, A transposed, B transposed, count),
    each computing an (m, n) product of an (m, k) and a (k, n) operand, laid out as rnnlm_cli's
    layers.py lays them out (.T = a transposed view, passed to BLAS without copying)."""
    M = N * T
    out = [("logits h@W", M, H, V, False, False, 1),
           ("dh dlogits@W.T", M, V, H, False, True, 1),
           ("dW h.T@dlogits", H, M, V, True, False, 1)]
    G = gates * H
    for l in range(layers):
        D = E if l == 0 else H
        out += [(f"L{l} x@W_x", M, D, G, False, False, 1),
                (f"L{l} step h@W_h", N, H, G, False, False, T),
                (f"L{l} step g@W_h.T", N, G, H, False, True, T),
                (f"L{l} dW_x x.T@dz", D, M, G, True, False, 1),
                (f"L{l} dW_h h.T@dz", H, M, G, True, False, 1),
                (f"L{l} dx dz@W_x.T", M, G, D, False, True, 1)]
    return out


def time_gemms(matmul, operand, shapes, seconds):
    """Median seconds per call of each listed matmul. operand(rows, cols, transposed) makes an
    array of logical shape (rows, cols); matmul(a, b) multiplies (and waits for the result).
    -> list of dicts: name, shape, count, seconds, gflops."""
    out = []
    for name, m, k, n, ta, tb, count in shapes:
        a, b = operand(m, k, ta), operand(k, n, tb)
        matmul(a, b)  # warm-up (allocation, thread start)
        times, t_end = [], time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            matmul(a, b)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        out.append({"name": name, "mkn": [m, k, n], "count": count, "seconds": sec,
                    "gflops": 2.0 * m * k * n / sec / 1e9})
    return out


def summarize_gemms(gemms, tokens_per_window):
    """Peak GFLOP/s (best of the listed shapes) and the GEMM-only bound on training tokens/s:
    a window that did nothing but its matmuls, each at its measured speed."""
    window_seconds = sum(g["seconds"] * g["count"] for g in gemms)
    window_flops = sum(2.0 * g["mkn"][0] * g["mkn"][1] * g["mkn"][2] * g["count"] for g in gemms)
    return {"peak_gflops": max(g["gflops"] for g in gemms),
            "window_gflops": window_flops / window_seconds / 1e9,
            "bound_tok_s": tokens_per_window / window_seconds,
            "shapes": gemms}


def rnnlm_source():
    """Where the measured rnnlm_cli comes from: its folder and, in a git work tree, the commit
    and whether rnnlm_cli/ differs from it (read-only git commands)."""
    import rnnlm_cli

    folder = Path(rnnlm_cli.__file__).resolve().parent
    out = {"path": str(folder), "version": getattr(rnnlm_cli, "__version__", None)}
    git = ["git", "-C", str(folder)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "."], capture_output=True, text=True)
        out.update(commit=head.stdout.strip(), dirty=bool(dirty.stdout.strip()))
    return out


def emit(result):
    """A worker's answer: one JSON line on stdout (the driver reads the last line)."""
    print(json.dumps(result), flush=True)


def blas_info():
    """numpy's BLAS as threadpoolctl sees it (None when threadpoolctl is not importable)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer", "filepath")
    return [{k: lib.get(k) for k in keys} for lib in threadpoolctl.threadpool_info()]


# --------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess; `spec` is the JSON the driver passes)


def _load(spec):
    """The config, encoded streams and a fresh model as the ours/profile workers use them."""
    import numpy as np
    from rnnlm_cli import model, optim
    from rnnlm_cli.config import load_config
    from rnnlm_cli.train import prepare_data

    config = load_config(spec["config"], spec["sets"])
    t0 = time.perf_counter()
    vocab_, streams = prepare_data(config)
    load_seconds = time.perf_counter() - t0
    tc = config.train
    counts = np.bincount(streams["train"][0], minlength=len(vocab_))  # as training does (class, hsm trees)
    params = model.init_params(config.model, len(vocab_), tc.seed, tc.dtype, counts)
    opt_state = optim.init_state(tc.optimizer, {k: params[k] for k in model.trainable(params, config.model)})
    return config, len(vocab_), streams, params, opt_state, load_seconds


def _our_windows(config, streams, params, opt_state):
    """(step, windows) for time_training: rnnlm's training step over endless training epochs."""
    from rnnlm_cli import data, model
    from rnnlm_cli.train import apply_gradient, window_gradient

    tc = config.train
    batches = data.batchify(streams["train"][0], tc.batch_size)
    hidden = [None]

    def step(new_epoch, inputs, targets):
        if new_epoch:  # the state starts at zero at each epoch, as in rnnlm's training
            hidden[0] = model.init_state(config.model, tc.batch_size, tc.dtype)
        loss, grads, hidden[0] = window_gradient(params, config.model, inputs, targets, hidden[0])
        apply_gradient(params, grads, opt_state, tc.lr, tc)
        return loss, targets.size

    return step, cycle_windows(lambda: data.iter_windows(batches, tc.bptt))


def _time_eval(evaluate_ids, params, model_cfg, ids, batch_size, bptt, tokens):
    """Evaluate the first `tokens` targets of ids (0 = all) -> dict tok_s, targets, xent."""
    ids = ids[: tokens + 1] if tokens else ids
    snap = cpu_snapshot()
    total, count = evaluate_ids(params, model_cfg, ids, batch_size, bptt)
    end = cpu_snapshot()
    sec = end[0] - snap[0]
    return {"batch": batch_size, "targets": count, "seconds": round(sec, 4),
            "tok_s": count / sec, "xent": total / count, **cpu_usage(snap, end)}


def worker_ours(spec):
    """Train for the spec's time, then evaluate with batch 1 and batched; report everything."""
    import numpy as np
    from rnnlm_cli import evaluate

    config, V, streams, params, opt_state, load_seconds = _load(spec)
    rss_loaded = peak_rss_mb()
    step, windows = _our_windows(config, streams, params, opt_state)
    train = time_training(step, windows, spec["warmup"], spec["train_seconds"], spec["train_windows"])
    rss_train = peak_rss_mb()
    valid, tc = streams["valid"][0], config.train
    eval1 = _time_eval(evaluate.evaluate_ids, params, config.model, valid, 1, tc.bptt, spec["eval1_tokens"])
    evalb = _time_eval(evaluate.evaluate_ids, params, config.model, valid, spec["eval_batch"], tc.bptt,
                       spec["evalb_tokens"])
    return {"impl": "ours", "source": rnnlm_source(), "numpy": np.__version__, "blas": blas_info(), "vocab": V,
            "params": int(sum(p.size for p in params.values())), "load_seconds": round(load_seconds, 3),
            "train": train, "eval1": eval1, "evalb": evalb, "rss_loaded_mb": round(rss_loaded, 1),
            "rss_train_mb": round(rss_train, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}


def worker_gemm(spec):
    """numpy's float32 speed on the shapes of one training window."""
    import numpy as np

    dtype = np.dtype(spec["dtype"])
    rng = np.random.default_rng(0)

    def operand(rows, cols, transposed):
        shape = (cols, rows) if transposed else (rows, cols)
        a = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        return a.T if transposed else a

    gemms = time_gemms(lambda a, b: a @ b, operand, spec["gemms"], spec["gemm_seconds"])
    return {"impl": "gemm", "numpy": np.__version__, "blas": blas_info(),
            **summarize_gemms(gemms, spec["tokens_per_window"])}


def worker_profile(spec):
    """cProfile `profile_windows` training windows after the warm-up; print the top functions."""
    import cProfile
    import pstats

    config, _, streams, params, opt_state, _ = _load(spec)
    step, windows = _our_windows(config, streams, params, opt_state)
    for _ in range(spec["warmup"]):
        step(*next(windows))
    batch = [next(windows) for _ in range(spec["profile_windows"])]
    prof = cProfile.Profile()
    snap = cpu_snapshot()
    prof.enable()
    for w in batch:
        step(*w)
    prof.disable()
    end = cpu_snapshot()
    wall, cpu = end[0] - snap[0], cpu_usage(snap, end)
    tokens = sum(w[2].size for w in batch)
    print(f"# {len(batch)} windows, {tokens} tokens, {wall:.2f} s under cProfile "
          f"({tokens / wall:.0f} tokens/s); cores busy: this process {cpu['self_cores']}, "
          f"others {cpu['other_cores']}\n")
    print(profile_table(pstats.Stats(prof), wall))
    return {"impl": "profile", "windows": len(batch), "seconds": wall, "tok_s": tokens / wall, **cpu}


def profile_table(stats, wall, top=25):
    """Top functions by cumulative time, with own and cumulative time as % of the wall time."""
    rows = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        where = f"{Path(path).name}:{line}" if line else path
        rows.append((cumtime, tottime, ncalls, f"{func} ({where})"))
    rows.sort(reverse=True)
    out = [f"{'cum %':>6} {'own %':>6} {'cum s':>7} {'own s':>7} {'calls':>7}  function"]
    for cum, own, n, name in rows[:top]:
        out.append(f"{100 * cum / wall:6.1f} {100 * own / wall:6.1f} {cum:7.3f} {own:7.3f} {n:7d}  {name}")
    return "\n".join(out)


WORKERS = {"ours": worker_ours, "gemm": worker_gemm, "profile": worker_profile}


# --------------------------------------------------------------------------------------------
# The driver


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="rnnlm YAML config (default: built-in config + the reference model)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as `rnnlm train --set` (repeatable)")
    p.add_argument("--train", help="training corpus (overrides data.train)")
    p.add_argument("--valid", help="validation corpus (overrides data.valid)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved (ours, torch) pairs (default 3)")
    p.add_argument("--no-torch", action="store_true", help="measure ours only")
    p.add_argument("--quick", action="store_true", help="a short smoke-test run")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for numpy's OpenBLAS and torch (default: cores, OpenBLAS's default)")
    p.add_argument("--warmup", type=int, default=20, help="untimed training windows first (default 20)")
    p.add_argument("--train-seconds", type=float, default=10.0, help="timed training per run (default 10)")
    p.add_argument("--train-windows", type=int, default=0, help="time exactly this many windows instead")
    p.add_argument("--eval1-tokens", type=int, default=10000,
                   help="batch-1 eval over the first N valid targets (default 10000; 0 = all)")
    p.add_argument("--evalb-tokens", type=int, default=0, help="batched eval: first N targets (0 = all)")
    p.add_argument("--eval-batch", type=int, default=None, help="batched eval streams (default "
                   "train.eval_batch_size)")
    p.add_argument("--gemm-seconds", type=float, default=0.3, help="time per GEMM shape (default 0.3)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each run, wait up to this many seconds for other processes to use "
                        "< 0.25 cores (a lull on a shared machine; 0 = don't wait; default 60)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a repeat again when a run in it shared the CPU (default: up to 2 times)")
    p.add_argument("--help-runs", type=int, default=7, help="runs of `rnnlm --help` (default 7)")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE in the subprocesses (default: unset both)")
    p.add_argument("--rnnlm-src", metavar="DIR", help="measure the rnnlm_cli package in DIR (e.g. a "
                   "`git archive` of another commit) instead of the installed one")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. the commit)")
    p.add_argument("--json", metavar="PATH", help="append one JSON line of all figures to PATH")
    p.add_argument("--profile", type=int, metavar="N", default=0,
                   help="instead: cProfile N training windows of ours and print the top functions")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def bench_config(args):
    """(config path or None, --set list, Config) as both workers will load it."""
    from rnnlm_cli.config import load_config

    sets = ([] if args.config else list(REFERENCE_SETS)) + list(args.sets)
    if args.train:
        sets.append(f"data.train={args.train}")
    if args.valid:
        sets.append(f"data.valid={args.valid}")
    sets.append("data.test=null")  # the benchmark never reads a test file
    sets = [_absolute_path_set(s) for s in sets]
    config = load_config(args.config, sets)
    return args.config and str(Path(args.config).resolve()), sets, config


def _absolute_path_set(text):
    """data.train=rel/path -> data.train=/abs/path (workers may resolve against another folder)."""
    key, _, value = text.partition("=")
    if key.strip() in ("data.train", "data.valid") and value:
        return f"{key}={Path(value).expanduser().resolve()}"
    return text


def make_spec(args, config_path, sets, config):
    """The JSON-able job description every worker gets."""
    m, t = config.model, config.train
    E, H, L = m.embedding_dim, m.hidden_dim, m.layers
    return {"config": config_path, "sets": sets, "train_path": config.data.train,
            "valid_path": config.data.valid, "tokenizer": config.data.tokenizer,
            "emb": E, "hidden": H, "layers": L, "activation": m.activation, "loss": m.loss,
            "cell": m.cell, "gates": GATES[m.cell], "dropout": m.dropout, "output": m.output,
            "batch": t.batch_size, "bptt": t.bptt, "lr": t.lr, "clip": t.clip_norm,
            "optimizer": t.optimizer, "dtype": t.dtype, "seed": t.seed, "threads": args.threads,
            "warmup": args.warmup, "train_seconds": args.train_seconds, "train_windows": args.train_windows,
            "eval1_tokens": args.eval1_tokens, "evalb_tokens": args.evalb_tokens,
            "eval_batch": args.eval_batch or t.eval_batch_size, "gemm_seconds": args.gemm_seconds,
            "profile_windows": args.profile, "tokens_per_window": t.batch_size * t.bptt}


def torch_unsupported(config):
    """Why the PyTorch peer cannot run this config (None when it can)."""
    m, t = config.model, config.train
    if m.cell == "elman" and m.activation not in ("tanh", "relu"):
        return f"nn.RNN has no {m.activation} activation"
    if m.tie_weights:
        return "the peer has untied weights only"
    if m.loss != "cross_entropy" or t.optimizer != "sgd":
        return "the peer implements cross_entropy with sgd only"
    if config.data.tokenizer != "whitespace":
        return "the peer reads pre-tokenized (whitespace) text only"
    return None


def child_env(args):
    """The environment of every subprocess: threads pinned to --threads; OPENBLAS_CORETYPE and
    OPENBLAS_L2_SIZE unset together (the environment doc's rule for benchmarking numpy)."""
    env = dict(os.environ)
    if args.rnnlm_src:  # ahead of the editable install's finder (which comes after sys.path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.rnnlm_src).resolve()),
                                                          env.get("PYTHONPATH")]))
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if not args.keep_openblas_env:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def wait_for_quiet(max_other_cores, timeout):
    """Wait (at most `timeout` s) until other processes keep fewer than max_other_cores busy
    over one second, so that a run starts in a lull of a shared machine. -> (seconds waited,
    last reading), the reading None without /proc/stat."""
    t0 = time.perf_counter()
    while True:
        before = cpu_snapshot()
        time.sleep(1.0)
        other = cpu_usage(before, cpu_snapshot())["other_cores"]
        waited = time.perf_counter() - t0
        if other is None or other < max_other_cores or waited >= timeout:
            return round(waited, 1), other


def run_worker(kind, spec, env, echo=False, quiet_wait=0.0):
    """Run one worker subprocess; -> its JSON answer (plus wall seconds and the load average)."""
    script = HERE / ("torch_peer.py" if kind == "torch" else "bench.py")
    cmd = [sys.executable, str(script), "--spec", json.dumps(spec)]
    if kind != "torch":
        cmd += ["--worker", kind]
    waited, other = wait_for_quiet(0.25, quiet_wait) if quiet_wait > 0 else (0.0, None)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench: the {kind} worker failed (exit {proc.returncode})")
    if echo:
        sys.stdout.write(proc.stdout)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(wall_seconds=round(time.perf_counter() - t0, 2), loadavg_before=load,
                  quiet_waited=waited, other_cores_before=other)
    return result


def time_help(runs, env):
    """Median wall seconds of `rnnlm --help` (the installed console script), of the one on PATH
    when it differs (e.g. a pyenv shim), and of `python -c pass` (the interpreter's floor)."""
    commands = {"python -c pass": [sys.executable, "-c", "pass"]}
    beside = Path(sys.executable).parent / "rnnlm"
    on_path = shutil.which("rnnlm")
    if beside.exists():
        commands["rnnlm --help"] = [str(beside), "--help"]
    if on_path and (not beside.exists() or Path(on_path).resolve() != beside.resolve()):
        commands[f"{on_path} --help"] = [on_path, "--help"]
    out = {}
    for name, cmd in commands.items():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times), 4)
    return out


def machine_info():
    """CPU model, cores, Python, numpy (and its build's BLAS), torch version, OpenBLAS env."""
    import numpy as np

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        blas_build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_build = {k: blas_build.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception:  # older numpy: no mode="dicts"
        blas_build = None
    torch_version = None  # None: not importable (tried in a subprocess, to keep this one light)
    if importlib.util.find_spec("torch") is not None:
        torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                       capture_output=True, text=True).stdout.strip() or None
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "numpy_blas_build": blas_build, "torch": torch_version,
            "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}}


# --------------------------------------------------------------------------------------------
# Figures and the report


def figures(r, spec):
    """The headline figures of one ours/torch worker result."""
    train_flops, eval_flops = flops_per_token(spec["emb"], spec["hidden"], r["vocab"], spec["layers"], spec["gates"])
    return {"train_tok_s": r["train"]["tok_s"], "train_tok_s_median_window": r["train"]["tok_s_median_window"],
            "eval1_tok_s": r["eval1"]["tok_s"], "evalb_tok_s": r["evalb"]["tok_s"],
            "peak_rss_mb": r["peak_rss_mb"], "rss_train_mb": r["rss_train_mb"],
            "train_gflops": r["train"]["tok_s"] * train_flops / 1e9,
            "train_self_cores": r["train"]["self_cores"], "train_other_cores": r["train"]["other_cores"],
            "page_faults_per_window": r["train"].get("page_faults_per_window"),
            "evalb_gflops": r["evalb"]["tok_s"] * eval_flops / 1e9}


def median_of(rows, key):
    vals = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(vals) if vals else None


RATIO_KEYS = ("train_tok_s", "train_tok_s_median_window", "eval1_tok_s", "evalb_tok_s", "train_gflops",
              "peak_rss_mb", "rss_train_mb")


def summarize(runs, spec):
    """Medians of each figure, per-pair ours/torch ratios and their medians, % of GEMM peak."""
    ours = [figures(r, spec) for r in runs["ours"]]
    torch = [figures(r, spec) for r in runs["torch"]]
    peak = median_of([g for g in runs["gemm"]], "peak_gflops")
    out = {"ours": {k: median_of(ours, k) for k in ours[0]}, "torch": {}, "ratios": {}, "ratio_median": {},
           "gemm_peak_gflops": peak, "gemm_bound_tok_s": median_of(runs["gemm"], "bound_tok_s"),
           "gemm_window_gflops": median_of(runs["gemm"], "window_gflops")}
    out["ours"]["pct_of_peak"] = 100 * out["ours"]["train_gflops"] / peak
    if torch:
        out["torch"] = {k: median_of(torch, k) for k in torch[0]}
        out["torch"]["pct_of_peak"] = 100 * out["torch"]["train_gflops"] / peak
        out["torch"]["torch_gemm_peak_gflops"] = median_of([r["gemm"] for r in runs["torch"]], "peak_gflops")
        for key in RATIO_KEYS:
            pairs = [o[key] / t[key] for o, t in zip(ours, torch) if t[key]]
            out["ratios"][key] = [round(x, 3) for x in pairs]
            out["ratio_median"][key] = statistics.median(pairs)
    return out


ROWS = [("train_tok_s", "train tokens/s", "{:,.0f}"),
        ("train_tok_s_median_window", "  (from the median window)", "{:,.0f}"),
        ("eval1_tok_s", "eval tokens/s, batch 1 (exact)", "{:,.0f}"),
        ("evalb_tok_s", "eval tokens/s, batch {eval_batch}", "{:,.0f}"),
        ("train_gflops", "train GFLOP/s", "{:.1f}"),
        ("pct_of_peak", "  % of numpy GEMM peak", "{:.1f}"),
        ("train_self_cores", "  cores it kept busy (CPU/wall)", "{:.2f}"),
        ("train_other_cores", "  cores other processes took", "{:.2f}"),
        ("page_faults_per_window", "  page faults per window", "{:,.0f}"),
        ("peak_rss_mb", "peak RSS MiB (whole run)", "{:,.0f}"),
        ("rss_train_mb", "  peak RSS MiB after training", "{:,.0f}")]


def report(summary, spec, runs, machine, help_times):
    """The human-readable table of the medians, the ratios and the context around them."""
    ours, torch, ratio = summary["ours"], summary["torch"], summary["ratio_median"]
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores; python {machine['python']}; "
             f"numpy {machine['numpy']}; torch {machine['torch'] or 'not importable'}",
             f"numpy BLAS at run time: {_blas_line(runs['ours'][0].get('blas'))}; "
             f"OPENBLAS_CORETYPE/L2_SIZE in this shell: {machine['openblas_env']}",
             f"rnnlm_cli measured: {_source_line(runs['ours'][0].get('source'))}",
             f"model: {_cell_line(spec)} E={spec['emb']} H={spec['hidden']} L={spec['layers']} "
             f"V={runs['ours'][0]['vocab']} N={spec['batch']} T={spec['bptt']} {spec['optimizer']} "
             f"{spec['dtype']}; threads {spec['threads']}; {len(runs['ours'])} interleaved repeat(s)",
             "", f"{'median of repeats':<34}{'ours':>12}{'torch':>12}{'ours/torch':>12}"]
    for key, label, fmt in ROWS:
        o, t, r = ours.get(key), torch.get(key), ratio.get(key)
        lines.append(f"{label.format(**spec):<34}{_fmt(fmt, o):>12}{_fmt(fmt, t):>12}{_fmt('{:.3f}', r):>12}")
    lines += ["", f"numpy GEMM peak on the model's shapes: {summary['gemm_peak_gflops']:.1f} GFLOP/s; "
                  f"all matmuls of one window: {summary['gemm_window_gflops']:.1f} GFLOP/s, "
                  f"i.e. a GEMM-only bound of {summary['gemm_bound_tok_s']:,.0f} train tokens/s"]
    if torch:
        lines.append(f"torch (MKL) GEMM peak on the same shapes: {torch['torch_gemm_peak_gflops']:.1f} GFLOP/s")
        lines.append("per-pair ratios ours/torch: " + "; ".join(
            f"{k} {summary['ratios'][k]}" for k in ("train_tok_s", "eval1_tok_s", "evalb_tok_s", "peak_rss_mb")))
    lines.append("GEMM shapes (GFLOP/s, first repeat): " + "; ".join(
        f"{g['name']} {g['gflops']:.0f}" for g in runs["gemm"][0]["shapes"]))
    lines.append("cores other processes took while each one trained: " + "; ".join(
        f"{kind} {[r['train']['other_cores'] for r in runs[kind]]}" for kind in ("ours", "torch") if runs[kind])
        + f" (> {NOISY_CORES}: that run shared the CPU, its figures are low); "
        f"repeats measured again for that: {len(runs['discarded'])}")
    lines.append("load average before each run: " + "; ".join(
        f"{kind} {[round(r['loadavg_before'], 1) for r in runs[kind]]}" for kind in ("gemm", "ours", "torch")
        if runs[kind]))
    lines.append("help: " + "; ".join(f"{k} {v * 1000:.0f} ms" for k, v in help_times.items()))
    lines.append(f"train FLOPs/token {flops_per_token(spec['emb'], spec['hidden'], runs['ours'][0]['vocab'], spec['layers'], spec['gates'])[0] / 1e6:.3f} M. "
                 + FLOP_NOTE)
    return "\n".join(lines)


def _cell_line(spec):
    cell = spec.get("cell", "elman")
    name = f"elman {spec['activation']}" if cell == "elman" else cell
    name += f", {spec.get('output', 'softmax')} output"
    return name + (f", dropout {spec['dropout']}" if spec.get("dropout") else "")


def _fmt(fmt, value):
    return "-" if value is None else fmt.format(value)


def _source_line(src):
    if not src:
        return "?"
    git = f" (commit {src['commit']}{', rnnlm_cli/ modified' if src['dirty'] else ''})" if "commit" in src else ""
    return f"{src['path']}{git}"


def _blas_line(blas):
    if not blas:
        return "threadpoolctl not importable"
    return ", ".join(f"{b['internal_api']} {b['version']} kernel {b['architecture']} "
                     f"{b['num_threads']} threads" for b in blas)


def measure(args, spec, env, with_torch):
    """The interleaved runs: per repeat gemm, ours, torch. A repeat whose ours or torch run
    shared the CPU with other processes (NOISY_CORES) is measured again, up to --retries times.
    -> {"gemm": [...], "ours": [...], "torch": [...], "discarded": [repeats measured again]}."""
    kinds = ("gemm", "ours") + (("torch",) if with_torch else ())
    runs = {"gemm": [], "ours": [], "torch": [], "discarded": []}
    for i in range(args.repeats):
        for attempt in range(args.retries + 1):
            batch = {kind: _logged_run(kind, f"{i + 1}/{args.repeats}", spec, env, args) for kind in kinds}
            noisy = [k for k in kinds[1:] if (batch[k]["train"]["other_cores"] or 0) > NOISY_CORES]
            if not noisy or attempt == args.retries:
                break
            print(f"# repeat {i + 1}: {', '.join(noisy)} shared the CPU: measuring the repeat again",
                  file=sys.stderr, flush=True)
            runs["discarded"].append(batch)
        for kind in kinds:
            runs[kind].append(batch[kind])
    return runs


def _logged_run(kind, which, spec, env, args):
    """run_worker with a progress line on stderr."""
    print(f"# repeat {which}: {kind} ...", file=sys.stderr, flush=True)
    r = run_worker(kind, spec, env, quiet_wait=args.quiet_wait)
    if kind != "gemm":
        print(f"#   train {r['train']['tok_s']:,.0f} tok/s, eval1 {r['eval1']['tok_s']:,.0f}, "
              f"eval{spec['eval_batch']} {r['evalb']['tok_s']:,.0f}, peak RSS {r['peak_rss_mb']:.0f} MiB; "
              f"waited {r['quiet_waited']} s for a lull, others took {r['train']['other_cores']} cores",
              file=sys.stderr, flush=True)
    return r


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        emit(WORKERS[args.worker](json.loads(args.spec)))
        return
    if args.rnnlm_src:
        sys.path.insert(0, str(Path(args.rnnlm_src).resolve()))
    config_path, sets, config = bench_config(args)
    spec = make_spec(args, config_path, sets, config)
    spec["gemms"] = gemm_list(spec["emb"], spec["hidden"], _vocab_size_hint(config), spec["batch"],
                              spec["bptt"], spec["layers"], spec["gates"])
    env = child_env(args)
    if args.profile:
        run_worker("profile", spec, env, echo=True, quiet_wait=args.quiet_wait)
        return
    machine = machine_info()
    why_not = "--no-torch" if args.no_torch else (
        "torch is not importable" if machine["torch"] is None else torch_unsupported(config))
    if why_not:
        print(f"# PyTorch peer skipped: {why_not}", file=sys.stderr)
    runs = measure(args, spec, env, with_torch=not why_not)
    help_times = time_help(args.help_runs, env)
    summary = summarize(runs, spec)
    if args.json:  # before the report, so that a closed stdout loses nothing
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label": args.label, "argv": sys.argv[1:],
                  "machine": machine, "spec": spec, "torch_skipped": why_not, "summary": summary,
                  "help_seconds": help_times, "runs": runs, "flop_note": FLOP_NOTE}
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    print(report(summary, spec, runs, machine, help_times))


def _vocab_size_hint(config):
    """V for the GEMM shapes, from the vocabulary rnnlm builds (cheap next to the benchmark)."""
    from rnnlm_cli import data
    from rnnlm_cli.vocab import build_vocab

    counts, _, _ = data.count_words(config.data.train, config.data.tokenizer)
    return len(build_vocab(counts, config.vocab.min_count, config.vocab.max_size))


if __name__ == "__main__":
    main()
