"""Speed of `rnnlm score` (independent lines, batched across streams) against `rnnlm eval
--batch-size 10` on the same file and against scoring one sentence per forward call.

    python benchmarks/score_speed.py --model runs/ptb-elman --file PTB/ptb.test.txt
    python benchmarks/score_speed.py --config configs/ptb-elman.yaml --file PTB/ptb.test.txt

Without --model, a model of the config is initialized (one training step, written to a temporary
folder): speed does not depend on the weights. Tokens/s count targets (words + one <eos> per
line); the three are interleaved --repeats times and the medians reported.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rnnlm_cli import data, evaluate, model, modeldir, score  # noqa: E402


def _model_dir(args, folder):
    if args.model:
        return Path(args.model)
    out = Path(folder) / "model"
    sets = [f"--set={s}" for s in args.set] + ["--set=train.max_steps=1"]
    subprocess.run([sys.executable, "-m", "rnnlm_cli.cli", "train", args.config, *sets, "--out", str(out), "-q"],
                   check=True)
    return out


def _time(fn):
    t0 = time.perf_counter()
    targets = fn()
    return targets / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--config", default="configs/ptb-elman.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--file", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="score's streams")
    ap.add_argument("--one-by-one-lines", type=int, default=500, help="lines timed one forward call each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config, vocab, params = modeldir.load_model(_model_dir(args, folder))
        m = [(config, vocab, params)]
        lines = list(score.read_lines(args.file, config.data.tokenizer))
        ids, stats = data.encode_file(args.file, vocab, config.data.tokenizer)

        def eval10():
            return evaluate.evaluate_ids(params, config.model, ids, 10, config.train.bptt)[1]

        def independent():
            return sum(r["targets"] for r in score.score_independent(m, [1.0], lines, args.batch_size))

        def one_by_one():
            n = 0
            for _, _, tokens in lines[:args.one_by_one_lines]:
                seq = np.array([vocab.eos_id] + [vocab.index.get(w, vocab.unk_id) for w in tokens] + [vocab.eos_id])
                rows = np.empty((1, len(seq) - 1))
                state = model.init_state(config.model, 1, params["embedding"].dtype)
                model.forward(params, config.model, seq[None, :-1], seq[None, 1:], state, need_grad=False,
                              row_loss=rows)
                n += len(seq) - 1
            return n

        runs = {"eval --batch-size 10": [], f"score (independent, {args.batch_size} streams)": [],
                "one sentence per forward call": []}
        for _ in range(args.repeats):
            for (name, speeds), fn in zip(runs.items(), (eval10, independent, one_by_one)):
                speeds.append(_time(fn))
    m = config.model
    print(f"{args.file}: {stats['lines']} lines, {stats['targets']} targets; model {m.cell} {m.layers}x{m.hidden_dim} "
          f"E={m.embedding_dim} output {m.output}, V={len(vocab)}, {config.train.dtype}")
    base = statistics.median(runs["eval --batch-size 10"])
    for name, speeds in runs.items():
        med = statistics.median(speeds)
        print(f"{name:40s} {med:10,.0f} tokens/s  ({med / base:.2f}x eval --batch-size 10)  "
              f"runs: {', '.join(f'{s:,.0f}' for s in speeds)}")


if __name__ == "__main__":
    main()
