#!/usr/bin/env python3
"""Regenerate the figures that take minutes: train each run of the perplexity table of
docs/results.md, print what `rnnlm train` prints and the table row made from it, score the worked
n-best example of docs/scoring.md with the default model, and with --write put it all into those
two pages (the README's short results table quotes some of these rows: update it by hand).

    python scripts/readme_figures.py                    # the default run (~2 min on 2 cores)
    python scripts/readme_figures.py --ptb PTB_DIR      # and the three short Penn Treebank rows (~6 min)
    python scripts/readme_figures.py --ptb PTB_DIR --long --write    # and the full-softmax one (~15 min)

PTB_DIR holds Mikolov's ptb.train.txt, ptb.valid.txt and ptb.test.txt (not shipped; see
docs/results.md, "Penn Treebank"). Each run trains from this checkout (PYTHONPATH), into a
temporary folder, with exactly the command the table shows. Training is deterministic (same config, same machine
type, same numpy: the same weights), so the perplexities come out the same on every run; the
times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results.md"
SCORING = REPO / "docs" / "scoring.md"

# label: the first cell of the table row; args: after `rnnlm train`; shown: the command column;
# ptb: needs --ptb; long: needs --long (more than a few minutes)
RUNS = [
    {"label": "default: Elman 128, KJV Genesis-Joshua", "args": [], "shown": "`rnnlm train`", "ptb": False},
    {"label": "PTB Elman 200, full softmax, Adam", "args": ["configs/ptb-elman.yaml"],
     "shown": "`rnnlm train configs/ptb-elman.yaml`", "ptb": True, "long": True},
    {"label": "PTB Elman 200, class output (C = 100), Adam",
     "args": ["configs/ptb-elman.yaml", "--set", "model.output=class", "--set", "train.epochs=3"],
     "shown": "`... configs/ptb-elman.yaml --set model.output=class --set train.epochs=3`", "ptb": True},
    {"label": "PTB Elman 80, class output, lazy Adam, batch 128: the fastest to 177",
     "args": ["configs/ptb-fast.yaml"], "shown": "`rnnlm train configs/ptb-fast.yaml`", "ptb": True},
    {"label": "PTB Elman 200, full softmax, plain SGD (lr 1, clip 0.5)",
     "args": ["configs/ptb-elman.yaml", "--set", "train.optimizer=sgd", "--set", "train.lr=1",
              "--set", "train.epochs=1"],
     "shown": "`... --set train.optimizer=sgd --set train.lr=1 --set train.epochs=1`", "ptb": True},
]
END = re.compile(r"\| end \| valid ppl (\S+) \(unigram (\S+)\) \| test ppl (\S+) \| \S+ tokens in (\S+) epochs? \| "
                 r"(\S+) \|")


def row_pattern(run):
    """The regex of the run's row (one line of the perplexity table of docs/results.md)."""
    return r"^\| " + re.escape(run["label"]) + r"[ (].*\|$"


def train(run, ptb, folder):
    """Train the run as the table shows it -> (end line, metrics end record, epoch records, V,
    the model directory)."""
    args = list(run["args"])
    if run["ptb"]:
        args += [a for k in ("train", "valid", "test") for a in ("--set", f"data.{k}={ptb / f'ptb.{k}.txt'}")]
    out = folder / run["label"].split(":")[0].replace(" ", "-")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "rnnlm_cli.cli", "train", *args, "--out", str(out), "-q"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{run['label']}: rnnlm train failed: {done.stderr.strip()}")
    end_line = done.stdout.strip().splitlines()[-1]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vocab_size = json.loads((out / "info.json").read_text())["vocab_size"]
    return end_line, records[-1], [r for r in records if r["event"] == "epoch"], vocab_size, out


