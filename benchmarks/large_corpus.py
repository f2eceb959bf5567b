"""Peak memory and start-up time against corpus size (the token cache, corpus.py).

    python benchmarks/large_corpus.py --folder /tmp/corpora [--sizes 2e6 20e6 100e6] [--json FILE]

For each size, generates (once, with make_corpus.py) a synthetic corpus of that many words over
the same 100k-word vocabulary, then trains the same small model (Elman E = H = 64, class output,
batch 20, bptt 35, SGD) for --steps steps, in a fresh subprocess each time:

- cold: an empty cache folder, so the run counts and encodes the text first;
- warm: the cache of the cold run, so the run maps the ids and starts at once.

Each run reports its peak RSS (ru_maxrss of the subprocess; and of the largest of the processes
that encoded the parts of a cold run's corpus, each its own), the time from the start of
`train.run_in_folder` to the first window (`ready`: vocabulary, mapped ids, model init, the first
checkpoint written), of which the data preparation (`data`, and the CPU seconds it took in all
processes), and the encoding speed of a cold run (words / data time, and words per CPU second:
on a shared machine the wall time depends on the others' load, the CPU time much less). The corpora are written under --folder (100M words is about 700 MB)
and never committed.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    config = load_config(sys.argv[1], sys.argv[3:])
    marks = {}
    real_prepare = train.prepare_data
    def cpu():
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    def prepare(*args, **kwargs):
        t, c = time.perf_counter(), cpu()
        out = real_prepare(*args, **kwargs)
        marks["data"], marks["data_cpu"] = time.perf_counter() - t, cpu() - c
        return out
    train.prepare_data = prepare
    class Reporter(train.SilentReporter):
        def epoch_start(self, epoch, windows, start):
            marks.setdefault("ready", time.perf_counter() - t_run)
    t_run = time.perf_counter()
    summary = train.run_in_folder(config, sys.argv[2], reporter=Reporter())
    marks["total"] = time.perf_counter() - t_run
    marks["import"] = t_run - t0
    marks["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    marks["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # encoding parts
    marks["tokens_per_sec"] = summary["tokens_per_sec"]
    print(json.dumps(marks))
""")

CONFIG = """\
data: {{train: {train}, valid: {valid}, cache_dir: {cache}}}
model: {{embedding_dim: 64, hidden_dim: 64, output: class}}
train: {{batch_size: 20, bptt: 35, max_steps: {steps}, eval_batch_size: 10, lr: 0.5}}
"""


def run_child(folder, train, valid, cache, steps, tag):
    config = folder / f"bench-{tag}.yaml"
    config.write_text(CONFIG.format(train=train, valid=valid, cache=cache, steps=steps), encoding="utf-8")
    out = folder / f"run-{tag}-{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(config), str(out)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        sys.exit(f"run {tag} failed: {proc.stderr}")
    subprocess.run(["rm", "-rf", str(out)])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", required=True, type=Path)
    ap.add_argument("--sizes", nargs="+", type=float, default=[2e6, 20e6, 100e6])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_corpus import write_corpus
    args.folder.mkdir(parents=True, exist_ok=True)
    valid = args.folder / "valid-20k.txt"
    if not valid.exists():
        write_corpus(valid, 20_000, seed=2)
    rows = []
    for size in args.sizes:
        n = int(size)
        train = args.folder / f"train-{n}.txt"
        if not train.exists():
            t = time.perf_counter()
            write_corpus(train, n, seed=1)
            print(f"generated {train} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        cache = args.folder / f"cache-{n}"
        subprocess.run(["rm", "-rf", str(cache)])
        cold = run_child(args.folder, train, valid, cache, args.steps, f"cold-{n}")
        warm = run_child(args.folder, train, valid, cache, args.steps, f"warm-{n}")
        row = {"words": n, "text_mb": train.stat().st_size / 1e6, "cold": cold, "warm": warm,
               "encode_words_per_sec": n / cold["data"], "encode_words_per_cpu_sec": n / cold["data_cpu"],
               "load": os.getloadavg()[0]}
        rows.append(row)
        print(f"{n / 1e6:6.0f}M words | cold: data {cold['data']:6.2f} s ({n / cold['data'] / 1e6:.2f}M words/s, "
              f"{n / cold['data_cpu'] / 1e6:.2f}M words per CPU second), "
              f"ready {cold['ready']:6.2f} s, peak RSS {cold['peak_rss_mb']:6.0f} MB | warm: data {warm['data']:5.2f} s, "
              f"ready {warm['ready']:5.2f} s, peak RSS {warm['peak_rss_mb']:6.0f} MB | load {row['load']:.1f}",
              flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"bench": "large_corpus", "steps": args.steps, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
