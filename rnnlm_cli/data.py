"""Corpus files -> token streams -> batched streams -> BPTT windows.

The conventions (docs/model-directory.md, "The token stream and vocabulary ids"; docs/training.md):

- a file is UTF-8 text, one sentence per line;
- its token stream is ``<eos>``, then for each non-empty line its words followed by ``<eos>``,
  so a file of W words on L non-empty lines has W + L prediction targets;
- training cuts the stream into N contiguous streams of equal length and walks them in
  windows of ``bptt`` steps.

Reading text (details beyond that convention):

- lines end at LF, CRLF or a lone CR (mixed endings are fine); a leading UTF-8 BOM is skipped;
- words are separated by any Unicode whitespace, as Python's ``str.split()`` defines it: space,
  tab, no-break space U+00A0, ideographic space U+3000, the other Zs spaces, and also U+0085,
  U+2028, U+2029, form feed and vertical tab (which do *not* end a line). Zero-width characters
  (U+200B, U+FEFF inside a line) are not whitespace: they stay part of a word;
- invalid UTF-8 and NUL bytes (binary or UTF-16 files) are refused, naming line and byte offset
  (of the decompressed text, for a compressed file);
- a gzip, bzip2 or xz file (recognized by its first bytes, not its name) is decompressed as it
  is read, in bounded memory; a damaged or truncated one is refused, naming the file (open_text);
- a line of any length is read in blocks of 64 KiB cut at whitespace, so memory does not grow
  with the length of a line.

Shapes use N for the number of streams (the batch) and T for time steps in a window.
"""

from __future__ import annotations

import array
import bz2
import collections
import gzip
import io
import lzma
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from itertools import repeat
import numpy as np

from .errors import UserError, open_failed

PathLike = str | os.PathLike

_BOM = b"\xef\xbb\xbf"

# The `simple` tokenizer, applied to lowercased text. Alternatives are tried in order:
# 1. the vocabulary's special tokens stay whole, so raw text that already marks unknown
#    words with <unk> is not turned into "< unk >";
# 2. a word: a run of letters/digits/underscore, which may continue across an apostrophe or
#    hyphen between word characters (don't, lord's, well-known) or across "." or ","
#    between digits (3.14, 1,000, 10.5.2);
# 3. anything else that is not whitespace: a run of one repeated punctuation character
#    ("...", "--", "!!") or a single one ("?!" is "?" then "!").
_SIMPLE_RE = re.compile(
    r"""
      <unk> | <eos>
    | \w+ (?: (?: ['\u2019-] | (?<=\d)[.,](?=\d) ) \w+ )*
    | ([^\w\s]) \1*
    """,
    re.VERBOSE,
)


def _whitespace(line: str) -> list[str]:
    """Pre-tokenized text: str.split() splits on every Unicode whitespace run, tabs included."""
    return line.split()


def _simple(line: str) -> list[str]:
    """Raw text: lowercase, split punctuation off words, keep numbers and inner ' and - whole."""
    return [m.group(0) for m in _SIMPLE_RE.finditer(line.lower())]


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "whitespace": _whitespace,
    "simple": _simple,
}


def get_tokenizer(tokenizer: str) -> Callable[[str], list[str]]:
    """The function for a tokenizer name; UserError naming the value if it is unknown."""
    try:
        return TOKENIZERS[tokenizer]
    except (KeyError, TypeError):
        names = ", ".join(TOKENIZERS)
        raise UserError(f"unknown tokenizer {tokenizer!r}: expected one of {names}") from None


def tokenize(line: str, tokenizer: str) -> list[str]:
    """The words of one line of text (no <eos>) under the named tokenizer."""
    return get_tokenizer(tokenizer)(line)


# Compressed text, recognized by its first bytes (whatever the file's name) and streamed by the
# standard library: gzip (.gz), bzip2 (.bz2: "BZh", the block size, then the magic of a block or of
# the end of the stream, so that text starting with "BZh" stays text) and xz (.xz).
_COMPRESSED = (
    ("gzip", re.compile(rb"\x1f\x8b")),
    ("bzip2", re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)")),
    ("xz", re.compile(rb"\xfd7zXZ\x00")),
)
_MAGIC_STARTS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_HEAD = 10  # bytes that decide the format
_BUFFER = 1 << 16


