"""The regularizers of training (docs/regularization.md; AWD-LSTM, Merity et al. 2017): where dropout acts
and how its masks are drawn, word-type embedding dropout, DropConnect on W_h ("weight drop"),
activation regularization (AR), temporal activation regularization (TAR) and weight decay.
Evaluation, scoring and sampling never drop anything: they get no masks.

Masks. Every random mask of a window is drawn here, at once, from the run's generator, for the
whole batch of N streams, in one fixed order: the dropout masks in the order the forward pass
meets them (the embedding output, between layers, before the output layer), then the embedding
rows, then each layer's W_h. A data-parallel process takes its block of streams of the
per-stream masks and the shared ones whole (`stream_block`), so K processes use exactly the
masks of one. A place whose probability is 0 draws nothing, so a config without the new keys
draws exactly what it drew before they existed (its weights are bit-identical).

    mask name      shape              kept entries scaled by 1/(1 − p)
    "input"        (T, N, E)          the embedding output            (locked: (1, N, E))
    "between.{l}"  (T, N, H)          layer l's output, l < L − 1     (locked: (1, N, H))
    "output"       (T, N, H)          the top layer's output          (locked: (1, N, H))
    "embedding"    (V,)               row w of the embedding, for the input lookup only
    "weight.{l}"   (H, G·H)           rnn.{l}.W_h, shared by every stream and step

A mask array holds m / (1 − p) (0 or the scale), ready to multiply. Every backward formula is
derived in docs/derivation.md, "Regularizers" (A·), and checked in tests/test_regularize.py.
"""

import numpy as np

from . import layers, parallel
from .layers import ColumnBlocks, SparseRows

PER_STREAM = ("input", "between", "output")


def dropout_probs(model_cfg):
    """{"input": p, "between": p, "output": p}: model.dropout is the default of the first two."""
    p = model_cfg.dropout
    return {"input": p if model_cfg.dropout_input is None else model_cfg.dropout_input,
            "between": p if model_cfg.dropout_between is None else model_cfg.dropout_between,
            "output": p}


def is_random(model_cfg):
    """Whether training draws any mask (the run's generator is then needed every window)."""
    return (any(p > 0 for p in dropout_probs(model_cfg).values()) or model_cfg.dropout_embedding > 0
            or model_cfg.weight_drop > 0)


def _keep_scaled(rng, shape, p, dtype, workspace=None, name=None):
    """m / (1 − p) with m ~ Bernoulli(1 − p) per entry: the same draw and test as
    gated.dropout_forward, so masks of configs from before this module are unchanged. With a
    `workspace` dict the mask is written into an array kept there under `name` (a W_h mask is
    MBs a window)."""
    scaled = layers.buffer(workspace, f"mask.{name}", shape, dtype)
    keep = layers.buffer(workspace, "mask.keep", shape, np.bool_)
    rng.random(dtype=dtype, out=scaled)  # the same numbers as rng.random(shape, dtype)
    np.greater_equal(scaled, p, out=keep)  # P(keep) = 1 − p                                    (D1)
    return np.multiply(keep, dtype.type(1.0 / (1.0 - p)), out=scaled)  # 0 or exactly the scale


