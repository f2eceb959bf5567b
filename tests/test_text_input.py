"""Odd input text: binary files, huge lines, line endings/BOM, prompts, empty or shared files, odd paths."""

import json
import tracemalloc

import numpy as np
import pytest
from conftest import assert_clean_error, files, write_corpus, write_tiny_config

from rnnlm_cli import data
from rnnlm_cli.vocab import EOS, build_vocab


@pytest.mark.parametrize("content, fragments", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ["line 1", "invalid UTF-8", "byte offset 0"]),
    ("hello world\n".encode("utf-16-le"), ["line 1", "NUL byte", "UTF-16"]),
    (b"fine\nline two\n\x1f\x8b\x08\x00\xff\x00", ["line 3", "byte offset"]),
])
def test_binary_files_are_refused(tiny_config, tmp_path, run_cli, content, fragments):
    path = tmp_path / "binary.txt"
    path.write_bytes(content)
    before = files(tmp_path)
    code, _, err = run_cli("vocab", path)
    assert_clean_error(code, err, 2, str(path), *fragments)
    code, _, err = run_cli("train", tiny_config, "--set", f"data.train={path}", "--out", tmp_path / "out")
    assert_clean_error(code, err, 2, str(path), *fragments)
    assert files(tmp_path) == before  # no model folder created


def test_one_enormous_line_in_bounded_memory(tmp_path):
    words = [f"w{i}" for i in range(1000)]
    path = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    line = " ".join(words[i] for i in rng.integers(0, 1000, 1_100_000))
    path.write_text(line, encoding="utf-8")
    assert path.stat().st_size > 5_000_000
    counts, n_words, n_lines = data.count_words(path, "whitespace")
    assert (n_words, n_lines) == (1_100_000, 1)
    vocab = build_vocab(counts)
    tracemalloc.start()
    try:
        ids, stats = data.encode_file(path, vocab, "whitespace")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats["targets"] == 1_100_001 and ids[-1] == vocab.eos_id
    assert peak < 30e6, peak  # the ids (4.4 MB twice) and a 64 KiB block's words, not the whole line


def test_line_endings_bom_and_unicode_whitespace(tmp_path, run_cli):
    """LF, CRLF, CR end lines; a BOM is skipped; tabs and Unicode spaces (U+00A0, U+3000, U+2028)
    separate words (str.split()); a zero-width space does not."""
    path = tmp_path / "mixed.txt"
    path.write_bytes("\ufeffa b\r\nc\td\re\u00a0f\u3000g\n \t\u00a0\n\nh\u2028i\x0cj\r\nk\u200bl".encode("utf-8"))
    counts, n_words, n_lines = data.count_words(path, "whitespace")
    vocab = build_vocab(counts)
    ids, stats = data.encode_file(path, vocab, "whitespace")
    assert [vocab.tokens[i] for i in ids] == [EOS, "a", "b", EOS, "c", "d", EOS, "e", "f", "g", EOS,
                                             "h", "i", "j", EOS, "k\u200bl", EOS]
    assert (n_words, n_lines, stats["targets"]) == (11, 5, 16)
    code, out, err = run_cli("vocab", path, "--json")
    assert code == 0 and json.loads(out.splitlines()[1])["lines"] == 5


@pytest.mark.parametrize("prompt", ["zebra xyzzy", "", "   \t "])
def test_prompts_of_unknown_words_or_nothing(tiny_model, run_cli, prompt):
    code, out, err = run_cli("sample", tiny_model[0], "--prompt", prompt, "--words", 5, "--seed", 1)
    assert code == 0 and out.strip(), err
    if prompt.strip():
        assert err.strip().splitlines() == ["warning: not in the vocabulary, read as <unk>: 'zebra', 'xyzzy'"]
    else:
        assert err == ""


def test_eval_of_an_empty_file_is_a_clear_line_and_exit_0(tiny_model, tmp_path, run_cli):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n\t\n", encoding="utf-8")
    test_file = tiny_model[1].parent / "test.txt"
    code, out, err = run_cli("eval", tiny_model[0], empty, test_file)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0] == f"{empty}: no tokens (the file is empty or only whitespace): nothing to evaluate"
    assert "perplexity" in lines[1]
    code, out, _ = run_cli("eval", tiny_model[0], empty, "--json")
    row = json.loads(out)
    assert code == 0 and row["targets"] == 0 and row["perplexity"] is None


def test_train_file_as_valid_file_is_allowed_with_a_warning(tiny_config, corpus, tmp_path, run_cli):
    code, out, err = run_cli("train", tiny_config, "--set", f"data.valid={corpus['train']}", "-q",
                             "--set", "train.epochs=1", "--out", tmp_path / "out")
    assert code == 0, err
    assert err.strip().splitlines() == [f"warning: data.train and data.valid are the same file ({corpus['train']}): "
                                        f"valid perplexity will be optimistic"]


def test_paths_with_spaces_and_non_ascii_names(tmp_path, run_cli):
    folder = tmp_path / "my data" / "ünïcödé 日本"
    folder.mkdir(parents=True)
    config = write_tiny_config(folder, write_corpus(folder), name="my config ü.yaml")
    out = tmp_path / "runs" / "mödel 1"
    code, stdout, err = run_cli("train", config, "--out", out, "-q")
    assert code == 0 and str(out) in stdout, err
    code, stdout, err = run_cli("eval", out)
    assert code == 0 and "日本" in stdout, err
    code, stdout, err = run_cli("sample", out, "--prompt", "the cat", "--words", 3)
    assert code == 0 and stdout.startswith("the cat"), err
    code, _, err = run_cli("eval", out, folder / "fehlt ä.txt")
    assert_clean_error(code, err, 2, "fehlt ä.txt")
