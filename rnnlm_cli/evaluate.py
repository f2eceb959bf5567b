"""Cross-entropy and perplexity of a token stream under the model, and the log-probability of
each of its targets (what scoring, interpolation and dynamic evaluation are built on).

With batch_size 1 the file is one stream with carried state from its first token to its last:
every target is predicted from its whole history, so the figure is exact and comparable to
published ones. With batch_size N > 1 the stream is cut into N pieces that each start from a
zero state (faster; slightly pessimistic; the < N tokens of remainder are not scored). With
sentence resets (`reset_at`, a model trained with data.independent) the pieces are cut at
sentence starts instead (data.pack_sentences), so every N gives the exact figure.

Dynamic evaluation (`dynamic`, Krause et al. 2018; Mikolov's -dynamic; the rules in
dynamic.py): the stream is read in segments (by default the bptt windows); each is scored
first, then the model takes one step on that segment's mean cross-entropy before the next: it
adapts to the text it reads. `dynamic=LR` is the sgd rule (the gradient clipped to the model's
train.clip_norm); a dynamic.Plan (dynamic_plan) any rule. The caller's parameters are not
changed (a copy is trained); LR 0 is exactly the static evaluation.

The neural cache (cache.py) reads each stream alongside: stream_log_probs hands it every
window's top states and gives its per-target log-probabilities apart from the model's.
"""

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from . import cache as neural_cache, corpus, data, model, stream
from . import dynamic as dyn
from .errors import UserError


class Stopped(Exception):
    """An evaluation abandoned because its `stop` callable asked (args[0]: what it returned)."""


def _poll(stop):
    """Raise Stopped when `stop` (None, or a callable returning a truthy value to stop) says so."""
    asked = stop() if stop is not None else None
    if asked:
        raise Stopped(asked)