def compression(head: bytes) -> str | None:
    """"gzip", "bzip2" or "xz" when `head` (a file's first bytes) starts such a file, else None."""
    return next((name for name, magic in _COMPRESSED if magic.match(head)), None)


def open_text(path: PathLike):
    """Open a text file for reading as bytes: a binary reader with peek, read and readline; a
    gzip, bzip2 or xz file (by its first bytes) is decompressed as it is read. The path "-" is
    standard input (compressed or not; left open). The usual OS failures, and a damaged or
    truncated compressed file when it is read, are UserErrors naming the file. Every reader of
    text (corpora, vocabularies, score, --mix-probs) opens its files here."""
    if path == "-":
        return _open_stdin()
    try:
        f = open(path, "rb")
    except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
        raise open_failed(os.fspath(path), e, "a text file") from None
    try:
        kind = compression(f.peek(_HEAD)[:_HEAD])
    except OSError as e:
        f.close()
        raise UserError(f"{os.fspath(path)}: read error ({e.strerror or e})") from None
    return f if kind is None else io.BufferedReader(_Decompressed(f, kind, os.fspath(path)), _BUFFER)


def is_compressed(path: PathLike) -> bool:
    """Whether a file is compressed text (which cannot be read from an offset)."""
    try:
        with open(path, "rb") as f:
            return compression(f.read(_HEAD)) is not None
    except (OSError, ValueError) as e:
        raise open_failed(os.fspath(path), e, "a text file") from None


def _open_stdin():
    try:
        stdin = open(sys.stdin.fileno(), "rb", closefd=False)
    except (AttributeError, OSError, ValueError):  # no real file descriptor (an embedding host)
        stdin = io.BufferedReader(sys.stdin.buffer)
    head = b""
    while len(head) < _HEAD and any(p.startswith(head[:len(p)]) for p in _MAGIC_STARTS):
        more = stdin.read1(_HEAD - len(head))  # what is there: a terminal's first line may be shorter
        if not more:
            break
        head += more
    source = io.BufferedReader(_Prefixed(head, stdin), _BUFFER)
    kind = compression(head)
    return source if kind is None else io.BufferedReader(_Decompressed(source, kind, "standard input"), _BUFFER)


class _Prefixed(io.RawIOBase):
    """The bytes `head` (already read from `rest`), then the rest of `rest`."""

    def __init__(self, head, rest):
        self._head, self._rest = head, rest

    def readable(self):
        return True

    def readinto(self, b):
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        return self._rest.readinto1(b)  # what is there: standard input is read as it comes

    def close(self):
        self._rest.close()
        super().close()


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of the compressed stream `f`; a damaged or truncated stream is a
    UserError naming the file (never a shorter text)."""

    def __init__(self, f, kind, name):
        self._f, self._kind, self._name = f, kind, name
        self._d = {"gzip": lambda: gzip.GzipFile(fileobj=f, mode="rb"), "bzip2": lambda: bz2.BZ2File(f),
                   "xz": lambda: lzma.LZMAFile(f)}[kind]()

    def readable(self):
        return True

    def readinto(self, b):
        try:
            return self._d.readinto(b)
        except EOFError:
            raise UserError(f"{self._name}: truncated {self._kind} file: its compressed data ends before its end "
                            f"marker (an interrupted download or copy?)") from None
        except (OSError, ValueError, zlib.error, lzma.LZMAError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"{self._name}: damaged {self._kind} file ({reason})") from None

    def close(self):
        if not self.closed:
            self._d.close()
            self._f.close()
        super().close()


def _decode(raw: bytes, path: PathLike, lineno: int, offset: int) -> str:
    """Strict UTF-8 decode of one line; `offset` is the file byte offset of raw[0]."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise UserError(
            f"{os.fspath(path)}: line {lineno}: NUL byte at byte offset {offset + nul}: a binary file"
            f" or UTF-16 text? The file must be UTF-8 text"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start : e.start + 1].hex()
        raise UserError(
            f"{os.fspath(path)}: line {lineno}: invalid UTF-8 at byte offset {offset + e.start}"
            f" (byte 0x{bad}): the file must be UTF-8 text (a binary file, or Latin-1/UTF-16 text?)"
        ) from None


