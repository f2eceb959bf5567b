"""Gated recurrent layers (LSTM, GRU) and inverted dropout, as pairs of pure functions
`*_forward(...) -> (out, cache)` and `*_backward(dout, cache)` in the style of layers.py.

Shapes use layers.py's letters: N streams, T time steps, D the layer's input size, H hidden size;
arrays are time-major (T, N, ·). Row-vector notation: a_t = x_t W_x + h_{t-1} W_h + b.

Gates are concatenated along the last axis in PyTorch's order, LSTM (i, f, g, o) and GRU
(r, z, n), so that `W_x` is torch's `weight_ih_l0.T` and `W_h` its `weight_hh_l0.T`.

Every backward line cites its equation in docs/gated-derivation.md: (L·) for the LSTM, (G·) for
the GRU, (D·) for dropout. Both backwards are seed 003's one-pass accumulated δ: each step adds
what all later losses send to it, so one pass backwards over the window gives every gradient,
and the weight gradients are single matrix products over all T·N positions after the loop.

Every function keeps the dtype of its inputs (float32 in, float32 everywhere). Every backward
here is checked against central differences in tests/test_gated.py.

Each recurrent loop runs on every core (parallel.gated_blocks, parallel.in_lockstep). Big
layers are cut by hidden units: a step's product with W_h is the only place units mix, so each
core computes its units' columns of h_{t-1} W_h (backwards: its units' part of γ_t W_hᵀ) and
their elementwise gate arithmetic, and the cores meet once a step, before the product that reads
every unit. Measured here: one (20, 650) × (650, 1300) product per core runs 1.7× faster than
the (10, 650) × (650, 2600) of a split by streams, whose few rows use BLAS's kernels badly.
Small layers are cut by streams, which never mix: no meeting at all, which matters more there.
Each block is computed by the same thread with the same operations every time (deterministic).
"""

import numpy as np

from . import layers, parallel
from .layers import previous_states, sigmoid_unguarded_ as sigmoid_


def _overflow_quiet(loop):
    """loop, run under np.errstate(over="ignore"), entered once a window by each thread instead
    of once a gate a step: e^{−a} in σ overflows to inf for a ≲ −88, which gives σ = 0 exactly."""
    def quiet(*args):
        with np.errstate(over="ignore"):
            return loop(*args)
    return quiet


# --------------------------------------------------------------------------------------------
# LSTM: a_t = x_t W_x + h_{t-1} W_h + b = [a^i a^f a^g a^o]                              (L1)
#       i, f, o = σ(a^i), σ(a^f), σ(a^o);  g = tanh(a^g)                                 (L2)
#       c_t = f_t ∘ c_{t-1} + i_t ∘ g_t                                                   (L3)
#       h_t = o_t ∘ tanh(c_t)                                                            (L4)


def _gate_columns(W, gates, s, e, transpose=False):
    """A contiguous copy of the columns of W (·, gates·H) that belong to hidden units s:e of every
    gate, in gate order: (·, gates, e − s) flattened to (·, gates·(e − s)); or, transposed, W's
    rows s:e as a contiguous (gates·H, e − s) for the product γ_t W_hᵀ of those units. One copy
    a window per thread: a strided view runs the per-step product ~15% slower."""
    H = W.shape[1] // gates
    if (s, e) == (0, H):  # all units: W itself
        return W.T if transpose else W
    if transpose:
        return np.ascontiguousarray(W[s:e].T)
    return np.ascontiguousarray(W.reshape(W.shape[0], gates, H)[:, :, s:e]).reshape(W.shape[0], -1)


