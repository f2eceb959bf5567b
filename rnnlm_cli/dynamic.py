"""Dynamic evaluation: the model keeps learning from the text it scores (Mikolov's -dynamic;
Krause et al. 2018, "Dynamic evaluation of neural sequence models"). Pure numerics: the update
rules, the gradient statistics of the RMS rule and the lazy decay of sparse arrays. The stream
reader (evaluate.stream_log_probs) calls them; the CLI parses the settings; the training text
the statistics come from is read by evaluate.dynamic_plan.

The text is read in segments of K tokens. Each segment is scored first; then, with θ₀ the
trained weights and g the gradient of the segment's mean cross-entropy, every trained array
takes one step:

    sgd:  θ ← θ − LR · clip(g) + λ · (θ₀ − θ)             clip: to the model's train.clip_norm
    rms:  θ ← θ − LR · g / (MS + ε) + λ · r ⊙ (θ₀ − θ)

MS, per entry, is the root mean square of the gradients of the first N training tokens read in
segments of K (rms_statistics); r = MS / (the mean over arrays of each array's mean MS), clipped
to at most 1/λ (decay_rates). With λ = 0 there is no pull back toward θ₀.

Sparse arrays. The embedding (untied, or tied to the class output's word matrix) and the
output layer's sparse arrays (class columns, hsm nodes: output.sparse_axes) get a gradient on a
few slices only (rows or columns). With λ = 0 only those slices change. With λ > 0 the pull
back acts on every entry at every update; an entry no gradient touches moves by it alone,
θ − θ₀ ← (1 − λr)(θ − θ₀) (sgd: r = 1), so after k such updates θ − θ₀ has been multiplied by
(1 − λr)^k. That is applied lazily: every slice
keeps the number of updates it has seen (its stamp); before a forward pass reads slices (the
embedding rows of the segment's inputs, output.touched of its targets) and before a gradient
moves them, the updates they missed are applied at once (catch_up). A slice never touched by a
gradient has θ = θ₀ and nothing to decay. current(state) brings every slice up to date.

Speed (docs/test-time.md, "What a segment costs"). A recurrent matrix's gradient is kept as its
factors (layers.Outer: Σ_t x_tᵀ γ_t) and formed a cache-sized block of rows at a time inside the
update, so an update is one pass over those weights and their per-entry factors; sparse arrays
are stepped on their touched slices only, in place. The sgd rule at λ = 0 keeps the gradients
training uses (so its figures stay bit for bit what `--dynamic LR` always gave).

Shapes: `params`, `grads`, MS, r are dicts keyed as weights.npz, each array shaped as its
parameter; a gradient is a dense array, a layers.SparseRows (rows along axis 0), a
layers.ColumnBlocks (column ranges along the last axis), a layers.RowBlocks (row ranges: a tied
embedding) or a layers.Outer (a recurrent matrix's factors). Float arrays keep the model's dtype.
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from . import data, layers, model, optim, output, parallel
from .errors import UserError
from .layers import ColumnBlocks, Outer, RowBlocks, SparseRows

RULES = ("sgd", "rms")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What was asked for: `--dynamic LR` and the `--dynamic-*` options."""
    lr: float
    rule: str = "sgd"
    segment: int | None = None  # K, tokens scored between two updates; None: the model's train.bptt
    decay: float = 0.0  # λ
    epsilon: float = 2e-5  # ε (rms)
    stats: int = 100_000  # N, training tokens (targets) for MS (rms)
    stats_from: str | None = None  # the text of the statistics; None: the model's data.train


class Plan(NamedTuple):
    """The settings as one model applies them: its segment K filled in, its clip norm (sgd), and
    for rms MS {key: array} with the number of targets and the text it was computed from."""
    settings: Settings
    clip_norm: float | None = None
    ms: dict | None = None
    stats_targets: int = 0
    stats_from: str | None = None