# Reading is done in blocks of at most this many bytes, so that memory does not grow with the
# length of a line (a whole book on one line is fine).
_BLOCK = 1 << 16
# ASCII whitespace bytes other than LF: a line may be cut after one of them without cutting a
# word or a UTF-8 character (they never occur inside a multi-byte sequence). CR is among them:
# it ends a line.
_CUT_BYTES = tuple(bytes([b]) for b in b" \t\x0b\x0c\x1c\x1d\x1e\x1f\r")


def iter_pieces(path: PathLike, block: int | None = None) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number from 1, text, ends_line) for the lines of a UTF-8 file, in pieces.

    A line shorter than `block` bytes comes as one piece with ends_line True. A longer line
    comes as several pieces, cut just after an ASCII whitespace character, so no word is cut
    and joining the pieces gives the line back; only the last has ends_line True. Tokenizing
    the pieces one by one therefore gives the tokens of the line, in bounded memory (a single
    word longer than `block` is kept whole). See iter_lines for endings, BOM and errors.
    """
    # Long on purpose (~75 lines): one generator whose position state (lineno, pos, pending,
    # open_line) every branch updates; split into helpers, that state would travel through all.
    block = max(1, block or _BLOCK)
    lineno = 1
    pos = 0  # file byte offset of the first byte not yet yielded
    pending: list[bytes] = []  # the start of the current line: bytes with no cut point
    open_line = False  # a piece of the current line was yielded already

    def lines_of(data: bytes, last_complete: bool):
        """Split data on CR (each CR ends a line) and yield its pieces."""
        nonlocal lineno, pos, open_line
        segments = data.split(b"\r") if b"\r" in data else [data]
        for i, seg in enumerate(segments):
            complete = last_complete or i < len(segments) - 1
            if seg or complete:
                yield lineno, _decode(seg, path, lineno, pos), complete
            pos += len(seg) + (1 if i < len(segments) - 1 else 0)
            if complete:
                lineno += 1
                open_line = False
            elif seg:
                open_line = True

    with open_text(path) as f:
        try:
            if f.peek(len(_BOM))[: len(_BOM)] == _BOM:
                f.read(len(_BOM))
                pos = len(_BOM)
            while True:
                chunk = f.readline(block)
                while chunk.endswith(b"\r"):  # a CR at the end of a block: is it CRLF?
                    more = f.read(1)
                    if not more:
                        break
                    chunk += more
                    if more != b"\r":
                        break
                if not chunk:  # end of file
                    if open_line or any(pending):
                        yield from lines_of(b"".join(pending), True)
                    return
                if chunk.endswith(b"\n"):  # the rest of a line
                    data = b"".join(pending + [chunk[:-1]]) if pending else chunk[:-1]
                    pending = []
                    if data.endswith(b"\r"):
                        data = data[:-1]  # CRLF
                        yield from lines_of(data, True)
                        pos += 2  # CR and LF
                    else:
                        yield from lines_of(data, True)
                        pos += 1  # LF
                    continue
                if len(chunk) < block:  # the last line, with no line ending
                    data = b"".join(pending + [chunk])
                    pending = []
                    trailing_cr = data.endswith(b"\r")
                    yield from lines_of(data[:-1] if trailing_cr else data, True)
                    pos += trailing_cr
                    continue
                # A long line: cut after its last whitespace byte, keep the rest for later.
                cut = max(chunk.rfind(b) for b in _CUT_BYTES)
                if cut < 0:
                    pending.append(chunk)  # inside one long word
                    continue
                head = b"".join(pending + [chunk[: cut + 1]]) if pending else chunk[: cut + 1]
                pending = [chunk[cut + 1 :]]
                yield from lines_of(head, False)
        except OSError as e:
            raise UserError(f"{os.fspath(path)}: read error ({e.strerror or e})") from None


def iter_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, text without its line ending) for each line of a UTF-8 file.

    Streams the file in binary and decodes each line on its own, so a decoding error can name
    its line and byte offset. LF, CRLF and lone CR end a line (UTF-8 never uses the bytes
    0x0A/0x0D inside a multi-byte character, so splitting bytes first is safe); other Unicode
    line separators (U+0085, U+2028, U+2029, form feed, vertical tab) do not end a line: they
    are whitespace between words. A leading UTF-8 byte order mark is skipped. A final line
    ending does not start a new line. A NUL byte is refused (binary or UTF-16 input).
    Errors (missing file, bad bytes, read errors) are UserErrors naming the file.
    """
    parts: list[str] = []
    for lineno, text, ends_line in iter_pieces(path):
        if not ends_line:
            parts.append(text)
            continue
        if parts:
            parts.append(text)
            text = "".join(parts)
            parts = []
        yield lineno, text


