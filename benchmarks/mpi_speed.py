"""Training speed of data-parallel MPI runs against one process, and what the allreduce costs.

    python benchmarks/mpi_speed.py --train PTB/ptb.train.txt --valid PTB/ptb.valid.txt \\
        [--config configs/ptb-elman.yaml] [--steps 150] [--repeats 3] [--overlap thread calls] [--json FILE]

Per repeat, interleaved, each in a fresh process (the same config, the same steps):

- `K=1, 1 thread`: `rnnlm train` with RNNLM_THREADS=1;
- `K=1, 2 threads`: `rnnlm train` with RNNLM_THREADS=2 (one process using both cores);
- `K=2, 1 thread each`: `mpiexec -n 2 rnnlm train` (each rank: the cores / the ranks = 1 thread),
  with RNNLM_MPI_OVERLAP's default (`auto`: on one machine, the sums after the backward pass);
- `K=2, overlap MODE` for each --overlap MODE (default: thread, the sums overlapped with the
  backward pass, a thread turning MPI's progress engine).

Tokens/s is the run's own figure (metrics.jsonl's end record: targets trained / training time,
without set-up and evaluation). Then benchmarks/allreduce_time.py, under `mpiexec -n 2`, times
one window's gradient (forward + backward of a rank's streams), the blocking allreduce of that
gradient (distributed.allreduce_gradient) and the gradient with its sums overlapped with the
backward pass (what training does: the exposed communication is the difference), each the
median of many; and one end-of-epoch validation (each rank its share of the streams), which it
also times on one process (no mpiexec): the issue's target is K = 2's at most 0.6 × K = 1's.

Needs mpi4py and mpiexec (`pip install -e '.[mpi]'`). The machine's load is printed with
each run: on a shared machine, compare runs of similar load.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def train_speed(config, sets, ranks, threads, out, overlap=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RNNLM_THREADS", None)
    env.pop("RNNLM_MPI_OVERLAP", None)
    if overlap:
        env["RNNLM_MPI_OVERLAP"] = overlap
    if threads:
        env["RNNLM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "rnnlm_cli.cli", "train", str(config), "--out", str(out), "-q",
           *[a for s in sets for a in ("--set", s)]]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks)] + cmd
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    end = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return end["tokens_per_sec"], load


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "ptb-elman.yaml")
    ap.add_argument("--train", required=True)
    ap.add_argument("--valid", required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overlap", nargs="*", default=["thread"], choices=["thread", "calls", "off"],
                    help="K=2 again with RNNLM_MPI_OVERLAP set so (default: thread, the allreduce overlapped "
                         "with the backward pass; the plain K=2 run uses the default, auto)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sets = [f"data.train={args.train}", f"data.valid={args.valid}", "data.test=null",
            f"train.max_steps={args.steps}", "train.log_every=1000000", *args.sets]
    variants = [("K=1, 1 thread", 1, 1, None), ("K=1, 2 threads", 1, 2, None), ("K=2, 1 thread each", 2, None, None)]
    variants += [(f"K=2, overlap {mode}", 2, None, mode) for mode in args.overlap]
    speeds = {name: [] for name, _, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, ranks, threads, overlap in variants:
                tps, load = train_speed(args.config, sets, ranks, threads,
                                        Path(tmp) / f"{repeat}-{ranks}-{threads}-{overlap}", overlap)
                speeds[name].append(tps)
                print(f"repeat {repeat + 1}: {name:20s} {tps / 1e3:7.2f}k tokens/s (load {load:.1f})", flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        timings = []
        for launch in ([mpiexec(), "-n", "2"], []):
            env_k = {**env, "RNNLM_THREADS": "1"} if not launch else env
            proc = subprocess.run(launch + [sys.executable, str(HERE / "allreduce_time.py"), str(args.config), *sets],
                                  capture_output=True, text=True, env=env_k)
            if proc.returncode:
                sys.exit(proc.stderr)
            timings.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        timing, single = timings
    median = {k: statistics.median(v) for k, v in speeds.items()}
    one, two_threads, two_ranks = (median[n] for n, _, _, _ in variants[:3])
    print(f"\nmedian tokens/s: K=1 1 thread {one:.0f} | K=1 2 threads {two_threads:.0f} | K=2 {two_ranks:.0f}")
    print(f"K=2 / K=1: {two_ranks / one:.2f}x (scaling efficiency {two_ranks / one / 2:.0%}); "
          f"K=2 / one process on 2 threads: {two_ranks / two_threads:.2f}x")
    for name, _, _, _ in variants[3:]:
        print(f"{name}: {median[name]:.0f} tokens/s, {median[name] / one:.2f}x K=1")
    print(f"per window: gradient of a rank's streams {timing['gradient_ms']:.2f} ms, blocking allreduce "
          f"{timing['allreduce_ms']:.2f} ms ({timing['dense_mb']:.2f} MB dense + {timing['sparse_mb']:.2f} MB sparse "
          f"per rank); gradient with the sums overlapped {timing['overlapped_ms']:.2f} ms: "
          f"{timing['exposed_ms']:.2f} ms of communication exposed")
    print(f"validation ({single['valid_targets']} targets, train.eval_batch_size streams): K=1 "
          f"{single['valid_seconds']:.2f} s, K=2 {timing['valid_seconds']:.2f} s: "
          f"{timing['valid_seconds'] / single['valid_seconds']:.2f}x (target <= 0.6x); cross-entropy "
          f"{single['valid_ce']:.6f} and {timing['valid_ce']:.6f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"bench": "mpi_speed", "config": str(args.config), "sets": args.sets,
                                "steps": args.steps, "speeds": speeds, "median": median, **timing,
                                "valid_seconds_k1": single["valid_seconds"]}) + "\n")


if __name__ == "__main__":
    main()