def check(settings):
    """settings, or a UserError naming the option whose value is out of range."""
    s = settings
    if not (np.isfinite(s.lr) and s.lr >= 0):
        raise UserError(f"--dynamic {s.lr}: the learning rate must be a finite number >= 0")
    if s.rule not in RULES:
        raise UserError(f"--dynamic-rule {s.rule}: expected one of {', '.join(RULES)}")
    if s.segment is not None and not (isinstance(s.segment, (int, np.integer)) and s.segment >= 1):
        raise UserError(f"--dynamic-segment {s.segment}: must be a whole number of tokens >= 1")
    if not 0.0 <= s.decay <= 1.0:
        raise UserError(f"--dynamic-decay {s.decay}: must be a number in [0, 1]")
    if not (np.isfinite(s.epsilon) and s.epsilon > 0):
        raise UserError(f"--dynamic-epsilon {s.epsilon}: must be a finite number > 0")
    if not (isinstance(s.stats, (int, np.integer)) and s.stats >= 1):
        raise UserError(f"--dynamic-stats {s.stats}: must be a whole number of tokens >= 1")
    return settings


def as_plan(dynamic, segment, clip_norm=None):
    """What a stream reader was given -> a Plan, or None for a static reading: None or LR 0;
    a number (the learning rate of the sgd rule, in segments of `segment`, clipped to
    clip_norm: the meaning `dynamic` always had); or a Plan (its segment defaulting to `segment`)."""
    if isinstance(dynamic, Plan):
        if not dynamic.settings.lr:
            return None
        if dynamic.settings.segment is None:
            dynamic = dynamic._replace(settings=dataclasses.replace(dynamic.settings, segment=segment))
        return dynamic
    if not dynamic:
        return None
    return Plan(Settings(float(dynamic), segment=segment), clip_norm)


def report(plan):
    """The settings a reading used, as `eval --json` reports them (epsilon and the statistics:
    rms only, else None)."""
    s = plan.settings
    rms = s.rule == "rms"
    return {"dynamic": s.lr, "dynamic_rule": s.rule, "dynamic_segment": s.segment, "dynamic_decay": s.decay,
            "dynamic_epsilon": s.epsilon if rms else None, "dynamic_stats": plan.stats_targets if rms else None,
            "dynamic_stats_from": plan.stats_from if rms else None}


# --------------------------------------------------------------------------------------------
# The statistics of the RMS rule


def rms_statistics(params, model_cfg, ids, segment, reset_at=None):
    """ids: (S,) a training token stream -> (MS {key: array shaped as params[key]}, windows):
    MS = √(mean over the windows of g²), g the gradient of each window's mean cross-entropy,
    the stream read in windows of `segment` tokens with carried state (batch 1, no dropout;
    `reset_at` as in training). The squares are summed in the model's dtype."""
    model_cfg = dataclasses.replace(model_cfg, loss="cross_entropy")
    squares = {k: np.zeros_like(params[k]) for k in model.trainable(params, model_cfg)}
    state = model.init_state(model_cfg, 1, params["embedding"].dtype)
    workspace, windows = {}, 0
    for inputs, targets in data.iter_windows(np.asarray(ids)[None, :], segment):
        _, state, cache = model.forward(params, model_cfg, inputs, targets, state, workspace=workspace,
                                        reset_at=reset_at)
        for key, g in model.backward(cache, workspace, sparse_embedding=True, sparse_tied=True).items():
            _add_square(squares[key], g)
        windows += 1
    for sq in squares.values():
        sq /= max(windows, 1)
        np.sqrt(sq, out=sq)
    return squares, windows


def _add_square(total, g):
    """total += g², only where a sparse gradient has entries (g is consumed)."""
    if isinstance(g, SparseRows):
        total[g.ids] += g.rows * g.rows
    elif isinstance(g, ColumnBlocks):
        for (a, b), block in zip(g.ranges, g.blocks):
            total[..., a:b] += block * block
    elif isinstance(g, RowBlocks):
        for (a, b), block in zip(g.ranges, g.blocks):
            total[a:b] += block * block
    else:
        total += np.multiply(g, g, out=g)


