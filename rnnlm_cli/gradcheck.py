"""Central-difference gradient checks in float64, for the whole model and for single layers.

    ∂J/∂θ_i ≈ (J(θ + ε e_i) − J(θ − ε e_i)) / 2ε

compared with the analytic gradient a over the entries checked (all of a small array, a random
sample of a big one) by the normwise relative error

    rel_error = ‖a − n‖ / (‖a‖ + ‖n‖).

Why normwise and not CS231n's entrywise max |a_i − n_i| / max(1e-8, |a_i| + |n_i|): in float64 a
central difference carries an absolute error of about 1e-12 (rounding in J, ~1e-16·|J|/ε, plus the
ε² truncation term), so an entry whose true gradient is 1e-7 (common deep in a sigmoid stack)
cannot be measured to 1e-6 relative however right the code is. The norm over the checked entries
is not fooled by such an entry, and a wrong formula still shows up at 1e-3 or worse (the tests
plant errors to prove it).
"""

import dataclasses

import numpy as np

from . import model, regularize

TOLERANCE = 1e-6
EPS = 1e-5


def rel_error(analytic, numeric):
    """‖a − n‖ / (‖a‖ + ‖n‖), 0 when both are exactly zero."""
    a, n = np.asarray(analytic, np.float64).ravel(), np.asarray(numeric, np.float64).ravel()
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    return float(np.linalg.norm(a - n) / denom) if denom > 0 else 0.0


def numerical_gradient(f, x, indices, eps=EPS):
    """Central differences of the scalar f() with respect to the entries `indices` of x
    (flat indices into x, perturbed in place and restored)."""
    flat = x.reshape(-1)
    grad = np.empty(len(indices))
    for k, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        grad[k] = (plus - minus) / (2 * eps)
    return grad


def sample_indices(size, limit, rng):
    """All flat indices of a small array, else `limit` distinct random ones."""
    if size <= limit:
        return np.arange(size)
    return np.sort(rng.choice(size, size=limit, replace=False))


def random_problem(model_cfg, vocab_size, batch_size, bptt, seed):
    """A float64 model with random weights and biases, a random window and a NON-zero carried
    state, so that every term of the backward pass (including h_0 W_h) is exercised."""
    rng = np.random.default_rng(seed)
    params = model.init_params(model_cfg, vocab_size, seed, "float64")
    for key in model.trainable(params, model_cfg):
        params[key][...] = rng.normal(0.0, 0.5, size=params[key].shape)
    inputs = rng.integers(0, vocab_size, size=(batch_size, bptt))
    targets = rng.integers(0, vocab_size, size=(batch_size, bptt))
    state = rng.uniform(-0.8, 0.8, size=model.init_state(model_cfg, batch_size, "float64").shape)
    if model_cfg.cell == "elman" and model_cfg.activation in ("relu", "sigmoid"):
        state = np.abs(state)  # a state such a layer could have produced
    return params, inputs, targets, state


RESET_ID = 1  # <eos>'s id in every vocabulary


def check_model(model_cfg, vocab_size=13, batch_size=3, bptt=5, seed=0, samples=40, eps=EPS, resets=False,
                ar=0.0, tar=0.0, weight_decay=0.0):
    """[(key, worst relative error, entries checked)] for every parameter of the model.
    With regularizers, the masks of the window (dropout of every kind, embedding rows, W_h
    entries) are drawn once and held fixed for every evaluation of J; `ar`, `tar` add AR and
    TAR to J, `weight_decay` λ adds λ/2 ‖θ‖² over the trained arrays (whose gradient is the
    λθ that training adds). With resets (data.independent), about a third of the inputs are
    <eos>, where the state is replaced by zero: the reset mask is exercised in every layer."""
    model_cfg = dataclasses.replace(model_cfg)
    params, inputs, targets, state = random_problem(model_cfg, vocab_size, batch_size, bptt, seed)
    reset_at = None
    if resets:
        reset_at = RESET_ID
        rng = np.random.default_rng(seed + 3)
        inputs = np.where(rng.random(inputs.shape) < 0.35, RESET_ID, inputs)
    masks = regularize.draw_masks(np.random.default_rng(seed + 7), model_cfg, bptt, batch_size, vocab_size,
                                  "float64")
    trained = model.trainable(params, model_cfg)
    _, grads, _ = model.loss_and_grads(params, model_cfg, inputs, targets, state.copy(), masks, reset_at, ar, tar)
    if weight_decay:
        grads = regularize.add_weight_decay(grads, params, weight_decay)

    def objective():
        loss, _, cache = model.forward(params, model_cfg, inputs, targets, state.copy(), masks=masks,
                                       reset_at=reset_at, ar=ar, tar=tar)
        decay = 0.5 * weight_decay * sum(float(np.vdot(params[k], params[k])) for k in trained)
        return loss + model.penalty(cache) + decay

    rng = np.random.default_rng(seed + 1)
    results = []
    for key in trained:
        value, grad = params[key], grads[key]
        grad = grad.dense() if hasattr(grad, "dense") else grad
        idx = sample_indices(value.size, samples, rng)
        numeric = numerical_gradient(objective, value, idx, eps)
        results.append((key, rel_error(grad.reshape(-1)[idx], numeric), len(idx)))
    return results
