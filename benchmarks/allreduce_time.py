"""Under `mpiexec -n K`: the time of one window's gradient on a rank's streams, of its blocking
allreduce (distributed.allreduce_gradient), and of the gradient with the sums overlapped with its
backward pass (train.window_gradient(ready=...) then Reducer.finish: what training does), the
medians of 30 windows of the config's training data; then the time of one validation as
training does it at the end of an epoch (each rank its share of the train.eval_batch_size
streams, distributed.valid_share, the sums added). Prints one JSON line (rank 0). Run by
benchmarks/mpi_speed.py; without mpiexec (K = 1) it times the gradient and the validation only.

    mpiexec -n 2 python benchmarks/allreduce_time.py CONFIG [KEY=VALUE ...]
    python benchmarks/allreduce_time.py CONFIG [KEY=VALUE ...]          # K = 1
"""

import json
import statistics
import sys
import time

import numpy as np

from rnnlm_cli import data, distributed, evaluate, layers, model, train
from rnnlm_cli.config import load_config

WINDOWS = 32


def _barrier(w):
    if w.size > 1:
        w.comm.Barrier()


def _sizes(grads):
    dense = sum(g.nbytes for g in grads.values() if isinstance(g, np.ndarray))
    sparse = sum(g.rows.nbytes + g.ids.nbytes if isinstance(g, layers.SparseRows) else sum(x.nbytes for x in g.blocks)
                 for g in grads.values() if not isinstance(g, np.ndarray))
    return dense, sparse


def time_windows(w, config, params, batches, scale):
    """{gradient_ms, allreduce_ms, overlapped_ms: lists}, dense and sparse bytes of a gradient."""
    tc = config.train
    hidden = model.init_state(config.model, batches.shape[0], tc.dtype)
    times = {"gradient_ms": [], "allreduce_ms": [], "overlapped_ms": []}
    workspace, sizes = {}, (0, 0)
    reducer = distributed.Reducer(w, workspace) if w.size > 1 else None
    for k, (inputs, targets) in enumerate(data.iter_windows(batches, tc.bptt)):
        if k == WINDOWS:
            break
        _barrier(w)
        t0 = time.perf_counter()
        loss, grads, _ = train.window_gradient(params, config.model, inputs, targets, hidden, workspace, scale=scale)
        t1 = time.perf_counter()
        sizes = _sizes(grads)
        elapsed = {"gradient_ms": t1 - t0}
        if w.size > 1:
            _barrier(w)
            t2 = time.perf_counter()
            distributed.allreduce_gradient(w, loss * targets.size, grads, workspace)
            elapsed["allreduce_ms"] = time.perf_counter() - t2
            _barrier(w)
            t3 = time.perf_counter()
            loss, grads, hidden = train.window_gradient(params, config.model, inputs, targets, hidden, workspace,
                                                        scale=scale, ready=reducer.ready)
            reducer.finish(loss * targets.size, grads)
            elapsed["overlapped_ms"] = time.perf_counter() - t3
        if k >= 2:  # the first windows warm the caches
            for name, seconds in elapsed.items():
                times[name].append(1e3 * seconds)
    return times, sizes


def time_validation(w, config, params, valid, reset_at):
    """Seconds of one end-of-epoch validation (this rank's share, then the sums)."""
    tc = config.train
    _barrier(w)
    t0 = time.perf_counter()
    ids, streams = distributed.valid_share(w, valid, tc.eval_batch_size, reset_at)
    total, count = evaluate.evaluate_ids(params, config.model, ids, streams, tc.bptt, reset_at)
    total, count = distributed.sum_over(w, total, count)
    return time.perf_counter() - t0, total / count


def main():
    w = distributed.world()
    config = load_config(sys.argv[1], sys.argv[2:])
    vocab, streams = train.prepare_data(config)
    tc = config.train
    params = model.init_params(config.model, len(vocab), tc.seed, tc.dtype, streams["train_counts"])
    a, b = distributed.streams_of(w, tc.batch_size)
    batches = data.batchify(streams["train"][0], tc.batch_size)[a:b]
    times, (dense, sparse) = time_windows(w, config, params, batches, 1.0 / (tc.bptt * tc.batch_size))
    reset_at = vocab.eos_id if config.data.independent else None
    valid_seconds, valid_ce = time_validation(w, config, params, streams["valid"][0], reset_at)
    if w.rank == 0:
        medians = {name: statistics.median(v) if v else None for name, v in times.items()}
        exposed = (medians["overlapped_ms"] - medians["gradient_ms"]) if w.size > 1 else None
        print(json.dumps({"ranks": w.size, **medians, "exposed_ms": exposed, "dense_mb": dense / 1e6,
                          "sparse_mb": sparse / 1e6, "valid_seconds": valid_seconds, "valid_ce": valid_ce,
                          "valid_targets": len(streams["valid"][0]) - 1}))


if __name__ == "__main__":
    main()