def decay_rates(ms, decay):
    """r = MS / (the mean over arrays of each array's mean MS), clipped to at most 1/λ (λ > 0):
    each entry's share of the pull back toward θ₀, larger where training gradients are."""
    mean = float(np.mean([float(m.mean(dtype=np.float64)) for m in ms.values()]))
    rates = {k: (m / mean).astype(m.dtype) if mean > 0 else np.ones_like(m) for k, m in ms.items()}
    if decay > 0:
        for r in rates.values():
            np.minimum(r, 1.0 / decay, out=r)
    return rates


# --------------------------------------------------------------------------------------------
# Adapting a copy of the weights, segment by segment

FUSED_BLOCK = 1 << 16  # entries of a factored gradient formed at once (256 KB of float32: in the core's cache)
RUN = 8  # catch_up works on views of runs of consecutive ids this long on average, else gathers the ids
# entries a thread at least when an update is split over the cores: an update streams its arrays
# once, a few ns an entry, and handing half of a 2×200 model's matrix (160k entries) to a second
# thread made it slower on the 2-core machine measured (benchmarks/dynamic_speed.py); the 2×650
# model's (1.7M) still gained a little
SPLIT = 1 << 19


def start(params, model_cfg, plan):
    """The adaptation state of a reading: a copy of params to adapt (state["params"]; the
    caller's arrays, θ₀, are never written), the rule's per-entry factors and the stamps of the
    lazily decayed arrays. rms: step = LR / (MS + ε). With λ > 0, pull = λr (sgd: λ); the dense
    arrays take the step as θ ← keep ⊙ θ + anchor − step ⊙ g with keep = 1 − pull and
    anchor = pull ⊙ θ₀ precomputed (no temporary the size of an array per update), the lazy
    ones use pull. state["factored"]: the gradients come as model.backward's sparse and
    factored forms (all but the sgd rule at λ = 0, which stays optim.sgd_update on the gradients
    training uses, bit for bit the rule `--dynamic LR` always had)."""
    s = plan.settings
    state = {"params": {k: v.copy() for k, v in params.items()}, "theta0": params, "plan": plan,
             "model_cfg": model_cfg, "n": 0, "step": None, "pull": None, "log_keep": None, "keep": None,
             "anchor": None, "lazy": {}, "stamp": {}, "factored": s.rule != "sgd" or s.decay > 0, "scratch": {}}
    if s.rule == "rms":
        state["step"] = {k: (s.lr / (m + s.epsilon)).astype(m.dtype, copy=False) for k, m in plan.ms.items()}
    if s.decay > 0:
        lazy = state["lazy"] = lazy_axes(model_cfg)
        dense = [k for k in model.trainable(params, model_cfg) if k not in lazy]
        if s.rule == "rms":
            pull = {k: (s.decay * r).astype(r.dtype) for k, r in decay_rates(plan.ms, s.decay).items()}
            state["pull"] = {k: pull[k] for k in lazy}
            with np.errstate(divide="ignore"):  # λr = 1: log 0 = −∞, and the factor e^{−∞} = 0
                state["log_keep"] = {k: np.log1p(-pull[k]) for k in lazy}
            state["keep"] = {k: 1 - pull[k] for k in dense}
            state["anchor"] = {k: pull[k] * params[k] for k in dense}
        else:
            state["pull"], state["keep"] = s.decay, 1.0 - s.decay
            state["log_keep"] = float(np.log1p(-s.decay)) if s.decay < 1 else -np.inf
            state["anchor"] = {k: s.decay * params[k] for k in dense}
    return state


def lazy_axes(model_cfg):
    """{key: axis} of the arrays whose gradient is sparse (so decayed lazily): the embedding's
    rows (tied: when the output layer's word matrix gets a sparse gradient, the class output's
    columns; a tied softmax's is dense), the output layer's sparse arrays."""
    k = output.kind(model_cfg)
    axes = {"embedding": 0} if not model_cfg.tie_weights or k.TIED in k.SPARSE_AXES else {}
    axes.update(output.sparse_axes(model_cfg))
    return axes


