"""The neural cache (Grave et al. 2017, "Improving neural language models with a continuous
cache"): a test-time memory of the states already read and the words that followed them.

In a stream read with carried state, h_t is the top recurrent layer's output at step t (the
state that predicts x_{t+1}). The cache holds the pairs (h_i, x_{i+1}) of the last W positions
of the same stream, and

    p(w | history) = (1 − λ) · p_model(w | h_t) + λ · Σ_i a_i · 1{x_{i+1} = w},
    a = softmax over i of θ · h_t · h_i,

over the min(W, t) positions i before t; the stream's first target, with nothing before it,
gets p_model. Only p(target) is ever needed, so the cache term is the attention summed where
the stored next word equals the target: O(W · H) per target, never O(W · V).

A window of T steps is done at once per stream: each position's scores against [the memory;
the window's own states] under a causal mask (position t sees the memory and the window's
positions before t, the last W of all of them), a log-sum-exp-safe softmax in float64, the
hits summed; then the memory keeps the last W. The math is in docs/test-time.md.

Shapes: N streams, T steps of a window, H the top layer's width, C ≤ W the states in memory,
K the number of θ tried at once (the dot products do not depend on θ: several θ cost one pass
of the model and one of the products).
"""

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import UserError

BLOCK_ENTRIES = 1 << 21  # attention scores (K · streams · T · (C + T)) held at once: ~16 MB in float64


@dataclass(frozen=True)
class Settings:
    """--cache W, --cache-theta θ, --cache-lambda λ. theta may be a tuple of θ (to try several at
    once: stream_log_probs's cache log-probs then get a leading axis, one row per θ)."""
    window: int
    theta: float = 1.0
    lam: float = 0.1

    def as_json(self):
        return {"window": self.window, "theta": self.theta, "lambda": self.lam}


def settings(window, theta=1.0, lam=0.1):
    """The validated Settings of the options, or None when window is 0 (the cache is off)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise UserError(f"--cache {window}: the window must be a whole number >= 0 (positions kept; 0 is off)")
    if not (isinstance(theta, numbers.Real) and math.isfinite(theta) and theta >= 0):
        raise UserError(f"--cache-theta {theta}: must be a finite number >= 0 (0 attends to the window uniformly)")
    if not (isinstance(lam, numbers.Real) and 0.0 <= lam <= 1.0):
        raise UserError(f"--cache-lambda {lam}: must be a number in [0, 1] (the cache's share of the probability)")
    return Settings(int(window), float(theta), float(lam)) if window > 0 else None


class Memory(NamedTuple):
    """What a cache holds between windows: states (N, C, H) float64 and next_ids (N, C), the
    word that followed each state; C ≤ W, the same for every stream."""
    states: np.ndarray
    next_ids: np.ndarray


def empty(n_streams, hidden_dim):
    """The memory of N streams that have read nothing: C = 0."""
    return Memory(np.empty((n_streams, 0, hidden_dim)), np.empty((n_streams, 0), dtype=np.int64))


def window_log_probs(states, targets, memory, window, theta=1.0):
    """One window of N streams read in step: states (N, T, H) (h_t predicts targets[:, t]),
    targets (N, T) ints, memory before the window -> (log p_cache(target) (N, T) float64,
    memory after the window). NaN where the cache is empty (a stream's first target); −inf
    where no remembered next word is the target. theta of shape (K,) gives (K, N, T)."""
    states = np.asarray(states, dtype=np.float64)
    C, T = memory.next_ids.shape[1], targets.shape[1]
    keys = np.concatenate((memory.states, states), axis=1)             # (N, C + T, H)
    key_ids = np.concatenate((memory.next_ids, targets), axis=1)       # (N, C + T)
    g = np.arange(C + T) - C  # each key's position relative to the window's first step
    t = np.arange(T)[:, None]
    visible = (g < t) & (g >= t - window)                              # (T, C + T), causal, last W
    theta = np.asarray(theta, dtype=np.float64)
    out = np.empty(theta.shape + targets.shape)
    block = max(1, BLOCK_ENTRIES // max(1, theta.size * T * (C + T)))  # streams per block: bounded memory
    for a in range(0, targets.shape[0], block):
        z = slice(a, a + block)
        dots = np.matmul(states[z], keys[z].transpose(0, 2, 1))       # (n, T, C + T): h_t · h_i
        hits = key_ids[z, None, :] == targets[z, :, None]              # (n, T, C + T): x_{i+1} = x_{t+1}
        out[..., z, :] = attention_log_probs(dots, visible, hits, theta)
    keep = min(window, C + T)
    return out, Memory(keys[:, C + T - keep:].copy(), key_ids[:, C + T - keep:].copy())


def attention_log_probs(dots, visible, hits, theta):
    """dots (n, T, M) the products h_t · h_i, visible (T, M) the mask, hits (n, T, M) bool, theta
    (K,) or scalar -> log Σ_i a_i · hits_i, a = softmax over the visible i of θ · dots, shape
    theta.shape + (n, T); NaN where nothing is visible."""
    scores = np.where(visible, theta[..., None, None, None] * dots, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    empty_rows = ~visible.any(axis=-1)                                 # (T,)
    top[..., empty_rows, :] = 0.0
    weights = np.exp(scores - top)                                     # the largest visible is 1
    with np.errstate(divide="ignore", invalid="ignore"):  # log 0: no hit, or nothing visible
        logp = np.log(np.where(hits, weights, 0.0).sum(axis=-1)) - np.log(weights.sum(axis=-1))
    logp[..., empty_rows] = np.nan
    return logp


def mix(logp_model, logp_cache, lam):
    """log((1 − λ) · p_model + λ · p_cache) per target from the two log-probabilities (any
    matching shapes; float64), computed in log space; p_model alone where the cache was empty
    (NaN). λ = 0 gives logp_model exactly. Cheap: many λ can be tried on one pass's arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = np.logaddexp(np.log1p(-lam) + logp_model, np.log(lam) + logp_cache)
    return np.where(np.isnan(logp_cache), logp_model, mixed)
