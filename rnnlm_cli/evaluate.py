"""Cross-entropy and perplexity of a token stream under the model.

With batch_size 1 the file is one stream with carried state from its first token to its last:
every target is predicted from its whole history, so the figure is exact and comparable to
published ones. With batch_size N > 1 the stream is cut into N pieces that each start from a
zero state (faster; slightly pessimistic; the < N tokens of remainder are not scored).
"""

import dataclasses
import math

import numpy as np

from . import data, model


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


def summarize(total, count):
    """Per-target cross-entropy (nats), bits per token and perplexity from a sum and a count."""
    if count == 0:
        return {"cross_entropy": None, "bits_per_token": None, "perplexity": None}
    ce = total / count
    return {"cross_entropy": ce, "bits_per_token": ce / math.log(2), "perplexity": math.exp(min(ce, 700.0))}


def unigram_perplexity(train_ids, eval_ids, vocab_size):
    """The baseline a language model must beat: P(w) from train counts (add-one smoothed), applied
    to every target of eval_ids."""
    counts = np.bincount(train_ids[1:], minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return math.exp(-float(logp[eval_ids[1:]].mean())) if len(eval_ids) > 1 else None
