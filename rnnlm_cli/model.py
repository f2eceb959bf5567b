"""The language model: embedding -> L recurrent layers (Elman, LSTM or GRU) -> affine ->
softmax -> loss (SPEC's math, and the gated cells of the README).

Parameters live in one flat dict keyed as SPEC's `weights.npz` (`embedding`, `rnn.{l}.W_x`,
`rnn.{l}.W_h`, `rnn.{l}.b` (GRU: `rnn.{l}.b_x`, `rnn.{l}.b_h`), `output.W`, `output.b`);
gradients come back in a dict with the same keys. With tied weights there is no `output.W`:
the output layer uses `embedding` transposed, and its gradient sums both uses.

The carried state is one array: (L, N, H) for Elman and GRU, (L, 2, N, H) for LSTM ([h, c]).
Public inputs and targets are (N, T) as the data loader yields them; inside, everything is
time-major (T, N, ·) so that one time step is a contiguous block.

Dropout (Zaremba et al. 2014) acts on the non-recurrent connections only: the embedding output,
between layers, and before the output layer. It is on when `forward` gets a `dropout_rng`
(training) and off otherwise (evaluation, sampling).
"""

import numpy as np

from . import gated, layers

DTYPES = {"float32": np.float32, "float64": np.float64}
GATES = {"elman": 1, "lstm": 4, "gru": 3}


def param_shapes(model_cfg, vocab_size):
    """{key: shape} of every parameter, in SPEC's names (gates concatenated on the last axis)."""
    E, H, V = model_cfg.embedding_dim, model_cfg.hidden_dim, vocab_size
    G = GATES[model_cfg.cell] * H
    shapes = {"embedding": (V, E)}
    for l in range(model_cfg.layers):
        shapes[f"rnn.{l}.W_x"] = (E if l == 0 else H, G)
        shapes[f"rnn.{l}.W_h"] = (H, G)
        if model_cfg.cell == "gru":
            shapes[f"rnn.{l}.b_x"] = (G,)
            shapes[f"rnn.{l}.b_h"] = (G,)
        else:
            shapes[f"rnn.{l}.b"] = (G,)
    if not model_cfg.tie_weights:
        shapes["output.W"] = (H, V)
    shapes["output.b"] = (V,)
    if model_cfg.output == "class":
        C = n_classes(model_cfg, V)
        shapes["output.class_W"] = (H, C)
        shapes["output.class_b"] = (C,)
        shapes["output.class_bounds"] = (C + 1,)  # int64, not trained: class c = ids [bounds[c], bounds[c+1])
    return shapes


def n_classes(model_cfg, vocab_size):
    """C: model.classes, or about √V; never more than V."""
    C = model_cfg.classes or int(round(np.sqrt(vocab_size)))
    return max(1, min(C, vocab_size))


def trainable(params):
    """The keys that have gradients (all but the class boundaries)."""
    return [k for k in params if k != "output.class_bounds"]


def init_params(model_cfg, vocab_size, seed, dtype="float32", counts=None):
    """init `torch`: embedding and output.W uniform in ±init_scale (as pytorch/examples), the
    recurrent layers uniform in ±1/√H (as torch.nn.RNN/LSTM/GRU); `uniform`: every weight in
    ±init_scale (Zaremba et al.). output.b zero; LSTM forget-gate biases set to forget_bias.
    `counts` (V,), the train frequency of each id, bins the words of a class output layer."""
    rng = np.random.default_rng(seed)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    H = model_cfg.hidden_dim
    rnn_scale = 1.0 / np.sqrt(H) if model_cfg.init == "torch" else model_cfg.init_scale
    params = {}
    for key, shape in param_shapes(model_cfg, vocab_size).items():
        if key == "output.class_bounds":  # class output: bin the words by train frequency
            counts = np.ones(vocab_size) if counts is None else counts
            params[key] = layers.class_bounds(counts, shape[0] - 1)
            continue
        if key in ("output.b", "output.class_b"):
            params[key] = np.zeros(shape, dtype=dtype)
            continue
        scale = rnn_scale if key.startswith("rnn.") else model_cfg.init_scale
        params[key] = rng.uniform(-scale, scale, size=shape).astype(dtype)
        if model_cfg.cell == "lstm" and key.endswith(".b"):
            params[key][H:2 * H] = model_cfg.forget_bias  # gate order (i, f, g, o)
    return params


