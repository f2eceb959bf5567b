"""LSTM, GRU and dropout (rnnlm_cli/gated.py): every backward against central differences in
float64, every forward against a naive loop written from the formulas, dtypes, and (when torch is
importable) the gate order against torch.nn.LSTM / torch.nn.GRU."""

import threading

import numpy as np
import pytest
from conftest import num_grad_of

from rnnlm_cli import gated
from rnnlm_cli.gradcheck import TOLERANCE, rel_error

T, N, D, H = 4, 3, 5, 4  # T ≥ 3, D != H


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_problem(seed, dtype=np.float64):
    """x, a NON-zero carried (h0, c0), and weights small enough that no gate saturates."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, N, D))
    h0 = rng.uniform(-0.8, 0.8, size=(N, H))
    c0 = rng.normal(size=(N, H))
    W_x = rng.normal(0.0, 0.5, size=(D, 4 * H))
    W_h = rng.normal(0.0, 0.5, size=(H, 4 * H))
    b = rng.normal(0.0, 0.5, size=4 * H)
    return [a.astype(dtype) for a in (x, h0, c0, W_x, W_h, b)]


def gru_problem(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, N, D))
    h0 = rng.uniform(-0.8, 0.8, size=(N, H))
    W_x = rng.normal(0.0, 0.5, size=(D, 3 * H))
    W_h = rng.normal(0.0, 0.5, size=(H, 3 * H))
    b_x = rng.normal(0.0, 0.5, size=3 * H)
    b_h = rng.normal(0.0, 0.5, size=3 * H)
    return [a.astype(dtype) for a in (x, h0, W_x, W_h, b_x, b_h)]


def naive_lstm(x, h0, c0, W_x, W_h, b):
    """One example, one step at a time, straight from the formulas (gate order i, f, g, o)."""
    h = np.zeros((T, N, H))
    c = np.zeros((T, N, H))
    for n in range(N):
        hp, cp = h0[n], c0[n]
        for t in range(T):
            a = x[t, n] @ W_x + hp @ W_h + b
            i, f = sigmoid(a[:H]), sigmoid(a[H:2 * H])
            g, o = np.tanh(a[2 * H:3 * H]), sigmoid(a[3 * H:])
            cp = f * cp + i * g
            hp = o * np.tanh(cp)
            h[t, n], c[t, n] = hp, cp
    return h, c


def naive_gru(x, h0, W_x, W_h, b_x, b_h):
    """One example, one step at a time, straight from the formulas (gate order r, z, n)."""
    h = np.zeros((T, N, H))
    for n in range(N):
        hp = h0[n]
        for t in range(T):
            u, v = x[t, n] @ W_x + b_x, hp @ W_h + b_h
            r = sigmoid(u[:H] + v[:H])
            z = sigmoid(u[H:2 * H] + v[H:2 * H])
            nn = np.tanh(u[2 * H:] + r * v[2 * H:])
            hp = (1 - z) * nn + z * hp
            h[t, n] = hp
    return h


# --------------------------------------------------------------------------------------------
# LSTM


def test_lstm_forward_matches_naive_loop():
    args = lstm_problem(0)
    h, c_last, _ = gated.lstm_forward(*args)
    h_ref, c_ref = naive_lstm(*args)
    np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_last, c_ref[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_dc_last", [False, True])
def test_lstm_backward(with_dc_last):
    args = lstm_problem(1)
    rng = np.random.default_rng(2)
    h, c_last, cache = gated.lstm_forward(*args)
    dh = rng.normal(size=h.shape)
    dc_last = rng.normal(size=c_last.shape) if with_dc_last else None
    grads = gated.lstm_backward(dh, cache, dc_last)

    def loss():  # J = Σ h ∘ dh (+ Σ c_T ∘ dc_last): its gradient is what the backward returns
        h, c_last, _ = gated.lstm_forward(*args)
        return float(np.sum(h * dh) + (np.sum(c_last * dc_last) if with_dc_last else 0.0))

    x, h0, c0, W_x, W_h, b = args
    names = ("dx", "dh0", "dc0", "dW_x", "dW_h", "db")
    for name, analytic, wrt in zip(names, grads, (x, h0, c0, W_x, W_h, b)):
        assert analytic.shape == wrt.shape, name
        err = rel_error(analytic, num_grad_of(loss, wrt))
        assert err < TOLERANCE, (name, err)


def test_lstm_backward_single_step_and_repeatable():
    """T = 1 (no h[:-1] term), and a second backward on the same cache gives the same answer
    (the backward must not consume its cache or the caller's dc_last)."""
    x, h0, c0, W_x, W_h, b = lstm_problem(3)
    x = x[:1]
    h, c_last, cache = gated.lstm_forward(x, h0, c0, W_x, W_h, b)
    rng = np.random.default_rng(4)
    dh, dc_last = rng.normal(size=h.shape), rng.normal(size=c_last.shape)
    dc_keep = dc_last.copy()
    first = gated.lstm_backward(dh, cache, dc_last)
    second = gated.lstm_backward(dh, cache, dc_last)
    np.testing.assert_array_equal(dc_last, dc_keep)
    for a, bb in zip(first, second):
        np.testing.assert_array_equal(a, bb)

    def loss():
        h, c_last, _ = gated.lstm_forward(x, h0, c0, W_x, W_h, b)
        return float(np.sum(h * dh) + np.sum(c_last * dc_last))

    for analytic, wrt in zip(first, (x, h0, c0, W_x, W_h, b)):
        assert rel_error(analytic, num_grad_of(loss, wrt)) < TOLERANCE


def test_lstm_planted_error_is_caught():
    """At these sizes the check is sharp: a 1% error in one entry fails it by far."""
    args = lstm_problem(5)
    h, _, cache = gated.lstm_forward(*args)
    dh = np.random.default_rng(6).normal(size=h.shape)
    dW_h = gated.lstm_backward(dh, cache)[4]
    numeric = num_grad_of(lambda: float(np.sum(gated.lstm_forward(*args)[0] * dh)), args[4])
    assert rel_error(dW_h, numeric) < TOLERANCE
    wrong = dW_h.copy()
    wrong.flat[np.argmax(np.abs(wrong))] *= 1.01
    assert rel_error(wrong, numeric) > 1e-4


# --------------------------------------------------------------------------------------------
# GRU


def test_gru_forward_matches_naive_loop():
    args = gru_problem(10)
    h, _ = gated.gru_forward(*args)
    np.testing.assert_allclose(h, naive_gru(*args), rtol=0, atol=1e-12)


def test_gru_backward():
    args = gru_problem(11)
    rng = np.random.default_rng(12)
    h, cache = gated.gru_forward(*args)
    dh = rng.normal(size=h.shape)
    grads = gated.gru_backward(dh, cache)

    def loss():
        return float(np.sum(gated.gru_forward(*args)[0] * dh))

    names = ("dx", "dh0", "dW_x", "dW_h", "db_x", "db_h")
    for name, analytic, wrt in zip(names, grads, args):
        assert analytic.shape == wrt.shape, name
        err = rel_error(analytic, num_grad_of(loss, wrt))
        assert err < TOLERANCE, (name, err)


def test_gru_backward_single_step_and_repeatable():
    x, h0, W_x, W_h, b_x, b_h = gru_problem(13)
    x = x[:1]
    h, cache = gated.gru_forward(x, h0, W_x, W_h, b_x, b_h)
    dh = np.random.default_rng(14).normal(size=h.shape)
    first = gated.gru_backward(dh, cache)
    second = gated.gru_backward(dh, cache)
    for a, bb in zip(first, second):
        np.testing.assert_array_equal(a, bb)

    def loss():
        return float(np.sum(gated.gru_forward(x, h0, W_x, W_h, b_x, b_h)[0] * dh))

    for analytic, wrt in zip(first, (x, h0, W_x, W_h, b_x, b_h)):
        assert rel_error(analytic, num_grad_of(loss, wrt)) < TOLERANCE


# --------------------------------------------------------------------------------------------
# Dropout


def test_dropout_backward_with_fixed_mask():
    rng = np.random.default_rng(20)
    x = rng.normal(size=(T, N, H))
    mask = rng.random(size=x.shape) >= 0.4
    out, cache = gated.dropout_forward(x, 0.4, mask)
    np.testing.assert_allclose(out, np.where(mask, x / 0.6, 0.0), rtol=1e-15)
    dout = rng.normal(size=out.shape)
    numeric = num_grad_of(lambda: float(np.sum(gated.dropout_forward(x, 0.4, mask)[0] * dout)), x)
    assert rel_error(gated.dropout_backward(dout, cache), numeric) < TOLERANCE


def test_dropout_broadcast_mask_is_one_mask_per_stream():
    """An (N, H) mask against (T, N, H): the same units dropped at every step."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(T, N, H))
    mask = rng.random(size=(N, H)) >= 0.5
    out, cache = gated.dropout_forward(x, 0.5, mask)
    assert out.shape == x.shape
    assert np.all(out[:, ~mask] == 0) and np.all(out[:, mask] == 2 * x[:, mask])
    dout = rng.normal(size=x.shape)
    np.testing.assert_array_equal(gated.dropout_backward(dout, cache), np.where(mask, 2 * dout, 0.0))


def test_dropout_is_unbiased():
    """E[out] = x: the mean over many independent masks is x, within 6 standard errors."""
    p, draws = 0.3, 20000
    x = np.random.default_rng(22).normal(size=16)
    out, _ = gated.dropout_forward(np.tile(x, (draws, 1)), p, np.random.default_rng(23))
    stderr = np.abs(x) * np.sqrt(p / (1 - p)) / np.sqrt(draws)
    assert np.all(np.abs(out.mean(axis=0) - x) < 6 * stderr + 1e-12)
    assert abs(np.mean(out != 0) - (1 - p)) < 0.01  # the kept fraction is 1 − p


def test_dropout_p0_is_identity():
    x = np.random.default_rng(24).normal(size=(T, N, H))
    rng = np.random.default_rng(25)
    state = rng.bit_generator.state
    out, cache = gated.dropout_forward(x, 0.0, rng)
    assert out is x and cache is None
    assert rng.bit_generator.state == state  # nothing drawn
    dout = np.ones_like(x)
    assert gated.dropout_backward(dout, cache) is dout


def test_dropout_reproducible_from_seed():
    x = np.random.default_rng(26).normal(size=(T, N, H))
    a, _ = gated.dropout_forward(x, 0.5, np.random.default_rng(7))
    b, _ = gated.dropout_forward(x, 0.5, np.random.default_rng(7))
    c, _ = gated.dropout_forward(x, 0.5, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError):
        gated.dropout_forward(np.ones(3), p, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# dtypes


def _assert_all_float32(arrays, what):
    for k, a in enumerate(arrays):
        if isinstance(a, np.ndarray):
            assert a.dtype == np.float32, (what, k, a.dtype)


def test_float32_in_float32_out():
    f32 = np.float32
    rng = np.random.default_rng(30)

    args = lstm_problem(31, f32)
    h, c_last, cache = gated.lstm_forward(*args)
    _assert_all_float32((h, c_last) + cache, "lstm_forward")
    grads = gated.lstm_backward(rng.normal(size=h.shape).astype(f32), cache,
                                rng.normal(size=c_last.shape).astype(f32))
    _assert_all_float32(grads, "lstm_backward")
    # and the float32 pass agrees with the float64 one to float32 accuracy
    h64, c64, _ = gated.lstm_forward(*[a.astype(np.float64) for a in args])
    np.testing.assert_allclose(h, h64, atol=1e-5)
    np.testing.assert_allclose(c_last, c64, atol=1e-5)

    args = gru_problem(32, f32)
    h, cache = gated.gru_forward(*args)
    _assert_all_float32((h,) + cache, "gru_forward")
    grads = gated.gru_backward(rng.normal(size=h.shape).astype(f32), cache)
    _assert_all_float32(grads, "gru_backward")
    np.testing.assert_allclose(h, gated.gru_forward(*[a.astype(np.float64) for a in args])[0], atol=1e-5)

    x = rng.normal(size=(T, N, H)).astype(f32)
    for mask in (np.random.default_rng(33), rng.random(size=x.shape) >= 0.5):
        out, cache = gated.dropout_forward(x, 0.5, mask)
        _assert_all_float32((out, cache, gated.dropout_backward(x, cache)), "dropout")


# --------------------------------------------------------------------------------------------
# The gate order, against torch (skipped when torch is not importable)


def _torch_grads_match(pairs):
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=0, atol=1e-10)


def test_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    x, h0, c0, W_x, W_h, b = lstm_problem(40)
    h, c_last, cache = gated.lstm_forward(x, h0, c0, W_x, W_h, b)
    lstm = torch.nn.LSTM(D, H).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(W_x.T))
        lstm.weight_hh_l0.copy_(torch.from_numpy(W_h.T))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()
    xt = torch.from_numpy(x).requires_grad_()
    h0t = torch.from_numpy(h0[None].copy()).requires_grad_()
    c0t = torch.from_numpy(c0[None].copy()).requires_grad_()
    out, (h_n, c_n) = lstm(xt, (h0t, c0t))
    np.testing.assert_allclose(out.detach().numpy(), h, rtol=0, atol=1e-10)
    np.testing.assert_allclose(h_n[0].detach().numpy(), h[-1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(c_n[0].detach().numpy(), c_last, rtol=0, atol=1e-10)
    # and autograd agrees with the hand-derived backward
    rng = np.random.default_rng(41)
    dh, dc_last = rng.normal(size=h.shape), rng.normal(size=c_last.shape)
    (out * torch.from_numpy(dh)).sum().add((c_n[0] * torch.from_numpy(dc_last)).sum()).backward()
    dx, dh0, dc0, dW_x, dW_h, db = gated.lstm_backward(dh, cache, dc_last)
    _torch_grads_match([(dx, xt.grad), (dh0, h0t.grad[0]), (dc0, c0t.grad[0]),
                              (dW_x, lstm.weight_ih_l0.grad.T), (dW_h, lstm.weight_hh_l0.grad.T),
                              (db, lstm.bias_ih_l0.grad), (db, lstm.bias_hh_l0.grad)])


def test_gru_matches_torch():
    torch = pytest.importorskip("torch")
    x, h0, W_x, W_h, b_x, b_h = gru_problem(42)
    h, cache = gated.gru_forward(x, h0, W_x, W_h, b_x, b_h)
    gru = torch.nn.GRU(D, H).double()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(W_x.T))
        gru.weight_hh_l0.copy_(torch.from_numpy(W_h.T))
        gru.bias_ih_l0.copy_(torch.from_numpy(b_x))
        gru.bias_hh_l0.copy_(torch.from_numpy(b_h))
    xt = torch.from_numpy(x).requires_grad_()
    h0t = torch.from_numpy(h0[None].copy()).requires_grad_()
    out, h_n = gru(xt, h0t)
    np.testing.assert_allclose(out.detach().numpy(), h, rtol=0, atol=1e-10)
    np.testing.assert_allclose(h_n[0].detach().numpy(), h[-1], rtol=0, atol=1e-10)
    dh = np.random.default_rng(43).normal(size=h.shape)
    (out * torch.from_numpy(dh)).sum().backward()
    dx, dh0, dW_x, dW_h, db_x, db_h = gated.gru_backward(dh, cache)
    _torch_grads_match([(dx, xt.grad), (dh0, h0t.grad[0]),
                             (dW_x, gru.weight_ih_l0.grad.T), (dW_h, gru.weight_hh_l0.grad.T),
                             (db_x, gru.bias_ih_l0.grad), (db_h, gru.bias_hh_l0.grad)])


@pytest.mark.parametrize("split", ["units", "streams"])
@pytest.mark.parametrize("threads", [2, 3])
def test_loops_split_over_threads_give_the_same_results(monkeypatch, threads, split):
    """The recurrent loops run one block of hidden units per thread, the threads meeting at
    every step, or (small layers) one block of streams per thread: 2 and 3 threads (uneven
    blocks of H = 4 units, N = 3 streams) must give what one thread gives, forward and
    backward, with and without sentence resets."""
    from rnnlm_cli import parallel

    rng = np.random.default_rng(31)
    lstm_args, gru_args = lstm_problem(32), gru_problem(33)
    dh = rng.normal(size=(T, N, H))
    keep = (rng.random((T, N, 1)) > 0.3).astype(np.float64)

    def run_all():
        out = []
        for k in (None, keep):
            h, c_last, cache = gated.lstm_forward(*lstm_args, keep=k)
            out += [h, c_last, *gated.lstm_backward(dh, cache, dc_last=c_last)]
            g, cache = gated.gru_forward(*gru_args, keep=k)
            out += [g, *gated.gru_backward(dh, cache)]
        return out

    monkeypatch.setattr(parallel, "_workers", 1)
    one = run_all()
    # split these tiny layers by units, or never
    monkeypatch.setattr(parallel, "MIN_UNIT_SPLIT", 0 if split == "units" else 1 << 62)
    monkeypatch.setattr(parallel, "_workers", threads)
    monkeypatch.setattr(parallel, "_pool", None)  # a pool with `threads` workers
    blocks = parallel.gated_blocks(N, H, 1)
    assert len(blocks) == threads and len({b[split == "units"] for b in blocks}) == threads
    for a, b in zip(run_all(), one):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("failing", ["pool thread", "calling thread"])
def test_a_failing_thread_does_not_hang_the_others(monkeypatch, failing):
    """A loop that fails in one thread breaks the barrier: the call raises and the other thread
    is released, instead of waiting forever for the failed one at the next time step."""
    from rnnlm_cli import parallel

    monkeypatch.setattr(parallel, "MIN_UNIT_SPLIT", 0)
    monkeypatch.setattr(parallel, "_workers", 2)
    monkeypatch.setattr(parallel, "_pool", None)
    barriers = []

    class Recorded(threading.Barrier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            barriers.append(self)

    monkeypatch.setattr(parallel.threading, "Barrier", Recorded)
    columns = gated._gate_columns
    bad_start = 0 if failing == "pool thread" else H // 2  # the last block runs on the caller

    def one_block_fails(W, gates, s, e, transpose=False):
        if s == bad_start:
            raise MemoryError("planted")
        return columns(W, gates, s, e, transpose)

    monkeypatch.setattr(gated, "_gate_columns", one_block_fails)
    raised = []

    def call():
        try:
            gated.lstm_forward(*lstm_problem(34))
        except (MemoryError, threading.BrokenBarrierError) as e:
            raised.append(e)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "a thread still waits at the barrier"
    assert raised and barriers and barriers[0].broken
