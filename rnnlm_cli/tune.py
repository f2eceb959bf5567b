"""Choosing the test-time settings on a validation file (`rnnlm tune`): the interpolation
weights of `--mix` and `--mix-probs`, dynamic evaluation's learning rate, decay and ε, the
neural cache's θ and λ. The grids, their reasons and their cost are in docs/test-time.md
("Choosing the settings: rnnlm tune").

The stages run in this order, each from the best setting of the one before:

    1. weights   one pass per component (the model, each --mix model, the --mix-probs file),
                 then EM on the (components × targets) probabilities (SRILM's compute-best-mix);
    2. dynamic   the rms statistics once; then one full pass of dynamic evaluation per setting:
                 the learning rate on a ladder of round numbers, coarse to fine, then the decay,
                 then (rms) ε;
    3. cache     one pass with every θ of the grid at once (the products h_t · h_i do not depend
                 on θ); every λ is a recombination of that pass's arrays (cache.mix).

Every figure is computed as `eval --batch-size 1` computes it (mix.file_log_probs, the same
sums), so the flags printed beside a row give that row's perplexity through `eval`.
"""

import dataclasses
import math
import os
import shlex
import time

import numpy as np

from . import cache as neural_cache, data, evaluate, mix, model
from . import dynamic as dyn
from .errors import UserError, shown as _shown

# --------------------------------------------------------------------------------------------
# The grids

RUNGS = (1, 1.5, 2, 3, 5, 7)  # the ladder of values: these times the powers of ten
LR_START = {"sgd": 2.0, "rms": 1e-4}  # where the learning rate's search starts (docs/test-time.md)
LR_EXTEND = 3  # coarse steps beyond the first three, at most, while the best is at an end
DECAY_START, DECAY_STEPS = 1e-3, 4  # the decay's search: 1e-3, then up the coarse rungs while it helps
EPSILON_EXTEND = 1
LAMBDAS = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
THETA_MULTIPLES = tuple(2.0 ** (k / 2) for k in range(-2, 19))  # 0.5 ... 512, ×√2 apart
SCALE_TOKENS = 2000  # positions of the valid text whose states set the scale of θ


def rung(i):
    """The i-th value of the ladder ..., 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, ...: RUNGS[i mod 6]
    times 10^(i div 6), as the float of its decimal text (so it prints back exactly)."""
    return float(f"{RUNGS[i % 6]:g}e{i // 6}")


def rung_index(value):
    """The i with rung(i) == value (a value on the ladder)."""
    guess = 6 * math.floor(math.log10(value))
    for i in range(guess - 6, guess + 7):
        if rung(i) == value:
            return i
    raise ValueError(f"{value} is not on the ladder")


def nearest_rung(value):
    """The index of the rung nearest to value > 0 on a log scale."""
    guess = 6 * math.floor(math.log10(value))
    return min(range(guess - 6, guess + 13), key=lambda i: abs(math.log(rung(i) / value)))


def ladder_search(score, start, extend=LR_EXTEND, refine=True, known=None):
    """Minimize score(value) over the ladder, coarse to fine. The coarse rungs are every other one
    (1, 2, 5, 10, ...: ×2 to ×2.5 apart): the start and its two coarse neighbours; while the best
    is the last coarse rung measured on one side, one more that way (at most `extend`); then, with
    `refine`, the fine rung between the best and its better coarse neighbour (at an edge: the one
    beyond it). score: value ->
    perplexity (inf: diverged); known: {rung index: perplexity} measured already.
    -> (best value, its perplexity, at_edge: the best is the last rung tried on its side)."""
    seen = dict(known or {})

    def at(i):
        if i not in seen:
            seen[i] = score(rung(i))
        return seen[i]
    for i in (start, start - 2, start + 2):
        at(i)
    for _ in range(extend):
        best = min(seen, key=seen.get)
        if best == max(seen):
            at(best + 2)
        elif best == min(seen):
            at(best - 2)
        else:
            break
    best = min(seen, key=seen.get)
    at_edge = best in (min(seen), max(seen))
    if refine:  # toward the better neighbour, or, at an edge, outward (where the minimum may lie)
        lower = best == min(seen) if at_edge else seen[best - 2] < seen[best + 2]
        at(best - 1 if lower else best + 1)
    best = min(seen, key=seen.get)
    return rung(best), seen[best], at_edge


