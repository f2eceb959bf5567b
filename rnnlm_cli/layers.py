"""Layers as pairs of pure functions: `*_forward(...) -> (out, cache)` and `*_backward(dout, cache)`.

Shapes use fixed letters: N streams (batch), T time steps, D a layer's input size (E for the
embedding, H above it), H hidden size, V vocabulary, M = T·N positions. Arrays are time-major,
(T, N, ·), so that the step at time t, `h[t]`, is one contiguous (N, H) block.

Notation follows the derivations cited as "seed 000" ... "seed 004" (docs/derivation.md, "The
derivations cited") in row-vector form (seeds 000/001 write h = f(h_prev·H + e·I + b)):
our `W_h` is the seeds' H, `W_x` their I (or W^(l)), `output.W` their U. A seed's column-vector
formula δ = f'(z) ∘ (Uᵀ δ_o) reads in our rows as δ = f'(z) ∘ (δ_o Uᵀ).

Every backward here is checked against central differences in tests/test_layers.py.
"""

import math
from typing import NamedTuple

import numpy as np

from . import parallel

# --------------------------------------------------------------------------------------------
# Activations. Each derivative is written in terms of the activation's output h = f(z), so the
# forward pass only has to keep h (the seeds' σ' = σ(1 − σ) trick, seed 000).


def activation_forward(z, name):
    """Apply f in place to z (any shape) and return it."""
    if name == "tanh":
        return np.tanh(z, out=z)
    if name == "sigmoid":
        return sigmoid_(z)
    if name == "relu":
        return np.maximum(z, 0, out=z)
    raise ValueError(f"unknown activation {name!r}")


def sigmoid_(z):
    """σ(z) in place on z (a view is fine) and return it: σ(z) = 1 / (1 + e^{−z}). e^{−z}
    overflows to inf for z ≲ −88 (float32), which gives σ = 0 exactly, as it should. Written with
    exp, not as ½(1 + tanh(z/2)): numpy's exp is ~3× faster than its tanh here, and the result is
    accurate relative to σ also where σ is tiny."""
    with np.errstate(over="ignore"):
        return sigmoid_unguarded_(z)


def sigmoid_unguarded_(z):
    """sigmoid_ without its np.errstate, for loops that enter np.errstate(over="ignore") once:
    entering it costs 1-6 µs, a lot a time step when two threads do it."""
    np.negative(z, out=z)
    np.exp(z, out=z)
    z += 1.0
    return np.reciprocal(z, out=z)


def activation_grad(h, name):
    """f'(z) from h = f(z), elementwise: tanh 1 − h², sigmoid h(1 − h), relu [h > 0]."""
    if name == "tanh":
        return 1.0 - h * h
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "relu":
        return (h > 0).astype(h.dtype)
    raise ValueError(f"unknown activation {name!r}")


# --------------------------------------------------------------------------------------------
# Word embedding: the one-hot row times the matrix is a row lookup (seed 002, §5.3).


def embedding_forward(ids, embedding):
    """ids: (T, N) ints, embedding: (V, E) -> x: (T, N, E), cache."""
    return embedding[ids], (ids, embedding.shape)


def embedding_backward(dx, cache, sparse=False, out=None):
    """dx: (T, N, E) -> d_embedding: (V, E), or with sparse=True a SparseRows of the rows used.
    ∇L_w = Σ of δ over the positions reading word w (seed 002, eq. 4): a scatter-add over the
    rows used, never a dense one-hot product. `out`: a (V, E) array to write the dense gradient
    into (a reused buffer: a fresh one of tens of MB faults its pages in on every window)."""
    ids, shape = cache
    used, sums = sum_rows_by_id(ids.reshape(-1), dx.reshape(-1, shape[1]))
    if sparse:
        return SparseRows(used, sums, shape)
    if out is None:
        d_embedding = np.zeros(shape, dtype=dx.dtype)
    else:
        d_embedding = out
        d_embedding.fill(0)
    d_embedding[used] = sums
    return d_embedding