def output_weight(params):
    """(H, V): output.W, or the tied embedding transposed (a view, no copy)."""
    return params["output.W"] if "output.W" in params else params["embedding"].T


def init_state(model_cfg, batch_size, dtype="float32"):
    """The zero state a stream starts from: (L, N, H), or (L, 2, N, H) for LSTM."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    per_layer = (2,) if model_cfg.cell == "lstm" else ()
    return np.zeros((model_cfg.layers, *per_layer, batch_size, model_cfg.hidden_dim), dtype=dtype)


def _layer_forward(cell, x, state, params, l, activation):
    """One recurrent layer over the window -> (h (T, N, H), its new state, cache)."""
    p = f"rnn.{l}."
    if cell == "elman":
        h, cache = layers.rnn_forward(x, state, params[p + "W_x"], params[p + "W_h"], params[p + "b"], activation)
        return h, h[-1], cache
    if cell == "lstm":
        h, c_last, cache = gated.lstm_forward(x, state[0], state[1], params[p + "W_x"], params[p + "W_h"],
                                              params[p + "b"])
        return h, np.stack((h[-1], c_last)), cache
    h, cache = gated.gru_forward(x, state, params[p + "W_x"], params[p + "W_h"], params[p + "b_x"], params[p + "b_h"])
    return h, h[-1], cache


def _layer_backward(cell, dh, cache, grads, l):
    """Fill the layer's gradients into grads; return dx for the layer below. The gradient for
    the carried state (dh0, dc0) is dropped: truncated BPTT."""
    p = f"rnn.{l}."
    if cell == "elman":
        dx, _, grads[p + "W_x"], grads[p + "W_h"], grads[p + "b"] = layers.rnn_backward(dh, cache)
    elif cell == "lstm":
        dx, _, _, grads[p + "W_x"], grads[p + "W_h"], grads[p + "b"] = gated.lstm_backward(dh, cache)
    else:
        dx, _, grads[p + "W_x"], grads[p + "W_h"], grads[p + "b_x"], grads[p + "b_h"] = gated.gru_backward(dh, cache)
    return dx


def _dropout(x, p, rng, caches):
    """Inverted dropout when training (rng given); caches collects its masks for backward."""
    if rng is None or p == 0.0:
        caches.append(None)
        return x
    out, cache = gated.dropout_forward(x, p, rng)
    caches.append(cache)
    return out


def hidden_forward(params, model_cfg, ids, state, dropout_rng=None):
    """ids: (T, N) ints, state: carried state -> top hidden states (T, N, H) (after dropout),
    new state, caches."""
    x, emb_cache = layers.embedding_forward(ids, params["embedding"])
    drop_caches, layer_caches = [], []
    x = _dropout(x, model_cfg.dropout, dropout_rng, drop_caches)
    new_state = np.empty_like(state)
    for l in range(model_cfg.layers):
        x, new_state[l], cache = _layer_forward(model_cfg.cell, x, state[l], params, l, model_cfg.activation)
        layer_caches.append(cache)
        x = _dropout(x, model_cfg.dropout, dropout_rng, drop_caches)
    return x, new_state, (emb_cache, layer_caches, drop_caches)


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


def forward(params, model_cfg, inputs, targets, state, need_grad=True, workspace=None, dropout_rng=None):
    """inputs, targets: (N, T) ints; state: carried from the previous window -> (loss, new_state,
    cache).

    loss is the mean per-target loss over the N·T targets (SPEC: J = 1/T Σ_t J(t), averaged over
    the streams too). cache is None when need_grad is False (evaluation). With a `workspace`
    dict the big arrays live in it and are overwritten by the next call. `dropout_rng` (a numpy
    Generator) turns dropout on."""
    N, T = inputs.shape
    top, new_state, caches = hidden_forward(params, model_cfg, inputs.T, state, dropout_rng)
    W = output_weight(params)
    H, V = W.shape
    M = T * N
    if model_cfg.output == "class":
        loss_sum, out_cache = layers.class_output_forward(
            top.reshape(M, H), W, params["output.b"], params["output.class_W"], params["output.class_b"],
            params["output.class_bounds"], targets.T.reshape(-1), 1.0 / M, need_grad)
        cache = (caches, out_cache, None, model_cfg) if need_grad else None
        return loss_sum / M, new_state, cache
    logits = buffer(workspace, "logits", (M, V), W.dtype)
    logits, out_cache = layers.affine_forward(top.reshape(M, H), W, None, out=logits)
    loss_sum, dlogits = layers.LOSSES[model_cfg.loss](logits, targets.T.reshape(-1), 1.0 / M, need_grad,
                                                      bias=params["output.b"])  # bias added in the loss's pass
    cache = (caches, out_cache, dlogits, model_cfg) if need_grad else None
    return loss_sum / M, new_state, cache


def backward(cache, workspace=None, sparse_embedding=False):
    """The gradient of the window's mean loss for every parameter, in one pass backwards over
    the window (seed 003's accumulated-γ form, see layers.rnn_backward). No gradient flows into
    the carried state: it is a constant of this window (truncated BPTT).

    sparse_embedding=True returns the embedding's gradient as layers.SparseRows (the rows of the
    words in the window), which optim applies without touching the other rows (untied only)."""
    (emb_cache, layer_caches, drop_caches), out_cache, dlogits, model_cfg = cache
    grads = {}
    tied = model_cfg.tie_weights
    if model_cfg.output == "class":
        dtop, dW, grads["output.b"], grads["output.class_W"], grads["output.class_b"] = \
            layers.class_output_backward(out_cache)
        if tied:
            dW = dW.dense()
    else:
        h, W = out_cache
        out = (buffer(workspace, "dtop", h.shape, h.dtype), None if tied else buffer(workspace, "dW", W.shape, W.dtype))
        dtop, dW, grads["output.b"] = layers.affine_backward(dlogits, out_cache, out)
    T, N = emb_cache[0].shape
    dx = dtop.reshape(T, N, dtop.shape[1])
    for l in reversed(range(model_cfg.layers)):
        dx = _undrop(dx, drop_caches[l + 1])
        dx = _layer_backward(model_cfg.cell, dx, layer_caches[l], grads, l)
    dx = _undrop(dx, drop_caches[0])
    if tied:  # both uses of the one array: the input lookup (scatter) and the output layer (dW ᵀ)
        grads["embedding"] = layers.embedding_backward(dx, emb_cache)
        grads["embedding"] += dW.T
    else:
        grads["output.W"] = dW
        grads["embedding"] = layers.embedding_backward(dx, emb_cache, sparse=sparse_embedding)
    return grads


def _undrop(dx, cache):
    return dx if cache is None else gated.dropout_backward(dx, cache)


def loss_and_grads(params, model_cfg, inputs, targets, state, dropout_rng=None):
    """One window: (mean loss, grads, new state)."""
    loss, new_state, cache = forward(params, model_cfg, inputs, targets, state, dropout_rng=dropout_rng)
    return loss, backward(cache), new_state


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def output_log_probs(params, model_cfg, h):
    """h: (N, H) -> log P(w | h) of every word, (N, V) in float64, for either output layer."""
    logits = (h @ output_weight(params) + params["output.b"]).astype(np.float64)
    if model_cfg.output != "class":
        return _log_softmax(logits)
    class_logp = _log_softmax((h @ params["output.class_W"] + params["output.class_b"]).astype(np.float64))
    bounds = params["output.class_bounds"]
    for c in range(len(bounds) - 1):  # log P(w) = log P(c) + log P(w | c)
        a, z = bounds[c], bounds[c + 1]
        logits[:, a:z] = _log_softmax(logits[:, a:z]) + class_logp[:, c:c + 1]
    return logits


def step_probs(params, model_cfg, ids, state, temperature=1.0):
    """One time step for sampling. ids: (N,) -> probabilities (N, V) of the next word, sharpened
    by the temperature (p^(1/τ), renormalized), and the new state."""
    top, new_state, _ = hidden_forward(params, model_cfg, ids[None, :], state)
    logp = output_log_probs(params, model_cfg, top[0]) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    probs = np.exp(logp)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, new_state
