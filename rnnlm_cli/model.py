"""The language model: embedding -> L recurrent layers (Elman, LSTM or GRU) -> an output layer
(full softmax or another kind of `output/`) -> loss; the math is in docs/model-directory.md.

Parameters live in one flat dict keyed as `weights.npz` (`embedding`, `rnn.{l}.W_x`,
`rnn.{l}.W_h`, `rnn.{l}.b` (GRU: `rnn.{l}.b_x`, `rnn.{l}.b_h`), then the output layer's
`output.*` arrays); gradients come back in a dict with the same keys (but for the output layer's
buffers, which are not trained). With tied weights the output layer's word matrix is `embedding`
transposed (not stored), and the embedding's gradient sums both uses.

The carried state is one array: (L, N, H) for Elman and GRU, (L, 2, N, H) for LSTM ([h, c]).
Public inputs and targets are (N, T) as the data loader yields them; inside, everything is
time-major (T, N, ·) so that one time step is a contiguous block.

Dropout (Zaremba et al. 2014) acts on the non-recurrent connections only: the embedding output,
between layers, and before the output layer; the other regularizers (regularize.py) drop
embedding rows and W_h entries and add AR/TAR. They act when `forward` gets `masks` (training)
and never otherwise (evaluation, scoring, sampling).
"""

import numpy as np

from . import gated, layers, output, regularize

DTYPES = {"float32": np.float32, "float64": np.float64}
GATES = {"elman": 1, "lstm": 4, "gru": 3}


def param_shapes(model_cfg, vocab_size):
    """{key: shape} of every array of weights.npz, in its order (gates concatenated on the last
    axis), the output layer's last."""
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
    shapes.update(output.param_shapes(model_cfg, V))
    return shapes


def trainable(params, model_cfg):
    """The keys that have gradients: all but the output layer's buffers."""
    buffers = output.buffers(model_cfg)
    return [k for k in params if k not in buffers]


def parameter_counts(params, model_cfg):
    """{key: (shape, entries, trained)} of a parameter dict, in its order; the total number of
    trained parameters is the sum of the entries marked trained (buffers are not)."""
    trained = set(trainable(params, model_cfg))
    return {k: (tuple(v.shape), int(v.size), k in trained) for k, v in params.items()}


def init_params(model_cfg, vocab_size, seed, dtype="float32", counts=None):
    """init `torch`: embedding uniform in ±init_scale (as pytorch/examples), the recurrent layers
    uniform in ±1/√H (as torch.nn.RNN/LSTM/GRU); `uniform`: every weight in ±init_scale (Zaremba
    et al.). LSTM forget-gate biases set to forget_bias. The output layer initializes its own
    arrays (weights ±init_scale, biases zero), from the same generator, after these; `counts`
    (V,), the train frequency of each id, is for output layers built from frequencies."""
    rng = np.random.default_rng(seed)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    H = model_cfg.hidden_dim
    rnn_scale = 1.0 / np.sqrt(H) if model_cfg.init == "torch" else model_cfg.init_scale
    params = {}
    for key, shape in param_shapes(model_cfg, vocab_size).items():
        if key.startswith("output."):
            continue
        scale = rnn_scale if key.startswith("rnn.") else model_cfg.init_scale
        params[key] = rng.uniform(-scale, scale, size=shape).astype(dtype)
        if model_cfg.cell == "lstm" and key.endswith(".b"):
            params[key][H:2 * H] = model_cfg.forget_bias  # gate order (i, f, g, o)
    params.update(output.init_params(model_cfg, vocab_size, rng, dtype, counts))
    return params


