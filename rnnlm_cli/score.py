"""Scoring text line by line: the log-probability of every line (a sentence, an n-best
hypothesis) under a model, or under a linear interpolation of models.

Two readings of a file:
- independent (the default): each line is a sentence on its own: the state starts at zero, the
  model reads <eos>, then predicts each word of the line and a final <eos>: a line of W words
  has W + 1 targets (an empty line 1). Lines are scored many at a time: a block of lines is one
  token stream with the state reset at every <eos>, cut into streams at sentence starts
  (evaluate.stream_log_probs), which is exact at any number of streams.
- carried (`carry=True`): the file is one stream as `rnnlm eval --batch-size 1` reads it (a
  leading <eos>, each non-empty line's words and <eos>, empty lines adding nothing); each
  target is credited to its line, so the lines' log-probabilities sum to the file's total.
  Only this reading takes the neural cache (cache.py): it remembers the stream read so far.

Words outside the vocabulary are scored as <unk> and counted as OOVs (`oov_positions` says
which). SRILM/Kaldi sentence markers, `<s>` first and `</s>` last on a line, are the sentence
boundary the model already scores (its <eos>), not words: they are dropped unless asked to be
kept. Interpolation: the probability of every target is Σ_k w_k P_k(target | history) over the
models (same vocabulary) and, optionally, per-target probabilities of another LM read from a file.
"""

import json
import math
import re

import numpy as np

from . import data, evaluate, mix, stream
from .errors import UserError

LINES_PER_BLOCK = stream.LINES_PER_BLOCK  # independent lines scored in one batched pass (bounds the memory)
LN10 = math.log(10.0)
_START, _END = re.compile(r"^\s*<s>(?=\s|$)"), re.compile(r"(?:^|(?<=\s))</s>\s*$")


def line_tokens(text, tokenizer, keep_markers=False):
    """The words of one line as scoring reads it: a leading `<s>` and a trailing `</s>` (the
    sentence boundary of SRILM and Kaldi text) dropped unless keep_markers, then tokenized."""
    if not keep_markers:
        text = _END.sub("", _START.sub("", text, count=1), count=1)
    return data.tokenize(text, tokenizer)


def read_lines(path, tokenizer, nbest=False, keep_markers=False):
    """Yield (line number, id or None, tokens) for every line of a UTF-8 file ("-": standard
    input), empty lines included. With nbest, the first whitespace-separated field of a line is
    its id (not tokenized, not scored): a line without one (empty) is a UserError naming it."""
    for lineno, text in data.iter_lines(path):
        ident = None
        if nbest:
            fields = text.split(None, 1)
            if not fields:
                name = "standard input" if path == "-" else path
                raise UserError(f"{name}: line {lineno}: an empty line, but --nbest (and --format kaldi) reads an "
                                f"id first on every line ('ID word word ...'; an id alone is an empty hypothesis)")
            ident, text = fields[0], fields[1] if len(fields) > 1 else ""
        yield lineno, ident, line_tokens(text, tokenizer, keep_markers)


def _encode(tokens, vocab):
    """-> (ids, the positions of the words outside the vocabulary, scored as <unk>). A literal
    <unk> in the text is a vocabulary word, not an OOV."""
    ids = [vocab.index.get(w, vocab.unk_id) for w in tokens]
    return ids, [k for k, w in enumerate(tokens) if w not in vocab.index]


# --------------------------------------------------------------------------------------------
# Records, one per input line


def _record(lineno, ident, tokens, oov_positions, logp):
    """The figures of one line: logp holds its targets' natural log-probabilities."""
    total = float(logp.sum()) if len(logp) else 0.0
    rec = {"line": lineno, "words": len(tokens), "targets": len(logp), "oov": len(oov_positions), "logprob": total,
           "log10prob": total / LN10,
           "perplexity": evaluate.perplexity(-total / len(logp)) if len(logp) else None,
           "tokens": list(zip(list(tokens) + ["<eos>"], logp.tolist())) if len(logp) else [],
           "oov_positions": list(oov_positions)}
    if ident is not None:
        rec["id"] = ident
    return rec


def score_independent(models, weights, lines, batch_size=32, extra_probs=None):
    """Yield a record per line of `lines` [(line number, id, tokens)], each line a sentence of
    its own; `extra_probs`: an iterator of per-target probabilities of another LM."""
    config, vocab, _ = models[0]
    block = []
    for line in lines:
        block.append(line)
        if len(block) == LINES_PER_BLOCK:
            yield from _independent_block(models, weights, block, batch_size, vocab, extra_probs)
            block = []
    if block:
        yield from _independent_block(models, weights, block, batch_size, vocab, extra_probs)


def _independent_block(models, weights, block, batch_size, vocab, extra_probs):
    encoded = [_encode(tokens, vocab) for _, _, tokens in block]
    stream = [vocab.eos_id]
    for ids, _ in encoded:
        stream.extend(ids)
        stream.append(vocab.eos_id)  # ends this sentence and starts the next
    stream = np.array(stream, dtype=np.int64)
    extra = None if extra_probs is None else _take(extra_probs, len(stream) - 1)
    logp = mix.mixed_log_probs(models, weights, stream, batch_size, True, None, extra)
    start = 0
    for (lineno, ident, tokens), (ids, oov_positions) in zip(block, encoded):
        n = len(ids) + 1
        yield _record(lineno, ident, tokens, oov_positions, logp[start:start + n])
        start += n


