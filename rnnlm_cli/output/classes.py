"""The class-based output layer (`model.output: class`; Mikolov et al. 2011): the words are
binned into C classes, each a contiguous range of ids [bounds[c], bounds[c+1]), and

    P(w | h) = P(c(w) | h) · P(w | c(w), h)
    P(c | h) = softmax(h · class_W + class_b)_c
    P(w | c, h) = softmax over the words of c of (h · W[:, c] + b[c])_w

exact and normalized. The loss is the cross-entropy J_t = −log P(c | h) − log P(w | c, h), so
its gradient is two softmax-minus-one-hot terms (seed 003, eq. 7), one over the C classes and
one over the words of the target's class only. Positions are grouped by their target's class,
and each group's word logits are one matrix product with that class's columns of W.

| key | shape | role |
| `output.W`, `output.b` | (H, V), (V,) | word logits; class c uses its columns only (W tieable) |
| `output.class_W` | (H, C) | hidden-to-class |
| `output.class_b` | (C,) | class bias |
| `output.class_bounds` | (C + 1,) int64 | class c = ids [bounds[c], bounds[c+1]); not trained |

The words are binned by train frequency (class_bounds), walking the vocabulary in its frequency
order, so that each class takes about 1/C of the unigram mass.
"""

from typing import NamedTuple

import numpy as np

from .. import layers, parallel
from ..errors import UserError

TIED = "output.W"
BOUNDS = "output.class_bounds"
BUFFERS = (BOUNDS,)
WORD_AXES = {"output.W": 1, "output.b": 0}  # the class arrays follow the classes, not the words
SPARSE_AXES = {"output.W": 1, "output.b": 0}  # a window's gradient: the columns of its targets' classes


def n_classes(model_cfg, vocab_size):
    """C: model.classes, or about √V; never more than V."""
    C = model_cfg.classes or int(round(np.sqrt(vocab_size)))
    return max(1, min(C, vocab_size))


def param_shapes(model_cfg, vocab_size):
    H, C = model_cfg.hidden_dim, n_classes(model_cfg, vocab_size)
    return {"output.W": (H, vocab_size), "output.b": (vocab_size,), "output.class_W": (H, C),
            "output.class_b": (C,), BOUNDS: (C + 1,)}


def check_buffers(arrays, vocab_size, source):
    """class_bounds: strictly increasing integers from 0 to V."""
    bounds = arrays[BOUNDS]
    if not np.issubdtype(bounds.dtype, np.integer) or bounds[0] != 0 or np.any(np.diff(bounds) <= 0):
        raise UserError(f"{source}: array '{BOUNDS}' must be strictly increasing integers from 0")
    if bounds[-1] != vocab_size:
        raise UserError(f"{source}: {BOUNDS} does not end at the vocabulary size {vocab_size}")


def init_array(key, shape, model_cfg, rng, dtype, counts=None):
    """Weights uniform in ±init_scale, biases zero; the class boundaries bin the words by their
    train frequencies `counts` (V,)."""
    if key == BOUNDS:
        return class_bounds(counts, shape[0] - 1)
    if key in ("output.b", "output.class_b"):
        return np.zeros(shape, dtype=dtype)
    return rng.uniform(-model_cfg.init_scale, model_cfg.init_scale, size=shape).astype(dtype)


def word_classes(bounds, ids):
    """The class of each word id: bounds (C + 1,) ascending with bounds[0] = 0."""
    return np.searchsorted(bounds, ids, side="right") - 1


def class_bounds(counts, n_classes):
    """Mikolov's frequency binning over the ids in order: class c ends where the cumulative
    unigram mass passes (c + 1)/C, nudged so that there are exactly min(C, V) non-empty classes.
    counts (V,) -> bounds (C + 1,) with bounds[0] = 0 and bounds[C] = V."""
    V = len(counts)
    C = max(1, min(n_classes, V))
    mass = np.cumsum(np.asarray(counts, np.float64) + 1.0)  # +1: unseen words still weigh something
    mass /= mass[-1]
    bounds = np.searchsorted(mass, np.arange(1, C) / C, side="right") + 1
    bounds = np.concatenate(([0], bounds, [V])).astype(np.int64)
    for c in range(1, C):  # strictly increasing from the left ...
        bounds[c] = max(bounds[c], bounds[c - 1] + 1)
    for c in range(C - 1, 0, -1):  # ... and leaving a word for every class on the right
        bounds[c] = min(bounds[c], bounds[c + 1] - 1)
    return bounds