def gradient(state, cache, workspace=None):
    """The gradient of a segment (a model.forward cache with need_grad), in the forms update
    takes: the embedding's rows (tied ones too: layers.RowBlocks), the output's slices and, but
    for the sgd rule at λ = 0, the recurrent matrices' factors (layers.Outer) instead of their
    products."""
    return model.backward(cache, workspace, sparse_embedding=True, sparse_tied=True, factored=state["factored"])


def refresh(state, inputs, targets):
    """Before the forward pass of a segment (inputs, targets: (N, K) ids): bring the slices of
    the lazily decayed arrays that it reads up to date."""
    lazy = state["lazy"]
    if not lazy:
        return
    reads = output.touched(state["params"], state["model_cfg"], targets.reshape(-1), tied_embedding=True)
    if "embedding" in lazy:
        used = np.unique(inputs)
        reads["embedding"] = np.union1d(reads["embedding"], used) if "embedding" in reads else used
    for key, ids in reads.items():
        if key in lazy:
            catch_up(state, key, ids)


def catch_up(state, key, ids):
    """Apply to the slices `ids` (distinct, along the key's lazy axis) the pull back of the
    updates they missed: θ ← θ₀ + (1 − λr)^k ⊙ (θ − θ₀), k = updates done − the slice's stamp;
    (1 − λr)^k as exp(k · log(1 − λr)) (rms: log(1 − λr) per entry, kept from start). Runs of
    consecutive ids (a class's columns, a tied embedding's rows) are done in place on views."""
    axis, n = state["lazy"][key], state["n"]
    p, p0 = state["params"][key], state["theta0"][key]
    stamp = state["stamp"].setdefault(key, np.zeros(p.shape[axis], np.int64))
    missed = n - stamp[ids]
    stale = missed > 0
    if not stale.any():
        return
    ids, missed = ids[stale], missed[stale]
    shape = [1] * p.ndim
    shape[axis] = -1
    missed = missed.astype(p.dtype).reshape(shape)
    log_keep = state["log_keep"]
    if not isinstance(log_keep, dict):  # one rate for every entry: a factor per slice
        missed = np.exp(missed * log_keep)
    starts = np.flatnonzero(np.diff(ids, prepend=-2) != 1)  # where each run of consecutive ids starts
    scattered = len(starts) * RUN > len(ids)  # mostly lone ids (an untied embedding's rows): gather, scatter
    if scattered:
        runs = [(_index(axis, ids), slice(None))]
    else:
        stops = np.append(starts[1:], len(ids))
        runs = [(_index(axis, slice(int(ids[a]), int(ids[a]) + b - a)), slice(a, b)) for a, b in zip(starts, stops)]
    for index, run in runs:
        k = missed[_index(axis, run)]
        factor = np.exp(k * log_keep[key][index]) if isinstance(log_keep, dict) else k
        base = p0[index]
        moved = p[index] - base
        moved *= factor
        if scattered:
            p[index] = np.add(base, moved, out=moved)
        else:
            np.add(base, moved, out=p[index])  # a view: in place
    stamp[ids] = n


def update(state, grads):
    """One step of the plan's rule on every trained array, in place on state["params"], from
    `grads` (the segment's gradient, as `gradient` gives it; consumed: scaled in place)."""
    s = state["plan"].settings
    scale = None  # rms: the per-entry step
    if s.rule == "sgd":
        if not state["factored"]:  # λ = 0: exactly the rule `--dynamic LR` always had
            _sgd_as_always(state, grads)
            state["n"] += 1
            return
        scale = s.lr * optim.clip_factor(global_norm(grads), state["plan"].clip_norm)
    for key, g in grads.items():
        if isinstance(g, Outer):
            _outer_step(state, key, g, scale)
        elif isinstance(g, (ColumnBlocks, RowBlocks)):
            _blocks_step(state, key, 0 if isinstance(g, RowBlocks) else len(g.shape) - 1, g, scale)
        elif isinstance(g, SparseRows):
            _sparse_step(state, key, 0, g.ids, g.rows, scale)
        else:
            _dense_step(state, key, g, scale)
    state["n"] += 1