def _iter_token_pieces(path: PathLike, tokenizer: str) -> Iterator[tuple[list[str], bool]]:
    """(tokens of a piece of a line, whether the piece ends its line) for a file, in bounded
    memory: a line is tokenized piece by piece (cut at whitespace, so no token is cut)."""
    split = get_tokenizer(tokenizer)
    for _, text, ends_line in iter_pieces(path):
        yield split(text), ends_line


def count_words(path: PathLike, tokenizer: str) -> tuple[collections.Counter, int, int]:
    """(word counts, number of words, number of non-empty lines) of a file.

    A line is non-empty if it has at least one word; only such lines add an <eos>.
    """
    counts: collections.Counter = collections.Counter()
    words = lines = 0
    in_line = False  # the current line has a word
    for toks, ends_line in _iter_token_pieces(path, tokenizer):
        if toks:
            counts.update(toks)
            words += len(toks)
            in_line = True
        if ends_line and in_line:
            lines += 1
            in_line = False
    return counts, words, lines


def encode_file(
    path: PathLike, vocab, tokenizer: str, allow_empty: bool = False
) -> tuple[np.ndarray, dict]:
    """The token stream of a file (docs/model-directory.md) as int32 ids, shape
    (words + lines + 1,), and its stats. `vocab` is a vocab.Vocab (vocab.py imports this
    module, so the type is not imported here).

    Stream: <eos>, then for each non-empty line its word ids and <eos>. Words outside the
    vocabulary become <unk>. Stats: file, words, lines (non-empty), targets (= len(ids) - 1),
    oov (words not in the vocabulary; a literal <unk> in the text is a vocabulary word, not an
    OOV), oov_rate (oov / targets, 0.0 if there are no targets). A file with no tokens is a
    UserError unless allow_empty, in which case the stream is just [<eos>].
    """
    get_tokenizer(tokenizer)  # an unknown tokenizer fails before the file is opened
    index, unk, eos = vocab.index, vocab.unk_id, vocab.eos_id
    get = index.get
    unk_token = vocab.tokens[unk]
    # array('i') holds 4 bytes per token, not a Python object per word.
    ids = array.array("i", [eos])
    words = lines = literal_unk = 0
    in_line = False
    for toks, ends_line in _iter_token_pieces(path, tokenizer):
        if toks:
            ids.extend([get(w, unk) for w in toks])
            words += len(toks)
            literal_unk += toks.count(unk_token)
            in_line = True
        if ends_line and in_line:
            ids.append(eos)
            lines += 1
            in_line = False
    if words == 0 and not allow_empty:
        raise UserError(f"{os.fspath(path)}: no tokens (the file is empty or only whitespace)")
    out = np.frombuffer(ids, dtype=np.intc).astype(np.int32)
    # Every <unk> id came from an OOV word or a literal <unk>, so this avoids a second
    # dictionary lookup per word.
    oov = int(np.count_nonzero(out == unk)) - literal_unk
    targets = len(out) - 1
    stats = {
        "file": os.fspath(path),
        "words": words,
        "lines": lines,
        "targets": targets,
        "oov": oov,
        "oov_rate": oov / targets if targets else 0.0,
    }
    return out, stats