class SparseRows(NamedTuple):
    """A (V, E) gradient that is zero but for `rows` at the distinct `ids` (the words of a
    window): the optimizer updates those rows only, never touching the other V − n."""
    ids: np.ndarray
    rows: np.ndarray
    shape: tuple

    def dense(self):
        out = np.zeros(self.shape, dtype=self.rows.dtype)
        out[self.ids] = self.rows
        return out


def sum_rows_by_id(ids, rows):
    """(distinct ids, the sum of the rows of each): sort the ids, sum each run with one
    np.add.reduceat: exact, and far faster than np.add.at for the rows of a window."""
    if ids.size == 0:
        return ids, rows[:0]
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    return sorted_ids[starts], np.add.reduceat(rows[order], starts, axis=0)


# --------------------------------------------------------------------------------------------
# Elman layer over a window: h_t = f(x_t W_x + h_{t-1} W_h + b).


def rnn_forward(x, h0, W_x, W_h, b, activation, keep=None):
    """x: (T, N, D), h0: (N, H) carried state, W_x: (D, H), W_h: (H, H), b: (H,),
    keep: (T, N, 1) 0/1 or None -> h: (T, N, H) hidden states, cache. The streams never mix
    through time, so the loop runs in one block of streams per core (parallel.by_streams: one
    hand-off per window).

    keep[t] = 0 resets a stream before step t: h_{t-1} is replaced by zero (a sentence starts
    from the zero state, docs/derivation.md "Sentence resets"); None: no resets."""
    T, N, D = x.shape
    H = W_h.shape[0]
    # the input projection of all T·N positions is one matrix product; the loop adds h_{t-1} W_h
    h = parallel.matmul(x.reshape(T * N, D), W_x).reshape(T, N, H)
    h += b

    def loop(s, e):  # streams s:e through the window
        rec = np.empty((e - s, H), dtype=h.dtype)  # h_{t-1} W_h, one buffer for every step
        prev = h0[s:e]
        for t in range(T):
            z = h[t, s:e]
            if keep is not None:
                prev = prev * keep[t, s:e]  # h_{t-1} → 0 where the stream resets             (R1)
            z += np.matmul(prev, W_h, out=rec)
            prev = activation_forward(z, activation)  # z_t becomes h_t in place

    parallel.by_streams(loop, N)
    return h, (x, h0, h, W_x, W_h, activation, keep)


def previous_states(h0, h, keep):
    """(the state before step 0, the states before steps 1..T-1) as the steps saw them: h0 and
    h[:-1], times keep where streams reset (R1). No copy when keep is None."""
    if keep is None:
        return h0, h[:-1]
    return h0 * keep[0], h[:-1] * keep[1:]