def lstm_forward(x, h0, c0, W_x, W_h, b, keep=None):
    """x: (T, N, D), h0: (N, H), c0: (N, H) carried state, W_x: (D, 4H), W_h: (H, 4H), b: (4H,),
    keep: (T, N, 1) 0/1 or None -> h: (T, N, H) hidden states, c_last: (N, H) the cell state
    after the last step, cache. keep[t] = 0 resets a stream before step t: h_{t-1} and c_{t-1}
    are replaced by zero (R1).

    Gate blocks of the 4H axis in PyTorch's order (i, f, g, o). torch.nn.LSTM has two biases,
    b_ih + b_hh; ours is one b, their sum (load torch weights with b = b_ih + b_hh).

    The cache keeps the returned h (as rnn_forward does): do not write into h before backward.
    The new carried state is (h[-1], c_last)."""
    T, N, D = x.shape
    H = W_h.shape[0]
    # the input projection of all T·N positions is one matrix product; the loop adds h_{t-1} W_h
    gates = parallel.matmul(x.reshape(T * N, D), W_x).reshape(T, N, 4 * H)  # a_t, then gates
    gates += b
    G = gates.reshape(T, N, 4, H)  # G[t, :, k, s:e]: gate k of units s:e at step t
    dtype = gates.dtype
    h = np.empty((T, N, H), dtype=dtype)
    c = np.empty((T, N, H), dtype=dtype)
    tanh_c = np.empty((T, N, H), dtype=dtype)

    def loop(streams, units, barrier):  # streams p:q, hidden units s:e, through the window
        (p, q), (s, e) = streams, units
        W_hk = _gate_columns(W_h, 4, s, e)  # (H, 4(e − s)): the columns of units s:e
        rec = np.empty((q - p, 4, e - s), dtype=dtype)  # h_{t-1} W_h for units s:e, every step
        rec2 = rec.reshape(q - p, -1)
        # this block's views, made once: in the loop, every Python operation holds the GIL that
        # the other thread's loop needs between its numpy calls
        gates_k, c_k, tanh_c_k, h_k, h_rows = G[:, p:q, :, s:e], c[:, p:q, s:e], tanh_c[:, p:q, s:e], \
            h[:, p:q, s:e], h[:, p:q]
        keep_k = None if keep is None else keep[:, p:q]
        wait = barrier.wait
        prev_h, prev_c = h0[p:q], c0[p:q, s:e]
        for t in range(T):
            if keep_k is not None:  # h_{t-1}, c_{t-1} → 0 where the stream resets              (R1)
                prev_h, prev_c = prev_h * keep_k[t], prev_c * keep_k[t]
            np.matmul(prev_h, W_hk, out=rec2)
            a = gates_k[t]
            a += rec  # a_t                                                              (L1)
            sigmoid_(a[:, :2])  # i_t, f_t                                               (L2)
            np.tanh(a[:, 2], out=a[:, 2])  # g_t
            sigmoid_(a[:, 3])  # o_t
            i, f, g, o = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
            ct, tc = c_k[t], tanh_c_k[t]
            np.multiply(f, prev_c, out=ct)
            np.multiply(i, g, out=tc)  # tc as scratch for i ∘ g
            ct += tc  # c_t = f_t ∘ c_{t-1} + i_t ∘ g_t                                 (L3)
            np.tanh(ct, out=tc)
            np.multiply(o, tc, out=h_k[t])  # h_t = o_t ∘ tanh(c_t)                      (L4)
            wait()  # every unit of h_t is written before any thread reads it
            prev_h, prev_c = h_rows[t], ct

    parallel.in_lockstep(_overflow_quiet(loop), parallel.gated_blocks(N, H, N * H * 4 * H))
    c_last = c[-1].copy()
    return h, c_last, (x, h0, c0, W_x, W_h, gates, c, tanh_c, h, keep)


