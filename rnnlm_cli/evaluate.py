"""Cross-entropy and perplexity of a token stream under the model.

With batch_size 1 the file is one stream with carried state from its first token to its last:
every target is predicted from its whole history, so the figure is exact and comparable to
published ones. With batch_size N > 1 the stream is cut into N pieces that each start from a
zero state (faster; slightly pessimistic; the < N tokens of remainder are not scored).
"""

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from . import data, model
from .errors import UserError


def evaluate_ids(params, model_cfg, ids, batch_size=1, bptt=35):
    """ids: (S,) token stream -> (sum of per-target cross-entropies in nats, number of targets).
    Always cross-entropy, whatever loss the model was trained with: perplexity is defined by it."""
    model_cfg = dataclasses.replace(model_cfg, loss="cross_entropy")
    if len(ids) < 2:
        return 0.0, 0
    batch_size = max(1, min(batch_size, len(ids) // 2))
    streams = data.batchify(ids, batch_size)
    state = model.init_state(model_cfg, batch_size, params["embedding"].dtype)
    total, count, workspace = 0.0, 0, {}
    for inputs, targets in data.iter_windows(streams, bptt):
        loss, state, _ = model.forward(params, model_cfg, inputs, targets, state, need_grad=False,
                                       workspace=workspace)
        total += loss * targets.size
        count += targets.size
    return total, count


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


def evaluate_file(params, config, vocab, path, batch_size=1, model_dir="model"):
    """The figures `rnnlm eval` reports for one text file: its token counts (data.encode_file's
    stats), targets scored, OOV rate, cross-entropy, bits per token and perplexity. A model
    whose cross-entropy is not finite there is a UserError naming its weights."""
    ids, stats = data.encode_file(path, vocab, config.data.tokenizer, allow_empty=True)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        total, count = evaluate_ids(params, config.model, ids, batch_size, config.train.bptt)
    if not math.isfinite(total):
        shown = os.fsencode(path).decode("utf-8", "replace")
        raise UserError(f"{Path(model_dir) / 'weights.npz'}: the model gives a cross-entropy of {total} on "
                        f"{shown}; are its weights absurdly large?")
    result = {**stats, "targets": count, "oov_rate": stats["oov"] / count if count else 0.0,
              "batch_size": batch_size, **summarize(total, count)}
    if batch_size == 1:
        result["targets"] = stats["targets"]
    return result