def evaluate_ids(params, model_cfg, ids, batch_size=1, bptt=35, reset_at=None, stop=None, carry=None):
    """ids: (S,) token stream -> (sum of per-target cross-entropies in nats, number of targets).
    Always cross-entropy, whatever loss the model was trained with: perplexity is defined by it.
    `reset_at` (the <eos> id) resets the state at every sentence start. `stop`: polled before
    every window (a Ctrl-C during training's final evaluation): Stopped when it returns true.
    `carry` (a dict, batch 1; stream.py): ids go on from the stream of the last call given this
    dict, whose state is read on, and the sums returned are those of the whole stream so far."""
    if reset_at is not None:
        logp = stream_log_probs(params, model_cfg, ids, bptt, batch_size, reset_at, stop=stop, carry=carry)
        total, count = -float(logp.sum()), len(logp)
        if carry is not None:
            total, count = carry.get("total", 0.0) + total, carry.get("count", 0) + count
            carry.update(total=total, count=count)
        return total, count
    model_cfg = dataclasses.replace(model_cfg, loss="cross_entropy")
    if len(ids) < 2:
        return (carry.get("total", 0.0), carry.get("count", 0)) if carry is not None else (0.0, 0)
    batch_size = max(1, min(batch_size, len(ids) // 2))
    streams = data.batchify(ids, batch_size)
    state = carry["state"] if carry else model.init_state(model_cfg, batch_size, params["embedding"].dtype)
    total, count, workspace = (carry["total"], carry["count"], {}) if carry else (0.0, 0, {})
    for inputs, targets in data.iter_windows(streams, bptt):
        _poll(stop)
        loss, state, _ = model.forward(params, model_cfg, inputs, targets, state, need_grad=False,
                                       workspace=workspace)
        total += loss * targets.size
        count += targets.size
    if carry is not None:
        carry.update(state=state, total=total, count=count)
    return total, count


def stream_log_probs(params, model_cfg, ids, bptt=35, batch_size=1, reset_at=None, dynamic=None,
                     clip_norm=None, cache=None, stop=None, carry=None):
    """ids: (S,) token stream -> log P(target | history) of each of its S − 1 targets, float64;
    NaN for the targets a batched carried-state reading does not score (the remainder).
    `dynamic`: dynamic evaluation (above): a learning rate > 0 (sgd, the gradient clipped to
    `clip_norm`, in bptt windows) or a dynamic.Plan (its rule, in segments of its K tokens).
    `cache` (a cache.Settings): the neural cache of each stream read alongside, from the
    states the model has when it scores each target; then the result is the pair (the
    model's log-probs, the cache's log p_cache (θ's shape + (S − 1,), NaN where its stream had
    read nothing yet)), which cache.mix combines for any λ. `stop`: as evaluate_ids'.
    `carry` (a dict, batch 1; stream.py):
    ids go on from the stream of the last call given this dict: its state, adapted weights and
    cache memory are read on, so a stream read in pieces of whole windows gets the log-probs of
    the stream read at once."""
    model_cfg = dataclasses.replace(model_cfg, loss="cross_entropy")
    logp = np.full(max(len(ids) - 1, 0), np.nan)
    logp_cache = None if cache is None else np.full(np.shape(cache.theta) + logp.shape, np.nan)
    if len(ids) < 2:
        return logp if cache is None else (logp, logp_cache)
    streams, index = _streams(ids, batch_size, reset_at)
    if carry:
        params, state, memory, adapting = carry["params"], carry["state"], carry["memory"], carry["adapting"]
        plan = adapting["plan"] if adapting else None
    else:
        plan = dyn.as_plan(dynamic, bptt, clip_norm)
        adapting = dyn.start(params, model_cfg, plan) if plan else None  # a copy: the caller's model stays as it is
        if adapting:
            params = adapting["params"]
        state = model.init_state(model_cfg, streams.shape[0], params["embedding"].dtype)
        memory = None if cache is None else neural_cache.empty(streams.shape[0], model_cfg.hidden_dim)
    workspace, start, top = {}, 0, None
    for inputs, targets in data.iter_windows(streams, plan.settings.segment if plan else bptt):
        _poll(stop)
        if adapting:
            dyn.refresh(adapting, inputs, targets)  # the slices it reads, decayed lazily, up to date
        rows = np.empty(targets.shape)
        if cache is not None:
            top = np.empty(targets.shape + (model_cfg.hidden_dim,))
        _, state, grad_cache = model.forward(params, model_cfg, inputs, targets, state, need_grad=bool(adapting),
                                             workspace=workspace, reset_at=reset_at, row_loss=rows, top_states=top)
        where = index[:, start:start + targets.shape[1]]
        logp[where[where >= 0]] = -rows[where >= 0]
        start += targets.shape[1]
        if cache is not None:
            window_logp, memory = neural_cache.window_log_probs(top, targets, memory, cache.window, cache.theta)
            logp_cache[..., where[where >= 0]] = window_logp[..., where >= 0]
        if adapting:
            dyn.update(adapting, dyn.gradient(adapting, grad_cache, workspace))
    if carry is not None:
        carry.update(params=params, state=state, memory=memory, adapting=adapting)
    return logp if cache is None else (logp, logp_cache)


def _streams(ids, batch_size, reset_at):
    """(streams (N, L), index (N, L − 1) of each target in ids[1:], −1 where none)."""
    batch_size = max(1, min(batch_size, len(ids) // 2))
    if reset_at is not None and batch_size > 1:
        return data.pack_sentences(ids, batch_size, reset_at)
    streams = data.batchify(ids, batch_size)
    length = streams.shape[1]
    index = np.arange(batch_size * length).reshape(batch_size, length)[:, :-1]  # ids[k + 1] is target k
    return streams, index


def perplexity(cross_entropy):
    """exp(cross-entropy in nats); inf where it overflows a float (cross-entropy > ~709.78)."""
    try:
        return math.exp(cross_entropy)
    except OverflowError:
        return math.inf


def json_safe(value):
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(total, count):
    """Per-target cross-entropy (nats), bits per token and perplexity from a sum and a count."""
    if count == 0:
        return {"cross_entropy": None, "bits_per_token": None, "perplexity": None}
    ce = total / count
    return {"cross_entropy": ce, "bits_per_token": ce / math.log(2), "perplexity": perplexity(ce)}


def unigram_perplexity(train_ids, eval_ids, vocab_size):
    """The baseline a language model must beat: P(w) from train counts (add-one smoothed), applied
    to every target of eval_ids."""
    counts = np.bincount(train_ids[1:], minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return perplexity(-float(logp[eval_ids[1:]].mean())) if len(eval_ids) > 1 else None


def unigram_from_counts(id_counts, first_id, eval_ids):
    """unigram_perplexity from the count of every id of the train stream (V,) and its first id
    (which is no target): the same figure without a pass over the train ids."""
    counts = np.asarray(id_counts, dtype=np.float64).copy()
    counts[first_id] -= 1
    counts += 1.0
    logp = np.log(counts / counts.sum())
    return perplexity(-float(logp[eval_ids[1:]].mean())) if len(eval_ids) > 1 else None


def reset_id(config, vocab):
    """The token at which the state is reset: <eos> for a model trained with data.independent."""
    return vocab.eos_id if config.data.independent else None


def evaluate_file(params, config, vocab, path, batch_size=1, model_dir="model"):
    """The figures `rnnlm eval` reports for one text file: its token counts (data.encode_file's
    stats), targets scored, OOV rate, cross-entropy, bits per token and perplexity. A model
    whose cross-entropy is not finite there is a UserError naming its weights. Batch 1 reads
    the file in bounded memory (stream.py); a batched reading holds its ids."""
    if batch_size == 1:  # one stream, read in chunks with the state carried (stream.py)
        stats, carry, total, count = {}, {}, 0.0, 0
        blocks = data.encode_stream(path, vocab, config.data.tokenizer, stats)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for ids in stream.chunks(blocks, stream.chunk_length([config.train.bptt])):
                total, count = evaluate_ids(params, config.model, ids, 1, config.train.bptt, reset_id(config, vocab),
                                            carry=carry)
        return file_result(stats, total, count, batch_size, path, model_dir)
    ids, stats = data.encode_file(path, vocab, config.data.tokenizer, allow_empty=True)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        total, count = evaluate_ids(params, config.model, ids, batch_size, config.train.bptt,
                                    reset_id(config, vocab))
    return file_result(stats, total, count, batch_size, path, model_dir)


def file_result(stats, total, count, batch_size, path, model_dir):
    """eval's figures of a file from its stats and the sum and count of its targets' cross-
    entropies; a total that is not finite is a UserError naming the model's weights."""
    if not math.isfinite(total):
        shown = os.fsencode(path).decode("utf-8", "replace")
        raise UserError(f"{Path(model_dir) / 'weights.npz'}: the model gives a cross-entropy of {total} on "
                        f"{shown}; are its weights absurdly large?")
    result = {**stats, "targets": count, "oov_rate": stats["oov"] / count if count else 0.0,
              "batch_size": batch_size, **summarize(total, count)}
    if batch_size == 1:
        result["targets"] = stats["targets"]
    return result


def dynamic_plan(config, vocab, params, settings):
    """dynamic.Settings as this model applies them -> a dynamic.Plan (None when the learning
    rate is 0: static): its segment (default train.bptt), its clip norm and, for the rms rule,
    MS over the first settings.stats targets of its training text (data.train, found as the
    model directory finds it) or of settings.stats_from."""
    if settings is None or not settings.lr:
        return None
    settings = dataclasses.replace(settings, segment=settings.segment or config.train.bptt)
    plan = dyn.Plan(settings, config.train.clip_norm)
    if settings.rule != "rms":
        return plan
    paths = _statistics_text(config, settings.stats_from)
    ids = data.encode_head(paths, vocab, config.data.tokenizer, settings.stats + 1)
    if len(ids) < 2:
        raise UserError(f"--dynamic-stats-from: {corpus.describe(paths)} has no tokens to compute the rms rule's "
                        f"statistics from; give another text")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        ms, _ = dyn.rms_statistics(params, config.model, ids, settings.segment, reset_id(config, vocab))
    return plan._replace(ms=ms, stats_targets=len(ids) - 1, stats_from=str(corpus.describe(paths)))


def _statistics_text(config, stats_from):
    """The files of the rms statistics' text: --dynamic-stats-from, else the model's data.train;
    a missing one is a UserError naming --dynamic-stats-from."""
    if stats_from is not None:
        if not os.path.isfile(stats_from):
            raise UserError(f"--dynamic-stats-from {os.fsencode(stats_from).decode('utf-8', 'replace')}: no such "
                            f"file (the text the rms rule's statistics are computed from)")
        return [stats_from]
    spec = config.data.train
    try:
        paths = corpus.files_of(spec) if spec else []
    except UserError:
        paths = []
    missing = next((p for p in paths if not os.path.isfile(p)), None) if paths else (spec or "(none)")
    if missing is not None:
        shown = os.fsencode(str(missing)).decode("utf-8", "replace")
        raise UserError(f"the model's training text {shown} (its config's data.train) is missing, and the rms "
                        f"rule's statistics are computed from it; name a text with --dynamic-stats-from FILE")
    return paths
