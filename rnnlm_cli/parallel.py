"""Using every core: the big matrix products and the elementwise work over (M, V) arrays are
split into blocks run on plain threads, while BLAS itself is kept to one thread.

Why not let BLAS thread? A window's recurrent loop is dozens of small products ((N, H) times
(H, H)) for which a multithreaded BLAS spends more time waking and synchronizing its threads
than computing, and on a busy machine (another process on a core) each of those small products
can stall for a whole scheduler time slice: we measured the Elman layer's loop 10-60x slower
with OpenBLAS on 2 threads than on 1 under load. So BLAS runs single-threaded, and the few big
products (the output layer's, over all N·T positions and V words) are split here into one block
per core: numpy releases the GIL inside BLAS calls and ufuncs, so the blocks run in parallel.

Every block is computed by exactly one thread with the same operations whatever the timing, so
results are identical run to run (for a given number of threads).
"""

import ctypes
import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_BLOCK = 1 << 16  # elements: below this, a thread costs more than it saves
CHUNK = 1 << 14  # elements: the pieces of an elementwise pass, small enough to stay in cache
MIN_UNIT_SPLIT = 8 << 20  # multiply-adds of a step's recurrent product: below, gated layers split streams

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


def single_threaded_blas():
    """Set the BLAS numpy loaded (OpenBLAS, under its plain or scipy-openblas names) to one
    thread, through its own C function; returns whether it found one. The CLI also sets the
    usual environment variables before numpy loads, which covers other BLAS builds."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    done = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(1)
                done = True
                break
    return done


def _get_pool():
    global _pool
    if _pool is None:
        single_threaded_blas()
        _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="rnnlm")
    return _pool


def ranges(n, parts):
    """[(start, stop)] cutting range(n) into `parts` nearly equal pieces."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def balanced_ranges(work, parts):
    """[(start, stop)]: range(len(work)) cut into at most `parts` contiguous runs of about equal
    total work, each cut at the boundary nearest to a multiple of total/parts (for items of
    unequal cost: the classes of a window, the column blocks of a gradient)."""
    if len(work) == 0:
        return [(0, 0)]
    if parts <= 1:
        return [(0, len(work))]
    before = np.concatenate(([0.0], np.cumsum(work, dtype=np.float64)))  # work of the items < j
    goal = before[-1] * np.arange(1, parts) / parts
    cut = np.clip(np.searchsorted(before, goal), 1, len(work))
    cut = np.where(before[cut] - goal > goal - before[cut - 1], cut - 1, cut)
    bounds = np.unique(np.concatenate(([0], cut, [len(work)])))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def run(tasks):
    """Run the zero-argument callables on the pool (the last one on this thread); their results."""
    pool = _get_pool()  # also puts BLAS on one thread, for the small products as well
    if len(tasks) == 1:
        return [tasks[0]()]
    futures = [pool.submit(task) for task in tasks[:-1]]
    last = tasks[-1]()
    return [f.result() for f in futures] + [last]