def lstm_backward(dh, cache, dc_last=None, factored=False):
    """dh: (T, N, H) = ∂J/∂h_t from above (the output layer or the next layer), excluding the
    path through step t+1; dc_last: (N, H) = ∂J/∂c_T from beyond the window, zero if None
    -> dx: (T, N, D), dh0: (N, H), dc0: (N, H), dW_x: (D, 4H), dW_h: (H, 4H), db: (4H,);
    factored=True (dynamic evaluation) gives dW_x and dW_h as layers.Outer, their products left
    unformed, and dx by parallel.matmul_by_rows_of.

    One pass backwards in time (docs/gated-derivation.md §1). Two accumulators are carried: η,
    the whole ∂J/∂h_t, and κ, the whole ∂J/∂c_t. Everything else a step needs (the local
    derivatives K of (L8)) is computed for all t at once before the loop, so the loop only
    multiplies: γ^o_t = η_t ∘ K^o_t and [γ^i γ^f γ^g]_t = κ_t ∘ [K^i K^f K^g]_t.
    dh0 and dc0 are returned for tests; the model drops them (truncated BPTT)."""
    # Long on purpose (~75 lines): the per-thread closure computes the local derivatives and runs
    # the recurrence on the same dozen views of one block; split, they would all travel too.
    x, h0, c0, W_x, W_h, gates, c, tanh_c, h, keep = cache
    h_first, h_rest = previous_states(h0, h, keep)  # h_{t-1} and c_{t-1} as step t saw them
    c_first, c_rest = previous_states(c0, c, keep)
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = gates.dtype
    G = gates.reshape(T, N, 4, H)  # views: G[:, :, 0] = i, 1 = f, 2 = g, 3 = o
    da = np.empty_like(gates)  # the local derivatives K, then γ_t = ∂J/∂a_t in place
    dnext = np.empty((N, H), dtype=dtype)  # ε_1 = ∂J/∂h_0, filled at the end
    kappa = np.empty((N, H), dtype=dtype)  # κ_1 ∘ f_1 = ∂J/∂c_0, filled at the end

    def loop(streams, units, barrier):  # streams p:q, units s:e: local derivatives, then back in time
        (p, q), (s, e) = streams, units
        i, f, g, o = (G[:, p:q, k, s:e] for k in range(4))
        K = da.reshape(T, N, 4, H)[:, p:q, :, s:e]
        tc = tanh_c[:, p:q, s:e]
        np.multiply(i, i, out=K[:, :, 0])
        np.subtract(i, K[:, :, 0], out=K[:, :, 0])  # σ' = σ − σ²
        K[:, :, 0] *= g  # K^i = ∂c_t/∂a^i = g_t ∘ σ'(a^i)                               (L8)
        np.multiply(f, f, out=K[:, :, 1])
        np.subtract(f, K[:, :, 1], out=K[:, :, 1])
        K[0, :, 1] *= c_first[p:q, s:e]
        K[1:, :, 1] *= c_rest[:, p:q, s:e]  # K^f = ∂c_t/∂a^f = c_{t-1} ∘ σ'(a^f)       (L8)
        np.multiply(g, g, out=K[:, :, 2])
        np.subtract(1.0, K[:, :, 2], out=K[:, :, 2])
        K[:, :, 2] *= i  # K^g = ∂c_t/∂a^g = i_t ∘ (1 − g_t²)                             (L8)
        np.multiply(o, o, out=K[:, :, 3])
        np.subtract(o, K[:, :, 3], out=K[:, :, 3])
        K[:, :, 3] *= tc  # K^o = ∂h_t/∂a^o = tanh(c_t) ∘ σ'(a^o)                        (L6)
        K_c = tc * tc
        np.subtract(1.0, K_c, out=K_c)
        K_c *= o  # ∂h_t/∂c_t = o_t ∘ (1 − tanh² c_t)                                      (L7)
        W_hT = _gate_columns(W_h, 4, s, e, transpose=True)  # (4H, e − s)
        eta = np.empty((q - p, e - s), dtype=dtype)  # η_t
        eps = np.zeros((q - p, e - s), dtype=dtype)  # ε_{t+1} = γ_{t+1} W_hᵀ, zero after the last step
        kap = np.zeros((q - p, e - s), dtype=dtype)  # κ_{t+1} ∘ f_{t+1}, then κ_t
        if dc_last is not None:
            kap += dc_last[p:q, s:e]  # κ_{T+1} ∘ f_{T+1} := ∂J/∂c_T from beyond the window  (L7)
        dh_k, da_rows, kap_row = dh[:, p:q, s:e], da[:, p:q], kap[:, None, :]  # views made once
        keep_k = None if keep is None else keep[:, p:q]
        wait = barrier.wait
        for t in reversed(range(T)):
            Kt = K[t]
            np.add(dh_k[t], eps, out=eta)  # η_t = dh_t + ε_{t+1}                           (L5)
            Kt[:, 3] *= eta  # γ^o_t = η_t ∘ tanh(c_t) ∘ σ'(a^o)                             (L6)
            eta *= K_c[t]
            kap += eta  # κ_t = κ_{t+1} ∘ f_{t+1} + η_t ∘ o_t ∘ (1 − tanh² c_t)             (L7)
            Kt[:, :3] *= kap_row  # [γ^i γ^f γ^g]_t = κ_t ∘ [K^i K^f K^g]_t                 (L8)
            kap *= f[t]  # ∂J/∂c_{t-1} through step t = κ_t ∘ f_t                            (L9)
            wait()  # every unit's γ_t is written before any thread reads it
            np.matmul(da_rows[t], W_hT, out=eps)  # ε_t = γ_t W_hᵀ, units s:e               (L10)
            if keep_k is not None:  # no gradient crosses a reset                             (R2)
                kap *= keep_k[t]
                eps *= keep_k[t]
        dnext[p:q, s:e], kappa[p:q, s:e] = eps, kap

    parallel.in_lockstep(_overflow_quiet(loop), parallel.gated_blocks(N, H, N * H * 4 * H))
    da2 = da.reshape(T * N, 4 * H)
    dW_x, dW_h = _weight_grads(x, h_first, h_rest, da, da, factored)  # (L11), (L12)
    db = da2.sum(axis=0)  # ∇b = Σ_t γ_t                                                    (L13)
    dx = _input_grad(da2, W_x, factored).reshape(T, N, D)  # ∂J/∂x_t = γ_t W_xᵀ            (L14)
    return dx, dnext, kappa, dW_x, dW_h, db  # dh0 = ε_1, dc0 = κ_1 ∘ f_1                    (L15)


