"""The vocabulary: ids 0 = <unk>, 1 = <eos>, then words by frequency; vocab.txt on disk.

vocab.txt holds one token per line, UTF-8, LF endings; a token's id is its 0-based line number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from . import files
from .data import count_words, encode_file, iter_lines
from .errors import UserError

UNK = "<unk>"
EOS = "<eos>"
SPECIALS = (UNK, EOS)


@dataclass(frozen=True)
class Vocab:
    """tokens[i] is the word with id i; index maps a word back to its id.

    Build it with build_vocab, vocab_from_tokens or load_vocab, which keep the two consistent.
    Equality and hashing use `tokens` only (the index is derived from it).
    """

    tokens: tuple[str, ...]
    index: dict[str, int] = field(repr=False, compare=False)

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    @property
    def eos_id(self) -> int:
        return self.index[EOS]

    def __len__(self) -> int:
        return len(self.tokens)


def _token_problem(token: str) -> str | None:
    """Why `token` cannot be a vocabulary entry, or None if it can."""
    if not isinstance(token, str):
        return f"token {token!r} is not a string"
    if token == "":
        return "empty token"
    if token.split() != [token]:
        # Whitespace could never come out of a tokenizer and would break vocab.txt's lines.
        return f"token {token!r} contains whitespace"
    return None


def _check_tokens(tokens: tuple[str, ...], source: str, where: Callable[[int], str]) -> None:
    """UserError "source: where(i): problem" for the first bad, duplicate or misplaced token."""
    if _plainly_valid(tokens):
        return
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        problem = _token_problem(tok)
        if problem is None and tok in seen:
            problem = f"duplicate token {tok!r} (also at {where(seen[tok])})"
        if problem is None and i < len(SPECIALS) and tok != SPECIALS[i]:
            problem = f"expected {SPECIALS[i]!r} here, found {tok!r}"
        if problem:
            raise UserError(f"{source}: {where(i)}: {problem}")
        seen[tok] = i
    if len(tokens) < len(SPECIALS):
        raise UserError(
            f"{source}: {len(tokens)} token(s); a vocabulary starts with {UNK} at"
            f" {where(0)} and {EOS} at {where(1)}"
        )


def _plainly_valid(tokens: tuple[str, ...]) -> bool:
    """The common case, checked in a few C-level passes: strings without whitespace, none empty,
    no duplicate, the specials first (anything else goes through the token-by-token check,
    which names the first problem)."""
    return (len(tokens) >= len(SPECIALS) and tokens[: len(SPECIALS)] == SPECIALS
            and all(isinstance(t, str) for t in tokens) and " ".join(tokens).split() == list(tokens)
            and len(set(tokens)) == len(tokens))


def vocab_from_tokens(tokens: Iterable[str]) -> Vocab:
    """A Vocab whose ids are the positions in `tokens` (which must start <unk>, <eos>)."""
    tokens = tuple(tokens)
    _check_tokens(tokens, "vocabulary", lambda i: f"id {i}")
    return Vocab(tokens, {tok: i for i, tok in enumerate(tokens)})


def build_vocab(
    counts: Mapping[str, int], min_count: int = 1, max_size: int | None = None
) -> Vocab:
    """<unk>, <eos>, then the words with count >= min_count, most frequent first.

    Ties are broken by the token's string order, so the result depends only on the counts.
    max_size caps the total size including the two specials. A corpus that already contains
    <unk> or <eos> (Penn Treebank has <unk>) does not get a second one.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise UserError(f"vocab.min_count must be an integer >= 1, got {min_count!r}")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < len(SPECIALS)
    ):
        raise UserError(
            f"vocab.max_size must be null or an integer >= {len(SPECIALS)}"
            f" (it counts {UNK} and {EOS}), got {max_size!r}"
        )
    words = [w for w, c in counts.items() if c >= min_count and w not in SPECIALS]
    words.sort(key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max_size - len(SPECIALS)]
    return vocab_from_tokens(SPECIALS + tuple(words))