def score_carried(models, weights, lines, dynamic=None, extra_probs=None, cache=None):
    """Yield a record per line, the file read as one stream with carried state (as `eval
    --batch-size 1`): an empty line gets 0 targets; the log-probabilities sum to the file's.
    `cache` (a cache.Settings): the neural cache over the stream, mixed last. The stream is
    read in chunks (stream.py): memory holds a chunk's lines, whatever the file's length."""
    vocab = models[0][1]
    probs = None if extra_probs is None else stream.Probs(extra_probs)
    yield from stream.score_carried(lines, lambda tokens: _encode(tokens, vocab), _record, vocab.eos_id,
                                    mix.chunk_length(models, dynamic), mix.chunk_log_probs(models, weights, dynamic, cache),
                                    len(models), probs)


def _take(probs, n):
    out = np.fromiter((p for _, p in zip(range(n), probs)), dtype=np.float64, count=-1)
    if len(out) < n:
        raise UserError(f"--mix-probs: the file ends after {len(out)} of the probabilities needed for the "
                        f"targets scored so far; it must hold one per target (each line's words and its <eos>)")
    return out


# --------------------------------------------------------------------------------------------
# Output formats


def format_plain(rec, log_base="10"):
    """One number: the line's log-probability in base 10 (Mikolov's toolkit, faster-rnnlm) or e;
    with an id (n-best), `ID<TAB>score`."""
    value = rec["log10prob"] if log_base == "10" else rec["logprob"]
    text = f"{value:.6f}"
    return f"{rec['id']}\t{text}" if "id" in rec else text


def format_kaldi(rec):
    """`ID cost` with cost = −ln P (what Kaldi's rescoring scripts read)."""
    return f"{rec.get('id', '')} {-rec['logprob']:.6f}"


def format_json(rec, words=False):
    """The record as one JSON object (natural logs; log10prob in base 10); with words, `tokens`
    ([token, logprob] per target) and `oov_positions` (the indexes in `tokens` of the words
    outside the vocabulary, scored as <unk>)."""
    out = {k: evaluate.json_safe(v) for k, v in rec.items() if k not in ("tokens", "oov_positions")}
    if words:
        out["tokens"] = [[tok, evaluate.json_safe(lp)] for tok, lp in rec["tokens"]]
        out["oov_positions"] = rec["oov_positions"]
    return json.dumps(out)


def _ppl10(log10prob, count):
    return "undefined" if count <= 0 else f"{10 ** (-log10prob / count):.6g}"


def format_srilm(rec, words=False):
    """SRILM's `ngram -ppl -debug 1` block of one sentence (`-debug 2` per-word lines with
    words=True), log10. OOVs are scored as <unk> and counted as words, as SRILM does with -unk,
    and the per-word lines show them as `<unk>`, as SRILM's do."""
    text = [tok for tok, _ in rec["tokens"][:-1]]
    oov = set(rec.get("oov_positions", ()))
    scored = ["<unk>" if k in oov else tok for k, tok in enumerate(text)]
    lines = [" ".join(text)]
    if words:
        for k, (tok, lp) in enumerate(rec["tokens"]):
            shown = "</s>" if k == len(text) else scored[k]
            context = "<s>" if k == 0 else scored[k - 1] + (" ..." if k > 1 else "")
            lines.append(f"\tp( {shown} | {context} ) \t= [rnn] {math.exp(lp):.6g} [ {lp / LN10:.6g} ]")
    sentences = 1 if rec["targets"] else 0
    lines.append(f"{sentences} sentences, {rec['words']} words, {rec['oov']} OOVs")
    lines.append(f"0 zeroprobs, logprob= {rec['log10prob']:.6g} ppl= {_ppl10(rec['log10prob'], rec['targets'])} "
                 f"ppl1= {_ppl10(rec['log10prob'], rec['targets'] - sentences)}")
    return "\n".join(lines) + "\n"


class SrilmTotals:
    """The sums srilm_summary reads, kept as the records go by (an n-best file of millions of
    lines is not held in memory): `append` a record."""

    def __init__(self):
        self.sentences = self.words = self.oov = self.targets = 0
        self.log10prob = 0

    def append(self, rec):
        self.sentences += 1 if rec["targets"] else 0
        self.words, self.oov = self.words + rec["words"], self.oov + rec["oov"]
        self.log10prob, self.targets = self.log10prob + rec["log10prob"], self.targets + rec["targets"]


def srilm_summary(path, t):
    """SRILM's closing `file FILE: ...` lines from the SrilmTotals of a file's records."""
    return (f"file {path}: {t.sentences} sentences, {t.words} words, {t.oov} OOVs\n"
            f"0 zeroprobs, logprob= {t.log10prob:.6g} ppl= {_ppl10(t.log10prob, t.targets)} "
            f"ppl1= {_ppl10(t.log10prob, t.targets - t.sentences)}")