def rnn_backward(dh, cache, factored=False):
    """dh: (T, N, H) = ∂J/∂h_t from above (the output layer or the next layer), excluding the
    path through h_{t+1} -> dx: (T, N, D), dh0: (N, H), dW_x: (D, H), dW_h: (H, H), db: (H,)
    (factored=True: dW_x and dW_h as Outer, their products left unformed; dx by
    parallel.matmul_by_rows_of).

    One pass backwards in time accumulates every gradient (seed 003, §4): γ_t, the sum of the
    δ's that all later losses J(i), i ≥ t, send to z_t, obeys
        γ_t = f'(z_t) ∘ (dh_t + γ_{t+1} W_hᵀ)            (seed 003, eqs. 37/42)
    so no backward per J(t) is needed. dh0 = γ_1 W_hᵀ is returned for tests; the model drops it
    (truncation: the carried state gets no gradient). The loop runs by blocks of streams as in
    the forward, the weight gradients are products over all T·N positions split over the cores."""
    x, h0, h, W_x, W_h, activation, keep = cache
    T, N, D = x.shape
    H = W_h.shape[0]
    dz = activation_grad(h, activation)  # f'(z_t) for all t at once, then γ_t in place
    dnext = np.zeros_like(dz[0])  # γ_{t+1} W_hᵀ, zero after the window's last step
    W_hT = np.ascontiguousarray(W_h.T)  # a small product with a transposed view is 2-3x slower

    def loop(s, e):  # streams s:e backwards through the window
        total = np.empty((e - s, H), dtype=dz.dtype)  # dh_t + γ_{t+1} W_hᵀ, for every step
        nxt = dnext[s:e]
        for t in reversed(range(T)):
            g = dz[t, s:e]
            g *= np.add(dh[t, s:e], nxt, out=total)  # γ_t = f'(z_t) ∘ (dh_t + γ_{t+1} W_hᵀ)  (seed 002, eqs. 2 and 7)
            np.matmul(g, W_hT, out=nxt)  # ∇h_{t-1} = γ_t W_hᵀ                   (seed 002, eq. 5)
            if keep is not None:
                nxt *= keep[t, s:e]  # no gradient crosses a reset: h_{t-1} did not reach step t  (R2)

    parallel.by_streams(loop, N)
    prev0, prev = previous_states(h0, h, keep)
    dz2 = dz.reshape(T * N, H)
    if factored:
        dx = parallel.matmul_by_rows_of(dz2, W_x).reshape(T, N, D)
        states = np.concatenate((prev0[None], prev)).reshape(T * N, H)
        return dx, dnext, Outer(x.reshape(T * N, D), dz2, W_x.shape), Outer(states, dz2, W_h.shape), dz2.sum(axis=0)
    dW_x = parallel.matmul(x.reshape(T * N, D).T, dz2)  # ∇W_x = Σ_t x_tᵀ γ_t         (seed 003, eq. 40)
    dW_h = prev0.T @ dz[0]  # ∇W_h = Σ_t h_{t-1}ᵀ γ_t                 (seed 003, eq. 39; seed 002, eq. 3)
    if T > 1:
        dW_h += parallel.matmul(prev.reshape((T - 1) * N, H).T, dz[1:].reshape((T - 1) * N, H))
    db = dz2.sum(axis=0)  # ∇b = Σ_t γ_t                               (seed 003, eq. 41)
    dx = parallel.matmul(dz2, W_x.T).reshape(T, N, D)  # ∂J/∂x_t = γ_t W_xᵀ: the δ sent to the layer below (seed 003, eq. 30)
    return dx, dnext, dW_x, dW_h, db


# --------------------------------------------------------------------------------------------
# Scratch buffers


def buffer(workspace, name, shape, dtype):
    """A scratch array from the caller's `workspace` dict, reused across windows (a fresh array
    without one). Reuse matters: a (M, V) logits array is tens of MB, and glibc hands every
    allocation over 32 MB a fresh mmap whose pages fault in again on every window."""
    if workspace is None:
        return np.empty(shape, dtype)
    size = math.prod(shape)
    flat = workspace.get(name)
    if flat is None or flat.size < size or flat.dtype != dtype:
        flat = workspace[name] = np.empty(size, dtype)
    return flat[:size].reshape(shape)  # a shorter last window reuses the front of the buffer


# --------------------------------------------------------------------------------------------
# Affine layer: logits = h W + b over all M = T·N positions at once.


def affine_forward(h, W, b, out=None):
    """h: (M, H), W: (H, V), b: (V,) or None -> logits: (M, V) (into `out` if given), cache.
    The product is split over the cores (parallel.matmul); with b None the caller adds the bias
    (the loss does, in its own pass over the logits)."""
    logits = parallel.matmul(h, W, out)
    if b is not None:
        logits += b
    return logits, (h, W)


def affine_backward(dlogits, cache, out=None):
    """dlogits: (M, V) -> dh: (M, H), dW: (H, V), db: (V,); `out` optionally (dh, dW) buffers.
    ∇U = Σ_t h_tᵀ δ_o,t (seed 002, eq. 1) and δ_h = δ_o Uᵀ (seed 002, eq. 2, before f')."""
    h, W = cache
    dh_out, dW_out = out if out is not None else (None, None)
    dW = parallel.matmul(h.T, dlogits, dW_out)  # ∇U = Σ_t h_tᵀ δ_o,t
    ones = np.ones((1, h.shape[0]), dtype=dlogits.dtype)
    db = parallel.matmul(ones, dlogits)[0]  # ∇b = Σ_t δ_o,t
    dh = parallel.matmul_rows(dlogits, W.T, dh_out)  # δ_o Uᵀ
    return dh, dW, db


