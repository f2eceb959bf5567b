"""Every layer's backward against central differences in float64 (CS231n's contract)."""

import numpy as np
import pytest
from conftest import num_grad_of

from rnnlm_cli import layers
from rnnlm_cli.gradcheck import TOLERANCE, numerical_gradient, rel_error

ACTIVATIONS = ["sigmoid", "tanh", "relu"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_grad(name):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 5))
    z[np.abs(z) < 1e-3] = 0.5  # keep relu away from its kink
    h = layers.activation_forward(z.copy(), name)
    dout = rng.normal(size=z.shape)
    numeric = num_grad_of(lambda: layers.activation_forward(z.copy(), name), z, dout)
    assert rel_error(layers.activation_grad(h, name) * dout, numeric) < TOLERANCE


def test_embedding_backward_is_a_scatter_add():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(7, 3))
    ids = np.array([[1, 2], [1, 6], [2, 1]])  # repeated ids must add up
    x, cache = layers.embedding_forward(ids, emb)
    dx = rng.normal(size=x.shape)
    numeric = num_grad_of(lambda: layers.embedding_forward(ids, emb)[0], emb, dx)
    analytic = layers.embedding_backward(dx, cache)
    assert rel_error(analytic, numeric) < TOLERANCE
    assert np.all(analytic[[0, 3, 4, 5]] == 0)


def test_sum_rows_by_id_equals_add_at():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, size=300)
    rows = rng.normal(size=(300, 4))
    expected = np.zeros((50, 4))
    np.add.at(expected, ids, rows)
    used, sums = layers.sum_rows_by_id(ids, rows)
    assert np.all(np.diff(used) > 0)  # each id once, sorted
    got = np.zeros((50, 4))
    got[used] = sums
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.all(expected[np.setdiff1d(np.arange(50), used)] == 0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_rnn_backward(activation):
    rng = np.random.default_rng(3)
    T, N, D, H = 4, 3, 5, 6
    x = rng.normal(size=(T, N, D))
    h0 = rng.uniform(0.1, 0.8, size=(N, H))  # non-zero carried state
    W_x, W_h, b = rng.normal(size=(D, H)), rng.normal(size=(H, H)) * 0.5, rng.normal(size=H)
    h, cache = layers.rnn_forward(x, h0, W_x, W_h, b, activation)
    dh = rng.normal(size=h.shape)
    dx, dh0, dW_x, dW_h, db = layers.rnn_backward(dh, cache)

    def out():
        return layers.rnn_forward(x, h0, W_x, W_h, b, activation)[0]

    for analytic, wrt in ((dx, x), (dh0, h0), (dW_x, W_x), (dW_h, W_h), (db, b)):
        assert rel_error(analytic, num_grad_of(out, wrt, dh)) < TOLERANCE


def test_affine_backward():
    rng = np.random.default_rng(4)
    h, W, b = rng.normal(size=(6, 4)), rng.normal(size=(4, 9)), rng.normal(size=9)
    logits, cache = layers.affine_forward(h, W, b)
    dlogits = rng.normal(size=logits.shape)
    grads = layers.affine_backward(dlogits, cache)
    for analytic, wrt in zip(grads, (h, W, b)):
        assert rel_error(analytic, num_grad_of(lambda: layers.affine_forward(h, W, b)[0], wrt, dlogits)) < TOLERANCE


@pytest.mark.parametrize("loss_name", sorted(layers.LOSSES))
def test_loss_backward(loss_name):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(7, 10)) * 2
    targets = rng.integers(0, 10, size=7)
    loss_fn = layers.LOSSES[loss_name]
    scale = 1 / 7
    _, dlogits = loss_fn(logits.copy(), targets, scale)
    numeric = numerical_gradient(lambda: loss_fn(logits.copy(), targets, need_grad=False)[0] * scale,
                                 logits, np.arange(logits.size)).reshape(logits.shape)
    assert rel_error(dlogits, numeric) < TOLERANCE


def test_losses_match_their_definitions():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(5, 8))
    targets = rng.integers(0, 8, size=5)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.eye(8)[targets]
    ce, _ = layers.softmax_cross_entropy(logits.copy(), targets, need_grad=False)
    se, _ = layers.softmax_squared_error(logits.copy(), targets, need_grad=False)
    assert ce == pytest.approx(-np.log(p[np.arange(5), targets]).sum(), rel=1e-12)
    assert se == pytest.approx(0.5 * ((p - y) ** 2).sum(), rel=1e-12)
    # the cross-entropy gradient is ŷ − y (seed 003, eq. 7)
    _, d = layers.softmax_cross_entropy(logits.copy(), targets)
    np.testing.assert_allclose(d, p - y, atol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    loss, d = layers.softmax_cross_entropy(logits, np.array([2]))
    assert np.isfinite(loss) and loss == pytest.approx(2000.0)
    assert np.all(np.isfinite(d))


def test_planted_error_is_caught():
    """A backward that forgets f'(z) once must fail the check by far, not by a hair."""
    rng = np.random.default_rng(7)
    T, N, D, H = 3, 2, 3, 4
    x, h0 = rng.normal(size=(T, N, D)), rng.normal(size=(N, H)) * 0.5
    W_x, W_h, b = rng.normal(size=(D, H)), rng.normal(size=(H, H)), rng.normal(size=H)
    h, cache = layers.rnn_forward(x, h0, W_x, W_h, b, "tanh")
    dh = rng.normal(size=h.shape)
    _, _, _, dW_h, _ = layers.rnn_backward(dh, cache)
    numeric = num_grad_of(lambda: layers.rnn_forward(x, h0, W_x, W_h, b, "tanh")[0], W_h, dh)
    assert rel_error(dW_h, numeric) < TOLERANCE
    wrong = dW_h.copy()
    wrong[0, 0] *= 1.01
    assert rel_error(wrong, numeric) > 1e-4


def test_parallel_products_equal_plain_ones(monkeypatch):
    """The split products (over the columns of b, or the rows of a) are the products."""
    from rnnlm_cli import parallel
    monkeypatch.setattr(parallel, "_workers", 3)
    monkeypatch.setattr(parallel, "MIN_BLOCK", 16)
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(40, 30)), rng.normal(size=(30, 101))
    out = np.empty((40, 101))
    np.testing.assert_allclose(parallel.matmul(a, b, out), a @ b, rtol=1e-12, atol=1e-12)
    d = rng.normal(size=(40, 101))
    np.testing.assert_allclose(parallel.matmul(a.T, d), a.T @ d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parallel.matmul_rows(d, b.T), d @ b.T, rtol=1e-12, atol=1e-12)
    logits = rng.normal(size=(40, 101))
    targets = rng.integers(0, 101, size=40)
    split, d_split = layers.softmax_cross_entropy(logits.copy(), targets, 0.5)
    monkeypatch.setattr(parallel, "_workers", 1)
    whole, d_whole = layers.softmax_cross_entropy(logits.copy(), targets, 0.5)
    assert split == pytest.approx(whole, rel=1e-12)
    np.testing.assert_array_equal(d_split, d_whole)  # each row by one thread, same operations
