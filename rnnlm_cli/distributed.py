"""Data-parallel training on MPI: `mpiexec -n K rnnlm train ...` trains one model on K processes.

The N = train.batch_size streams are cut into K equal blocks, one per rank (N must be a multiple
of K). Every rank runs the same loop on its block: the forward and backward pass of its streams'
window, then an allreduce that sums the gradients over the ranks, then the same update. Each
rank's gradient is scaled by 1 / (N·t), the target count of the whole window, not of its block,
so the sum is exactly the gradient one process computes (up to the order of the float
additions); the global norm (clipping) is taken of the summed gradient. Sparse gradients are
summed exactly too: the embedding's rows (layers.SparseRows: every rank's distinct ids and rows
gathered, then summed by id in rank order) and the class output's column blocks
(layers.ColumnBlocks: the union of the ranks' classes, summed block by block).

Dropout masks: every rank draws the mask of the whole batch from the run's generator (all ranks
hold the same generator state) and keeps its streams' part, so the masks, and the generator's
state in a checkpoint, are those of one process.

The carried hidden state of the whole batch lives on every rank, each rank updating its streams'
part; before a checkpoint the parts are gathered, so checkpoint.npz is the one process's.
Rank 0 alone writes (the others' writes are switched off in files.py) and shows progress;
decisions (the loss, the norm, the valid perplexity, a signal) are the same on every rank, so
the ranks stay in step. An error that only some ranks see is agreed on (`agree`) where it can
happen (setting up), or ends the whole job (MPI Abort, in the CLI) elsewhere.

Without an MPI launcher (or with K = 1) nothing here is used: `world()` is a single process.
Numerics (layers, gated, model, output/) never import this module or MPI.
"""

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from . import layers
from .errors import RnnlmError, UserError

