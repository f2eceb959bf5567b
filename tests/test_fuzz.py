"""Fuzzing (hypothesis) of config files, --set, Unicode text and bytes: success or a clean UserError."""

import tempfile
from pathlib import Path
from unittest import mock

import yaml
from conftest import assert_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlm_cli import data
from rnnlm_cli.config import SECTION_TYPES, all_keys, load_config
from rnnlm_cli.errors import UserError
from rnnlm_cli.vocab import EOS, build_vocab


SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["1e-3", "1.5", ".inf", "whitespace", "elman", "sgd"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
NAMES = st.sampled_from(sorted({k.split(".")[1] for k in all_keys()})) | st.text(max_size=8)
SECTIONS = st.dictionaries(NAMES, VALUES, max_size=4) | VALUES
DOCUMENTS = st.dictionaries(st.sampled_from(list(SECTION_TYPES)) | st.text(max_size=6), SECTIONS, max_size=4) | VALUES


@settings(max_examples=150, deadline=None)
@given(document=DOCUMENTS, raw=st.none() | st.text(max_size=80))
def test_fuzzed_config_files_load_or_fail_cleanly(document, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(raw if raw is not None else yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        try:
            load_config(path)
        except UserError as e:
            assert str(e)


OVERRIDES = (st.tuples(st.sampled_from(all_keys()) | st.text(max_size=10), st.sampled_from(["=", "", "=="]),
                       st.text(max_size=12) | st.sampled_from(["null", "3", "-1", "0.5", "1e9", "[1, 2]", "{a: 1}",
                                                               "'x'", "yes", ".nan", "relu"]))
             .map("".join) | st.text(max_size=30))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(OVERRIDES, min_size=1, max_size=3))
def test_fuzzed_set_options_through_the_cli(run_cli, overrides):
    code, out, err = run_cli("config", *[f"--set={o}" for o in overrides])
    if code == 0:
        assert isinstance(yaml.safe_load(out), dict)
    else:
        assert_clean_error(code, err, 2)


TEXT = st.lists(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(
    ["\r", "\n", "\r\n", " ", "\t", "\u00a0", "\u3000", "\u2028", "\x85", "\ufeff", "\x00", "<unk>", "<eos>",
     "é", "İ", "ΑΣ", "'", "-", "...", "3.14"]), max_size=40).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT, tokenizer=st.sampled_from(["whitespace", "simple"]), block=st.sampled_from([3, 7, 1 << 16]))
def test_fuzzed_unicode_text_gives_the_reference_tokens(text, tokenizer, block):
    """Any Unicode text: the token stream of docs/model-directory.md (lines end at LF/CRLF/CR, a leading BOM is
    skipped), read in blocks of any size; a NUL character is the one clean refusal."""
    import re
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(data, "_BLOCK", block):
        path = Path(tmp) / "t.txt"
        path.write_bytes(text.encode("utf-8"))
        try:
            counts, n_words, n_lines = data.count_words(path, tokenizer)
            vocab = build_vocab(counts)
            ids, stats = data.encode_file(path, vocab, tokenizer, allow_empty=True)
        except UserError as e:
            assert "\x00" in text and "NUL" in str(e)
            return
    assert "\x00" not in text
    expected = [EOS]
    for line in re.split("\r\n|\r|\n", text[1:] if text.startswith("\ufeff") else text):
        words = data.tokenize(line, tokenizer)
        if words:
            expected += words + [EOS]
    assert [vocab.tokens[i] for i in ids] == expected
    assert stats["targets"] == n_words + n_lines == len(expected) - 1


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=120), block=st.sampled_from([2, 5, 1 << 16]))
def test_fuzzed_bytes_read_or_fail_cleanly(raw, block):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(data, "_BLOCK", block):
        path = Path(tmp) / "b.txt"
        path.write_bytes(raw)
        try:
            counts, n_words, n_lines = data.count_words(path, "whitespace")
            ids, stats = data.encode_file(path, build_vocab(counts), "whitespace", allow_empty=True)
        except UserError as e:
            kind = data.compression(raw[:10])  # bytes that start a gzip/bzip2/xz file are read as one
            assert str(e).startswith(f"{path}: line " if kind is None else f"{path}: "), str(e)
            if kind is not None:
                assert f"truncated {kind} file" in str(e) or f"damaged {kind} file" in str(e) or ": line " in str(e)
            return
    assert stats["targets"] == n_words + n_lines == len(ids) - 1
