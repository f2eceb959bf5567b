"""Training throughput of the gated cells on random token windows (no corpus needed):
    python benchmarks/lstm_speed.py --hidden 650 --batch 20 --bptt 35 --output class
Prints tokens/s over --steps windows after --warmup windows (one process, this machine)."""
import argparse
import time

import numpy as np

from rnnlm_cli import config, model, optim, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--output", default="class")
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    cfg = config.config_from_dict({
        "model": {"cell": args.cell, "embedding_dim": args.hidden, "hidden_dim": args.hidden,
                  "layers": args.layers, "output": args.output, "tie_weights": args.tied,
                  "dropout": args.dropout},
        "train": {"batch_size": args.batch, "bptt": args.bptt, "optimizer": "sgd", "lr": 1.0,
                  "clip_norm": 0.25}})
    rng = np.random.default_rng(0)
    counts = np.sort(rng.zipf(1.3, args.vocab).astype(np.int64))[::-1].copy()
    params = model.init_params(cfg.model, args.vocab, seed=1, counts=counts)
    opt_state = optim.init_state("sgd", params)
    state = model.init_state(cfg.model, args.batch)
    workspace = {}
    # ids drawn with the same Zipf-like frequencies the class bins were made from
    ids = rng.choice(args.vocab, size=(args.steps + args.warmup, args.batch, args.bptt + 1),
                     p=counts / counts.sum())
    t0 = None
    for k in range(args.steps + args.warmup):
        if k == args.warmup:
            t0 = time.perf_counter()
        window = ids[k]
        _, grads, state = train.window_gradient(params, cfg.model, window[:, :-1], window[:, 1:], state,
                                                workspace, rng)
        train.apply_gradient(params, grads, opt_state, 1.0, cfg.train)
    seconds = time.perf_counter() - t0
    print(f"{args.cell} H={args.hidden} N={args.batch} T={args.bptt} {args.output}"
          f"{' tied' if args.tied else ''}: {args.steps * args.batch * args.bptt / seconds:,.0f} tok/s")


if __name__ == "__main__":
    main()
