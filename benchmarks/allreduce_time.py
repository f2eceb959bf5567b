"""Under `mpiexec -n K`: the time of one window's gradient on a rank's streams and of its
allreduce (distributed.allreduce_gradient), the medians of 30 windows of the config's training
data; prints one JSON line (rank 0). Run by benchmarks/mpi_speed.py.

    mpiexec -n 2 python benchmarks/allreduce_time.py CONFIG [KEY=VALUE ...]
"""

import json
import statistics
import sys
import time

import numpy as np

from rnnlm_cli import data, distributed, layers, model, train
from rnnlm_cli.config import load_config


def main():
    w = distributed.world()
    config = load_config(sys.argv[1], sys.argv[2:])
    vocab, streams = train.prepare_data(config)
    counts = streams["train_counts"]
    tc = config.train
    params = model.init_params(config.model, len(vocab), tc.seed, tc.dtype, counts)
    a, b = distributed.streams_of(w, tc.batch_size)
    batches = data.batchify(streams["train"][0], tc.batch_size)[a:b]
    hidden = model.init_state(config.model, b - a, tc.dtype)
    rng = np.random.default_rng(1)
    grad_ms, reduce_ms, workspace = [], [], {}
    dense_bytes = sparse_bytes = 0
    for k, (inputs, targets) in enumerate(data.iter_windows(batches, tc.bptt)):
        if k == 32:
            break
        w.comm.Barrier()
        t0 = time.perf_counter()
        loss, grads, hidden = train.window_gradient(params, config.model, inputs, targets, hidden, workspace, rng,
                                                    scale=1.0 / (targets.shape[1] * tc.batch_size))
        t1 = time.perf_counter()
        dense_bytes = sum(g.nbytes for g in grads.values() if isinstance(g, np.ndarray))
        sparse_bytes = sum(g.rows.nbytes + g.ids.nbytes if isinstance(g, layers.SparseRows)
                           else sum(x.nbytes for x in g.blocks) for g in grads.values()
                           if not isinstance(g, np.ndarray))
        w.comm.Barrier()
        t2 = time.perf_counter()
        distributed.allreduce_gradient(w, loss * targets.size, grads, workspace)
        t3 = time.perf_counter()
        if k >= 2:  # the first windows warm the caches
            grad_ms.append(1e3 * (t1 - t0))
            reduce_ms.append(1e3 * (t3 - t2))
    if w.rank == 0:
        print(json.dumps({"ranks": w.size, "gradient_ms": statistics.median(grad_ms),
                          "allreduce_ms": statistics.median(reduce_ms), "dense_mb": dense_bytes / 1e6,
                          "sparse_mb": sparse_bytes / 1e6}))


if __name__ == "__main__":
    main()