def parts_for(elements, min_block=None):
    return max(1, min(workers(), elements // (min_block or MIN_BLOCK)))


def map_rows(fn, rows, cols, min_block=None):
    """[fn(start, stop) for each block of rows], in parallel when the work is big enough (at
    least min_block elements a thread: more for work that is light per element)."""
    parts = min(parts_for(rows * cols, min_block), max(rows, 1))
    if parts == 1:  # the common small case, without the closures
        _get_pool()
        return [fn(0, rows)]
    return run([lambda a=a, b=b: fn(a, b) for a, b in ranges(rows, parts)])


def each_chunk(n, fn, dtype=None):
    """fn(start, stop, tmp) over range(n) in cache-sized chunks, the chunks split over the cores
    (tmp: a scratch array of `dtype` of the chunk's length, or None)."""
    def chunks(a, b):
        tmp = np.empty(min(CHUNK, b - a), dtype=dtype) if dtype is not None else None
        for c in range(a, b, CHUNK):
            d = min(c + CHUNK, b)
            fn(c, d, None if tmp is None else tmp[:d - c])
    map_rows(chunks, n, 1)


def stream_blocks(N):
    """[(start, stop)]: the N streams of a batch cut into one block per thread."""
    return ranges(N, min(workers(), N)) or [(0, 0)]


def by_streams(loop, N):
    """Run loop(start, stop) for each block of streams, in parallel: for a recurrent layer's loop
    over a window, whose rows (streams) never mix, so the hand-off is once per window."""
    run([lambda s=s, e=e: loop(s, e) for s, e in stream_blocks(N)])


def gated_blocks(N, H, work):
    """[(streams, units)]: how a gated layer's loop over a window is cut into one block per
    thread, each a pair of ranges (start, stop). A step's product with W_h is `work`
    multiply-adds. Big steps are cut by hidden units: every thread takes all N streams and its
    share of the units, and the threads meet at every step (each then reads the other units'
    h_{t-1}). Small steps are cut by streams, which never mix, so the threads never meet: there a
    meeting a step (~15 µs) and the per-step elementwise calls on narrower rows cost more than
    the units' split saves in the product (N, H) x (H, 4H/2), which runs ~1.7x faster than the
    (N/2, H) x (H, 4H) of the streams' split."""
    if work >= MIN_UNIT_SPLIT:
        return [((0, N), units) for units in ranges(H, min(workers(), H))]
    return [(streams, (0, H)) for streams in stream_blocks(N)]


_ALONE = types.SimpleNamespace(wait=lambda: None)  # the barrier of threads that never meet


def in_lockstep(loop, blocks):
    """Run loop(streams, units, barrier) for each (streams, units) block at once, one thread
    each. When the blocks cut the units, the threads share one threading.Barrier that the loops
    meet at every time step; if one loop fails the barrier is broken, so that the others stop
    waiting (and fail too) instead of hanging. Blocks of whole rows get a barrier that does not
    wait."""
    if len({units for _, units in blocks}) == 1:
        return run([lambda b=b: loop(*b, _ALONE) for b in blocks])
    barrier = threading.Barrier(len(blocks))

    def guarded(streams, units):
        try:
            return loop(streams, units, barrier)
        except BaseException:
            barrier.abort()
            raise

    return run([lambda b=b: guarded(*b) for b in blocks])


def matmul(a, b, out=None):
    """a @ b for a: (M, K), b: (K, V), split over the columns of b (each thread reads its half
    of b once: the big operand, (H, V) weights or (M, V) gradients, is never read twice)."""
    M, V = a.shape[0], b.shape[1]
    if out is None:
        out = _empty_like_result(a, b)
    parts = parts_for(M * V * max(1, a.shape[1] // 64))
    if parts == 1 or V <= 1:
        _get_pool()
        return _matmul_into(a, b, out)
    run([lambda s=s, e=e: _matmul_into(a, b[:, s:e], out[:, s:e]) for s, e in ranges(V, parts)])
    return out


def matmul_rows(a, b, out=None, min_block=None):
    """a @ b split over the rows of a: for the (M, V) @ (V, H) product, where each thread then
    reads half of the big a (measured faster here than splitting V and summing the parts)."""
    M = a.shape[0]
    if out is None:
        out = _empty_like_result(a, b)
    parts = min(parts_for(a.size, min_block), max(M, 1))
    if parts == 1:
        _get_pool()
        return _matmul_into(a, b, out)
    run([lambda s=s, e=e: _matmul_into(a[s:e], b, out[s:e]) for s, e in ranges(M, parts)])
    return out


def matmul_by_rows_of(a, W):
    """a @ Wᵀ for a thin a (M, K) and a big W (D, K), computed as (W aᵀ)ᵀ with W's rows split
    over the cores: W is read along its rows. At M = 5 (a segment of dynamic evaluation) BLAS's
    product of a thin a with the transposed big operand ran 1.5x slower here (D, K = 650, 2600).
    Its sums are the same sums in another order: not bit for bit a @ W.T. Split only when W has
    512k entries a thread: a few rows' product is too little work to hand half of to a thread."""
    return np.ascontiguousarray(matmul_rows(W, a.T, min_block=1 << 19).T)


def _matmul_into(a, b, out):
    return np.matmul(a, b, out=out)  # a column block: BLAS writes it in place (ldc = row length)


def _empty_like_result(a, b):
    return np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