def draw_masks(rng, model_cfg, T, N, V, dtype, workspace=None):
    """Every mask of one window of T steps and N streams (the whole batch), or None when the
    config drops nothing -> {name: scaled mask} (names and shapes in the module docstring).
    `workspace`: a dict kept across windows where the W_h masks are written (the masks of a
    window are used up by its backward pass before the next window draws)."""
    if not is_random(model_cfg):
        return None
    dtype = np.dtype(dtype)
    E, H, L = model_cfg.embedding_dim, model_cfg.hidden_dim, model_cfg.layers
    probs = dropout_probs(model_cfg)
    steps = 1 if model_cfg.dropout_locked else T  # locked: one mask per stream for the window
    masks = {}
    places = [("input", probs["input"], E)] + [(f"between.{l}", probs["between"], H) for l in range(L - 1)]
    places.append(("output", probs["output"], H))
    for name, p, width in places:
        if p > 0:
            masks[name] = _keep_scaled(rng, (steps, N, width), p, dtype)
    if model_cfg.dropout_embedding > 0:
        masks["embedding"] = _keep_scaled(rng, (V,), model_cfg.dropout_embedding, dtype)
    if model_cfg.weight_drop > 0:
        G = {"elman": 1, "lstm": 4, "gru": 3}[model_cfg.cell] * H
        for l in range(L):
            masks[f"weight.{l}"] = _keep_scaled(rng, (H, G), model_cfg.weight_drop, dtype, workspace, f"weight.{l}")
    return masks


def stream_block(masks, start, stop):
    """The masks of streams start:stop (a data-parallel process's block): the per-stream masks
    cut on their stream axis, the shared ones (embedding rows, W_h entries) whole."""
    if masks is None:
        return None
    return {name: (m[:, start:stop] if name.split(".")[0] in PER_STREAM else m) for name, m in masks.items()}


# --------------------------------------------------------------------------------------------
# Dropout with a given mask: out = x ∘ s, s = m / (1 − p) (D1); locked masks (1, N, D) broadcast
# over the window's T steps (Gal & Ghahramani's variational dropout).


def dropout_forward(x, mask):
    """x: (T, N, D), mask: (T, N, D) or (1, N, D) or None -> out, cache (the mask)."""
    if mask is None:
        return x, None
    return x * mask, mask  # out = x ∘ m / (1 − p)                                         (D1)


def dropout_backward(dout, mask):
    """∂J/∂x = dout ∘ m / (1 − p): the same mask, whatever its broadcast (D3)."""
    return dout if mask is None else dout * mask  #                                          (D3)


# --------------------------------------------------------------------------------------------
# Embedding dropout (word-type): x_t = e_{w_t} ∘ s_{w_t}, s (V,) one scalar per word id.


def embedding_scales(ids, mask):
    """ids: (T, N), mask: (V,) -> (T, N, 1): the scale of each position's word (0 if dropped)."""
    return mask[ids][:, :, None]


# --------------------------------------------------------------------------------------------
# Weight drop (DropConnect on W_h): the layer runs with W̃_h = W_h ∘ S, S (H, G·H) the scaled mask;
# ∂J/∂W_h = ∂J/∂W̃_h ∘ S (A2), as each entry of W_h reaches J only through its entry of W̃_h.


def dropped_weights(params, masks, n_layers, workspace=None):
    """params with each rnn.{l}.W_h replaced by W_h ∘ S_l where a mask is drawn (a new dict;
    the caller's arrays are not changed; the products in `workspace`'s arrays when given)."""
    if not masks or "weight.0" not in masks:
        return params
    out = dict(params)
    for l in range(n_layers):
        W_h = params[f"rnn.{l}.W_h"]
        into = layers.buffer(workspace, f"dropped.{l}.W_h", W_h.shape, W_h.dtype)
        out[f"rnn.{l}.W_h"] = np.multiply(W_h, masks[f"weight.{l}"], out=into)  # W̃_h = W_h ∘ S  (A2)
    return out


def undrop_weight_grads(grads, masks, l):
    """∂J/∂W_h = ∂J/∂W̃_h ∘ S for layer l, in place, when the window drops W_h's entries (A2)."""
    if masks and f"weight.{l}" in masks:
        grads[f"rnn.{l}.W_h"] *= masks[f"weight.{l}"]  #                                      (A2)


# --------------------------------------------------------------------------------------------
# AR and TAR (Merity et al. 2017). With `scale` = 1 / (T · N) for the whole batch's N streams:
#   AR  = α · mean((m ∘ h)²)           = α · scale / H · Σ (m ∘ h)²                         (A3)
#   TAR = β · mean((h_t − h_{t−1})²)   = β · scale · T / ((T − 1) H) · Σ_{t≥1} (h_t − h_{t−1})²  (A4)
# over every position and unit of the window (t from the window's second step for TAR).


