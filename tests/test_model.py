"""The whole model: gradient checks over the grid, the batched forward against a per-example
one-hot loop (seed 002's form), seed 002's closed forms on a worked case, and truncation."""

import dataclasses
import itertools

import numpy as np
import pytest

from rnnlm_cli import gradcheck, layers, model, regularize
from rnnlm_cli.config import ModelConfig

GRID = list(itertools.product(["sigmoid", "tanh", "relu"], ["cross_entropy", "squared_error"], [1, 3]))


def cfg(**kw):
    base = dict(embedding_dim=4, hidden_dim=6, layers=1)  # E != H
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("activation,loss,n_layers", GRID)
def test_gradcheck_grid(activation, loss, n_layers):
    results = gradcheck.check_model(cfg(activation=activation, loss=loss, layers=n_layers))
    assert {key for key, _, _ in results} == set(model.param_shapes(cfg(layers=n_layers), 13))
    for key, err, checked in results:
        assert checked > 0
        assert err < gradcheck.TOLERANCE, f"{key}: {err:.2e}"


def naive_forward(params, m, inputs, targets, state):
    """Per example, per time step, with one-hot vectors times matrices (seed 002's form)."""
    V = params["embedding"].shape[0]
    f = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "relu": lambda z: np.maximum(z, 0)}
    f = f[m.activation]
    total, final = 0.0, np.zeros_like(state)
    N, T = inputs.shape
    for n in range(N):
        h = [state[l, n].copy() for l in range(m.layers)]
        for t in range(T):
            x = np.eye(V)[inputs[n, t]] @ params["embedding"]
            for l in range(m.layers):
                h[l] = f(x @ params[f"rnn.{l}.W_x"] + h[l] @ params[f"rnn.{l}.W_h"] + params[f"rnn.{l}.b"])
                x = h[l]
            z = x @ params["output.W"] + params["output.b"]
            y_hat = np.exp(z) / np.exp(z).sum()
            y = np.eye(V)[targets[n, t]]
            if m.loss == "cross_entropy":
                total += -np.sum(y * np.log(y_hat))
            else:
                total += 0.5 * np.sum((y_hat - y) ** 2)
        for l in range(m.layers):
            final[l, n] = h[l]
    return total / (N * T), final


@pytest.mark.parametrize("activation,loss,n_layers", GRID)
def test_batched_forward_equals_naive_loop(activation, loss, n_layers):
    m = cfg(activation=activation, loss=loss, layers=n_layers)
    params, inputs, targets, state = gradcheck.random_problem(m, 11, 3, 5, seed=3)
    got_loss, got_state, _ = model.forward(params, m, inputs, targets, state.copy(), need_grad=False)
    want_loss, want_state = naive_forward(params, m, inputs, targets, state)
    assert abs(got_loss - want_loss) <= 1e-12 * max(1.0, abs(want_loss))
    np.testing.assert_allclose(got_state, want_state, rtol=0, atol=1e-12)


def test_seed_002_closed_forms_on_a_worked_case():
    """One step, one stream, sigmoid: δ_o = ŷ − y, δ_h = σ'(z) ∘ (δ_o Uᵀ), ∇H = h_{t-1}ᵀ δ_h,
    ∇U = h_tᵀ δ_o, ∇h_{t-1} = δ_h Hᵀ (seed 002, eqs. 1, 2, 3, 5, in row-vector form)."""
    m = cfg(activation="sigmoid", embedding_dim=3, hidden_dim=4)
    params, _, _, _ = gradcheck.random_problem(m, 5, 1, 1, seed=4)
    h_prev = np.array([[0.2, 0.9, 0.4, 0.6]])
    word, target = 2, 4
    e = params["embedding"][word][None, :]
    Hm, I, U = params["rnn.0.W_h"], params["rnn.0.W_x"], params["output.W"]
    z = h_prev @ Hm + e @ I + params["rnn.0.b"]
    h = 1 / (1 + np.exp(-z))
    o = h @ U + params["output.b"]
    y_hat = np.exp(o) / np.exp(o).sum()
    delta_o = y_hat - np.eye(5)[target]
    delta_h = h * (1 - h) * (delta_o @ U.T)

    loss, grads, _ = model.loss_and_grads(params, m, np.array([[word]]), np.array([[target]]), h_prev[None].copy())
    np.testing.assert_allclose(grads["output.W"], h.T @ delta_o, atol=1e-14)
    np.testing.assert_allclose(grads["rnn.0.W_h"], h_prev.T @ delta_h, atol=1e-14)
    np.testing.assert_allclose(grads["rnn.0.W_x"], e.T @ delta_h, atol=1e-14)
    np.testing.assert_allclose(grads["embedding"][word], (delta_h @ I.T)[0], atol=1e-14)
    # ∇h_{t-1} = δ_h Hᵀ: what rnn_backward hands back for the carried state
    top, _, (_, layer_caches, *_) = model.hidden_forward(params, m, np.array([[word]]), h_prev[None].copy())
    _, dh0, _, _, _ = layers.rnn_backward((delta_o @ U.T)[None], layer_caches[0])
    np.testing.assert_allclose(dh0, delta_h @ Hm.T, atol=1e-14)


