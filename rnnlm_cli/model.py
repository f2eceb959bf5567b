"""The language model: embedding -> L Elman layers -> affine -> softmax -> loss (SPEC's math).

Parameters live in one flat dict keyed as SPEC's `weights.npz` (`embedding`, `rnn.{l}.W_x`,
`rnn.{l}.W_h`, `rnn.{l}.b`, `output.W`, `output.b`); gradients come back in a dict with the same
keys. The carried state is an array (L, N, H): one (N, H) block per layer.

Public inputs and targets are (N, T) as the data loader yields them; inside, everything is
time-major (T, N, ·) so that one time step is a contiguous block.
"""

import numpy as np

from . import layers

DTYPES = {"float32": np.float32, "float64": np.float64}


def param_shapes(model_cfg, vocab_size):
    """{key: shape} of every parameter, in SPEC's names."""
    E, H, V = model_cfg.embedding_dim, model_cfg.hidden_dim, vocab_size
    shapes = {"embedding": (V, E)}
    for l in range(model_cfg.layers):
        shapes[f"rnn.{l}.W_x"] = (E if l == 0 else H, H)
        shapes[f"rnn.{l}.W_h"] = (H, H)
        shapes[f"rnn.{l}.b"] = (H,)
    shapes["output.W"] = (H, V)
    shapes["output.b"] = (V,)
    return shapes


def init_params(model_cfg, vocab_size, seed, dtype="float32"):
    """Embedding and output.W uniform in ±init_scale (as pytorch/examples); the recurrent
    layers uniform in ±1/√H (as torch.nn.RNN); output.b zero."""
    rng = np.random.default_rng(seed)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    rnn_scale = 1.0 / np.sqrt(model_cfg.hidden_dim)
    params = {}
    for key, shape in param_shapes(model_cfg, vocab_size).items():
        if key == "output.b":
            params[key] = np.zeros(shape, dtype=dtype)
            continue
        scale = rnn_scale if key.startswith("rnn.") else model_cfg.init_scale
        params[key] = rng.uniform(-scale, scale, size=shape).astype(dtype)
    return params


def init_state(model_cfg, batch_size, dtype="float32"):
    """The zero state (L, N, H) a stream starts from."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    return np.zeros((model_cfg.layers, batch_size, model_cfg.hidden_dim), dtype=dtype)


def hidden_forward(params, model_cfg, ids, state):
    """ids: (T, N) ints, state: (L, N, H) -> top hidden states (T, N, H), new state, caches."""
    x, emb_cache = layers.embedding_forward(ids, params["embedding"])
    rnn_caches = []
    new_state = np.empty_like(state)
    for l in range(model_cfg.layers):
        x, cache = layers.rnn_forward(x, state[l], params[f"rnn.{l}.W_x"], params[f"rnn.{l}.W_h"],
                                      params[f"rnn.{l}.b"], model_cfg.activation)
        new_state[l] = x[-1]
        rnn_caches.append(cache)
    return x, new_state, (emb_cache, rnn_caches)


def buffer(workspace, name, shape, dtype):
    """A scratch array from the caller's `workspace` dict, reused across windows (a fresh array
    without one). Reuse matters: a (M, V) logits array is tens of MB, and glibc hands every
    allocation over 32 MB a fresh mmap whose pages fault in again on every window."""
    if workspace is None:
        return np.empty(shape, dtype)
    size = int(np.prod(shape))
    flat = workspace.get(name)
    if flat is None or flat.size < size or flat.dtype != dtype:
        flat = workspace[name] = np.empty(size, dtype)
    return flat[:size].reshape(shape)  # a shorter last window reuses the front of the buffer


def forward(params, model_cfg, inputs, targets, state, need_grad=True, workspace=None):
    """inputs, targets: (N, T) ints; state: (L, N, H) carried from the previous window
    -> (loss, new_state, cache).

    loss is the mean per-target loss over the N·T targets (SPEC: J = 1/T Σ_t J(t), averaged over
    the streams too). cache is None when need_grad is False (evaluation). With a `workspace`
    dict the big arrays live in it and are overwritten by the next call."""
    N, T = inputs.shape
    top, new_state, caches = hidden_forward(params, model_cfg, inputs.T, state)
    H, V = params["output.W"].shape
    M = T * N
    logits = buffer(workspace, "logits", (M, V), params["output.W"].dtype)
    logits, out_cache = layers.affine_forward(top.reshape(M, H), params["output.W"], None, out=logits)
    loss_sum, dlogits = layers.LOSSES[model_cfg.loss](logits, targets.T.reshape(-1), 1.0 / M, need_grad,
                                                      bias=params["output.b"])  # bias added in the loss's pass
    cache = (caches, out_cache, dlogits, model_cfg.layers) if need_grad else None
    return loss_sum / M, new_state, cache


def backward(cache, workspace=None, sparse_embedding=False):
    """The gradient of the window's mean loss for every parameter, in one pass backwards over
    the window (seed 003's accumulated-γ form, see layers.rnn_backward). No gradient flows into
    the carried state: it is a constant of this window (truncated BPTT).

    sparse_embedding=True returns the embedding's gradient as layers.SparseRows (the rows of the
    words in the window), which optim applies without touching the other rows."""
    (emb_cache, rnn_caches), out_cache, dlogits, L = cache
    grads = {}
    h, W = out_cache
    out = (buffer(workspace, "dtop", h.shape, h.dtype), buffer(workspace, "dW", W.shape, W.dtype))
    dtop, grads["output.W"], grads["output.b"] = layers.affine_backward(dlogits, out_cache, out)
    T, N, H = rnn_caches[-1][2].shape
    dx = dtop.reshape(T, N, H)
    for l in reversed(range(L)):
        dx, _dh0, grads[f"rnn.{l}.W_x"], grads[f"rnn.{l}.W_h"], grads[f"rnn.{l}.b"] = \
            layers.rnn_backward(dx, rnn_caches[l])
    grads["embedding"] = layers.embedding_backward(dx, emb_cache, sparse=sparse_embedding)
    return grads


def loss_and_grads(params, model_cfg, inputs, targets, state):
    """One window: (mean loss, grads, new state)."""
    loss, new_state, cache = forward(params, model_cfg, inputs, targets, state)
    return loss, backward(cache), new_state


def step_probs(params, model_cfg, ids, state, temperature=1.0):
    """One time step for sampling. ids: (N,) -> probabilities (N, V) of the next word, new state."""
    top, new_state, _ = hidden_forward(params, model_cfg, ids[None, :], state)
    logits, _ = layers.affine_forward(top[0], params["output.W"], params["output.b"])
    logits = logits.astype(np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, new_state