# --------------------------------------------------------------------------------------------
# GRU: u_t = x_t W_x + b_x = [u^r u^z u^n],  v_t = h_{t-1} W_h + b_h = [v^r v^z v^n]      (G1)
#      r_t = σ(u^r + v^r),  z_t = σ(u^z + v^z)                                           (G2)
#      n_t = tanh(u^n + r_t ∘ v^n)                                                       (G3)
#      h_t = (1 − z_t) ∘ n_t + z_t ∘ h_{t-1}                                             (G4)


def gru_forward(x, h0, W_x, W_h, b_x, b_h, keep=None):
    """x: (T, N, D), h0: (N, H) carried state, W_x: (D, 3H), W_h: (H, 3H), b_x: (3H,), b_h: (3H,),
    keep: (T, N, 1) 0/1 or None -> h: (T, N, H) hidden states, cache. keep[t] = 0 resets a
    stream before step t: h_{t-1} is replaced by zero (R1).

    Gate blocks of the 3H axis in PyTorch's order (r, z, n); b_x, b_h are torch's bias_ih_l0,
    bias_hh_l0 (two biases are needed: b_h^n sits inside r ∘ (·)). The new carried state is h[-1].
    The cache keeps the returned h: do not write into h before backward."""
    T, N, D = x.shape
    H = W_h.shape[0]
    gates = parallel.matmul(x.reshape(T * N, D), W_x).reshape(T, N, 3 * H)  # u_t, then r, z, n
    gates += b_x
    G = gates.reshape(T, N, 3, H)
    dtype = gates.dtype
    h = np.empty((T, N, H), dtype=dtype)
    v_n = np.empty((T, N, H), dtype=dtype)  # v^n_t = h_{t-1} W_h^n + b_h^n, kept for backward

    def loop(streams, units, barrier):  # streams p:q, hidden units s:e, through the window
        (p, q), (s, e) = streams, units
        W_hk = _gate_columns(W_h, 3, s, e)  # (H, 3(e − s)): the columns of units s:e
        b_hk = b_h.reshape(3, H)[:, s:e]
        rec = np.empty((q - p, 3, e - s), dtype=dtype)  # v_t for units s:e, every step
        rec2, rec_n = rec.reshape(q - p, -1), rec[:, 2]
        gates_k, v_n_k, h_k, h_rows = G[:, p:q, :, s:e], v_n[:, p:q, s:e], h[:, p:q, s:e], h[:, p:q]
        keep_k = None if keep is None else keep[:, p:q]  # views made once (see lstm_forward)
        wait = barrier.wait
        prev = h0[p:q]
        for t in range(T):
            if keep_k is not None:
                prev = prev * keep_k[t]  # h_{t-1} → 0 where the stream resets                 (R1)
            np.matmul(prev, W_hk, out=rec2)
            rec += b_hk  # v_t                                                            (G1)
            a = gates_k[t]
            a[:, :2] += rec[:, :2]
            sigmoid_(a[:, :2])  # r_t, z_t                                               (G2)
            r, z, n = a[:, 0], a[:, 1], a[:, 2]
            v_n_k[t] = rec_n
            rec_n *= r
            n += rec_n
            np.tanh(n, out=n)  # n_t = tanh(u^n + r_t ∘ v^n)                              (G3)
            ht = h_k[t]
            np.subtract(prev[:, s:e], n, out=ht)
            ht *= z
            ht += n  # h_t = n_t + z_t ∘ (h_{t-1} − n_t)                                  (G4)
            wait()  # every unit of h_t is written before any thread reads it
            prev = h_rows[t]

    parallel.in_lockstep(_overflow_quiet(loop), parallel.gated_blocks(N, H, N * H * 3 * H))
    return h, (x, h0, W_x, W_h, gates, v_n, h, keep)