def transfer_vocab(old_params, new_params, model_cfg, old_ids, new_ids):
    """Parameters for a new vocabulary that keep what a model of another vocabulary learned:
    `new_params` (initialized for the new vocabulary) with the recurrent layers of `old_params`
    whole and, for the words both share (old id old_ids[i] is new id new_ids[i]), their slices
    of every word-indexed array: the embedding's rows and the output layer's word arrays
    (output.word_axes). The output layer's other arrays (classes, built from the new
    frequencies) stay as initialized."""
    axes = {"embedding": 0, **output.word_axes(model_cfg)}
    own = set(output.param_shapes(model_cfg, len(new_params["embedding"])))
    old_ids, new_ids = np.asarray(old_ids, np.intp), np.asarray(new_ids, np.intp)
    params = {}
    for key, value in new_params.items():
        if key in axes:
            value = value.copy()
            index = [slice(None)] * value.ndim
            index[axes[key]] = new_ids
            value[tuple(index)] = np.take(old_params[key], old_ids, axis=axes[key])
        elif key not in own:  # the recurrent layers do not depend on the vocabulary
            value = old_params[key].copy()
        params[key] = value
    return params


def init_state(model_cfg, batch_size, dtype="float32"):
    """The zero state a stream starts from: (L, N, H), or (L, 2, N, H) for LSTM."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    per_layer = (2,) if model_cfg.cell == "lstm" else ()
    return np.zeros((model_cfg.layers, *per_layer, batch_size, model_cfg.hidden_dim), dtype=dtype)


def _layer_forward(cell, x, state, params, l, activation, keep=None):
    """One recurrent layer over the window -> (h (T, N, H), its new state, cache)."""
    p = f"rnn.{l}."
    if cell == "elman":
        h, cache = layers.rnn_forward(x, state, params[p + "W_x"], params[p + "W_h"], params[p + "b"], activation,
                                      keep)
        return h, h[-1], cache
    if cell == "lstm":
        h, c_last, cache = gated.lstm_forward(x, state[0], state[1], params[p + "W_x"], params[p + "W_h"],
                                              params[p + "b"], keep)
        return h, np.stack((h[-1], c_last)), cache
    h, cache = gated.gru_forward(x, state, params[p + "W_x"], params[p + "W_h"], params[p + "b_x"], params[p + "b_h"],
                                 keep)
    return h, h[-1], cache


def _layer_backward(cell, dh, cache, grads, l, factored=False):
    """Fill the layer's gradients into grads; return dx for the layer below. The gradient for
    the carried state (dh0, dc0) is dropped: truncated BPTT. factored: W_x's and W_h's as
    layers.Outer."""
    p = f"rnn.{l}."
    options = {"factored": True} if factored else {}
    if cell == "elman":
        dx, _, grads[p + "W_x"], grads[p + "W_h"], grads[p + "b"] = layers.rnn_backward(dh, cache, **options)
    elif cell == "lstm":
        dx, _, _, grads[p + "W_x"], grads[p + "W_h"], grads[p + "b"] = gated.lstm_backward(dh, cache, **options)
    else:
        dx, _, grads[p + "W_x"], grads[p + "W_h"], grads[p + "b_x"], grads[p + "b_h"] = gated.gru_backward(
            dh, cache, **options)
    return dx


def reset_mask(ids, reset_at, dtype):
    """keep (T, N, 1): 0 where ids (T, N) is the token `reset_at` (the state is replaced by zero
    before reading it: every sentence starts from <eos> and the zero state), else 1; None when
    reset_at is None (no resets)."""
    if reset_at is None:
        return None
    return (ids != reset_at).astype(dtype)[:, :, None]


def hidden_forward(params, model_cfg, ids, state, masks=None, reset_at=None, workspace=None):
    """ids: (T, N) ints, state: carried state -> top hidden states (T, N, H) (after dropout),
    new state, caches. `masks` (regularize.draw_masks, training only) drops what they say:
    dropout after the embedding, between layers and before the output, embedding rows, W_h
    entries. `reset_at` (a token id, <eos>) resets each layer's state (an LSTM's cell too)
    before every step that reads it."""
    masks = masks or {}
    x, emb_cache = layers.embedding_forward(ids, params["embedding"])
    emb_scale = None
    if "embedding" in masks:  # word-type dropout: row w scaled by s_w, the same at every position
        emb_scale = regularize.embedding_scales(ids, masks["embedding"])
        x *= emb_scale
    keep = reset_mask(ids, reset_at, x.dtype)
    run_params = regularize.dropped_weights(params, masks, model_cfg.layers, workspace)
    drop_masks, layer_caches = [masks.get("input")], []
    x = regularize.dropout_forward(x, drop_masks[0])[0]
    new_state = np.empty_like(state)
    for l in range(model_cfg.layers):
        x, new_state[l], cache = _layer_forward(model_cfg.cell, x, state[l], run_params, l, model_cfg.activation,
                                                keep)
        layer_caches.append(cache)
        raw = x
        drop_masks.append(masks.get("output" if l == model_cfg.layers - 1 else f"between.{l}"))
        x = regularize.dropout_forward(x, drop_masks[-1])[0]
    return x, new_state, (emb_cache, layer_caches, drop_masks, emb_scale, masks, raw)


def forward(params, model_cfg, inputs, targets, state, need_grad=True, workspace=None, masks=None,
            reset_at=None, row_loss=None, scale=None, ar=0.0, tar=0.0, top_states=None):
    """inputs, targets: (N, T) ints; state: carried from the previous window -> (loss, new_state,
    cache).

    loss is the mean per-target loss over the N·T targets (J = 1/T Σ_t J(t), averaged over the
    streams too). cache is None when need_grad is False (evaluation). With a `workspace` dict
    the big arrays live in it and are overwritten by the next call. `masks`
    (regularize.draw_masks) turn the regularizers' dropping on; `ar`, `tar` add AR and TAR to
    the objective that backward differentiates (not to the returned loss: see penalty());
    `reset_at` (the <eos> id) resets the state at every sentence
    start (hidden_forward). `row_loss` (N, T) float64, if given, receives each target's loss
    (cross-entropy: −log P(target | history)). `scale` replaces the gradient's
    1/(N·T) (a data-parallel run holds part of the streams and divides by the whole window's
    target count). `top_states` (N, T, H), if given, receives the top layer's states (what
    predicts each target: the neural cache's keys)."""
    N, T = inputs.shape
    top, new_state, caches = hidden_forward(params, model_cfg, inputs.T, state, masks, reset_at, workspace)
    if top_states is not None:
        top_states[...] = top.transpose(1, 0, 2)
    M = T * N
    scale = 1.0 / M if scale is None else scale
    rows = None if row_loss is None else np.empty(M)  # time-major, as the positions are
    loss_sum, out_cache = output.loss_forward(params, model_cfg, top.reshape(M, top.shape[2]),
                                              targets.T.reshape(-1), scale, need_grad, workspace, rows)
    if row_loss is not None:
        row_loss[...] = rows.reshape(T, N).T
    reg = regularize.activation_penalty(top, caches[-1], ar, tar, scale) if (ar or tar) and need_grad else None
    cache = (caches, out_cache, model_cfg, top, reg) if need_grad else None
    return loss_sum / M, new_state, cache