def encode_stream(path: PathLike, vocab, tokenizer: str, stats: dict) -> Iterator[np.ndarray]:
    """encode_file's token stream of a file in blocks of ids (int64) as the text is read, in
    bounded memory (a block is about a million tokens); when the last block has been taken,
    `stats` holds encode_file's stats (an empty file: the stream [<eos>], 0 targets)."""
    get_tokenizer(tokenizer)
    unk = vocab.unk_id
    counts = {"words": 0, "lines": 0, "literal_unk": 0}
    tokens = unks = 0
    for ids in encode_blocks([path], tokenizer, word_ids(vocab, counts), len(vocab), vocab.eos_id, counts):
        tokens += len(ids)
        unks += int(np.count_nonzero(ids == unk))
        yield ids
    targets, oov = tokens - 1, unks - counts["literal_unk"]
    stats.update(file=os.fspath(path), words=counts["words"], lines=counts["lines"], targets=targets, oov=oov,
                 oov_rate=oov / targets if targets else 0.0)


def _positive_int(value, name: str) -> int:
    """value as an int if it is an integer >= 1 (not a bool or float), else UserError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def batchify(ids: np.ndarray, batch_size: int, *, source: str | None = None) -> np.ndarray:
    """Cut a token stream (len,) into N = batch_size contiguous streams, shape (N, L).

    L = len(ids) // N; the remainder at the end is dropped. For the alphabet and N = 4
    (L = 6), read each row left to right; a window walks all rows in step:

        stream 0:  a b c d e f
        stream 1:  g h i j k l
        stream 2:  m n o p q r
        stream 3:  s t u v w x        (y z dropped)

    Row n + 1 continues row n in the file, but state never crosses rows: the hidden state
    of stream n at the end of one window starts stream n in the next. Returns a view.
    `source` (e.g. the file name) is only used in the error message.
    """
    n = _positive_int(batch_size, "batch size")
    length = len(ids) // n
    if length < 2:
        where = f"{source}: " if source else ""
        fix = f"use a batch size of at most {len(ids) // 2}" if len(ids) >= 2 else "add text"
        raise UserError(
            f"{where}corpus too short for batch size {n}: its {len(ids)} tokens"
            f" ({max(len(ids) - 1, 0)} targets) are shorter than one window of one stream"
            f" (each of the {n} streams needs at least 2 tokens); {fix}"
        )
    return ids[: n * length].reshape(n, length)


def pack_sentences(ids: np.ndarray, n_streams: int, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream (S,) into at most `n_streams` streams at sentence starts (the <eos>
    that each sentence is read from), of about equal length, padded at the end with <eos>
    -> (streams (N, L + 1), index (N, L)): index[n, j] is the position in the stream's targets
    (ids[1:]) of the target at streams[n, j + 1], or -1 for padding.

        ids:      <eos> a b <eos> c <eos> d e f <eos>        (3 sentences, 9 targets)
        stream 0: <eos> a b <eos> c <eos>                    targets 0..4
        stream 1: <eos> d e f <eos> <eos>                    targets 5..8, then padding

    With the state reset at every <eos> (and zero at the start of each stream), every target is
    predicted from exactly its own sentence, as in one stream: exact at any number of streams."""
    n = _positive_int(n_streams, "batch size")
    starts = np.flatnonzero(ids[:-1] == eos)  # the sentences' first inputs
    if len(starts) == 0 or starts[0] != 0:
        raise ValueError("a stream to pack must start with <eos>")
    total = len(ids) - 1
    cuts = np.unique(starts[np.searchsorted(starts, np.arange(n) * (total / n), side="left").clip(0, len(starts) - 1)])
    bounds = np.append(cuts, total)  # stream k: targets bounds[k] .. bounds[k+1] - 1
    length = int(np.diff(bounds).max())
    streams = np.full((len(cuts), length + 1), eos, dtype=ids.dtype)
    index = np.full((len(cuts), length), -1, dtype=np.int64)
    for k, (a, z) in enumerate(zip(bounds[:-1], bounds[1:])):
        streams[k, :z - a + 1] = ids[a:z + 1]
        index[k, :z - a] = np.arange(a, z)
    return streams, index


