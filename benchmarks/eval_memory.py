"""Peak memory of `rnnlm eval` and `rnnlm score` against the size of the file they read.

    python benchmarks/eval_memory.py --folder /tmp/corpora [--sizes 1e6 100e6] [--gzip] [--json FILE]

Generates (once, with make_corpus.py, under --folder; 100M words is about 700 MB, never committed)
a text of each size over the same 100k-word vocabulary, trains one small model (Elman E = H = 32,
class output, bptt 100, 20 steps on a 1M-word text (--train-words): the figures measure the reading, not the
model), then runs in a fresh subprocess each, and reports the peak RSS (ru_maxrss) and wall time:

- `eval`: `rnnlm eval MODEL FILE --json` (batch 1: the exact figure, the file read in chunks);
- `score`: `rnnlm score MODEL FILE` (independent lines, blocks of 4096 lines), output discarded;
- `score --carry`: `rnnlm score MODEL FILE --carry` (one stream, in chunks), output discarded.

The issue's target: eval's peak RSS on the largest file within 64 MB of the smallest's (the
script prints the difference and whether it holds). `--gzip` reads gzip-compressed copies
instead (streamed the same way). `--commands eval` measures only eval. At batch 1 the model
reads about 50-100k tokens/s on one core: 100M tokens take 20-40 minutes per command.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIMIT_MB = 64

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from rnnlm_cli import cli
    t = time.perf_counter()
    try:
        cli.main(sys.argv[1:])
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
""")

CONFIG = """\
data: {{train: {train}, valid: {valid}, cache_dir: {cache}}}
model: {{embedding_dim: 32, hidden_dim: 32, output: class}}
train: {{batch_size: 20, bptt: 100, max_steps: 20, eval_batch_size: 10, lr: 0.5}}
"""

COMMANDS = {"eval": ["eval", "{model}", "{file}", "--json"], "score": ["score", "{model}", "{file}"],
            "score --carry": ["score", "{model}", "{file}", "--carry"]}


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def measure(args):
    """Run the CLI with `args` in a fresh process: ({seconds, peak_rss_mb}, its stdout's last line)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env())
    if proc.returncode:
        sys.exit(f"failed: rnnlm {' '.join(map(str, args))}\n{proc.stderr}")
    figures = json.loads(proc.stderr.strip().splitlines()[-1])
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return figures, last


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", required=True, type=Path)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 100e6])
    ap.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    ap.add_argument("--gzip", action="store_true", help="read gzip-compressed copies of the texts")
    ap.add_argument("--train-words", type=int, default=1_000_000, help="the model's training text")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_corpus import write_corpus
    args.folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for size in sorted(args.sizes):
        n = int(size)
        path = args.folder / f"train-{n}.txt"  # the same files as large_corpus.py's
        if not path.exists():
            t = time.perf_counter()
            write_corpus(path, n, seed=1)
            print(f"generated {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        if args.gzip:
            packed = path.with_name(path.name + ".gz")
            if not packed.exists():
                with open(path, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
            path = packed
        files[n] = path
    model = args.folder / "eval-memory-model"
    if not (model / "weights.npz").exists():
        valid = args.folder / "valid-20k.txt"
        if not valid.exists():
            write_corpus(valid, 20_000, seed=2)
        config = args.folder / "eval-memory.yaml"
        train = args.folder / f"train-{args.train_words}.txt"
        if not train.exists():
            write_corpus(train, args.train_words, seed=1)
        config.write_text(CONFIG.format(train=train, valid=valid, cache=args.folder / "cache-eval-memory"))
        subprocess.run([sys.executable, "-m", "rnnlm_cli.cli", "train", str(config), "--out", str(model), "-q"],
                       check=True, env=env())
    rows = []
    for name in args.commands:
        for n, path in files.items():
            figures, last = measure([a.format(model=model, file=path) for a in COMMANDS[name]])
            row = {"command": name, "words": n, "file": str(path), **figures, "load": os.getloadavg()[0]}
            if name == "eval":
                row["perplexity"] = json.loads(last)["perplexity"]
            rows.append(row)
            print(f"{name:14s} {n:>12,} words: peak RSS {figures['peak_rss_mb']:7.1f} MB, "
                  f"{figures['seconds']:8.1f} s (load {row['load']:.1f})", flush=True)
        sizes = [r for r in rows if r["command"] == name]
        if len(sizes) > 1:
            grow = sizes[-1]["peak_rss_mb"] - sizes[0]["peak_rss_mb"]
            print(f"{name:14s} peak RSS grows {grow:+.1f} MB from {sizes[0]['words']:,} to "
                  f"{sizes[-1]['words']:,} words: {'within' if grow <= LIMIT_MB else 'MORE than'} "
                  f"{LIMIT_MB} MB", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"bench": "eval_memory", "gzip": args.gzip, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
