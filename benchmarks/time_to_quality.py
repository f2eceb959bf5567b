"""Time to quality: train a config on Penn Treebank and print, per epoch, the wall time and the
valid perplexity, and the first wall time at which valid perplexity was <= --target:
    python benchmarks/time_to_quality.py configs/ptb-fast.yaml --ptb PTB --out /tmp/ttq [--set K=V ...]
Runs `python -m rnnlm_cli.cli train CONFIG --out DIR` (the rnnlm_cli this file's repository
holds) in a subprocess, then reads DIR/metrics.jsonl. Wall seconds are the run's own (its epoch
records: since training started, each epoch's validation included); the process total adds
start-up and the exact (batch 1) valid and test evaluation at the end.

--test-every-epoch: train one epoch per run instead (`--set train.epochs=1`, then `--resume --set
train.epochs=2`, ...: the checkpoint continues bit for bit, as after any --resume), so that each
run's end gives the exact valid and *test* perplexity of the model as it stood after that epoch
(the averaged weights while averaging). Training itself never reads the test file; this costs
one exact evaluation of valid and test per epoch (minutes for a 650-unit model)."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnnlm_cli.config import load_config  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--ptb", required=True, help="folder of ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    ap.add_argument("--out", required=True, help="run folder (must not exist or be empty)")
    ap.add_argument("--target", type=float, default=177.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to rnnlm train")
    ap.add_argument("--test-every-epoch", action="store_true",
                    help="one run per epoch, each ending with the exact valid and test perplexity")
    ap.add_argument("--epochs", type=int, help="with --test-every-epoch: how many (default: the config's)")
    args = ap.parse_args()
    ptb = Path(args.ptb).resolve()
    cmd = [sys.executable, "-m", "rnnlm_cli.cli", "train", args.config, "--out", args.out, "--quiet"]
    for split in ("train", "valid", "test"):
        cmd += ["--set", f"data.{split}={ptb / f'ptb.{split}.txt'}"]
    for kv in args.set:
        cmd += ["--set", kv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    if args.test_every_epoch:
        epochs = args.epochs or load_config(args.config, args.set).train.epochs
        code, ends = 0, []
        for k in range(1, epochs + 1):
            step = cmd + ["--set", f"train.epochs={k}"] if k == 1 else \
                [sys.executable, "-m", "rnnlm_cli.cli", "train", "--out", args.out, "--resume", "--quiet",
                 "--set", f"train.epochs={k}"]
            code = subprocess.run(step, env=env).returncode
            end = last_end(args.out) if code == 0 else None  # a resumed run rewrites metrics.jsonl
            if end is None or end["epochs"] < k:  # failed, or stopped early by its schedule
                break
            ends.append(end)
    else:
        code = subprocess.run(cmd, env=env).returncode
    total = time.perf_counter() - t0
    records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines() if line]
    reached = None
    print(f"{'epoch':>5} {'tokens':>9} {'wall s':>8} {'valid ppl':>10} {'lr':>9}")
    for r in records:
        if r.get("event") != "epoch":
            continue
        print(f"{r['epoch']:>5} {r['tokens']:>9} {r['wall_seconds']:>8.1f} {r['valid_ppl']:>10.2f} {r['lr']:>9.3g}"
              + ("" if r.get("accepted", True) else "  (rejected)"))
        if reached is None and r["valid_ppl"] <= args.target:
            reached = r
    if not args.test_every_epoch:
        ends = [r for r in records if r.get("event") == "end"]
    if reached:
        print(f"valid ppl <= {args.target:g}: after {reached['wall_seconds']:.1f} s (epoch {reached['epoch']}, "
              f"{reached['valid_ppl']:.2f})")
    else:
        print(f"valid ppl <= {args.target:g}: not reached")
    if args.test_every_epoch:
        print(f"{'epoch':>5} {'exact valid':>12} {'exact test':>11} {'train s':>9}")
        for k, r in enumerate(ends, 1):
            print(f"{k:>5} {r.get('valid_ppl'):>12.2f} {r.get('test_ppl'):>11.2f} {r.get('train_seconds'):>9.1f}")
    elif ends:
        print(f"exact (batch 1): valid {ends[-1].get('valid_ppl')}, test {ends[-1].get('test_ppl')}")
    print(f"process wall time: {total:.1f} s (exit {code})")
    return code


def last_end(out):
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in records if r.get("event") == "end"][-1]


if __name__ == "__main__":
    sys.exit(main())
