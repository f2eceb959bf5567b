"""Interpolating models: the probability of each target is Σ_k w_k P_k(target | history) over
models with the same vocabulary (each reading the text with its own state, bptt and resets)
and, optionally, per-target probabilities of another language model read from a file
(Mikolov's -lm-prob / -lambda; SRILM `ngram -ppl -debug 2` output or one probability per line).
"""

import math
import os
import re

import numpy as np

from . import cache as neural_cache, data, evaluate, modeldir, stream
from . import dynamic as dyn
from .errors import UserError


def load_mixture(model_dir, mix_dirs=(), weights_text=None, probs_path=None):
    """([(config, vocab, params)] of MODEL_DIR and each --mix model, their weights (and the
    --mix-probs file's, last)): the models must share the vocabulary and tokenizer; the weights
    (default: equal) are numbers in [0, 1] summing to 1, one per component."""
    models = [modeldir.load_model(model_dir)]
    for other in mix_dirs:
        config, vocab, params = modeldir.load_model(other)
        check_same_vocabulary(model_dir, models[0], other, (config, vocab, params))
        models.append((config, vocab, params))
    n = len(models) + (probs_path is not None)
    if weights_text is None:
        return models, [1.0 / n] * n
    return models, parse_weights(weights_text, n)


def check_same_vocabulary(model_dir, first, other_dir, other):
    (config_a, vocab_a, _), (config_b, vocab_b, _) = first, other
    if vocab_a.tokens != vocab_b.tokens:
        diff = next((i for i, (a, b) in enumerate(zip(vocab_a.tokens, vocab_b.tokens)) if a != b),
                    min(len(vocab_a), len(vocab_b)))
        a = vocab_a.tokens[diff] if diff < len(vocab_a) else "(end)"
        b = vocab_b.tokens[diff] if diff < len(vocab_b) else "(end)"
        raise UserError(f"--mix {other_dir}: its vocabulary differs from {model_dir}'s ({len(vocab_b)} vs "
                        f"{len(vocab_a)} tokens; first difference at id {diff}: {b!r} vs {a!r}); "
                        f"interpolated models need the same vocabulary")
    if config_a.data.tokenizer != config_b.data.tokenizer:
        raise UserError(f"--mix {other_dir}: data.tokenizer {config_b.data.tokenizer} differs from "
                        f"{model_dir}'s {config_a.data.tokenizer}; interpolated models must read text alike")


def parse_weights(text, n):
    """'0.7,0.3' -> [0.7, 0.3]: n numbers in [0, 1] summing to 1 (within 1e-6)."""
    try:
        weights = [float(w) for w in str(text).split(",")]
    except ValueError:
        raise UserError(f"--weights {text}: expected comma-separated numbers, e.g. --weights 0.7,0.3") from None
    if len(weights) != n:
        raise UserError(f"--weights {text}: {len(weights)} weight(s) for {n} component(s) (the model, each --mix "
                        f"model, then --mix-probs)")
    if not all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights):
        raise UserError(f"--weights {text}: every weight must be a number in [0, 1]")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise UserError(f"--weights {text}: the weights sum to {sum(weights):.6g}, not 1")
    return weights


def sole_component(weights):
    """The index of the component holding all the weight, or None."""
    ones = [k for k, w in enumerate(weights) if w == 1.0]
    return ones[0] if ones else None


def mixed_log_probs(models, weights, ids, batch_size, reset_all, dynamic=None, extra_probs=None, cache=None,
                    carry=None):
    """ids: (S,) a token stream -> (S − 1,) float64 natural log of Σ_k w_k P_k(target) for each
    target, over `models` [(config, vocab, params)] and, when given, `extra_probs` (S − 1,) of
    another LM (its weight last in `weights`). Components with weight 0 are skipped, so a weight
    of 1 gives exactly that model's figures. `reset_all`: reset every model at each <eos>
    (independent reading); otherwise only models trained with data.independent reset.
    `dynamic`: a learning rate (sgd) or the list of each model's dynamic.Plan (dynamic_plans).
    `cache` (a cache.Settings): the pair (that mixture, the neural cache's log p_cache from the
    first model's states), for cache.mix (the cache mixes last). `carry` (one dict per model;
    stream.py): ids go on from the stream of the last call, each model's state read on."""
    logps, logp_cache = [], None
    plans = dynamic if isinstance(dynamic, list) else [dynamic] * len(models)
    for k, ((config, vocab, params), w, plan) in enumerate(zip(models, weights, plans)):
        reads_cache = cache is not None and k == 0
        if w == 0 and not reads_cache:
            logps.append(None)
            continue
        reset_at = vocab.eos_id if reset_all else evaluate.reset_id(config, vocab)
        logp = evaluate.stream_log_probs(params, config.model, ids, config.train.bptt, batch_size, reset_at,
                                         plan, config.train.clip_norm, cache if reads_cache else None,
                                         carry=None if carry is None else carry[k])
        if reads_cache:
            logp, logp_cache = logp
        logps.append(logp)
    if extra_probs is not None:
        with np.errstate(divide="ignore"):
            logps.append(np.log(extra_probs) if weights[-1] > 0 else None)
    mixed = combine(logps, weights)
    return mixed if cache is None else (mixed, logp_cache)


def combine(logps, weights):
    """log Σ_k w_k P_k per target from each component's log-probabilities (a list of arrays in
    the order of `weights`; None where the weight is 0): the components of weight 0 left out,
    so a weight of 1 gives that component's figures exactly. tune's EM recombines the same way."""
    parts = [math.log(w) + logp for w, logp in zip(weights, logps) if w > 0]
    return parts[0] if len(parts) == 1 else np.logaddexp.reduce(np.stack(parts), axis=0)