def gru_backward(dh, cache, factored=False):
    """dh: (T, N, H) = ∂J/∂h_t from above, excluding the path through step t+1
    -> dx: (T, N, D), dh0: (N, H), dW_x: (D, 3H), dW_h: (H, 3H), db_x: (3H,), db_h: (3H,);
    factored=True (dynamic evaluation) gives dW_x and dW_h as layers.Outer, their products left
    unformed, and dx by parallel.matmul_by_rows_of.

    One pass backwards in time (docs/gated-derivation.md §2) carrying one accumulator, η, the
    whole ∂J/∂h_t. Every γ of a step is η_t times a local derivative K computed for all t before
    the loop (G6-G8). dh0 is returned for tests; the model drops it (truncated BPTT)."""
    # Long on purpose (~65 lines), as lstm_backward: one closure, one block's views.
    x, h0, W_x, W_h, gates, v_n, h, keep = cache
    h_first, h_rest = previous_states(h0, h, keep)  # h_{t-1} as step t saw it
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = gates.dtype
    G = gates.reshape(T, N, 3, H)
    du = np.empty_like(gates)  # the local derivatives K, then γ^u_t = ∂J/∂u_t in place
    dv = np.empty_like(gates)  # γ^v_t = ∂J/∂v_t
    dnext = np.empty((N, H), dtype=dtype)  # ε_1 = ∂J/∂h_0, filled at the end

    def loop(streams, units, barrier):  # streams p:q, units s:e: local derivatives, then back in time
        (p, q), (s, e) = streams, units
        r, z, n = (G[:, p:q, k, s:e] for k in range(3))
        K = du.reshape(T, N, 3, H)[:, p:q, :, s:e]
        DV = dv.reshape(T, N, 3, H)[:, p:q, :, s:e]
        np.multiply(n, n, out=K[:, :, 2])
        np.subtract(1.0, K[:, :, 2], out=K[:, :, 2])
        K[:, :, 2] *= 1.0 - z  # K^n = (1 − z_t) ∘ (1 − n_t²)                              (G6)
        np.multiply(r, r, out=K[:, :, 0])
        np.subtract(r, K[:, :, 0], out=K[:, :, 0])  # σ' = σ − σ²
        K[:, :, 0] *= v_n[:, p:q, s:e]
        K[:, :, 0] *= K[:, :, 2]  # K^r = K^n ∘ v^n_t ∘ r_t(1 − r_t)                       (G8)
        np.multiply(z, z, out=K[:, :, 1])
        np.subtract(z, K[:, :, 1], out=K[:, :, 1])
        K[0, :, 1] *= h_first[p:q, s:e] - n[0]
        K[1:, :, 1] *= h_rest[:, p:q, s:e] - n[1:]  # K^z = (h_{t-1} − n_t) ∘ z_t(1 − z_t) (G7)
        W_hT = _gate_columns(W_h, 3, s, e, transpose=True)  # (3H, e − s)
        eta = np.empty((q - p, e - s), dtype=dtype)  # η_t
        eps = np.zeros((q - p, e - s), dtype=dtype)  # ε_{t+1}, zero after the window's last step
        dh_k, dv_rows, eta_row = dh[:, p:q, s:e], dv[:, p:q], eta[:, None, :]  # views made once
        keep_k = None if keep is None else keep[:, p:q]
        wait = barrier.wait
        for t in reversed(range(T)):
            Kt, dvt = K[t], DV[t]
            np.add(dh_k[t], eps, out=eta)  # η_t = dh_t + ε_{t+1}                           (G5)
            Kt *= eta_row  # [γ^r γ^z γ^n]_t = η_t ∘ [K^r K^z K^n]_t                        (G6-G8)
            dvt[:, :2] = Kt[:, :2]  # γ^v_r = γ^u_r, γ^v_z = γ^u_z                         (G9)
            np.multiply(Kt[:, 2], r[t], out=dvt[:, 2])  # γ^v_n = r_t ∘ γ^u_n             (G9)
            wait()  # every unit's γ^v_t is written before any thread reads it
            np.matmul(dv_rows[t], W_hT, out=eps)
            eta *= z[t]
            eps += eta  # ε_t = γ^v_t W_hᵀ + η_t ∘ z_t                                      (G10)
            if keep_k is not None:
                eps *= keep_k[t]  # no gradient crosses a reset                               (R2)
        dnext[p:q, s:e] = eps

    parallel.in_lockstep(_overflow_quiet(loop), parallel.gated_blocks(N, H, N * H * 3 * H))
    du2 = du.reshape(T * N, 3 * H)
    dv2 = dv.reshape(T * N, 3 * H)
    dW_x, dW_h = _weight_grads(x, h_first, h_rest, du, dv, factored)  # (G11), (G13)
    db_x = du2.sum(axis=0)  # ∇b_x = Σ_t γ^u_t                                              (G12)
    db_h = dv2.sum(axis=0)  # ∇b_h = Σ_t γ^v_t                                              (G14)
    dx = _input_grad(du2, W_x, factored).reshape(T, N, D)  # ∂J/∂x_t = γ^u_t W_xᵀ          (G15)
    return dx, dnext, dW_x, dW_h, db_x, db_h  # dh0 = ε_1                                   (G16)