def walk_up(score, baseline, start=DECAY_START, steps=DECAY_STEPS):
    """The smallest-perplexity value among 0 (perplexity `baseline`, measured) and the coarse
    rungs from `start` up, climbed while each beats the one before (at most `steps` + 1)
    -> (value, perplexity)."""
    best, best_ppl, i = 0.0, baseline, rung_index(start)
    for _ in range(steps + 1):
        ppl = score(rung(i))
        if not ppl < best_ppl:
            break
        best, best_ppl, i = rung(i), ppl, i + 2
    return best, best_ppl


def theta_grid(scale):
    """θ = c / scale for c in THETA_MULTIPLES, scale the median of h_t · h_t: c is then the score
    θ · h_t · h_i of a remembered state equal to the current one. Rounded to 3 significant
    digits, so that the printed --cache-theta gives the row's figure exactly."""
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    return tuple(sorted({float(f"{c / scale:.3g}") for c in THETA_MULTIPLES}))


def state_scale(params, config, vocab, ids, n=SCALE_TOKENS):
    """The median of h_t · h_t over the top layer's states at the first n positions of the
    stream `ids` (batch 1, carried state, the trained weights): the scale of the cache's scores."""
    model_cfg = config.model
    streams = np.asarray(ids[:n + 1])[None, :]
    state = model.init_state(model_cfg, 1, params["embedding"].dtype)
    squares = []
    with np.errstate(over="ignore", invalid="ignore"):
        for inputs, _ in data.iter_windows(streams, config.train.bptt):
            top, state, _ = model.hidden_forward(params, model_cfg, inputs.T, state,
                                                 reset_at=evaluate.reset_id(config, vocab))
            top = top.astype(np.float64)
            squares.append(np.einsum("tnh,tnh->tn", top, top).ravel())
    return float(np.median(np.concatenate(squares))) if squares else 1.0


# --------------------------------------------------------------------------------------------
# Interpolation weights by EM


def em_weights(logps, tol=1e-6, max_iterations=5000):
    """logps (K, T): the log-probabilities each of K components gives each target -> (weights
    (K,), iterations): the weights maximizing Σ_t log Σ_k w_k p_kt over the simplex, by EM from
    equal weights (w_k ← the mean over targets of w_k p_kt / Σ_j w_j p_jt), until no weight moves
    by more than tol. Targets that every component gives probability 0 are left out."""
    logps = np.asarray(logps, dtype=np.float64)
    logps = logps[:, np.isfinite(logps).any(axis=0)]
    weights = np.full(len(logps), 1.0 / len(logps))
    if not logps.shape[1]:
        return weights, 0
    for iteration in range(1, max_iterations + 1):
        with np.errstate(divide="ignore"):
            joint = np.log(weights)[:, None] + logps
        new = np.exp(joint - np.logaddexp.reduce(joint, axis=0)).mean(axis=1)
        moved = float(np.abs(new - weights).max())
        weights = new
        if moved < tol:
            break
    return weights, iteration


def round_weights(weights, places=4):
    """The weights rounded to `places` decimals, the largest set so that they sum to 1, as the
    text of --weights (which accepts a sum within 1e-6 of 1) -> (text, [floats of that text])."""
    rounded = [round(float(w), places) for w in weights]
    top = int(np.argmax(rounded))
    rounded[top] = round(1.0 - sum(w for k, w in enumerate(rounded) if k != top), places)
    text = ",".join(_number(w) for w in rounded)
    return text, [float(w) for w in text.split(",")]


# --------------------------------------------------------------------------------------------
# Rows and flags


def _number(x):
    """A number as the flags print it: the shortest decimal text that reads back as x."""
    return repr(float(x)) if float(x) != int(x) else str(int(x))


def flags(setting, mix_dirs=(), probs_path=None):
    """The options of `eval` and `score --carry` that give a row's figures. setting: {"weights":
    the --weights list or None (no mixture), "dynamic": dynamic.Settings or None, "cache":
    cache.Settings or None}."""
    parts = []
    if setting.get("weights") is not None:
        for other in mix_dirs:
            parts += ["--mix", str(other)]
        if probs_path is not None:
            parts += ["--mix-probs", str(probs_path)]
        parts += ["--weights", ",".join(_number(w) for w in setting["weights"])]
    s = setting.get("dynamic")
    if s is not None:
        parts += ["--dynamic", _number(s.lr), "--dynamic-rule", s.rule]
        parts += ["--dynamic-segment", str(s.segment)] if s.segment is not None else []
        parts += ["--dynamic-decay", _number(s.decay)] if s.decay else []
        parts += ["--dynamic-epsilon", _number(s.epsilon)] if s.rule == "rms" else []
        parts += ["--dynamic-stats", str(s.stats)] if s.rule == "rms" and s.stats != dyn.Settings.stats else []
        parts += ["--dynamic-stats-from", str(s.stats_from)] if s.rule == "rms" and s.stats_from else []
    c = setting.get("cache")
    if c is not None:
        parts += ["--cache", str(c.window), "--cache-theta", _number(c.theta), "--cache-lambda", _number(c.lam)]
    return " ".join(shlex.quote(p) for p in parts)


