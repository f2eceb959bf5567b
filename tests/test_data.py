"""Token streams, batching and BPTT windows (docs/model-directory.md, "The token stream and vocabulary
ids"; docs/training.md, "How training proceeds")."""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlm_cli.data import (
    batchify,
    count_words,
    encode_file,
    iter_lines,
    iter_windows,
    num_windows,
    one_hot,
    tokenize,
)
from rnnlm_cli.errors import UserError
from rnnlm_cli.vocab import EOS, UNK, build_vocab, vocab_from_tokens

# 3 non-empty lines, 9 words; a blank line and a whitespace-only line add nothing.
SMALL = b"the cat sat\n\n   \t \na dog  barked loudly\r\nthe end"


def write(tmp_path, content: bytes, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- reading lines -------------------------------------------------------------------------


def test_iter_lines_endings_and_bom(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfa\r\nb\rc\n\nd")
    assert list(iter_lines(path)) == [(1, "a"), (2, "b"), (3, "c"), (4, ""), (5, "d")]


def test_iter_lines_final_newline_adds_no_line(tmp_path):
    assert list(iter_lines(write(tmp_path, b"x\ny\n"))) == [(1, "x"), (2, "y")]
    assert list(iter_lines(write(tmp_path, b""))) == []


@pytest.mark.parametrize(
    "content, line, offset",
    [
        (b"ok line\nsecond \xff line\n", 2, 15),
        (b"\xef\xbb\xbfab\rc\xff\n", 2, 7),  # BOM and a lone CR before the bad byte
        (b"a\r\n\xc3(\n", 2, 3),  # a truncated two-byte sequence
        (b"\x80", 1, 0),
    ],
)
def test_invalid_utf8_names_line_and_byte_offset(tmp_path, content, line, offset):
    path = write(tmp_path, content)
    with pytest.raises(UserError) as e:
        list(iter_lines(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: line {line}: invalid UTF-8 at byte offset {offset} ")
    assert content[offset] >= 0x80


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file") as e:
        encode_file(tmp_path / "missing.txt", build_vocab({}), "whitespace")
    assert str(tmp_path / "missing.txt") in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory") as e:
        count_words(tmp_path, "whitespace")
    assert str(tmp_path) in str(e.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, b"a\n")
    path.chmod(0)
    with pytest.raises(UserError, match="permission denied"):
        list(iter_lines(path))


# --- tokenizers ----------------------------------------------------------------------------


def test_whitespace_tokenizer_splits_on_any_whitespace():
    assert tokenize(" a\tb  c\u00a0d\u3000e \n", "whitespace") == ["a", "b", "c", "d", "e"]
    assert tokenize("Keep CASE, and punct.", "whitespace") == ["Keep", "CASE,", "and", "punct."]


@pytest.mark.parametrize(
    "text, words",
    [
        ("In the beginning God created the earth.", "in the beginning god created the earth ."),
        ("Don't stop, it's well-known!", "don't stop , it's well-known !"),
        ("the LORD's house", "the lord's house"),
        ("their fathers' house", "their fathers ' house"),
        ("pi is 3.14, about 1,000 or 10.5.2 (ok?)", "pi is 3.14 , about 1,000 or 10.5.2 ( ok ? )"),
        ("end. 3rd place", "end . 3rd place"),
        ("wait... what?!", "wait ... what ? !"),
        ("sin--; and", "sin -- ; and"),
        ("U.S. e-mail", "u . s . e-mail"),
        (
            '"Quoted" \u201cCurly\u201d caf\u00e9\u2019s',
            '" quoted " \u201c curly \u201d caf\u00e9\u2019s',
        ),
        ("an <UNK> here", "an <unk> here"),
        ("  \t ", ""),
    ],
)
def test_simple_tokenizer(text, words):
    assert tokenize(text, "simple") == words.split()


def test_unknown_tokenizer(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer 'spacy'.*whitespace, simple"):
        tokenize("a b", "spacy")
    with pytest.raises(UserError, match="unknown tokenizer"):
        encode_file(write(tmp_path, b"a\n"), build_vocab({}), "spacy")


# --- counting and encoding -----------------------------------------------------------------


def test_count_words_small_file(tmp_path):
    counts, words, lines = count_words(write(tmp_path, SMALL), "whitespace")
    assert (words, lines) == (9, 3)
    assert counts["the"] == 2 and sum(counts.values()) == 9


def test_encode_small_file_has_words_plus_lines_targets(tmp_path):
    path = write(tmp_path, SMALL)
    vocab = build_vocab(count_words(path, "whitespace")[0])
    ids, stats = encode_file(path, vocab, "whitespace")
    assert ids.dtype == np.int32
    decoded = [vocab.tokens[i] for i in ids]
    expected = "<eos> the cat sat <eos> a dog barked loudly <eos> the end <eos>".split()
    assert decoded == expected
    assert stats == {
        "file": str(path),
        "words": 9,
        "lines": 3,
        "targets": 12,
        "oov": 0,
        "oov_rate": 0.0,
    }
    assert len(ids) - 1 == stats["targets"]


def test_oov_counts_unknown_words_but_not_a_literal_unk(tmp_path):
    vocab = vocab_from_tokens([UNK, EOS, "a", "b"])
    ids, stats = encode_file(write(tmp_path, b"a x <unk> b y\n"), vocab, "whitespace")
    assert ids.tolist() == [1, 2, 0, 0, 3, 0, 1]
    assert (stats["targets"], stats["oov"]) == (6, 2)
    assert stats["oov_rate"] == pytest.approx(2 / 6)


def test_simple_tokenizer_in_encode(tmp_path):
    path = write(tmp_path, b"Hello, World.\n")
    vocab = build_vocab(count_words(path, "simple")[0])
    ids, stats = encode_file(path, vocab, "simple")
    assert [vocab.tokens[i] for i in ids] == [EOS, "hello", ",", "world", ".", EOS]
    assert stats["targets"] == 5


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \t\r\n \n"])
def test_empty_corpus(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(UserError, match="no tokens") as e:
        encode_file(path, build_vocab({}), "whitespace")
    assert str(e.value).startswith(f"{path}: ")
    ids, stats = encode_file(path, build_vocab({}), "whitespace", allow_empty=True)
    assert ids.tolist() == [1]
    assert (stats["targets"], stats["oov"], stats["oov_rate"]) == (0, 0, 0.0)


WORD = st.sampled_from(["a", "b", "cat", "dog", "<unk>", "naïve", "x-y", "3.14", "it's"])
LINE = st.lists(WORD, max_size=6)
GAP = st.sampled_from([" ", "  ", "\t", " \t "])
ENDING = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.tuples(LINE, GAP, ENDING), max_size=8), final_newline=st.booleans())
def test_encode_decode_round_trip(lines, final_newline):
    text = "".join(gap + gap.join(words) + end for words, gap, end in lines)
    if not final_newline and text.endswith("\n"):
        text = text[:-1]
    expected = [EOS]
    for words, _, _ in lines:
        if words:
            expected += words + [EOS]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.txt")
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))
        counts, n_words, n_lines = count_words(path, "whitespace")
        vocab = build_vocab(counts)
        ids, stats = encode_file(path, vocab, "whitespace", allow_empty=True)
    assert [vocab.tokens[i] for i in ids] == expected
    assert stats["targets"] == n_words + n_lines == len(expected) - 1
    assert stats["oov"] == 0


# --- batching and windows ------------------------------------------------------------------


def test_batchify_alphabet():
    ids = np.arange(26, dtype=np.int32)  # a..z
    streams = batchify(ids, 4)
    assert streams.shape == (4, 6)
    assert streams[:, 0].tolist() == [0, 6, 12, 18]  # a g m s
    assert streams[3].tolist() == [18, 19, 20, 21, 22, 23]  # s..x; y z dropped


def test_windows_hand_worked():
    streams = batchify(np.arange(26), 4)  # (4, 6)
    windows = list(iter_windows(streams, 2))
    assert num_windows(streams, 2) == len(windows) == 3
    (x0, y0), (x1, y1), (x2, y2) = windows
    assert x0.tolist() == [[0, 1], [6, 7], [12, 13], [18, 19]]
    assert y0.tolist() == [[1, 2], [7, 8], [13, 14], [19, 20]]
    assert x1[0].tolist() == [2, 3] and y1[0].tolist() == [3, 4]
    assert x2.shape == y2.shape == (4, 1)  # the partial last window
    assert x2[:, 0].tolist() == [4, 10, 16, 22] and y2[:, 0].tolist() == [5, 11, 17, 23]
    # resume from window 2
    assert [y.tolist() for _, y in iter_windows(streams, 2, start=2)] == [y2.tolist()]
    assert list(iter_windows(streams, 2, start=3)) == []


def test_batchify_minimum_length():
    assert batchify(np.arange(4), 2).shape == (2, 2)  # one target per stream is enough


@pytest.mark.parametrize("n_ids, batch", [(5, 3), (1, 1), (7, 4)])
def test_corpus_too_short_for_batch_size(n_ids, batch):
    with pytest.raises(UserError, match=f"corpus too short for batch size {batch}") as e:
        batchify(np.arange(n_ids), batch, source="train.txt")
    msg = str(e.value)
    assert msg.startswith("train.txt: ") and "shorter than one window of one stream" in msg


@pytest.mark.parametrize("batch", [0, -1, 2.0, True])
def test_bad_batch_size(batch):
    with pytest.raises(UserError, match="batch size"):
        batchify(np.arange(10), batch)


def test_bad_bptt_and_start():
    streams = batchify(np.arange(10), 2)
    with pytest.raises(UserError, match="bptt"):
        num_windows(streams, 0)
    with pytest.raises(ValueError, match="start window"):
        list(iter_windows(streams, 2, start=5))


@settings(max_examples=200, deadline=None)
@given(
    n_ids=st.integers(2, 400),
    batch=st.integers(1, 8),
    bptt=st.integers(1, 50),
    data=st.data(),
)
def test_every_target_exactly_once_in_order(n_ids, batch, bptt, data):
    ids = np.arange(n_ids)
    if n_ids // batch < 2:
        with pytest.raises(UserError):
            batchify(ids, batch)
        return
    streams = batchify(ids, batch)
    length = n_ids // batch
    assert streams.shape == (batch, length)
    assert np.array_equal(streams.ravel(), ids[: batch * length])
    windows = list(iter_windows(streams, bptt))
    assert len(windows) == num_windows(streams, bptt) >= 1
    for inputs, targets in windows:
        assert inputs.shape == targets.shape
        assert 1 <= inputs.shape[1] <= bptt and inputs.shape[0] == batch
        assert np.array_equal(targets, inputs + 1)  # ids are positions: target = next token
    assert all(x.shape[1] == bptt for x, _ in windows[:-1])
    assert np.array_equal(np.concatenate([y for _, y in windows], axis=1), streams[:, 1:])
    assert np.array_equal(np.concatenate([x for x, _ in windows], axis=1), streams[:, :-1])
    start = data.draw(st.integers(0, len(windows)))
    resumed = list(iter_windows(streams, bptt, start=start))
    assert len(resumed) == len(windows) - start
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(resumed, windows[start:]))


def test_one_hot():
    ids = np.array([[0, 2], [1, 1]])
    oh = one_hot(ids, 3)
    assert oh.shape == (2, 2, 3) and oh.dtype == np.float64
    assert oh[0, 1].tolist() == [0, 0, 1] and oh[1, 0].tolist() == [0, 1, 0]
    assert np.array_equal(oh.argmax(-1), ids) and oh.sum() == 4
    assert one_hot(ids, 3, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError):
        one_hot(np.array([[3]]), 3)


def test_windows_per_epoch_from_the_length_alone():
    from rnnlm_cli.data import batchify, num_windows, windows_per_epoch
    for n_ids in (2, 3, 10, 57, 100, 1001):
        for batch_size in (1, 2, 4):
            for bptt in (1, 3, 7):
                if n_ids // batch_size >= 2:
                    want = num_windows(batchify(np.arange(n_ids), batch_size), bptt)
                    assert windows_per_epoch(n_ids, batch_size, bptt) == want, (n_ids, batch_size, bptt)