# In a word list, the sentence boundary of SRILM and Kaldi text: <eos> here, so not a word
SENTENCE_MARKERS = ("<s>", "</s>")
NOT_WORDS = frozenset(SPECIALS + SENTENCE_MARKERS)  # tokens a word list may hold but never adds


def load_word_list(path: str | os.PathLike) -> tuple[str, ...]:
    """The words of a vocabulary file (vocab.file): UTF-8, one word per line, blank lines
    skipped; <unk> and <eos> (which every vocabulary has) and <s>, </s> (the sentence boundary,
    <eos>) are not words of it. A line with several fields, or a word listed twice, is a
    UserError naming the line."""
    name = os.fspath(path)
    words: list[str] = []
    seen: dict[str, int] = {}
    for lineno, text in iter_lines(path):
        fields = text.split()
        if len(fields) > 1:
            raise UserError(f"{name}: line {lineno}: {len(fields)} fields; a vocabulary file has one word per line "
                            f"(a Kaldi words.txt? its first column: cut -d' ' -f1)")
        if not fields:
            continue
        if fields[0] in seen:
            raise UserError(f"{name}: line {lineno}: {fields[0]!r} is listed twice (also on line {seen[fields[0]]})")
        seen[fields[0]] = lineno
        if fields[0] not in NOT_WORDS:
            words.append(fields[0])
    if not words:
        raise UserError(f"{name}: no words (a vocabulary file lists one word per line)")
    return tuple(words)


def vocab_from_list(words: Iterable[str], counts: Mapping[str, int]) -> Vocab:
    """<unk>, <eos>, then every word of the list, ordered as build_vocab orders them: most
    frequent in `counts` first (the words it never saw last), ties in string order."""
    return vocab_from_tokens(SPECIALS + tuple(sorted(words, key=lambda w: (-counts.get(w, 0), w))))


def make_vocab(counts: Mapping[str, int], vocab_cfg) -> Vocab:
    """The vocabulary of a config's `vocab` section from the training text's word counts:
    vocab.file's words when it names one, else built (min_count, max_size)."""
    if vocab_cfg.file:
        return vocab_from_list(load_word_list(vocab_cfg.file), counts)
    return build_vocab(counts, vocab_cfg.min_count, vocab_cfg.max_size)


def format_vocab(vocab: Vocab) -> str:
    """The text of vocab.txt: one token per line, LF endings."""
    return "".join(tok + "\n" for tok in vocab.tokens)


def save_vocab(vocab: Vocab, path: str | os.PathLike) -> None:
    """Write vocab.txt atomically: a temp file in the same folder, flushed, then os.replace.

    A crash or a full disk leaves either the old file or the new one, never a half-written
    one; a failure is a UserError (bad place) or WriteError (the machine) naming the file.
    """
    files.write_text(path, format_vocab(vocab))


def load_vocab(path: str | os.PathLike) -> Vocab:
    """Read vocab.txt; UserError naming the file and line for anything malformed.

    Each line is one token (no surrounding or inner whitespace, no empty lines, no
    duplicates); lines 1 and 2 must be <unk> and <eos>.
    """
    name = os.fspath(path)
    # iter_lines gives strict UTF-8 with line/byte-offset errors, and file errors by name.
    tokens = tuple(text for _, text in iter_lines(path))
    _check_tokens(tokens, name, lambda i: f"line {i + 1}")
    return Vocab(tokens, {tok: i for i, tok in enumerate(tokens)})


def coverage(train_file, other_files=(), min_count=1, max_size=None, tokenizer="whitespace"):
    """The vocabulary built from `train_file` and how it covers each file ->
    (vocab, word counts of train, [encode_file's stats of train and of each other file])."""
    counts, _, _ = count_words(train_file, tokenizer)
    vocab = build_vocab(counts, min_count, max_size)
    rows = [encode_file(path, vocab, tokenizer, allow_empty=True)[1] for path in (train_file, *other_files)]
    return vocab, counts, rows
