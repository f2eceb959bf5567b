"""The full softmax output layer (`model.output: softmax`):

    logits_t = h_t · output.W + output.b,   ŷ_t = softmax(logits_t)
    cross_entropy: J_t = −log ŷ_t[w_{t+1}]         squared_error: J_t = ½‖ŷ_t − onehot(w_{t+1})‖²

| key | shape | role |
| `output.W` | (H, V) | hidden-to-output (tied: the embedding transposed, not stored) |
| `output.b` | (V,) | output bias |

The (M, V) logits of a window are one matrix product over all M = T·N positions, split over the
cores (layers.affine_forward); the loss works on them in place (layers.LOSSES).
"""

import types

import numpy as np

from .. import layers

TIED = "output.W"
BUFFERS = ()
WORD_AXES = {"output.W": 1, "output.b": 0}
SPARSE_AXES = {}  # every logit has a gradient: output.W and output.b are dense
CROSS_ENTROPY = types.SimpleNamespace(loss="cross_entropy")  # what log-probabilities are defined by


def param_shapes(model_cfg, vocab_size):
    return {"output.W": (model_cfg.hidden_dim, vocab_size), "output.b": (vocab_size,)}


def check_buffers(arrays, vocab_size, source):
    pass  # no buffers


def init_array(key, shape, model_cfg, rng, dtype, counts=None):
    """output.W uniform in ±init_scale (as pytorch/examples), output.b zero."""
    if key == "output.b":
        return np.zeros(shape, dtype=dtype)
    return rng.uniform(-model_cfg.init_scale, model_cfg.init_scale, size=shape).astype(dtype)


def loss_forward(params, model_cfg, h, targets, scale, need_grad=True, workspace=None, row_loss=None):
    """h: (M, H), targets: (M,) -> (Σ_t J_t, cache or None). The logits live in the workspace's
    "logits" buffer; the loss adds the bias in its own pass over them. `row_loss` (M,) float64
    receives each J_t (cross-entropy only)."""
    W = params["output.W"]
    logits = layers.buffer(workspace, "logits", (h.shape[0], W.shape[1]), W.dtype)
    logits, affine_cache = layers.affine_forward(h, W, None, out=logits)
    loss = layers.LOSSES[model_cfg.loss]
    extra = {} if row_loss is None else {"row_loss": row_loss}
    loss_sum, dlogits = loss(logits, targets, scale, need_grad, bias=params["output.b"], **extra)
    return loss_sum, ((affine_cache, dlogits) if need_grad else None)


def loss_backward(cache, workspace=None):
    """-> dh (M, H), {output.W: dW (H, V), output.b: db (V,)} (seed 002, eqs. 1-2)."""
    affine_cache, dlogits = cache
    h, W = affine_cache
    out = (layers.buffer(workspace, "dtop", h.shape, h.dtype), layers.buffer(workspace, "dW", W.shape, W.dtype))
    dh, dW, db = layers.affine_backward(dlogits, affine_cache, out)
    return dh, {"output.W": dW, "output.b": db}


def touched(params, targets):
    """No sparse arrays: nothing to list."""
    return {}


def target_log_probs(params, h, targets, workspace=None):
    """h: (M, H), targets: (M,) -> log P(target_t | h_t), (M,) float64: the cross-entropy
    kernel's own per-row −J_t (so per-target figures sum to what eval reports), whatever loss the
    model was trained with."""
    rows = np.empty(h.shape[0])
    loss_forward(params, CROSS_ENTROPY, h, targets, 1.0, False, workspace, rows)
    return np.negative(rows, out=rows)


def log_probs(params, h):
    """h: (M, H) -> log P(w | h_t) of every word, (M, V) float64."""
    return layers.log_softmax((h @ params["output.W"] + params["output.b"]).astype(np.float64))