def num_windows(streams: np.ndarray, bptt: int) -> int:
    """Number of windows iter_windows yields for streams (N, L): ceil((L - 1) / bptt)."""
    bptt = _positive_int(bptt, "bptt")
    targets = max(streams.shape[1] - 1, 0)
    return -(-targets // bptt)


def windows_per_epoch(n_ids: int, batch_size: int, bptt: int) -> int:
    """num_windows of the batchify of a stream of n_ids ids, from its length alone."""
    return -(-max(n_ids // batch_size - 1, 0) // bptt)


def iter_windows(
    streams: np.ndarray, bptt: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (inputs, targets), each (N, t), for the windows of streams (N, L) in order.

    Window k starts at i = k * bptt and has t = min(bptt, L - 1 - i) steps: the last one may
    be shorter. Targets are the inputs shifted by one, so every stream position 1 .. L-1 is a
    target exactly once, in order. With L = 6 and bptt = 2 (positions 0..5):

        window 0:  inputs 0 1    targets 1 2
        window 1:  inputs 2 3    targets 3 4
        window 2:  inputs 4      targets 5        (partial)

    `start` is the index of the first window to yield (resuming mid-epoch); 0 <= start <=
    num_windows. The arrays are views into `streams`.
    """
    n_windows = num_windows(streams, bptt)
    if not 0 <= start <= n_windows:
        raise ValueError(f"start window {start} outside 0..{n_windows}")
    last = streams.shape[1] - 1
    for k in range(start, n_windows):
        i = k * bptt
        t = min(bptt, last - i)
        yield streams[:, i : i + t], streams[:, i + 1 : i + 1 + t]


def one_hot(ids: np.ndarray, V: int, dtype=np.float64) -> np.ndarray:
    """One-hot rows for integer ids: (N, T) -> (N, T, V) (any input shape S -> S + (V,))."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"ids must lie in 0..{V - 1}, got {ids.min()}..{ids.max()}")
    out = np.zeros(ids.shape + (V,), dtype=dtype)
    np.put_along_axis(out, ids[..., None].astype(np.intp), 1, axis=-1)
    return out


# --------------------------------------------------------------------------------------------
# Encoding in blocks: the fast path of the token cache (corpus.py). The token stream is the one
# described at the top; these functions give it a block of about a million tokens at a time.

# Marks the end of a line inside a block of tokens. It can never be a token: NUL bytes are
# refused in the text, and the tokenizers never produce one.
SENTINEL = "\x00"
_READ = 1 << 21  # bytes read at a time by the whitespace fast path (a block of 2 MB: ~135 MB peak per process)


def _raise_exact_error(path: PathLike):
    """Re-read a file with the line reader, which raises the UserError naming the line and byte."""
    for _ in iter_pieces(path):
        pass
    raise UserError(f"{os.fspath(path)}: the file must be UTF-8 text without NUL bytes")


def _whitespace_blocks(path: PathLike, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
    """The whitespace tokenizer on blocks of ~2 MB cut after a line end (or, inside a very long
    line, after an ASCII space): the same tokens as tokenizing line by line, with SENTINEL where
    each line ends (empty lines too), but several times faster. LF, CRLF and a lone CR end a
    line; any other Unicode whitespace separates words (str.split), as in iter_lines. Bytes
    `start` to `stop` only, when given (a part of the file that starts a line)."""
    with open_text(path) as f:
        rest, first = b"", start == 0
        left = None if stop is None else stop - start
        try:
            if start:
                f.seek(start)  # a plain file only: compressed ones are read whole (corpus._parts)
            while True:
                chunk = f.read(_READ if left is None else min(_READ, left))
                if left is not None:
                    left -= len(chunk)
                if first and chunk.startswith(_BOM):
                    chunk = chunk[len(_BOM):]
                first = False
                data = rest + chunk if rest else chunk
                if not chunk:
                    if data:
                        yield _split_block(data, path)
                    return
                cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
                if cut < 0:  # a very long line: cut after its last ASCII whitespace
                    cut = max(data.rfind(b) for b in _CUT_BYTES)
                if cut < 0:
                    rest = data  # inside one enormous word: read on
                    continue
                yield _split_block(data[:cut + 1], path)
                rest = data[cut + 1:]
        except OSError as e:
            raise UserError(f"{os.fspath(path)}: read error ({e.strerror or e})") from None


def _split_block(data: bytes, path: PathLike) -> list[str]:
    if b"\x00" in data:
        _raise_exact_error(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _raise_exact_error(path)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", " \x00 ").split()


def iter_token_blocks(path, tokenizer: str, size: int = 1 << 20) -> Iterator[list[str]]:
    """Lists of the tokens of a file, in order, with SENTINEL after every line: the whitespace
    tokenizer reads whole blocks at once; the others go line by line (in pieces, bounded
    memory) and are batched into lists of about `size` tokens. `path` may be (path, start,
    stop): that byte range of the file, which must start a line (whitespace tokenizer only)."""
    get_tokenizer(tokenizer)
    if tokenizer == "whitespace":
        yield from _whitespace_blocks(*(path if isinstance(path, tuple) else (path,)))
        return
    block: list[str] = []
    for toks, ends_line in _iter_token_pieces(path, tokenizer):
        block.extend(toks)
        if ends_line:
            block.append(SENTINEL)
        if len(block) >= size:
            yield block
            block = []
    if block:
        yield block


def word_ids(vocab, counts: dict | None = None) -> Callable[[list[str]], list[int]]:
    """The `lookup` of encode_blocks for a vocabulary: a block of tokens -> their ids, a word
    outside the vocabulary as <unk>, SENTINEL as len(vocab) (an id no word has). With `counts`,
    adds the literal <unk> tokens of the text to counts["literal_unk"]: they are vocabulary
    words, so the OOV count is the <unk> ids less these."""
    unk = vocab.unk_id
    get = {**vocab.index, SENTINEL: len(vocab)}.get
    unk_token = vocab.tokens[unk]

    def lookup(block):
        if counts is not None:
            counts["literal_unk"] += block.count(unk_token)
        return list(map(get, block, repeat(unk)))
    return lookup


def encode_blocks(paths, tokenizer: str, lookup: Callable[[list[str]], list[int]], sentinel: int, eos: int,
                  stats: dict, lead: bool = True) -> Iterator[np.ndarray]:
    """The token stream of the files `paths` taken as one text (``<eos>``, then every non-empty
    line of the first file, then of the next, ...), as int64 arrays of ids, one per block.
    `lookup` maps a block of tokens to ids, SENTINEL to `sentinel` (an id no word has); a line
    end becomes `eos` where the line has a word, and nothing where it is empty. Adds the words
    and non-empty lines seen to stats["words"], stats["lines"]. An entry of `paths` may be a byte
    range (path, start, stop) of a file, from a line start to a line start or the end of the file
    (a part of a corpus, encoded on its own: `lead` False leaves out the first <eos>)."""
    if lead:
        yield np.array([eos], dtype=np.int64)
    for path in paths:
        line_empty = True  # no word yet on the current line
        for block in iter_token_blocks(path, tokenizer):
            ids = np.array(lookup(block), dtype=np.int64)
            if not ids.size:
                continue
            ends = ids == sentinel
            after_end = np.empty_like(ends)
            after_end[0], after_end[1:] = line_empty, ends[:-1]
            line_empty = bool(ends[-1])
            keep = ~(ends & after_end)  # the end of an empty line adds no <eos>
            ids, ends = ids[keep], ends[keep]
            n_ends = int(np.count_nonzero(ends))
            stats["lines"] += n_ends
            stats["words"] += len(ids) - n_ends
            ids[ends] = eos
            yield ids
        if not line_empty:  # the last line has no line ending
            stats["lines"] += 1
            yield np.array([eos], dtype=np.int64)


def encode_head(paths, vocab, tokenizer: str, n: int) -> np.ndarray:
    """The first n ids (fewer if the text is shorter) of the token stream of the files `paths`
    read as one text, as a training corpus is (<eos>, then each non-empty line's word ids and
    <eos>; unknown words as <unk>), int64, reading no further than the blocks that hold them."""
    chunks, have = [], 0
    for ids in encode_blocks(paths, tokenizer, word_ids(vocab), len(vocab), vocab.eos_id, {"words": 0, "lines": 0}):
        chunks.append(ids[:n - have])
        have += len(chunks[-1])
        if have >= n:
            break
    return np.concatenate(chunks) if chunks else np.empty(0, np.int64)