def settings_json(setting):
    """A row's settings as JSON: weights, dynamic ({lr, rule, segment, decay, epsilon}), cache."""
    s, c = setting.get("dynamic"), setting.get("cache")
    return {"weights": setting.get("weights"),
            "dynamic": None if s is None else {"lr": s.lr, "rule": s.rule, "segment": s.segment, "decay": s.decay,
                                               "epsilon": s.epsilon if s.rule == "rms" else None},
            "cache": None if c is None else c.as_json()}


def figures(logp, targets):
    """{cross_entropy, perplexity} of per-target log-probs summed as eval sums them; a reading
    that left targets unscored (NaN: diverged weights) or gave one probability 0 is inf."""
    scored = ~np.isnan(logp)
    count = int(scored.sum())
    total = -float(logp[scored].sum())
    if count < targets or not math.isfinite(total):
        return {"cross_entropy": math.inf, "perplexity": math.inf}
    summary = evaluate.summarize(total, count)
    return {"cross_entropy": summary["cross_entropy"], "perplexity": summary["perplexity"]}


def describe(row):
    """A row's setting in words, as the table prints it."""
    s = row["settings"]
    parts = []
    if row["method"] == "component":
        return f"component alone: {row['flags']}"
    if s["weights"] is not None:
        parts.append(f"weights {','.join(_number(w) for w in s['weights'])}")
    if s["dynamic"] is not None:
        d = s["dynamic"]
        parts.append(f"dynamic {d['rule']} lr {_number(d['lr'])} decay {_number(d['decay'])}"
                     + (f" epsilon {_number(d['epsilon'])}" if d["rule"] == "rms" else ""))
    if s["cache"] is not None:
        c = s["cache"]
        parts.append(f"cache {c['window']} theta {_number(c['theta'])} lambda {_number(c['lambda'])}")
    return ", ".join(parts) or "static"


def best_row(rows):
    """The row of least perplexity (the first of equals: the simpler setting, found earlier)."""
    return min(rows, key=lambda r: r["perplexity"])


def validation_file(config, valid=None, model_dir="model"):
    """The file to tune on: `valid` (--valid), else the config's data.valid; never the config's
    test file (settings chosen on it would make its test figure meaningless)."""
    path = valid if valid is not None else config.data.valid
    where = f"--valid {_shown(path)}" if valid is not None else f"{model_dir}: its config's valid file {_shown(path)}"
    if path is None:
        raise UserError(f"{model_dir}: its config names no valid file; name the text to tune on with --valid FILE")
    if not os.path.isfile(path):
        hint = "" if valid is not None else "; name the text to tune on with --valid FILE"
        raise UserError(f"{where}: no such file{hint}")
    test = config.data.test
    if test and os.path.isfile(test) and os.path.samefile(path, test):
        raise UserError(f"{where} is the model's test file (its config's data.test): settings tuned on it would make "
                        f"its test figure meaningless; tune on validation text")
    return path


def request(cache_window, dynamic_rule, mixing, **dynamic_options):
    """What `tune` was asked (cache_window: W or None; dynamic_rule: 'sgd', 'rms' or None; mixing:
    --mix or --mix-probs given; dynamic_options: lr (the search's start), segment, stats,
    stats_from, None where not given), checked -> the dynamic.Settings of the rule, segment and
    statistics (None without dynamic_rule). A UserError names the option at fault."""
    if cache_window is not None:
        neural_cache.settings(cache_window)
        if cache_window == 0:
            raise UserError("--cache 0: the window must be a whole number >= 1 (tune chooses theta and lambda at "
                            "window W; --cache alone is W 500)")
    given = {k: v for k, v in dynamic_options.items() if v is not None}
    if dynamic_rule is None:
        if given:
            raise UserError(f"--dynamic-{next(iter(given)).replace('_', '-')}: needs --dynamic sgd|rms (the rule "
                            f"whose settings are tuned)")
        if cache_window is None and not mixing:
            raise UserError("nothing to tune: give --cache [W], --dynamic sgd|rms, --mix MODEL_DIR or --mix-probs FILE")
        return None
    if dynamic_rule not in dyn.RULES:
        raise UserError(f"--dynamic {dynamic_rule}: expected one of {', '.join(dyn.RULES)} (the rule to tune)")
    lr = given.pop("lr", None)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"--dynamic-lr {lr}: must be a number > 0 (where the learning rate's search starts)")
    return dyn.check(dyn.Settings(1.0, dynamic_rule, **given))