def row(run, end_line, end, epochs, vocab_size):
    """The table row: the figures exactly as `rnnlm train` printed them."""
    m = END.search(end_line)
    if not m:
        sys.exit(f"{run['label']}: unexpected end line {end_line!r}")
    valid, unigram, test, _, wall = m.groups()
    label = f"{run['label']} (V = {vocab_size:,})" if not run["ptb"] else run["label"]
    stop = " (schedule stop)" if end["stop_reason"].startswith("valid") else ""
    return (f"| {label} | {run['shown']} | {len(epochs)}{stop} | {valid} (unigram {unigram}) | {test} | {wall} | "
            f"{MEASURED} |")


MEASURED = "this commit (`scripts/readme_figures.py`)"  # the last column of the rows made here


def nbest_example(page, model_dir, valid_ppl, folder):
    """docs/scoring.md (`page`) with its worked n-best example's LM costs as the default model
    gives them now."""
    block = re.search(r"\$ cat nbest.txt\n(.*?)\$ rnnlm score runs/default nbest.txt --format kaldi > lm.txt.*?\n"
                      r"\$ cat lm.txt\n(.*?)\$ cat am.txt\n(.*?)\$ join am.txt lm.txt.*?\n(.*?)```", page, re.S)
    if not block:
        sys.exit("docs/scoring.md: no worked n-best example found")
    (folder / "nbest.txt").write_text(block.group(1), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "rnnlm_cli.cli", "score", str(model_dir), str(folder / "nbest.txt"),
                           "--format", "kaldi"], env=env, capture_output=True, text=True, check=True)
    lm = dict(line.split() for line in done.stdout.splitlines())
    am = dict(line.split() for line in block.group(3).splitlines())
    totals = "".join(f"{k} {float(am[k]) + 0.5 * float(lm[k]):.6g}\n" for k in am)  # awk's %.6g
    start, end = block.span(2)
    page = page[:start] + done.stdout + page[end:]
    start, end = re.search(re.escape(block.group(4)), page).span()
    page = page[:start] + totals + page[end:]
    night = float(lm["utt1-1"]) - float(lm["utt1-2"])
    if night <= 0:
        sys.exit("the default model now prefers 'light': rewrite the n-best paragraph of docs/scoring.md")
    page = re.sub(r"\(`rnnlm train`, valid perplexity [0-9.]+\)", f"(`rnnlm train`, valid perplexity {valid_ppl})",
                    page)
    page = re.sub(r"to \"light\" here by\n[0-9.]+ nats", f"to \"light\" here by\n{night:.1f} nats", page)
    print(done.stdout + totals, end="")
    return page


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ptb", type=Path, help="folder of the Penn Treebank files (adds the PTB rows)")
    parser.add_argument("--long", action="store_true", help="also the runs that take more than a few minutes")
    parser.add_argument("--write", action="store_true",
                        help="replace the rows in docs/results.md and the example in docs/scoring.md")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "rnnlm_cli", "configs", "data"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}{' (with uncommitted changes)' if dirty else ''}, {os.cpu_count()} cores")
    results = RESULTS.read_text(encoding="utf-8")
    scoring = SCORING.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        for run in RUNS:
            if run["ptb"] and args.ptb is None or run.get("long") and not args.long:
                continue
            end_line, end, epochs, vocab_size, model_dir = train(run, args.ptb, Path(tmp))
            print(end_line)
            print("valid ppl by epoch: " + ", ".join(f"{e['valid_ppl']:.1f}" + ("" if e["accepted"] else " (rejected)")
                                                     for e in epochs))
            new_row = row(run, end_line, end, epochs, vocab_size)
            print(new_row)
            results, n = re.subn(row_pattern(run), lambda _: new_row, results, count=1, flags=re.M)
            if n != 1:
                sys.exit(f"docs/results.md: no row for {run['label']!r}")
            if not run["ptb"]:
                valid = f"{float(END.search(end_line).group(1)):.1f}"
                scoring = nbest_example(scoring, model_dir, valid, Path(tmp))
    if args.write:
        RESULTS.write_text(results, encoding="utf-8")
        SCORING.write_text(scoring, encoding="utf-8")
        print("docs/results.md: rows updated; docs/scoring.md: n-best example updated")

if __name__ == "__main__":
    main()
