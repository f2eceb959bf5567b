"""Sentence-independent reading (data.independent): the state is replaced by zero before every
step that reads <eos>, so every sentence is scored as if alone; no gradient crosses a reset."""

import numpy as np
import pytest

from rnnlm_cli import evaluate, gated, gradcheck, layers, model
from rnnlm_cli.config import ModelConfig
from rnnlm_cli.gradcheck import TOLERANCE

EOS = 1
CELLS = ["elman", "lstm", "gru"]
OUTPUTS = ["softmax", "class", "hsm"]


def cfg(**kw):
    base = dict(embedding_dim=5, hidden_dim=7, classes=3)
    base.update(kw)
    return ModelConfig(**base)


def random_model(m, V=17, seed=0):
    rng = np.random.default_rng(seed)
    params = model.init_params(m, V, seed, "float64")
    for key in model.trainable(params, m):
        params[key] = params[key] + rng.normal(0, 0.3, params[key].shape)
    return params


def random_stream(V, n, seed, p_eos=0.15):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, V, n)
    ids[rng.random(n) < p_eos] = EOS
    ids[0] = ids[-1] = EOS
    return ids


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("n_layers", [1, 2])
def test_gradcheck_with_resets(cell, output, n_layers):
    m = cfg(cell=cell, output=output, layers=n_layers, dropout=0.2 if n_layers == 2 else 0.0)
    results = gradcheck.check_model(m, vocab_size=13, resets=True)
    assert {key for key, _, _ in results} == set(model.trainable(model.init_params(m, 13, 0), m))
    for key, err, _ in results:
        assert err < TOLERANCE, (key, err)


def test_gradcheck_with_resets_catches_a_missing_backward_mask(monkeypatch):
    """The check can fail: a backward that lets the gradient cross the reset is caught."""
    real = layers.rnn_backward

    def leaky(dh, cache):
        return real(dh, cache[:-1] + (None,))  # forget the reset mask in the backward only
    monkeypatch.setattr(layers, "rnn_backward", leaky)
    results = gradcheck.check_model(cfg(), vocab_size=13, resets=True)
    assert max(err for key, err, _ in results if key.startswith("rnn.")) > 1e-3


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_a_stream_with_resets_equals_each_sentence_alone(cell, output):
    m = cfg(cell=cell, output=output, layers=2)
    params = random_model(m)
    ids = random_stream(17, 120, 1)
    together = evaluate.stream_log_probs(params, m, ids, bptt=7, reset_at=EOS)
    alone = []
    starts = list(np.flatnonzero(ids[:-1] == EOS)) + [len(ids) - 1]
    for a, z in zip(starts[:-1], starts[1:]):  # each sentence from <eos>, zero state, its own window
        sentence = ids[a:z + 1]
        rows = np.empty((1, len(sentence) - 1))
        state = model.init_state(m, 1, "float64")
        model.forward(params, m, sentence[None, :-1], sentence[None, 1:], state, need_grad=False, row_loss=rows)
        alone.extend(-rows[0])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("output", OUTPUTS)
def test_batched_evaluation_with_resets_is_exact_at_any_batch_size(cell, output):
    m = cfg(cell=cell, output=output)
    params = random_model(m, seed=2)
    ids = random_stream(17, 300, 3)
    one = evaluate.stream_log_probs(params, m, ids, bptt=6, batch_size=1, reset_at=EOS)
    assert np.isfinite(one).all()
    for batch in (2, 7, 40):
        np.testing.assert_allclose(evaluate.stream_log_probs(params, m, ids, 5, batch, EOS), one, rtol=0, atol=1e-12)
        total, count = evaluate.evaluate_ids(params, m, ids, batch, 5, EOS)
        assert count == len(ids) - 1 and total == pytest.approx(-one.sum(), rel=1e-12)


def test_without_resets_the_state_does_cross_sentences():
    m = cfg(cell="lstm")
    params = random_model(m)
    ids = random_stream(17, 80, 4)
    carried = evaluate.stream_log_probs(params, m, ids, bptt=7)
    reset = evaluate.stream_log_probs(params, m, ids, bptt=7, reset_at=EOS)
    first = np.flatnonzero(ids[:-1] == EOS)[1]  # the second sentence's first target differs
    assert carried[:first].tolist() == reset[:first].tolist() and carried[first] != reset[first]


@pytest.mark.parametrize("cell", CELLS)
def test_no_gradient_reaches_the_state_before_a_reset(cell):
    """A stream whose first input is <eos> sends nothing to the carried state (dh0 = 0, and
    dc0 = 0 for the LSTM); the others do."""
    rng = np.random.default_rng(5)
    T, N, D, H = 4, 3, 5, 6
    G = {"elman": 1, "lstm": 4, "gru": 3}[cell] * H
    x, h0, c0 = rng.normal(size=(T, N, D)), rng.normal(size=(N, H)), rng.normal(size=(N, H))
    W_x, W_h, b = rng.normal(size=(D, G)) * 0.5, rng.normal(size=(H, G)) * 0.5, rng.normal(size=G)
    keep = np.ones((T, N, 1))
    keep[0, 1] = 0.0  # stream 1 reads <eos> at step 0
    dh = rng.normal(size=(T, N, H))
    if cell == "elman":
        _, cache = layers.rnn_forward(x, h0, W_x, W_h, b, "tanh", keep)
        grads = [layers.rnn_backward(dh, cache)[1]]
    elif cell == "lstm":
        _, _, cache = gated.lstm_forward(x, h0, c0, W_x, W_h, b, keep)
        _, dh0, dc0, *_ = gated.lstm_backward(dh, cache)
        grads = [dh0, dc0]
    else:
        _, cache = gated.gru_forward(x, h0, W_x, W_h, b, b.copy(), keep)
        grads = [gated.gru_backward(dh, cache)[1]]
    for g in grads:
        assert not g[1].any() and np.abs(g[0]).sum() > 0 and np.abs(g[2]).sum() > 0
