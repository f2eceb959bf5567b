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

import numpy as np

from .. import layers
from ..errors import UserError

TIED = "output.W"
BOUNDS = "output.class_bounds"
BUFFERS = (BOUNDS,)
WORD_AXES = {"output.W": 1, "output.b": 0}  # the class arrays follow the classes, not the words


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
    `row_loss` (M,) float64 receives each −log P(target_t | h_t)."""
    M = h.shape[0]
    cls = word_classes(bounds, targets)
    class_logits, _ = layers.affine_forward(h, class_W, None)
    loss, dclass = layers.softmax_cross_entropy(class_logits, cls, scale, need_grad, bias=class_b,
                                                row_loss=row_loss)  # −log P(c | h)
    order = np.argsort(cls, kind="stable")
    group_starts = np.flatnonzero(np.concatenate(([True], cls[order][1:] != cls[order][:-1])))
    groups = []
    for g0, g1 in zip(group_starts, np.append(group_starts[1:], M)):
        pos = order[g0:g1]  # the positions whose target is in class c
        c = cls[pos[0]]
        a, z = bounds[c], bounds[c + 1]
        if z - a == 1:
            continue  # a one-word class: P(w | c, h) = 1, no loss and no gradient
        hc = h[pos]
        logits = hc @ W[:, a:z]
        word_rows = None if row_loss is None else np.empty(len(pos))
        word_loss, dlogits = layers.softmax_cross_entropy(logits, targets[pos] - a, scale, need_grad, bias=b[a:z],
                                                          row_loss=word_rows)
        loss += word_loss  # −log P(w | c, h)
        if row_loss is not None:
            row_loss[pos] += word_rows
        groups.append((pos, a, z, hc, dlogits))
    return loss, ((h, W, class_W, dclass, groups) if need_grad else None)


def class_output_backward(cache):
    """-> dh (M, H), dW (ColumnBlocks of (H, ·)), db (ColumnBlocks of (·,)), dclass_W (H, C),
    dclass_b (C,). Each part is an affine layer's backward (seed 002, eqs. 1-2)."""
    h, W, class_W, dclass, groups = cache
    dh, dclass_W, dclass_b = layers.affine_backward(dclass, (h, class_W))
    ranges, dW_blocks, db_blocks = [], [], []
    for pos, a, z, hc, dlogits in groups:
        ranges.append((a, z))
        dW_blocks.append(hc.T @ dlogits)  # ∇W[:, c] = Σ h_tᵀ δ_t over the positions of class c
        db_blocks.append(dlogits.sum(axis=0))
        dh[pos] += dlogits @ W[:, a:z].T  # δ_h gets the word part too
    H, V = W.shape
    return (dh, layers.ColumnBlocks(ranges, dW_blocks, (H, V)), layers.ColumnBlocks(ranges, db_blocks, (V,)),
            dclass_W, dclass_b)


# --------------------------------------------------------------------------------------------
# The output-layer interface (see output/__init__.py)


def loss_forward(params, model_cfg, h, targets, scale, need_grad=True, workspace=None, row_loss=None):
    """h: (M, H), targets: (M,) -> (Σ_t −log P(target_t | h_t), cache or None)."""
    return class_output_forward(h, params["output.W"], params["output.b"], params["output.class_W"],
                                params["output.class_b"], params[BOUNDS], targets, scale, need_grad, row_loss)


def loss_backward(cache, workspace=None):
    """-> dh (M, H), the gradients of output.W and output.b (ColumnBlocks: the touched classes'
    columns only), output.class_W and output.class_b."""
    dh, dW, db, dclass_W, dclass_b = class_output_backward(cache)
    return dh, {"output.W": dW, "output.b": db, "output.class_W": dclass_W, "output.class_b": dclass_b}


def _class_log_probs(params, h):
    return layers.log_softmax((h @ params["output.class_W"] + params["output.class_b"]).astype(np.float64))


def target_log_probs(params, h, targets, workspace=None):
    """h: (M, H), targets: (M,) -> log P(c(w) | h) + log P(w | c(w), h), (M,) float64, from the
    loss's own kernels (per-row −J_t)."""
    rows = np.empty(h.shape[0])
    loss_forward(params, None, h, targets, 1.0, False, workspace, rows)
    return np.negative(rows, out=rows)


def log_probs(params, h):
    """h: (M, H) -> log P(w | h) of every word, (M, V) float64: log P(c) + log P(w | c)."""
    logits = (h @ params["output.W"] + params["output.b"]).astype(np.float64)
    class_logp = _class_log_probs(params, h)
    bounds = params[BOUNDS]
    for c in range(len(bounds) - 1):
        a, z = bounds[c], bounds[c + 1]
        logits[:, a:z] = layers.log_softmax(logits[:, a:z]) + class_logp[:, c:c + 1]
    return logits