def class_output_forward(h, W, b, class_W, class_b, bounds, targets, scale=1.0, need_grad=True, row_loss=None):
    """h: (M, H), W: (H, V), b: (V,), class_W: (H, C), class_b: (C,), bounds: (C + 1,),
    targets: (M,) -> (Σ_t −log P(target_t | h_t), cache for class_output_backward or None).

    The positions are sorted by their target's class; each class's rows of the sorted h are one
    product with its columns of W, written into one flat array of all the classes' logits, whose
    ragged rows get their softmax and cross-entropy in a few whole-array passes. The classes are
    cut into one contiguous run per core, balanced by their positions' work (n_c · |c|)."""
    cls = word_classes(bounds, targets)
    class_logits, _ = layers.affine_forward(h, class_W, None)
    loss, dclass = layers.softmax_cross_entropy(class_logits, cls, scale, need_grad, bias=class_b,
                                                row_loss=row_loss)  # −log P(c | h)
    order = np.argsort(cls, kind="stable")
    g = class_groups(cls[order], bounds, targets[order])
    hs = h[order]  # (M, H): the positions grouped by class
    logits = np.empty(g.offsets[-1], dtype=np.result_type(h, W))
    word_rows = None if row_loss is None else np.empty(int(g.rows_before[-1]))

    def forward(g0, g1):
        for k in range(g0, g1):
            a, z = g.words[k]
            block = logits[g.offsets[k]:g.offsets[k + 1]].reshape(-1, z - a)
            np.matmul(hs[g.rows[k][0]:g.rows[k][1]], W[:, a:z], out=block)
            block += b[a:z]
        return segment_cross_entropy(logits, g, g0, g1, scale, need_grad, word_rows)  # −log P(w | c, h)

    # as parallel.matmul: a thread for each MIN_BLOCK outputs times H/64 (none for a batch-1 window)
    parts = parallel.balanced_ranges(g.work, parallel.parts_for(int(g.offsets[-1]) * max(1, h.shape[1] // 64)))
    loss += sum(parallel.run([lambda g0=g0, g1=g1: forward(g0, g1) for g0, g1 in parts]))
    if row_loss is not None and len(word_rows):  # each group row back at its position
        row_loss[order[g.row_sorted]] += word_rows
    return loss, ((h, hs, order, W, class_W, dclass, logits, g, parts) if need_grad else None)


def class_output_backward(cache):
    """-> dh (M, H), dW (ColumnBlocks of (H, ·)), db (ColumnBlocks of (·,)), dclass_W (H, C),
    dclass_b (C,). Each part is an affine layer's backward (seed 002, eqs. 1-2), the classes'
    on the cores as in the forward."""
    h, hs, order, W, class_W, dclass, dlogits, g, parts = cache
    dh, dclass_W, dclass_b = layers.affine_backward(dclass, (h, class_W))
    dhs = np.zeros_like(hs)

    def backward(g0, g1):
        blocks = []
        for k in range(g0, g1):
            (a, z), (r0, r1) = g.words[k], g.rows[k]
            d = dlogits[g.offsets[k]:g.offsets[k + 1]].reshape(-1, z - a)
            blocks.append((hs[r0:r1].T @ d, d.sum(axis=0)))  # ∇W[:, c] = Σ h_tᵀ δ_t over the positions of c
            np.matmul(d, W[:, a:z].T, out=dhs[r0:r1])  # δ_h gets the word part too
        return blocks

    blocks = [pair for run in parallel.run([lambda g0=g0, g1=g1: backward(g0, g1) for g0, g1 in parts])
              for pair in run]
    dh[order] += dhs
    H, V = W.shape
    ranges = [tuple(r) for r in g.words]
    return (dh, layers.ColumnBlocks(ranges, [dW for dW, _ in blocks], (H, V)),
            layers.ColumnBlocks(ranges, [db for _, db in blocks], (V,)), dclass_W, dclass_b)


class Groups(NamedTuple):
    """The classes of a window's sorted positions, one-word classes left out (P(w | c) = 1:
    no loss, no gradient). Per group k: its words [a, z), its rows [r0, r1) of the sorted
    positions, the offset of its (r1 − r0, z − a) logits block in the flat array (offsets (K + 1,))
    and its work (r1 − r0)(z − a). Per row of all the groups, in order (R rows): where it starts in
    the flat array, its length, where its target's logit is and which of the sorted positions it
    is (row_sorted); rows_before[k] the rows of groups < k."""
    words: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    work: np.ndarray
    row_start: np.ndarray
    row_len: np.ndarray
    row_target: np.ndarray
    rows_before: np.ndarray
    row_sorted: np.ndarray


def class_groups(sorted_cls, bounds, sorted_targets):
    """Groups of the positions sorted by class: sorted_cls (M,), bounds (C + 1,), their
    targets (M,) in the same order."""
    # (few numpy calls: a batch-1 window of dynamic evaluation builds these for a handful of rows)
    M = len(sorted_cls)
    starts = np.empty(M, dtype=bool)
    starts[:1] = True
    np.not_equal(sorted_cls[1:], sorted_cls[:-1], out=starts[1:])
    first = np.flatnonzero(starts)  # where each class's run starts
    K, c = len(first), sorted_cls[first]
    rows = np.empty((K, 2), dtype=first.dtype)
    rows[:, 0] = first
    rows[:-1, 1] = first[1:]
    rows[K - 1:, 1] = M
    words = np.empty((K, 2), dtype=bounds.dtype)
    words[:, 0] = bounds[c]
    words[:, 1] = bounds[c + 1]
    width = words[:, 1] - words[:, 0]
    keep = width > 1
    if not keep.all():
        rows, words, width = rows[keep], words[keep], width[keep]
    n = rows[:, 1] - rows[:, 0]
    offsets = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(n * width, out=offsets[1:])
    rows_before = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(n, out=rows_before[1:])
    R = int(rows_before[-1])
    row_len = np.repeat(width, n)
    within = np.arange(R) - np.repeat(rows_before[:-1], n)  # row index inside its group
    row_start = np.repeat(offsets[:-1], n) + within * row_len
    sorted_row = np.repeat(rows[:, 0], n) + within  # the row of the sorted positions
    row_target = row_start + sorted_targets[sorted_row] - np.repeat(words[:, 0], n)
    return Groups(words, rows, offsets, n * width, row_start, row_len, row_target, rows_before, sorted_row)


def segment_cross_entropy(logits, g, g0, g1, scale, need_grad, row_out=None):
    """The softmax cross-entropy of the ragged rows of groups g0 … g1 − 1, which fill
    logits[g.offsets[g0]:g.offsets[g1]] (overwritten by (ŷ − y)·scale, seed 003 eq. 7, when
    need_grad) -> Σ over those rows of −log softmax(row)[target]. Exponentiated unshifted, then
    shifted by the row maxima only if a row's sum overflows or underflows (as layers.softmax_cross_entropy).
    `row_out` (all groups' rows,) float64, if given, receives each row's −log softmax[target]."""
    lo, rs = g.offsets[g0], slice(g.rows_before[g0], g.rows_before[g1])
    if g.offsets[g1] == lo:
        return 0.0
    z = logits[lo:g.offsets[g1]]
    starts, lengths, target = g.row_start[rs] - lo, g.row_len[rs], g.row_target[rs] - lo
    with np.errstate(over="ignore", under="ignore"):
        picked = z[target].astype(np.float64)
        e = np.exp(z)
        sums = np.add.reduceat(e, starts)
        if not np.all((sums < 1e37) & (sums > 1e-30)):  # overflow or underflow: shift by the row maxima
            shift = np.maximum.reduceat(z, starts)
            np.exp(z - np.repeat(shift, lengths), out=e)
            sums = np.add.reduceat(e, starts)
            picked -= shift
    if row_out is None:
        loss = float(np.log(sums, dtype=np.float64).sum() - picked.sum())
    else:
        per_row = row_out[rs]
        np.subtract(np.log(sums, dtype=np.float64), picked, out=per_row)
        loss = float(per_row.sum())
    if need_grad:
        np.multiply(e, np.repeat((scale / sums).astype(z.dtype), lengths), out=z)  # ŷ · scale
        z[target] -= scale  # (ŷ − y) · scale
    return loss


# --------------------------------------------------------------------------------------------
# The output-layer interface (see output/__init__.py)


def loss_forward(params, model_cfg, h, targets, scale, need_grad=True, workspace=None, row_loss=None):
    """h: (M, H), targets: (M,) -> (Σ_t −log P(target_t | h_t), cache or None). `row_loss` (M,)
    float64 receives each target's −log P, from the loss's own kernels."""
    return class_output_forward(h, params["output.W"], params["output.b"], params["output.class_W"],
                                params["output.class_b"], params[BOUNDS], targets, scale, need_grad, row_loss)


def loss_backward(cache, workspace=None):
    """-> dh (M, H), the gradients of output.W and output.b (ColumnBlocks: the touched classes'
    columns only), output.class_W and output.class_b."""
    dh, dW, db, dclass_W, dclass_b = class_output_backward(cache)
    return dh, {"output.W": dW, "output.b": db, "output.class_W": dclass_W, "output.class_b": dclass_b}


def touched(params, targets):
    """targets: (M,) -> {output.W, output.b: the columns (word ids) of the targets' classes},
    the columns their loss reads, ascending."""
    bounds = params[BOUNDS]
    cls = np.unique(word_classes(bounds, targets))
    cols = np.concatenate([np.arange(bounds[c], bounds[c + 1]) for c in cls]) if cls.size else np.empty(0, np.int64)
    return {"output.W": cols, "output.b": cols}


def _class_log_probs(params, h):
    return layers.log_softmax((h @ params["output.class_W"] + params["output.class_b"]).astype(np.float64))


def target_log_probs(params, h, targets, workspace=None):
    """h: (M, H), targets: (M,) -> log P(c(w) | h) + log P(w | c(w), h), (M,) float64: the
    positions grouped by their target's class as in training (one product with that class's
    columns each), the log-softmax of the ragged rows in float64."""
    bounds, W, b = params[BOUNDS], params["output.W"], params["output.b"]
    cls = word_classes(bounds, targets)
    out = _class_log_probs(params, h)[np.arange(h.shape[0]), cls]
    order = np.argsort(cls, kind="stable")
    g = class_groups(cls[order], bounds, targets[order])
    hs = h[order]
    z = np.empty(g.offsets[-1])
    for k, ((a, e), (r0, r1)) in enumerate(zip(g.words, g.rows)):
        z[g.offsets[k]:g.offsets[k + 1]] = (hs[r0:r1] @ W[:, a:e] + b[a:e]).astype(np.float64).reshape(-1)
    if z.size:
        shift = np.maximum.reduceat(z, g.row_start)
        log_sums = np.log(np.add.reduceat(np.exp(z - np.repeat(shift, g.row_len)), g.row_start)) + shift
        out[order[g.row_sorted]] += z[g.row_target] - log_sums
    return out


def log_probs(params, h):
    """h: (M, H) -> log P(w | h) of every word, (M, V) float64: log P(c) + log P(w | c)."""
    logits = (h @ params["output.W"] + params["output.b"]).astype(np.float64)
    class_logp = _class_log_probs(params, h)
    bounds = params[BOUNDS]
    for c in range(len(bounds) - 1):
        a, z = bounds[c], bounds[c + 1]
        logits[:, a:z] = layers.log_softmax(logits[:, a:z]) + class_logp[:, c:c + 1]
    return logits