def current(state):
    """The adapted weights with every lazily decayed slice brought up to date (params dict)."""
    for key, axis in state["lazy"].items():
        catch_up(state, key, np.arange(state["params"][key].shape[axis]))
    return state["params"]


def _sgd_as_always(state, grads):
    """The sgd rule at λ = 0, bit for bit as optim.global_norm and optim.sgd_update apply it to
    the gradients training uses, where a tied embedding's is a dense (V, E) array. Here that
    gradient comes as its rows (RowBlocks, the same sums): they are written into a kept zero
    buffer for the norm (summed over the dense array, as before) and then only they move: the
    other rows would move by −LR·0."""
    rows, dense = grads.get("embedding"), None
    if isinstance(rows, RowBlocks):
        dense = state.get("dense_embedding")
        if dense is None:
            dense = state["dense_embedding"] = np.zeros(rows.shape, dtype=state["params"]["embedding"].dtype)
        for (a, b), block in zip(rows.ranges, rows.blocks):
            dense[a:b] = block
        grads["embedding"] = dense
    scale = state["plan"].settings.lr * optim.clip_factor(optim.global_norm(grads), state["plan"].clip_norm)
    if dense is not None:
        del grads["embedding"]
        p = state["params"]["embedding"]
        for (a, b), block in zip(rows.ranges, rows.blocks):
            block *= -scale  # as optim's step: g ← −lr·g, θ ← θ + g
            p[a:b] += block
            dense[a:b] = 0
    optim.sgd_update(state["params"], grads, scale)


def global_norm(grads):
    """‖g‖ over every gradient of `gradient` together (for the sgd rule's clipping). A factored
    one, LᵀR, from its factors when that is cheaper than forming it: ‖LᵀR‖² = Σ (LLᵀ) ⊙ (RRᵀ),
    two M × M products in float64."""
    total = 0.0
    for g in grads.values():
        if isinstance(g, Outer):
            (M, D), G = g.left.shape, g.right.shape[1]
            if M * (D + G) <= D * G:
                left, right = g.left.astype(np.float64), g.right.astype(np.float64)
                total += max(0.0, float(np.vdot(left @ left.T, right @ right.T)))
                continue
            g = g.dense()
        values = [g.rows] if isinstance(g, SparseRows) else g.blocks if isinstance(g, (ColumnBlocks, RowBlocks)) \
            else [g]
        total += sum(float(np.vdot(v, v)) for v in values)
    return float(np.sqrt(total))


def _index(axis, ids):
    return (slice(None),) * axis + (ids,)


def _at(value, key, index):
    """A per-entry factor at `index` of its key's array, or the scalar it is for every entry."""
    return value[key][index] if isinstance(value, dict) else value


def _sparse_step(state, key, axis, ids, g, scale):
    """The rule on the slices `ids` of one array (g: the gradient's values there)."""
    p, decay = state["params"][key], state["plan"].settings.decay
    lazy = key in state["lazy"]
    if decay and not lazy:
        raise ValueError(f"{key}: a sparse gradient for an array that is not decayed lazily")
    if lazy:
        catch_up(state, key, ids)
    index = _index(axis, ids)
    theta = p[index]
    if decay:
        pull = (state["theta0"][key][index] - theta) * _at(state["pull"], key, index)
    theta -= g * (scale if scale is not None else state["step"][key][index])
    if decay:
        theta += pull
    p[index] = theta
    if lazy:
        state["stamp"][key][ids] = state["n"] + 1