def _input_grad(gates_grad, W_x, factored):
    """γ W_xᵀ (T·N, D): what the layer sends below. Factored (dynamic evaluation's few rows) as
    parallel.matmul_by_rows_of, faster there; else as it always was (training's exact sums)."""
    if factored:
        return parallel.matmul_by_rows_of(gates_grad, W_x)
    return parallel.matmul(gates_grad, W_x.T)


def _weight_grads(x, h_first, h_rest, dx_gates, dh_gates, factored):
    """(∇W_x = Σ_t x_tᵀ γ_t, ∇W_h = Σ_t h_{t-1}ᵀ γ'_t) over a window: x (T, N, D), h_{t-1} as the
    steps saw them (h_first (N, H), h_rest (T − 1, N, H)), γ (T, N, G) for W_x and γ' for W_h
    (the same array for the LSTM, γ^u and γ^v for the GRU); as arrays, or factored: layers.Outer
    of the positions' rows (the previous states stacked into one (T·N, H) array)."""
    T, N, D = x.shape
    H, G = h_first.shape[1], dx_gates.shape[2]
    dx2, dh2 = dx_gates.reshape(T * N, G), dh_gates.reshape(T * N, G)
    if factored:
        prev = np.concatenate((h_first[None], h_rest)).reshape(T * N, H)
        return layers.Outer(x.reshape(T * N, D), dx2, (D, G)), layers.Outer(prev, dh2, (H, G))
    dW_x = parallel.matmul(x.reshape(T * N, D).T, dx2)  # ∇W_x = Σ_t x_tᵀ γ_t
    dW_h = h_first.T @ dh_gates[0]  # ∇W_h = Σ_t h_{t-1}ᵀ γ'_t
    if T > 1:
        dW_h += parallel.matmul(h_rest.reshape((T - 1) * N, H).T, dh_gates[1:].reshape((T - 1) * N, G))
    return dW_x, dW_h


# --------------------------------------------------------------------------------------------
# Inverted dropout: out = x ∘ m / (1 − p), m_k ~ Bernoulli(1 − p) kept units.             (D1)


def dropout_forward(x, p, rng_or_mask=None):
    """x: any shape, p: drop probability in [0, 1), rng_or_mask: a numpy Generator to draw the
    keep mask from (shape x.shape), or an explicit keep mask (bool or 0/1, broadcastable to x;
    e.g. (N, H) against (T, N, H) for one mask per stream over the window)
    -> out: x's shape and dtype, cache (the scaled mask m / (1 − p), or None).

    Kept units are scaled by 1/(1 − p) so that E[out] = x (D2) and nothing changes at
    evaluation. p = 0 returns x itself and a None cache, drawing nothing from the Generator."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0:
        return x, None
    scale = x.dtype.type(1.0 / (1.0 - p))
    if isinstance(rng_or_mask, np.random.Generator):
        mask = rng_or_mask.random(x.shape, dtype=x.dtype) >= p  # P(keep) = 1 − p          (D1)
    elif rng_or_mask is None:
        raise ValueError("dropout with p > 0 needs a numpy Generator or a mask")
    else:
        mask = np.asarray(rng_or_mask)
    scaled = mask.astype(x.dtype)
    scaled *= scale  # m / (1 − p)
    return x * scaled, scaled  # out = x ∘ m / (1 − p)                                     (D1)


def dropout_backward(dout, cache):
    """dout: out's shape -> dx: ∂J/∂x = dout ∘ m / (1 − p) (D3); dout itself when p was 0."""
    if cache is None:
        return dout
    return dout * cache  # ∂J/∂x = dout ∘ m / (1 − p)                                       (D3)