# Variables the usual MPI launchers set in every process they start: (size, rank).
_LAUNCHER_VARS = (("PMI_SIZE", "PMI_RANK"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
                  ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"), ("PMIX_SIZE", "PMIX_RANK"))


@dataclass
class World:
    """The processes of a run: this one's rank, their number, the MPI communicator (None alone)."""
    rank: int = 0
    size: int = 1
    comm: object = None


def launched():
    """(size, rank) that an MPI launcher gave this process, or (1, 0)."""
    for size_var, rank_var in _LAUNCHER_VARS:
        size = os.environ.get(size_var, "")
        if size.isdigit() and int(size) > 1:
            rank = os.environ.get(rank_var, "0")
            return int(size), int(rank) if rank.isdigit() else 0
    return 1, 0


class QuietError(RnnlmError):
    """An error every rank raises together: rank 0 prints it, the others exit with its code."""

    def __init__(self, message, exit_code, rank):
        super().__init__(message)
        self.exit_code, self.rank = exit_code, rank


def world():
    """This process's World: from MPI when an MPI launcher started several processes. Sets each
    rank's threads (parallel.py) to the cores of its machine divided among its ranks."""
    size, rank = launched()
    if size == 1:
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise QuietError(f"rnnlm train was started by an MPI launcher with {size} processes, but mpi4py is not "
                         f"installed: pip install 'rnnlm[mpi]' (mpi4py and an MPI runtime), or run rnnlm "
                         f"train without mpiexec", 2, rank) from None
    comm = MPI.COMM_WORLD
    w = World(comm.Get_rank(), comm.Get_size(), comm)
    if "RNNLM_THREADS" not in os.environ:
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        os.environ["RNNLM_THREADS"] = str(max(1, cores // local))
    if w.rank != 0:
        from . import files
        files.stop_writing()
    return w


def streams_of(w, batch_size):
    """(start, stop): this rank's block of the batch's streams. A batch size that is not a
    multiple of the number of ranks is a UserError (every rank raises it)."""
    if batch_size % w.size:
        raise QuietError(f"train.batch_size {batch_size} is not a multiple of the {w.size} MPI processes: each "
                         f"process takes batch_size / K streams (use e.g. train.batch_size "
                         f"{max(w.size, batch_size - batch_size % w.size)})", 2, w.rank)
    n = batch_size // w.size
    return w.rank * n, (w.rank + 1) * n


def agree(w, fn):
    """fn() on every rank; if it raised on any, every rank raises (a QuietError with the first
    failing rank's message: rank 0 prints it). -> fn's result on this rank."""
    if w.size == 1:
        return fn()
    try:
        result, failure = fn(), None
    except RnnlmError as e:
        result, failure = None, (getattr(e, "exit_code", 1), str(e))
    except Exception as e:  # a bug or a fault of this machine: still end every rank cleanly
        result, failure = None, (1, f"unexpected {type(e).__name__}: {e}")
    failures = w.comm.allgather(failure)
    for rank, f in enumerate(failures):
        if f is not None:
            code, message = f
            raise QuietError(message if rank == 0 else f"rank {rank}: {message}", code, w.rank)
    return result


def bcast(w, value):
    """Rank 0's value on every rank."""
    return value if w.size == 1 else w.comm.bcast(value, root=0)


def agreed_signal(w, should_stop):
    """should_stop() agreed over the ranks: a signal number if any rank received one."""
    signum = should_stop() or 0
    if w.size == 1:
        return signum or None
    buf = np.array([signum], dtype=np.int64)
    w.comm.Allreduce(_in_place(), buf, op=_op("MAX"))
    return int(buf[0]) or None


def _in_place():
    from mpi4py import MPI
    return MPI.IN_PLACE


def _op(name):
    from mpi4py import MPI
    return getattr(MPI, name)


# --------------------------------------------------------------------------------------------
# The window's gradient, summed


def allreduce_gradient(w, loss_sum, grads, workspace):
    """Sum a window's gradients (dict of arrays, SparseRows and ColumnBlocks, each rank's scaled
    by 1 / the window's global target count) and its loss sum over the ranks -> (loss sum,
    grads), the same on every rank, keys in their order. Big dense arrays are reduced in place;
    the small ones packed into one buffer (one message instead of many)."""
    small = [k for k, g in grads.items() if isinstance(g, np.ndarray) and (g.size < BIG or not g.flags.c_contiguous)]
    dtype = next((g.dtype for g in grads.values() if isinstance(g, np.ndarray)), np.float64)
    total = sum(grads[k].size for k in small)
    buf = workspace.get("allreduce")
    if buf is None or buf.size != total or buf.dtype != dtype:
        buf = workspace["allreduce"] = np.empty(total, dtype=dtype)
    offset = 0
    for k in small:
        buf[offset:offset + grads[k].size] = grads[k].reshape(-1)
        offset += grads[k].size
    w.comm.Allreduce(_in_place(), buf, op=_op("SUM"))
    loss = np.array([loss_sum], dtype=np.float64)
    w.comm.Allreduce(_in_place(), loss, op=_op("SUM"))
    out, offset = {}, 0
    for k, g in grads.items():
        if k in small:
            g[...] = buf[offset:offset + g.size].reshape(g.shape)
            offset += g.size
            out[k] = g
        elif isinstance(g, np.ndarray):
            w.comm.Allreduce(_in_place(), g, op=_op("SUM"))
            out[k] = g
        elif isinstance(g, layers.SparseRows):
            out[k] = _sum_sparse_rows(w, g)
        else:
            out[k] = _sum_column_blocks(w, g, dtype)
    return float(loss[0]), out


BIG = 1 << 16  # elements: a dense gradient this big is reduced on its own, in place


def align(w, arrays):
    """Make sure every rank holds rank 0's `arrays` (dict, changed in place): compared by a
    digest, sent again where they differ. The ranks apply the same updates to the same sums, so
    they agree bit for bit; this guards against an MPI library or a machine (several machines)
    whose arithmetic differs in the last bit. -> whether anything had to be sent."""
    if w.size == 1:
        return False
    digest = hashlib.sha256()
    for k in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[k]).view(np.uint8).reshape(-1))
    digests = w.comm.allgather(digest.hexdigest())
    if len(set(digests)) == 1:
        return False
    theirs = w.comm.bcast(arrays if w.rank == 0 else None, root=0)
    for k, v in theirs.items():
        arrays[k][...] = v
    return True


def _allgatherv(w, array):
    """The arrays of every rank concatenated along axis 0, in rank order."""
    array = np.ascontiguousarray(array)
    lengths = w.comm.allgather(array.shape[0])
    row = int(np.prod(array.shape[1:], dtype=np.int64))
    out = np.empty((sum(lengths), *array.shape[1:]), dtype=array.dtype)
    counts = [n * row for n in lengths]
    w.comm.Allgatherv(array.reshape(-1), [out.reshape(-1), counts])
    return out


def _sum_sparse_rows(w, g):
    """The SparseRows of the sum: every rank's (id, row) pairs, summed by id."""
    ids = _allgatherv(w, g.ids.astype(np.int64))
    rows = _allgatherv(w, g.rows)
    used, sums = layers.sum_rows_by_id(ids, rows)
    return layers.SparseRows(used, sums, g.shape)


def _sum_column_blocks(w, g, dtype):
    """The ColumnBlocks of the sum over the union of the ranks' column ranges (the classes of a
    class output: the same boundaries on every rank, so ranges are equal or disjoint)."""
    ranges = sorted({tuple(r) for rs in w.comm.allgather([tuple(map(int, r)) for r in g.ranges]) for r in rs})
    lead = g.shape[:-1]
    widths = [b - a for a, b in ranges]
    buf = np.zeros((*lead, sum(widths)), dtype=dtype)
    starts = dict(zip(ranges, np.cumsum([0] + widths[:-1]).tolist()))
    for (a, b), block in zip(g.ranges, g.blocks):
        s = starts[(int(a), int(b))]
        buf[..., s:s + b - a] = block
    w.comm.Allreduce(_in_place(), buf, op=_op("SUM"))
    blocks = [buf[..., s:s + b - a] for (a, b), s in zip(ranges, [starts[r] for r in ranges])]
    return layers.ColumnBlocks(ranges, blocks, g.shape)


# --------------------------------------------------------------------------------------------
# Streams: the hidden state and the dropout masks


def stream_axis(hidden):
    """The axis of the streams in a carried state: (L, N, H) or (L, 2, N, H)."""
    return hidden.ndim - 2


def gather_hidden(w, hidden, start, stop):
    """Fill every rank's whole carried state with each rank's block of streams (in place)."""
    if w.size == 1:
        return
    axis = stream_axis(hidden)
    mine = np.ascontiguousarray(np.moveaxis(hidden, axis, 0)[start:stop])
    parts = np.empty((w.size, *mine.shape), dtype=hidden.dtype)
    w.comm.Allgather(mine, parts)
    np.moveaxis(hidden, axis, 0)[...] = parts.reshape(-1, *mine.shape[1:])

