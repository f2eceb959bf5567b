"""Elementwise work over big (M, V) arrays, split into row blocks on plain threads.

numpy releases the GIL inside ufuncs, so two threads working on two halves of the logits run on
two cores, where numpy alone would use one; BLAS already threads the matrix products. Each row
is handled by exactly one thread with the same operations whatever the split, so the results do
not depend on the number of threads (only the float64 loss sum's rounding order could, and it
is summed in block order).
"""

import os
from concurrent.futures import ThreadPoolExecutor

MIN_BLOCK = 1 << 16  # elements: below this, a thread costs more than it saves

_pool = None
_workers = None


def workers():
    """Threads to use: the cores this process may run on (RNNLM_THREADS overrides)."""
    global _workers
    if _workers is None:
        env = os.environ.get("RNNLM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            _workers = int(env)
        else:
            try:
                _workers = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                _workers = os.cpu_count() or 1
    return _workers


def _get_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="rnnlm")
    return _pool


def row_blocks(rows, cols):
    """[(start, stop)] splitting `rows` into one block per worker (one block if small)."""
    n = min(workers(), max(1, rows * cols // MIN_BLOCK), rows) if rows else 1
    bounds = [rows * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def map_rows(fn, rows, cols):
    """[fn(start, stop) for each row block], run on the pool when there is more than one block."""
    blocks = row_blocks(rows, cols)
    if len(blocks) == 1:
        return [fn(*blocks[0])]
    futures = [_get_pool().submit(fn, a, b) for a, b in blocks]
    return [f.result() for f in futures]