def _blocks_step(state, key, axis, g, scale):
    """The rule on the ranges of slices along `axis` of one array that a ColumnBlocks or
    RowBlocks gradient g holds, in place on views of them (no gather, no scatter), the blocks
    split over the cores (g consumed)."""
    p, decay = state["params"][key], state["plan"].settings.decay
    lazy = key in state["lazy"]
    if decay and not lazy:
        raise ValueError(f"{key}: a sparse gradient for an array that is not decayed lazily")
    if not g.ranges:
        return
    ids = np.concatenate([np.arange(a, b) for a, b in g.ranges]) if lazy else None
    if lazy:
        catch_up(state, key, ids)
    p0, pull = state["theta0"][key], state["pull"]
    step = state["step"][key] if scale is None else None

    def run(i, j):
        for (a, b), grad in zip(g.ranges[i:j], g.blocks[i:j]):
            index = (slice(None),) * axis + (slice(a, b),)
            theta = p[index]
            if decay:
                back = p0[index] - theta
                back *= _at(pull, key, index)
            grad *= scale if step is None else step[index]
            theta -= grad
            if decay:
                theta += back

    sizes = [block.size for block in g.blocks]
    parts = parallel.parts_for(sum(sizes), SPLIT)
    if parts == 1:
        run(0, len(sizes))
    else:
        parallel.run([lambda i=i, j=j: run(i, j) for i, j in parallel.balanced_ranges(sizes, parts)])
    if lazy:
        state["stamp"][key][ids] = state["n"] + 1


def _outer_step(state, key, g, scale):
    """The rule on every entry of a recurrent matrix whose gradient is factored, g = LᵀR: the
    rows of the gradient are formed FUSED_BLOCK entries at a time into a scratch block that
    stays in cache, and each block at once takes θ ← keep ⊙ θ + anchor − step ⊙ (its rows of g)
    (see start): one pass over θ (and step, keep, anchor), none over a gradient array. The rows
    are split over the cores."""
    p, decay = state["params"][key], state["plan"].settings.decay
    D, G = p.shape
    left_t, right = g.left.T, g.right  # (D, M), (M, G)
    step = scale if scale is not None else state["step"][key]
    keep = state["keep"][key] if isinstance(state["keep"], dict) else state["keep"]
    anchor = state["anchor"][key] if decay else None
    rows = max(1, FUSED_BLOCK // G)
    dtype = np.result_type(left_t, right)

    def run(part, r0, r1):
        buf = layers.buffer(state["scratch"], f"fused.{part}", (rows, G), dtype)
        for a in range(r0, r1, rows):
            b = min(r1, a + rows)
            grad, theta = buf[:b - a], p[a:b]
            np.matmul(left_t[a:b], right, out=grad)  # rows a:b of g
            grad *= step if np.isscalar(step) else step[a:b]
            if decay:
                theta *= keep if np.isscalar(keep) else keep[a:b]
                theta += anchor[a:b]
            theta -= grad

    parts = min(parallel.parts_for(D * G, SPLIT), D)
    if parts == 1:
        run(0, 0, D)
    else:
        parallel.run([lambda k=k, r0=r0, r1=r1: run(k, r0, r1)
                      for k, (r0, r1) in enumerate(parallel.ranges(D, parts))])


def _dense_step(state, key, g, scale):
    """The rule on every entry of one array, θ ← keep ⊙ θ + anchor − step ⊙ g (see start), in
    place, in blocks over the cores (g consumed)."""
    p, decay = state["params"][key], state["plan"].settings.decay
    if key in state["lazy"]:  # a dense gradient for a lazily decayed array: a slice for each of its ids
        axis = state["lazy"][key]
        _sparse_step(state, key, axis, np.arange(p.shape[axis]), g, scale)
        return
    g = np.ascontiguousarray(g)
    step = scale if scale is not None else state["step"][key].reshape(-1)
    keep = state["keep"][key].reshape(-1) if isinstance(state["keep"], dict) else state["keep"]
    anchor = state["anchor"][key].reshape(-1) if decay else None

    def block(a, b):
        theta, grad = p.reshape(-1)[a:b], g.reshape(-1)[a:b]
        grad *= step if np.isscalar(step) else step[a:b]
        if decay:
            theta *= keep if np.isscalar(keep) else keep[a:b]
            theta += anchor[a:b]
        theta -= grad
    parallel.map_rows(block, p.size, 1, SPLIT)