def test_truncated_equals_exact_when_the_window_covers_the_sequence():
    """CS224d's trick: with bptt = the whole sequence from a zero state, the one-pass truncated
    gradient is the exact gradient of the sequence's loss."""
    m = cfg(activation="tanh", layers=2)
    params, inputs, targets, _ = gradcheck.random_problem(m, 9, 2, 8, seed=5)
    zero = model.init_state(m, 2, "float64")
    _, grads, _ = model.loss_and_grads(params, m, inputs, targets, zero.copy())
    for key in ("rnn.0.W_h", "rnn.1.W_x", "embedding"):
        idx = np.arange(params[key].size)
        numeric = gradcheck.numerical_gradient(
            lambda: model.forward(params, m, inputs, targets, zero.copy(), need_grad=False)[0], params[key], idx)
        assert gradcheck.rel_error(grads[key], numeric) < gradcheck.TOLERANCE


def test_truncation_no_gradient_flows_into_the_carried_state():
    """Two windows: the second window's gradient treats its start state as a constant, so the sum
    of the two truncated gradients differs from the full-sequence gradient, while each window's
    gradient matches central differences with the carried state held fixed."""
    m = cfg(activation="tanh")
    params, inputs, targets, _ = gradcheck.random_problem(m, 9, 2, 8, seed=6)
    zero = model.init_state(m, 2, "float64")
    _, g1, mid = model.loss_and_grads(params, m, inputs[:, :4], targets[:, :4], zero.copy())
    _, g2, _ = model.loss_and_grads(params, m, inputs[:, 4:], targets[:, 4:], mid.copy())
    _, g_full, _ = model.loss_and_grads(params, m, inputs, targets, zero.copy())
    truncated = (g1["rnn.0.W_h"] + g2["rnn.0.W_h"]) / 2  # each window's loss is a mean over 4 steps
    assert not np.allclose(truncated, g_full["rnn.0.W_h"], rtol=1e-3)
    numeric = gradcheck.numerical_gradient(
        lambda: model.forward(params, m, inputs[:, 4:], targets[:, 4:], mid.copy(), need_grad=False)[0],
        params["rnn.0.W_h"], np.arange(36))
    assert gradcheck.rel_error(g2["rnn.0.W_h"], numeric) < gradcheck.TOLERANCE


def test_float32_stays_float32():
    m = cfg(layers=2)
    params = model.init_params(m, 10, seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (3, 4))
    state = model.init_state(m, 3, "float32")
    loss, new_state, cache = model.forward(params, m, inputs, targets, state)
    grads = model.backward(cache)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(g.dtype == np.float32 for g in grads.values())
    assert new_state.dtype == np.float32
    (_, rnn_caches, *_), (_, dlogits), *_ = cache  # the softmax output layer's cache: (affine cache, dlogits)
    assert dlogits.dtype == np.float32 and all(c[2].dtype == np.float32 for c in rnn_caches)