def penalty(cache):
    """The AR + TAR term of the objective a forward with need_grad added (0.0 without them):
    objective = loss + penalty(cache); logs and perplexities use the loss alone."""
    return 0.0 if cache[4] is None else cache[4][0]


def backward(cache, workspace=None, sparse_embedding=False, sparse_tied=False, factored=False, ready=None):
    """The gradient of the window's mean loss for every parameter, in one pass backwards over
    the window (seed 003's accumulated-γ form, see layers.rnn_backward). No gradient flows into
    the carried state: it is a constant of this window (truncated BPTT).

    sparse_embedding=True returns the embedding's gradient as layers.SparseRows (the rows of the
    words in the window), which optim applies without touching the other rows (untied only).
    sparse_tied=True returns a tied embedding's gradient as layers.RowBlocks when the output
    layer's is sparse (the class output's columns): the rows of the window's inputs and of its
    targets' classes. factored=True returns the recurrent layers' W_x and W_h gradients as
    layers.Outer (not formed) and takes each layer's γ W_xᵀ in the layout that is faster for a
    few positions (parallel.matmul_by_rows_of). Dynamic evaluation asks for both; training for
    neither (their sums differ from the dense arrays' in rounding, e.g. in the global norm).
    `ready([(key, gradient), ...])`, when given, is handed each gradient as soon as it is final
    (the output layer's, then each recurrent layer's from the top down; the embedding's comes
    with the result), so that a data-parallel run sums it while the rest is computed."""
    (emb_cache, layer_caches, drop_masks, emb_scale, masks, raw), out_cache, model_cfg, top, reg = cache
    if factored and masks:
        raise ValueError("factored gradients are for evaluation: not with the regularizers' masks")
    dtop, grads = output.loss_backward(model_cfg, out_cache, workspace)
    c_ar, c_tar = (0.0, 0.0) if reg is None else reg[1]
    # the word matrix's gradient joins the embedding's (tied), or goes last beside it: the order
    # of `grads` is the order the global gradient norm is summed in
    word_key = output.word_matrix_key(model_cfg)
    dW = grads.pop(word_key, None)
    if ready:  # a tied word matrix's gradient joins the embedding's: not final yet
        ready(list(grads.items()) + ([(word_key, dW)] if dW is not None and not model_cfg.tie_weights else []))
    T, N = emb_cache[0].shape
    dx = regularize.ar_backward(dtop.reshape(T, N, dtop.shape[1]), top, c_ar)  # ∂/∂(m ∘ h) of J + AR
    for l in reversed(range(model_cfg.layers)):
        dx = regularize.dropout_backward(dx, drop_masks[l + 1])
        if l == model_cfg.layers - 1:
            dx = regularize.tar_backward(dx, raw, c_tar)
        dx = _layer_backward(model_cfg.cell, dx, layer_caches[l], grads, l, factored)
        regularize.undrop_weight_grads(grads, masks, l)  # layer l's W_h gradient is final here (A2)
        if ready:
            ready([(k, g) for k, g in grads.items() if k.startswith(f"rnn.{l}.")])
    dx = regularize.dropout_backward(dx, drop_masks[0])
    if emb_scale is not None:  # ∂J/∂e_w = Σ over w's positions of s_w · ∂J/∂x_t             (A1)
        dx = dx * emb_scale
    if model_cfg.tie_weights:  # both uses of the one array: the input lookup (scatter) and dWᵀ
        if sparse_tied and isinstance(dW, layers.ColumnBlocks):
            grads["embedding"] = layers.tied_rows(layers.embedding_backward(dx, emb_cache, sparse=True), dW)
        else:
            out = None if workspace is None else layers.buffer(workspace, "d_embedding", emb_cache[1], dx.dtype)
            grads["embedding"] = d_embedding = layers.embedding_backward(dx, emb_cache, out=out)
            if isinstance(dW, layers.ColumnBlocks):  # the touched classes' columns: their rows only
                for (a, b), block in zip(dW.ranges, dW.blocks):
                    d_embedding[a:b] += block.T
            else:
                d_embedding += dW.T
    else:
        if dW is not None:
            grads[word_key] = dW
        grads["embedding"] = layers.embedding_backward(dx, emb_cache, sparse=sparse_embedding)
    return grads


def loss_and_grads(params, model_cfg, inputs, targets, state, masks=None, reset_at=None, ar=0.0, tar=0.0):
    """One window: (mean loss, grads, new state)."""
    loss, new_state, cache = forward(params, model_cfg, inputs, targets, state, masks=masks, reset_at=reset_at,
                                     ar=ar, tar=tar)
    return loss, backward(cache), new_state


def output_log_probs(params, model_cfg, h):
    """h: (N, H) -> log P(w | h) of every word, (N, V) in float64, for any output layer."""
    return output.log_probs(params, model_cfg, h)


def step_probs(params, model_cfg, ids, state, temperature=1.0, reset_at=None):
    """One time step for sampling. ids: (N,) -> probabilities (N, V) of the next word, sharpened
    by the temperature (p^(1/τ), renormalized), and the new state."""
    top, new_state, _ = hidden_forward(params, model_cfg, ids[None, :], state, reset_at=reset_at)
    logp = output_log_probs(params, model_cfg, top[0]) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    probs = np.exp(logp)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, new_state
