"""Updates of a `params` dict from a `grads` dict with the same keys, in place.

Optimizer state is a flat dict of arrays (`adam.m.<key>`, `adam.v.<key>`, `adam.t`) so that it
saves into a checkpoint `.npz` like the parameters do.
"""

import numpy as np

from . import parallel
from .layers import ColumnBlocks, SparseRows


def _values(g):
    """The stored arrays of a gradient: [the array], a SparseRows' rows, a ColumnBlocks' blocks."""
    if isinstance(g, SparseRows):
        return [g.rows]
    if isinstance(g, ColumnBlocks):
        return g.blocks
    return [g]


def global_norm(grads):
    """‖g‖ over every gradient array together, accumulated in float64."""
    return float(np.sqrt(sum(float(np.vdot(v, v)) for g in grads.values() for v in _values(g))))


def clip_factor(norm, max_norm):
    """The factor max_norm/‖g‖ that clipping multiplies the gradients by (1 when ‖g‖ ≤ max_norm
    or max_norm is None)."""
    return max_norm / (norm + 1e-6) if max_norm is not None and norm > max_norm else 1.0


def sgd_update(params, grads, lr):
    """θ ← θ − lr · ∇θJ, in place (the gradient is scaled where it lies: no temporary the size of
    the array), the dense arrays and the column blocks split over the cores."""
    for key, g in grads.items():
        p = params[key]
        if isinstance(g, SparseRows):
            p[g.ids] -= lr * g.rows  # ids are distinct: a plain fancy-index update
        elif isinstance(g, ColumnBlocks):
            _each_block(g, lambda a, b, block: _sgd_step(p[..., a:b], block, lr))
        else:
            _blocks(lambda a, b: _sgd_step(p.reshape(-1)[a:b], g.reshape(-1)[a:b], lr), p.size)


def _sgd_step(p, g, lr):
    g *= -lr
    p += g


def _each_block(g, fn):
    """fn(start, stop, block) for every column block of a ColumnBlocks gradient, the blocks cut
    into runs of about equal size, one per core."""
    def blocks(i, j):
        for (a, b), block in zip(g.ranges[i:j], g.blocks[i:j]):
            fn(a, b, block)
    sizes = [block.size for block in g.blocks]
    parallel.run([lambda i=i, j=j: blocks(i, j) for i, j in parallel.balanced_ranges(sizes, parallel.workers())])


def adam_init(params):
    """Zero moments for every array of `params` (the trained ones: model.trainable) and t = 0."""
    state = {"adam.t": np.zeros((), dtype=np.int64)}
    for key, p in params.items():
        state[f"adam.m.{key}"] = np.zeros_like(p)
        state[f"adam.v.{key}"] = np.zeros_like(p)
    return state


def adam_update(params, grads, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, lazy=False):
    """Adam (Kingma & Ba 2015) with bias correction, exactly, but without materializing a sparse
    gradient: the moments of every entry decay, and only the rows (or class columns) a window
    touched receive gradient; all of it in place and split over the cores.

    lazy=True is the lazy variant for sparse gradients (PyTorch's SparseAdam, TensorFlow's
    LazyAdam): a sparse gradient's rows (or column blocks) alone have their moments decayed and
    updated and their weights moved, as if the others had no step; dense gradients as Adam."""
    state["adam.t"] += 1
    t = int(state["adam.t"])
    step = lr * np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    for key, g in grads.items():
        p, m, v = params[key], state[f"adam.m.{key}"], state[f"adam.v.{key}"]
        if lazy and isinstance(g, SparseRows):
            m_rows, v_rows = m[g.ids], v[g.ids]
            _moments(m_rows, v_rows, g.rows, beta1, beta2)
            m[g.ids], v[g.ids] = m_rows, v_rows
            p_rows = p[g.ids]
            _adam_step(p_rows, m_rows, v_rows, step, eps)
            p[g.ids] = p_rows
            continue
        if lazy and isinstance(g, ColumnBlocks):
            _each_block(g, lambda a, b, block, p=p, m=m, v=v: _lazy_block(
                p[..., a:b], m[..., a:b], v[..., a:b], block, beta1, beta2, step, eps))
            continue
        if isinstance(g, SparseRows):
            _decay(m, v, beta1, beta2)
            m[g.ids] += (1.0 - beta1) * g.rows
            v[g.ids] += (1.0 - beta2) * (g.rows * g.rows)
        elif isinstance(g, ColumnBlocks):
            _decay(m, v, beta1, beta2)

            def moments(a, b, block, m=m, v=v):
                m[..., a:b] += (1.0 - beta1) * block
                v[..., a:b] += (1.0 - beta2) * (block * block)
            _each_block(g, moments)
        else:
            _blocks(lambda a, b: _moments(m.reshape(-1)[a:b], v.reshape(-1)[a:b], g.reshape(-1)[a:b],
                                          beta1, beta2), p.size)
        _blocks(lambda a, b: _adam_step(p.reshape(-1)[a:b], m.reshape(-1)[a:b], v.reshape(-1)[a:b], step, eps),
                p.size)


def _lazy_block(p, m, v, g, beta1, beta2, step, eps):
    """Adam's moment and weight updates on one block of columns (views: updated in place)."""
    _moments(m, v, g, beta1, beta2)
    _adam_step(p, m, v, step, eps)


def _blocks(fn, n):
    parallel.map_rows(fn, n, 1)


def _decay(m, v, beta1, beta2):
    def block(a, b):
        m.reshape(-1)[a:b] *= beta1
        v.reshape(-1)[a:b] *= beta2
    _blocks(block, m.size)


def _moments(m, v, g, beta1, beta2):
    """m ← β1 m + (1 − β1) g,  v ← β2 v + (1 − β2) g²  (in place)."""
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)


def _adam_step(p, m, v, step, eps):
    """p ← p − step · m / (√v + ε)  (in place, one scratch array)."""
    tmp = np.sqrt(v)
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= step
    p -= tmp


def init_state(name, params):
    """The optimizer state of `name` for the trained arrays `params` (SGD keeps none)."""
    return adam_init(params) if name in ("adam", "lazy_adam") else {}


def update(name, params, grads, state, lr, train_cfg, grad_scale=1.0):
    """One step of the named optimizer with the gradients times grad_scale (the clip factor):
    for SGD folded into the rate, so clipping costs no pass over the gradients."""
    if name == "sgd":
        sgd_update(params, grads, lr * grad_scale)
        return
    if grad_scale != 1.0:
        for g in grads.values():
            for v in _values(g):
                v *= grad_scale
    adam_update(params, grads, state, lr, train_cfg.adam_beta1, train_cfg.adam_beta2, train_cfg.adam_eps,
                lazy=name == "lazy_adam")