# --------------------------------------------------------------------------------------------
# Losses on top of the softmax. Both work in place on the logits (M, V), which are large, and
# return (sum of per-target losses, dlogits scaled by `scale`), dlogits reusing the logits' memory.
# The cross-entropy works through the rows in chunks small enough to stay in cache, on as many
# threads as there are cores (parallel.map_rows): every pass but the first then hits the cache.

CHUNK_ROWS = 16  # rows per chunk at least (a V = 10k softmax: 640 KB of float32, in cache)
CHUNK_ELEMENTS = CHUNK_ROWS * 10_000  # a narrow softmax (the class output's C) takes more rows a chunk


def softmax_cross_entropy(logits, targets, scale=1.0, need_grad=True, bias=None, row_loss=None):
    """logits: (M, V) (overwritten), targets: (M,) ints, bias: (V,) or None (added here if given)
    -> (Σ_t −log ŷ_t[target], dlogits or None). `row_loss` (M,) float64, if given, receives each
    row's −log ŷ_t[target] (what scoring reports per target).

    J_t = −log softmax(z)_k = log Σ_j e^{z_j} − z_k; ∂J_t/∂z = ŷ − y (seed 003, eq. 7), then
    scaled by `scale` (1/M for a mean loss).

    The usual shift by the row maximum costs two passes over the logits. It is only needed when
    e^z would overflow or underflow float32, so each chunk is first exponentiated unshifted into a
    scratch array; the rare chunk whose row sums come out infinite or tiny is done again, shifted,
    from its logits, which are still intact."""
    M, V = logits.shape
    if V == 1:  # one outcome: probability 1 exactly, no loss, no gradient (no rounding residue)
        logits[...] = 0.0
        if row_loss is not None:
            row_loss[...] = 0.0
        return 0.0, (logits if need_grad else None)

    chunk = max(CHUNK_ROWS, CHUNK_ELEMENTS // V)  # rows a chunk: the Python loop's cost is per chunk

    def rows(a, b):
        loss = 0.0
        scratch = np.empty((min(chunk, b - a), V), dtype=logits.dtype)
        with np.errstate(over="ignore", under="ignore"):
            for c in range(a, b, chunk):
                d = min(b, c + chunk)
                z, t, e = logits[c:d], targets[c:d], scratch[:d - c]
                if bias is not None:
                    z += bias
                idx = np.arange(d - c)
                picked = z[idx, t]  # z_k
                np.exp(z, out=e)
                sums = e.sum(axis=1)
                if not np.all((sums < 1e37) & (sums > 1e-30)):  # overflow or underflow: shift
                    shift = z.max(axis=1, keepdims=True)
                    np.exp(z - shift, out=e)
                    sums = e.sum(axis=1)
                    picked = picked - shift[:, 0]
                if row_loss is None:
                    loss += float(np.log(sums, dtype=np.float64).sum() - picked.sum(dtype=np.float64))
                else:
                    rows_out = row_loss[c:d]
                    np.subtract(np.log(sums, dtype=np.float64), picked, out=rows_out)
                    loss += float(rows_out.sum())
                if need_grad:
                    np.multiply(e, (scale / sums)[:, None], out=z)  # ŷ · scale
                    z[idx, t] -= scale  # (ŷ − y) · scale
        return loss

    loss = sum(parallel.map_rows(rows, M, V))
    return loss, (logits if need_grad else None)


def softmax_squared_error(logits, targets, scale=1.0, need_grad=True, bias=None):
    """logits: (M, V) (overwritten), targets: (M,) -> (Σ_t ½‖ŷ_t − y_t‖², dlogits or None).

    Seed 004's quadratic loss through the softmax: with g = ŷ − y, ∂J/∂o = g (seed 004, eq. 2),
    and the softmax Jacobian ∂ŷ_k/∂z_i = ŷ_k([i = k] − ŷ_i) (seed 004, eq. 3's ∂f_k/∂g_i) gives
    ∂J/∂z = ŷ ∘ (g − (g·ŷ)), the Jacobian applied without forming the (V, V) matrix."""
    if bias is not None:
        logits += bias
    rows = np.arange(targets.shape[0])
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)  # ŷ
    p_target = logits[rows, targets].astype(np.float64)
    sq = np.einsum("mv,mv->m", logits, logits, dtype=np.float64)  # ‖ŷ‖²
    loss = float(0.5 * np.sum(sq - 2.0 * p_target + 1.0))  # ½‖ŷ − y‖² = ½(‖ŷ‖² − 2ŷ_k + 1)
    if not need_grad:
        return loss, None
    g_dot_p = (sq - p_target).astype(logits.dtype)  # g·ŷ = ‖ŷ‖² − ŷ_k
    dlogits = logits * (logits - g_dot_p[:, None])  # ŷ ∘ (ŷ − (g·ŷ)), the y part added next
    dlogits[rows, targets] -= logits[rows, targets]  # ŷ ∘ (−y): only the target column
    if scale != 1.0:
        dlogits *= scale
    return loss, dlogits