def test_init_is_deterministic_and_seeded():
    m = cfg()
    a, b = model.init_params(m, 10, seed=3), model.init_params(m, 10, seed=3)
    c = model.init_params(m, 10, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["embedding"], c["embedding"])
    assert set(a) == set(model.param_shapes(m, 10))
    assert all(a[k].shape == s for k, s in model.param_shapes(m, 10).items())


GATED_GRID = list(itertools.product(["lstm", "gru"], [1, 2], [0.0, 0.5], [False, True]))


@pytest.mark.parametrize("cell,n_layers,dropout,tied", GATED_GRID)
def test_gradcheck_gated_grid(cell, n_layers, dropout, tied):
    """Every parameter of LSTM/GRU models, dropout with a fixed mask, tied or untied weights."""
    m = cfg(cell=cell, layers=n_layers, dropout=dropout, tie_weights=tied, embedding_dim=6 if tied else 4)
    results = gradcheck.check_model(m)
    assert {key for key, _, _ in results} == set(model.param_shapes(m, 13))
    for key, err, _ in results:
        assert err < gradcheck.TOLERANCE, f"{key}: {err:.2e}"


def test_gated_keys_follow_pytorch_layout():
    lstm = model.param_shapes(cfg(cell="lstm", layers=2), 10)
    assert lstm["rnn.0.W_x"] == (4, 24) and lstm["rnn.1.W_x"] == (6, 24) and lstm["rnn.0.b"] == (24,)
    gru = model.param_shapes(cfg(cell="gru"), 10)
    assert gru["rnn.0.W_h"] == (6, 18) and gru["rnn.0.b_x"] == (18,) and gru["rnn.0.b_h"] == (18,)
    assert "rnn.0.b" not in gru
    tied = model.param_shapes(cfg(embedding_dim=6, tie_weights=True), 10)
    assert "output.W" not in tied and tied["embedding"] == (10, 6)  # saved once, as `embedding`
    params = model.init_params(cfg(cell="lstm", forget_bias=1.0), 10, seed=0)
    assert np.all(params["rnn.0.b"][6:12] == 1.0)  # gate order (i, f, g, o)


def test_dropout_is_seeded_training_only():
    m = cfg(cell="lstm", dropout=0.5)
    params, inputs, targets, state = gradcheck.random_problem(m, 11, 3, 5, seed=8)

    def loss(rng):
        masks = None if rng is None else regularize.draw_masks(rng, m, 5, 3, 11, "float64")
        return model.forward(params, m, inputs, targets, state.copy(), need_grad=False, masks=masks)[0]
    plain = loss(None)
    assert loss(np.random.default_rng(1)) == loss(np.random.default_rng(1))
    assert loss(np.random.default_rng(1)) != plain != loss(np.random.default_rng(2))
    assert model.forward(params, dataclasses.replace(m, dropout=0.0), inputs, targets, state.copy(),
                         need_grad=False)[0] == plain  # no generator: dropout off (eval, sampling)


@pytest.mark.parametrize("cell,n_layers,classes,tied", [
    ("elman", 1, 4, False), ("elman", 2, 13, False), ("elman", 1, 1, True), ("lstm", 2, 5, False), ("gru", 1, 3, True)])
def test_gradcheck_class_output(cell, n_layers, classes, tied):
    m = cfg(cell=cell, layers=n_layers, output="class", classes=classes, tie_weights=tied,
            embedding_dim=6 if tied else 4)
    results = gradcheck.check_model(m, bptt=7)
    keys = {key for key, _, _ in results}
    assert {"output.class_W", "output.class_b", "output.b"} <= keys and "output.class_bounds" not in keys
    for key, err, _ in results:
        assert err < gradcheck.TOLERANCE, f"{key}: {err:.2e}"


