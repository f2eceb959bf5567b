"""Reading text of any length in bounded memory: `eval` (batch 1, the exact figure) and `score
--carry`. The token stream arrives in blocks of ids as the text is read (data.encode_stream) and
is cut into chunks of whole windows; each chunk is read with the state the previous one left
(the `carry` of evaluate.evaluate_ids and evaluate.stream_log_probs: the hidden state, the
weights dynamic evaluation adapts, the neural cache's memory), so every target gets exactly the
log-probability that reading the whole stream at once gives, and memory holds one chunk.

    stream:   <eos> a b c <eos> d e <eos> f g ...     windows of bptt = 3, chunks of 2 windows
    chunk 0:  <eos> a b c <eos> d e                   targets a .. e (6)
    chunk 1:                      e <eos> f g ...     targets <eos> .. (its first id ends chunk 0)

A figure summed over targets (a file's cross-entropy) is the same sum taken in the same order up
to the end of the first chunk, then chunk by chunk: a file within one chunk (a million targets)
gives exactly the figures of reading it whole; a longer one, the same up to the last bits of the
float sum.
"""

import collections
import math
from itertools import islice

import numpy as np

from .errors import UserError

CHUNK_TARGETS = 1 << 20  # targets read at a time: 8 MB of float64 log-probs per model


def chunk_length(bptts, chunk=None):
    """Targets per chunk: a multiple of every window length (the models' train.bptt), the
    largest at most `chunk` (default CHUNK_TARGETS), and at least one window."""
    step = math.lcm(*bptts)
    return max(1, (chunk or CHUNK_TARGETS) // step) * step


def chunks(blocks, length):
    """The stream given as arrays of ids `blocks`, cut into chunks of `length` targets: chunk k is
    ids[k·length : (k+1)·length + 1] (its last id starts chunk k + 1); the last chunk may be
    shorter. A stream of one id (no target) is one chunk of one id."""
    pending, size, given = [], 0, False
    for block in blocks:
        pending.append(block)
        size += len(block)
        while size > length:
            ids = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield ids[:length + 1]
            given = True
            pending, size = [ids[length:]], len(ids) - length
    if size > 1 or (size and not given):
        yield np.concatenate(pending)


class Probs:
    """Per-target probabilities of another LM (mix.read_probs of a --mix-probs file), taken a chunk
    at a time; `taken` counts them."""

    def __init__(self, probs):
        self.probs, self.taken = probs, 0

    def take(self, n):
        out = np.fromiter(islice(self.probs, n), dtype=np.float64)
        self.taken += len(out)
        if len(out) < n:
            raise ProbsEnded()
        return out

    def rest(self):
        """The number of probabilities left in the file (read through)."""
        return sum(1 for _ in self.probs)


class ProbsEnded(Exception):
    """The --mix-probs file ended before the text did."""


def read_chunks(chunked, log_probs, n_models, probs=None):
    """Yield log_probs(ids, extra, carry) for each chunk of ids of `chunked`: the log-probs of its
    targets (mix.chunk_log_probs), `extra` the next per-target probabilities of `probs` (a
    Probs, or None), `carry` one dict per model, the same for every chunk."""
    carry = [{} for _ in range(n_models)]
    for ids in chunked:
        extra = None if probs is None else probs.take(len(ids) - 1)
        yield log_probs(ids, extra, carry)


def file_sums(blocks, length, log_probs, n_models, probs=None, names=("", "")):
    """(sum of −log p over the targets, targets, targets of probability 0) of the stream of the
    id arrays `blocks` read in chunks of `length` targets (read_chunks). Another LM's `probs`
    must hold one probability per target: else a UserError naming `names` (its file, the text)."""
    read = [0]

    def counted():
        for ids in blocks:
            read[0] += len(ids)
            yield ids
    stream = counted()
    total, count, zeros = 0.0, 0, 0
    try:
        for logp in read_chunks(chunks(stream, length), log_probs, n_models, probs):
            total -= float(logp.sum())
            count += len(logp)
            zeros += int(np.count_nonzero(np.isneginf(logp)))
    except ProbsEnded:
        for _ in stream:  # the rest of the text, for the message's count
            pass
        _probs_mismatch(names, probs.taken, read[0] - 1)
    rest = 0 if probs is None else probs.rest()
    if rest:
        _probs_mismatch(names, probs.taken + rest, count)
    return total, count, zeros


def _probs_mismatch(names, n, targets):
    raise UserError(f"--mix-probs {names[0]}: {n} probabilities for the {targets} targets of {names[1]} (one per "
                    f"target: each non-empty line's words and its <eos>)")


# --------------------------------------------------------------------------------------------
# score --carry: the records of the lines


LINES_PER_BLOCK = 4096  # lines encoded at a time


def score_carried(lines, encode, record, eos, length, log_probs, n_models, probs=None):
    """Yield record(line number, id, tokens, oov, log-probs of its targets) for each (line
    number, id, tokens) of `lines`, the text read as one stream with carried state in chunks of
    `length` targets (read_chunks: log_probs, n_models, probs): a leading <eos>, then each
    non-empty line's ids and <eos> (an empty line has no target). `encode(tokens)` -> (ids,
    oov). A line is held only until its targets are scored (a chunk's worth of lines)."""
    waiting = collections.deque()  # [line, oov, targets] whose log-probs are not all in

    def blocks():
        yield np.array([eos], dtype=np.int64)
        block, n = [], 0
        for line in lines:
            ids, oov = encode(line[2])
            waiting.append((line, oov, len(ids) + 1 if ids else 0))
            if ids:
                block.extend(ids)
                block.append(eos)
            n += 1
            if n == LINES_PER_BLOCK:
                yield np.array(block, dtype=np.int64)
                block, n = [], 0
        yield np.array(block, dtype=np.int64)

    got, have = [], 0  # log-probs scored and not yet given to a line, and how many
    try:
        for logp in read_chunks(chunks(blocks(), length), log_probs, n_models, probs):
            got.append(logp)
            have += len(logp)
            while waiting and waiting[0][2] <= have:
                have -= waiting[0][2]
                yield _line_record(waiting.popleft(), got, record)
    except ProbsEnded:
        raise UserError(f"--mix-probs: the file ends after {probs.taken} of the probabilities needed for the "
                        f"targets scored so far; it must hold one per target (each line's words and its <eos>)"
                        ) from None
    while waiting:  # the empty lines at the end
        yield _line_record(waiting.popleft(), got, record)


def _line_record(waiting, got, record):
    """The record of the first waiting line, its log-probs taken from the front of `got`."""
    (lineno, ident, tokens), oov, n = waiting
    if n == 0:
        return record(lineno, ident, tokens, oov, np.empty(0))
    if len(got[0]) < n:  # the line's targets span chunks
        got[:] = [np.concatenate(got)]
    mine, got[0] = got[0][:n], got[0][n:]
    return record(lineno, ident, tokens, oov, mine)
