"""Output layers: from the top hidden state h (M, H) to the loss and the probabilities of words.

Each kind is one module of this package, registered in KINDS under its `model.output` name.
A kind module provides, as plain functions (shapes: M positions, H hidden size, V vocabulary):

    TIED                         the key of its (H, V) word matrix that `model.tie_weights`
                                 replaces by embedding transposed (None: cannot be tied)
    param_shapes(model_cfg, V)   {key: shape} of its arrays, buffers included, in weights.npz
                                 order; every key starts with `output.`
    BUFFERS                      the keys of its arrays that are not trained (no gradient)
    WORD_AXES                    {key: axis} of its arrays indexed by word id along that axis
                                 (fine-tuning with another vocabulary copies the shared words'
                                 slices of these; every other array is initialized afresh)
    check_buffers(arrays, V, source)   validate the buffers read from a file (UserError)
    init_array(key, shape, model_cfg, rng, dtype, counts)  -> the initial array of one key;
                                 random ones drawn from `rng` (called in key order); `counts`
                                 (V,) are the train frequencies (for frequency-built kinds)
    loss_forward(params, model_cfg, h, targets, scale, need_grad, workspace, row_loss)
                                 -> (Σ of per-target losses, cache or None); the loss's gradient
                                 is scaled by `scale` (1/M for a mean); `row_loss` (M,) float64,
                                 if given, receives each target's loss (cross-entropy)
    loss_backward(cache, workspace)  -> (dh (M, H), {key: gradient}) for its trained keys
    target_log_probs(params, h, targets, workspace)
                                 -> (M,) float64 log P(target | h): eval, score, mixing
    log_probs(params, h)         -> (M, V) float64 log P(w | h) of every word: sampling
    SPARSE_AXES                  {key: axis} of its trained arrays whose gradient is sparse along
                                 that axis (layers.SparseRows: rows; ColumnBlocks: columns)
    touched(params, targets)     -> {key: distinct ids along SPARSE_AXES[key]}: the slices of
                                 those arrays that the loss of `targets` (M,) reads (and gives a
                                 gradient to); dynamic evaluation's lazy decay brings them up to
                                 date before the forward pass

`params` here is the kind's own view: its arrays, with the tied matrix already resolved (see
`layer_params`). Adding a kind means adding its module and a line in KINDS (and its name to
config.py's choices); nothing else in the package names a kind or its arrays.
"""

import numpy as np

from . import classes, hsm, softmax

KINDS = {"softmax": softmax, "class": classes, "hsm": hsm}


def kind(model_cfg):
    """The module of the configured output layer."""
    return KINDS[model_cfg.output]


def param_shapes(model_cfg, vocab_size):
    """{key: shape} of the output layer's arrays as weights.npz holds them (a tied matrix is not
    stored: it is the embedding)."""
    k = kind(model_cfg)
    shapes = k.param_shapes(model_cfg, vocab_size)
    if model_cfg.tie_weights:
        shapes.pop(k.TIED)
    return shapes


def buffers(model_cfg):
    """The keys of arrays that are not trained (no gradient, no optimizer state)."""
    return set(kind(model_cfg).BUFFERS)


def word_axes(model_cfg):
    """{key: axis} of the stored output arrays indexed by word id along that axis (a tied matrix
    is the embedding, not stored)."""
    k = kind(model_cfg)
    return {key: axis for key, axis in k.WORD_AXES.items() if not (model_cfg.tie_weights and key == k.TIED)}


def check_buffers(arrays, model_cfg, vocab_size, source):
    kind(model_cfg).check_buffers(arrays, vocab_size, source)


def init_params(model_cfg, vocab_size, rng, dtype, counts=None):
    """{key: initial array} in key order, drawing from `rng` (a tied matrix is not drawn).
    `counts` (V,): the train frequency of each id (all equal when not given)."""
    k = kind(model_cfg)
    counts = np.ones(vocab_size) if counts is None else counts
    return {key: k.init_array(key, shape, model_cfg, rng, dtype, counts)
            for key, shape in param_shapes(model_cfg, vocab_size).items()}


def word_matrix_key(model_cfg):
    """The key of the layer's (H, V) word matrix, the one `tie_weights` replaces by the
    embedding transposed (None for a kind without one)."""
    return kind(model_cfg).TIED


def sparse_axes(model_cfg):
    """{key: axis} of the stored output arrays whose gradient is sparse along that axis (a tied
    matrix is the embedding, whose gradient is then dense)."""
    k = kind(model_cfg)
    return {key: axis for key, axis in k.SPARSE_AXES.items() if not (model_cfg.tie_weights and key == k.TIED)}


def touched(params, model_cfg, targets, tied_embedding=False):
    """targets: (M,) -> {key: distinct ids along sparse_axes(model_cfg)[key]} that their loss reads.
    With tied weights the word matrix's columns are the embedding's rows: tied_embedding=True
    gives them under "embedding" (when the kind's word matrix is read sparsely), else not at all."""
    k = kind(model_cfg)
    found = k.touched(layer_params(params, model_cfg), targets)
    if model_cfg.tie_weights and k.TIED in found:
        tied = found.pop(k.TIED)
        if tied_embedding:
            found["embedding"] = tied
    return found


def layer_params(params, model_cfg):
    """The output layer's view of the model's params: its own arrays, and with tied weights the
    embedding transposed (a view, no copy) under its word-matrix key."""
    view = {key: value for key, value in params.items() if key.startswith("output.")}
    if model_cfg.tie_weights:
        view[kind(model_cfg).TIED] = params["embedding"].T
    return view


def loss_forward(params, model_cfg, h, targets, scale, need_grad=True, workspace=None, row_loss=None):
    return kind(model_cfg).loss_forward(layer_params(params, model_cfg), model_cfg, h, targets, scale,
                                        need_grad, workspace, row_loss)


def loss_backward(model_cfg, cache, workspace=None):
    return kind(model_cfg).loss_backward(cache, workspace)


def target_log_probs(params, model_cfg, h, targets, workspace=None):
    return kind(model_cfg).target_log_probs(layer_params(params, model_cfg), h, targets, workspace)


def log_probs(params, model_cfg, h):
    return kind(model_cfg).log_probs(layer_params(params, model_cfg), h)