LOSSES = {"cross_entropy": softmax_cross_entropy, "squared_error": softmax_squared_error}


def log_softmax(z):
    """z: (M, K) -> log softmax(z) of each row (a new array): (z − max) − log Σ e^{z − max}."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------------------------
# Sparse gradients the optimizer applies without densifying


class ColumnBlocks(NamedTuple):
    """An (H, V) (or (V,)) gradient that is zero but for the column ranges [start, stop) of the
    classes a window touched; the optimizer updates those columns only."""
    ranges: list
    blocks: list
    shape: tuple

    def dense(self):
        out = np.zeros(self.shape, dtype=self.blocks[0].dtype if self.blocks else np.float64)
        for (a, b), block in zip(self.ranges, self.blocks):
            out[..., a:b] = block
        return out


class RowBlocks(NamedTuple):
    """A (V, E) gradient that is zero but for the row ranges [start, stop) (ascending, disjoint),
    blocks[k] (stop − start, E): a tied embedding's gradient whose output use touched a few
    classes' columns of the word matrix (its rows here), its input use a few rows (tied_rows)."""
    ranges: list
    blocks: list
    shape: tuple

    def dense(self):
        out = np.zeros(self.shape, dtype=self.blocks[0].dtype if self.blocks else np.float64)
        for (a, b), block in zip(self.ranges, self.blocks):
            out[a:b] = block
        return out


def tied_rows(inputs, word):
    """The gradient of a tied embedding as RowBlocks, from its input use `inputs` (SparseRows)
    and its output use `word` (ColumnBlocks of the (E, V) word matrix, whose columns are the
    embedding's rows): each class's columns transposed, with the input rows that fall in it
    added, and every other input row a block of one row. Each entry is the sum the dense
    gradient has there (input + output, or either alone)."""
    starts = np.array([a for a, _ in word.ranges], dtype=np.int64)
    stops = np.array([b for _, b in word.ranges], dtype=np.int64)
    blocks = [np.ascontiguousarray(block.T) for block in word.blocks]
    k = np.searchsorted(starts, inputs.ids, side="right") - 1
    inside = (k >= 0) & (inputs.ids < stops[np.maximum(k, 0)]) if len(starts) else np.zeros(len(inputs.ids), bool)
    for i in np.flatnonzero(inside):
        blocks[k[i]][inputs.ids[i] - starts[k[i]]] += inputs.rows[i]
    pieces = [((int(a), int(b)), block) for (a, b), block in zip(word.ranges, blocks)]
    pieces += [((int(w), int(w) + 1), inputs.rows[i:i + 1]) for i, w in zip(np.flatnonzero(~inside),
                                                                          inputs.ids[~inside])]
    pieces.sort(key=lambda piece: piece[0][0])
    return RowBlocks([r for r, _ in pieces], [block for _, block in pieces], inputs.shape)


class Outer(NamedTuple):
    """A weight matrix's gradient as the product of two thin factors, leftᵀ · right, left (M, D),
    right (M, G), M = T·N positions: Σ_t x_tᵀ γ_t of a recurrent layer over a window. Kept
    factored, it is formed block by block where it is used (dynamic evaluation's update), never
    as a whole (D, G) array."""
    left: np.ndarray
    right: np.ndarray
    shape: tuple

    def dense(self):
        return self.left.T @ self.right