def activation_penalty(dropped, raw, ar, tar, scale):
    """dropped: the top layer's output after its dropout (T, N, H), raw: before it -> (the
    penalty AR + TAR of these streams, the coefficients (c_ar, c_tar) its backward needs)."""
    T, _, H = raw.shape
    c_ar = ar * scale / H
    c_tar = tar * scale * T / ((T - 1) * H) if T > 1 else 0.0
    value = 0.0
    if c_ar:
        value += c_ar * float(np.vdot(dropped, dropped))
    if c_tar:
        diff = raw[1:] - raw[:-1]
        value += c_tar * float(np.vdot(diff, diff))
    return value, (c_ar, c_tar)


def ar_backward(ddropped, dropped, c_ar):
    """∂(AR)/∂(m ∘ h) = 2 c_ar · (m ∘ h), added to ddropped in place (A3)."""
    if c_ar:
        ddropped += dropped.dtype.type(2 * c_ar) * dropped  #                                (A3)
    return ddropped


def tar_backward(draw, raw, c_tar):
    """∂(TAR)/∂h_t = 2 c_tar · ((h_t − h_{t−1}) − (h_{t+1} − h_t)), the first term for t ≥ 1
    and the second for t ≤ T − 2 (the window's ends have one neighbour), added in place (A4)."""
    if c_tar:
        diff = raw[1:] - raw[:-1]
        diff *= raw.dtype.type(2 * c_tar)
        draw[1:] += diff  #                                                                     (A4)
        draw[:-1] -= diff
    return draw


# --------------------------------------------------------------------------------------------
# Weight decay: g ← g + λ θ for every trained array, every step (PyTorch SGD's weight_decay).

def add_weight_decay(grads, params, weight_decay, workspace=None):
    """{key: g + λ θ} (A5). A dense gradient is changed in place (the optimizer consumes it
    anyway). A sparse one (layers.SparseRows: the embedding rows or hsm nodes of a window's
    words; ColumnBlocks: the class output's columns) becomes dense: every row decays every step,
    touched or not, exactly as a dense L2 term asks; it is built in a `workspace` array (kept
    across windows) as λθ with the sparse entries added, which is the same sum, entry by entry,
    as adding λθ to the densified gradient."""
    out = {}
    for key, g in grads.items():
        theta = params[key]
        decay = theta.dtype.type(weight_decay)
        flat_theta = theta.reshape(-1)
        if isinstance(g, (SparseRows, ColumnBlocks)):
            dense = layers.buffer(workspace, f"decay.{key}", theta.shape, theta.dtype)
            flat = dense.reshape(-1)
            parallel.map_rows(lambda a, b: np.multiply(flat_theta[a:b], decay, out=flat[a:b]), theta.size, 1)
            _add_sparse(dense, g)  # λθ + g: touched entries get the gradient's value added  (A5)
            g = dense
        elif g.flags.c_contiguous and theta.flags.c_contiguous:
            def axpy(a, b, tmp, g=g.reshape(-1)):
                np.multiply(flat_theta[a:b], decay, out=tmp)
                g[a:b] += tmp  # ∇(J + λ/2 ‖θ‖²) = g + λθ                                      (A5)
            parallel.each_chunk(theta.size, axpy, theta.dtype)
        else:  # a strided view (gradcheck's arrays): the plain expression
            g += decay * theta  #                                                               (A5)
        out[key] = g
    return out


def _add_sparse(dense, g):
    """dense += g for a sparse gradient (its rows or column blocks are disjoint)."""
    if isinstance(g, SparseRows):
        dense[g.ids] += g.rows.astype(dense.dtype, copy=False)
    else:
        for (a, b), block in zip(g.ranges, g.blocks):
            dense[..., a:b] += block