# --------------------------------------------------------------------------------------------
# The search


class Search:
    """The stages of a tuning run over one validation file, each row a setting measured.
    models: [(config, vocab, params)] of the model and each --mix model; mix_dirs and probs_path
    name them in the flags. on_start(label) is called before each pass over the file, on_rows(rows)
    after it with the rows it gave."""

    def __init__(self, models, path, probs_path=None, mix_dirs=(), on_start=None, on_rows=None):
        self.models, self.path, self.probs_path, self.mix_dirs = models, path, probs_path, tuple(mix_dirs)
        self.on_start, self.on_rows = on_start or (lambda label: None), on_rows or (lambda rows: None)
        config, vocab, _ = models[0]
        self.ids, self.stats = data.encode_file(path, vocab, config.data.tokenizer)
        if probs_path is not None:  # read once here, so that a bad file is refused before any pass
            count = sum(1 for _ in mix.read_probs(probs_path))
            if count != self.stats["targets"]:
                raise UserError(f"--mix-probs {_shown(probs_path)}: {count} probabilities for the "
                                f"{self.stats['targets']} targets of {_shown(path)} (one per target: each non-empty "
                                f"line's words and its <eos>)")
        self.components = len(models) + (probs_path is not None)
        self.rows, self.notes, self.report = [], [], {}
        self.base = {"weights": None, "dynamic": None, "cache": None}  # the best setting so far
        self.mix_weights = [1.0] + [0.0] * (self.components - 1)  # the first model alone until tuned
        self.plans = None  # the dynamic.Plans of the base setting

    def read(self, label, weights, plans=None, cache=None):
        """One pass over the file -> (log-probs, the cache's or None, seconds)."""
        self.on_start(label)
        started = time.perf_counter()
        _, _, logp, logp_cache = mix.file_log_probs(self.models, weights, self.path, 1, plans, self.probs_path, cache)
        return logp, logp_cache, time.perf_counter() - started

    def row(self, method, setting, logp, seconds):
        r = {"method": method, "settings": settings_json(setting), "flags": flags(setting, self.mix_dirs,
                                                                                    self.probs_path),
             **figures(logp, self.stats["targets"]), "seconds": seconds, "setting": setting}
        self.rows.append(r)
        return r

    def emit(self, rows):
        self.on_rows(rows)
        return rows

    def run(self, cache_window=None, dynamic=None, lr_start=None):
        """Every stage asked for -> the result (see result()). dynamic: dynamic.Settings of the
        rule, segment and statistics (the rest is tuned); lr_start: where the learning rate's
        search starts (default LR_START of the rule)."""
        started = time.perf_counter()
        if self.components > 1:
            self.tune_weights()
        elif dynamic is not None or not cache_window:
            logp, _, seconds = self.read("static", [1.0])
            self.emit([self.row("static", self.base, logp, seconds)])
        if dynamic is not None:
            self.tune_dynamic(dynamic, lr_start)
        if cache_window:
            self.tune_cache(cache_window)
        return self.result(time.perf_counter() - started)

    def tune_weights(self):
        """One pass per component, then EM; the rounded weights' row from the same arrays."""
        logps, names = [], ["the model"] + [f"--mix {d}" for d in self.mix_dirs] + (
            [f"--mix-probs {self.probs_path}"] if self.probs_path is not None else [])
        for k, name in enumerate(names):
            one_hot = [float(j == k) for j in range(self.components)]
            logp, _, seconds = self.read(name, one_hot)
            logps.append(logp)
            setting = dict(self.base, weights=one_hot if k else None)
            self.emit([self.row("static" if k == 0 else "component", setting, logp, seconds)])
        started = time.perf_counter()
        weights, iterations = em_weights(np.stack(logps))
        _, rounded = round_weights(weights)
        logp = mix.combine([lp if w > 0 else None for lp, w in zip(logps, rounded)], rounded)
        self.emit([self.row("mix", dict(self.base, weights=rounded), logp, time.perf_counter() - started)])
        self.report.update(weights=rounded, em_weights=[float(w) for w in weights], em_iterations=iterations)
        self._rebase()

    def _rebase(self):
        """The base setting is the best row's (for the stages after)."""
        best = best_row(self.rows)["setting"]
        self.base = dict(best, cache=None)
        self.mix_weights = best["weights"] if best["weights"] is not None else self.mix_weights

    def tune_dynamic(self, given, lr_start=None):
        """given: dynamic.Settings with the rule, segment and statistics (what is not tuned)."""
        reading = dataclasses.replace(given, lr=1.0, decay=0.0, epsilon=dyn.Settings.epsilon)
        if given.rule == "rms":
            self.on_start("dynamic rms: the statistics")
        started = time.perf_counter()
        plans = mix.dynamic_plans(self.models, reading)  # the rms statistics: once, for every setting
        self.report["statistics_seconds"] = time.perf_counter() - started
        self.report["dynamic_stats"] = plans[0].stats_targets if given.rule == "rms" else None

        def score(**changes):
            s = dataclasses.replace(reading, **changes)
            each = [p._replace(settings=dataclasses.replace(s, segment=p.settings.segment)) for p in plans]
            label = f"dynamic {s.rule} lr {_number(s.lr)} decay {_number(s.decay)}" + (
                f" epsilon {_number(s.epsilon)}" if s.rule == "rms" else "")
            logp, _, seconds = self.read(label, self.mix_weights, each)
            r = self.row("dynamic", dict(self.base, dynamic=s), logp, seconds)
            self.emit([r])
            return r["perplexity"]
        start = nearest_rung(lr_start or LR_START[given.rule])
        lr, ppl, edge = ladder_search(lambda v: score(lr=v), start)
        if edge:
            self.notes.append(f"the best learning rate, {_number(lr)}, is at the edge of the range searched: "
                              f"search around it with --dynamic-lr {_number(lr)}")
        decay, ppl = walk_up(lambda v: score(lr=lr, decay=v), ppl)
        epsilon = reading.epsilon
        if given.rule == "rms":
            def score_epsilon(v):
                return score(lr=lr, decay=decay, epsilon=v)
            epsilon, ppl, _ = ladder_search(score_epsilon, rung_index(epsilon), EPSILON_EXTEND, refine=False,
                                            known={rung_index(epsilon): ppl})
        self._rebase()
        if self.base["dynamic"] is not None:
            s = self.base["dynamic"]
            self.plans = [p._replace(settings=dataclasses.replace(s, segment=p.settings.segment)) for p in plans]

    def tune_cache(self, window):
        """One pass with every θ of the grid; each θ × λ a row."""
        config, vocab, params = self.models[0]
        scale = state_scale(params, config, vocab, self.ids)
        thetas = theta_grid(scale)
        self.report.update(cache_scale=scale, cache_thetas=list(thetas), cache_lambdas=list(LAMBDAS))
        grid = neural_cache.Settings(window, thetas, LAMBDAS[0])
        logp, logp_cache, seconds = self.read(f"cache W {window}: {len(thetas)} θ × {len(LAMBDAS)} λ",
                                              self.mix_weights, self.plans, grid)
        rows = [] if self.rows else [self.row("static", self.base, logp, seconds)]
        for k, theta in enumerate(thetas):
            for lam in LAMBDAS:
                setting = dict(self.base, cache=neural_cache.Settings(window, theta, lam))
                rows.append(self.row("cache", setting, neural_cache.mix(logp, logp_cache[k], lam), seconds))
        self.emit(rows)
        best = best_row(rows)["setting"]["cache"]
        cache_wins = best_row(self.rows)["method"] == "cache"
        for name, value, grid in (("theta", best.theta, thetas), ("lambda", best.lam, LAMBDAS)):
            if cache_wins and value in (grid[0], grid[-1]):
                self.notes.append(f"the best cache {name}, {_number(value)}, is at the edge of the grid "
                                  f"({_number(grid[0])} to {_number(grid[-1])})")

    def result(self, seconds):
        """The table and the best settings as one JSON-ready dict."""
        best = best_row(self.rows)
        static = self.rows[0]
        public = [{k: v for k, v in r.items() if k != "setting"} for r in self.rows]
        return {"file": str(self.path), "targets": self.stats["targets"], "oov": self.stats["oov"],
                "static": {"perplexity": static["perplexity"], "cross_entropy": static["cross_entropy"]},
                "rows": public, "best": {k: v for k, v in best.items() if k != "setting"}, "flags": best["flags"],
                "notes": list(self.notes), **self.report, "seconds": seconds}