def test_class_output_is_an_exact_normalized_distribution():
    """Σ_w P(c(w)|h) P(w|c(w),h) = 1, and the loss is −log of that same P(target)."""
    m = cfg(output="class", classes=4)
    counts = np.array([50, 40, 30, 20, 10, 9, 8, 7, 6, 5, 4, 3, 1])
    params = model.init_params(m, 13, seed=0, dtype="float64", counts=counts)
    bounds = params["output.class_bounds"]
    assert bounds[0] == 0 and bounds[-1] == 13 and len(bounds) == 5 and np.all(np.diff(bounds) > 0)
    assert bounds[1] <= 3  # the frequent words make small classes (frequency binning)
    rng = np.random.default_rng(1)
    for key in model.trainable(params, m):
        params[key][...] = rng.normal(0, 0.5, size=params[key].shape)
    state = rng.normal(size=(1, 1, 6))
    inputs, targets = np.array([[3]]), np.array([[7]])
    logp = model.output_log_probs(params, m, model.hidden_forward(params, m, inputs.T, state)[0][0])
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-12)
    loss, _, _ = model.forward(params, m, inputs, targets, state, need_grad=False)
    assert loss == pytest.approx(-logp[0, 7], rel=1e-12)


HSM_GRID = [("elman", "sigmoid", 1, 0.0), ("elman", "tanh", 2, 0.0), ("elman", "relu", 1, 0.5),
            ("lstm", "tanh", 1, 0.0), ("lstm", "tanh", 2, 0.5), ("gru", "tanh", 1, 0.5), ("gru", "tanh", 2, 0.0)]


@pytest.mark.parametrize("cell,activation,n_layers,dropout", HSM_GRID)
def test_gradcheck_hsm_output(cell, activation, n_layers, dropout):
    """Every parameter of models with the hierarchical softmax: its node vectors and biases are
    checked, its tree (buffers) is not a parameter."""
    m = cfg(cell=cell, activation=activation, layers=n_layers, dropout=dropout, output="hsm")
    results = gradcheck.check_model(m, bptt=7)
    keys = {key for key, _, _ in results}
    assert keys == set(model.param_shapes(m, 13)) - {"output.path_nodes", "output.path_codes", "output.path_lengths"}
    for key, err, checked in results:
        assert checked > 0
        assert err < gradcheck.TOLERANCE, f"{key}: {err:.2e}"


@pytest.mark.parametrize("threads", [2, 3])
def test_class_output_splits_its_classes_over_the_cores_without_changing_the_gradient(monkeypatch, threads):
    """The classes run in contiguous runs balanced by work, one per core: the word part of the
    gradient is the one a single core computes, bit for bit (the loss is summed per run, and the
    class softmax's products are split by BLAS calls: equal to rounding)."""
    from rnnlm_cli import parallel
    from rnnlm_cli.output import classes
    counts = np.array([50, 40, 30, 20, 10, 9, 8, 7, 6, 5, 4, 3, 1])
    params = model.init_params(cfg(output="class", classes=5), 13, seed=0, dtype="float64", counts=counts)
    rng = np.random.default_rng(2)
    h, targets = rng.normal(size=(40, 6)), rng.integers(0, 13, 40)
    args = [params[k] for k in ("output.W", "output.b", "output.class_W", "output.class_b", "output.class_bounds")]
    runs = {}
    monkeypatch.setattr(parallel, "MIN_BLOCK", 1)  # split even this small window
    for n in (1, threads):
        monkeypatch.setattr(parallel, "workers", lambda n=n: n)
        loss, cache = classes.class_output_forward(h, *args, targets, 0.5)
        assert (len(cache[-1]) == 1) == (n == 1) and len(cache[-1]) <= n  # the runs, one per core
        grads = classes.class_output_backward(cache)
        runs[n] = loss, [g.dense() if hasattr(g, "dense") else g for g in grads]
    assert runs[1][0] == pytest.approx(runs[threads][0], rel=1e-14)
    dh, dW, db, dclass_W, dclass_b = runs[1][1]
    assert np.array_equal(dW, runs[threads][1][1]) and np.array_equal(db, runs[threads][1][2])  # the classes' part
    for a, b in zip((dh, dclass_W, dclass_b), (runs[threads][1][0], *runs[threads][1][3:])):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)  # the class softmax's products, split too
    work = np.array([5, 1, 1, 1, 8, 1, 2])
    assert parallel.balanced_ranges(work, 2) == [(0, 4), (4, 7)]  # contiguous, covering, nearest the half
    assert parallel.balanced_ranges(np.array([3]), 4) == [(0, 1)] and parallel.balanced_ranges(np.zeros(0), 2) == [(0, 0)]