def chunk_length(models, dynamic=None):
    """The targets of a chunk of a stream read in pieces (stream.py): whole windows of every model
    (whole segments of each model's dynamic evaluation, which updates after each)."""
    plans = dynamic if isinstance(dynamic, list) else [None] * len(models)
    return stream.chunk_length([plan.settings.segment if plan else config.train.bptt
                                for (config, _, _), plan in zip(models, plans)])


def chunk_log_probs(models, weights, dynamic=None, cache=None):
    """-> log_probs(ids, extra, carry): the mixture's log-probs of the targets of a chunk of a
    stream read in chunks with carried state, batch 1 (stream.read_chunks), the neural cache
    mixed in last: mixed_log_probs, chunk after chunk."""
    def log_probs(ids, extra, carry):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            logp = mixed_log_probs(models, weights, ids, 1, False, dynamic, extra, cache, carry)
            return logp if cache is None else neural_cache.mix(*logp, cache.lam)
    return log_probs


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


_SRILM_WORD = re.compile(r"^\s*p\(\s.*\)\s*=\s*\[[^\]]*\]\s*(\S+)\s*\[")


def read_probs(path):
    """Yield the per-target probabilities of a file: SRILM `ngram -ppl -debug 2` output (its
    `p( w | h ) = [...] P [ log10 P ]` lines) or one probability per line. A value that is not
    a probability is a UserError naming the line."""
    srilm = None
    for lineno, text in data.iter_lines(path):
        stripped = text.strip()
        if not stripped:
            continue
        match = _SRILM_WORD.match(text)
        if srilm is None:  # a first line that is not a number: SRILM's (it starts with a sentence's text)
            srilm = match is not None or not _is_number(stripped)
        if srilm and not match:
            continue  # SRILM's sentence text and summary lines
        value = match.group(1) if srilm else stripped
        try:
            p = float(value)
        except ValueError:
            p = math.nan
        if not 0.0 <= p <= 1.0:
            raise UserError(f"{path}: line {lineno}: {value[:40]!r} is not a probability (expected a number in "
                            f"[0, 1]{' in SRILM -debug 2 layout' if srilm else ', one per line'})")
        yield p


def evaluate_file(models, weights, path, batch_size=1, dynamic=None, probs_path=None, model_dir="model", cache=None):
    """eval's figures of a file under the mixture (and/or with dynamic evaluation, and/or the
    neural cache, a cache.Settings). All the weight on one model, without dynamic evaluation
    or cache, gives exactly that model's own figures. Batch 1 reads the file in bounded memory
    (stream.py); a batched reading holds it whole."""
    sole = sole_component(weights)
    if not dynamic and cache is None and sole is not None and sole < len(models):
        config, vocab, params = models[sole]
        return evaluate.evaluate_file(params, config, vocab, path, batch_size, model_dir)
    if batch_size == 1:  # one stream, read in chunks with the state carried (stream.py)
        config, vocab, _ = models[0]
        stats = {}
        blocks = data.encode_stream(path, vocab, config.data.tokenizer, stats)
        probs = None if probs_path is None else stream.Probs(read_probs(probs_path))
        total, count, zeros = stream.file_sums(blocks, chunk_length(models, dynamic), chunk_log_probs(models, weights, dynamic,
                                               cache), len(models), probs, (probs_path, path))
    else:
        _, stats, logp, logp_cache = file_log_probs(models, weights, path, batch_size, dynamic, probs_path, cache)
        if cache is not None:
            logp = neural_cache.mix(logp, logp_cache, cache.lam)
        scored = ~np.isnan(logp)  # a batched carried reading leaves the remainder unscored
        total, count, zeros = -float(logp[scored].sum()), int(scored.sum()), int(np.isneginf(logp).sum())
    if cache is not None and cache.lam == 1.0 and total == math.inf:
        shown = os.fsencode(path).decode("utf-8", "replace")
        raise UserError(f"--cache-lambda 1: {zeros} target(s) of {shown} are none of the next "
                        f"words the cache remembers, so they get probability 0 (an infinite cross-entropy); use a "
                        f"--cache-lambda below 1")
    result = evaluate.file_result(stats, total, count, batch_size, path, model_dir)
    if dynamic:
        result.update(dyn.report(dynamic[0]) if isinstance(dynamic, list) else {"dynamic": dynamic})
    if cache is not None:
        result["cache"] = cache.as_json()
    return result


def file_log_probs(models, weights, path, batch_size=1, dynamic=None, probs_path=None, cache=None):
    """(ids (S,), stats (data.encode_file's), the mixture's log-probs (S − 1,), the cache's log
    p_cache or None) of a text file: what evaluate_file's figures come from, the cache apart
    from the rest so that cache.mix can try many λ without reading the file again."""
    config, vocab, _ = models[0]
    ids, stats = data.encode_file(path, vocab, config.data.tokenizer, allow_empty=True)
    extra = None
    if probs_path is not None:
        extra = np.fromiter(read_probs(probs_path), dtype=np.float64)
        if len(extra) != len(ids) - 1:
            raise UserError(f"--mix-probs {probs_path}: {len(extra)} probabilities for the {len(ids) - 1} targets of "
                            f"{path} (one per target: each non-empty line's words and its <eos>)")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        logp = mixed_log_probs(models, weights, ids, batch_size, False, dynamic, extra, cache)
    logp, logp_cache = logp if cache is not None else (logp, None)
    return ids, stats, logp, logp_cache


def dynamic_plans(models, settings):
    """Each model's dynamic.Plan for `settings` (its segment, clip norm, rms statistics: computed
    once here, for all the files a command reads), or None when there is nothing to adapt."""
    if settings is None or not settings.lr:
        return None
    return [evaluate.dynamic_plan(config, vocab, params, settings) for config, vocab, params in models]
