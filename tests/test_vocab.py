"""Vocabulary: ordering, limits, specials, vocab.txt round trip and its errors."""

from collections import Counter
from pathlib import Path

import pytest

from rnnlm_cli.errors import UserError
from rnnlm_cli.vocab import (
    EOS,
    UNK,
    Vocab,
    build_vocab,
    load_vocab,
    save_vocab,
    vocab_from_tokens,
)


def test_specials_first_then_frequency_then_string_order():
    counts = Counter({"b": 2, "a": 2, "c": 5, "d": 1})
    v = build_vocab(counts)
    assert v.tokens == (UNK, EOS, "c", "a", "b", "d")
    assert v.unk_id == 0 and v.eos_id == 1
    assert len(v) == 6
    assert all(v.index[t] == i for i, t in enumerate(v.tokens))


def test_ties_broken_by_token_not_by_insertion_order():
    a = build_vocab({"z": 1, "y": 1, "x": 1})
    b = build_vocab({"x": 1, "z": 1, "y": 1})
    assert a.tokens == b.tokens == (UNK, EOS, "x", "y", "z")


def test_min_count_drops_rare_words():
    v = build_vocab({"a": 3, "b": 2, "c": 1}, min_count=2)
    assert v.tokens == (UNK, EOS, "a", "b")


def test_max_size_counts_the_specials():
    counts = {"a": 4, "b": 3, "c": 2, "d": 1}
    assert build_vocab(counts, max_size=4).tokens == (UNK, EOS, "a", "b")
    assert build_vocab(counts, max_size=2).tokens == (UNK, EOS)
    assert len(build_vocab(counts, max_size=100)) == 6


def test_max_size_and_min_count_together():
    v = build_vocab({"a": 4, "b": 3, "c": 1}, min_count=2, max_size=3)
    assert v.tokens == (UNK, EOS, "a")


def test_unk_and_eos_in_corpus_are_not_doubled():
    # Penn Treebank already writes <unk>; it keeps id 0 and is not a second entry.
    v = build_vocab({UNK: 100, "a": 5, EOS: 3})
    assert v.tokens == (UNK, EOS, "a")
    v = build_vocab({UNK: 100, "a": 5}, max_size=3)
    assert v.tokens == (UNK, EOS, "a")


def test_empty_counts_give_just_the_specials():
    assert build_vocab({}).tokens == (UNK, EOS)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"min_count": 0}, "vocab.min_count"),
        ({"min_count": 1.5}, "vocab.min_count"),
        ({"max_size": 1}, "vocab.max_size"),
        ({"max_size": True}, "vocab.max_size"),
    ],
)
def test_bad_limits(kwargs, key):
    with pytest.raises(UserError, match=key):
        build_vocab({"a": 1}, **kwargs)


def test_vocab_is_immutable_and_compares_by_tokens():
    v = build_vocab({"a": 1})
    with pytest.raises(AttributeError):
        v.tokens = ()
    assert v == vocab_from_tokens([UNK, EOS, "a"])
    assert hash(v) == hash(vocab_from_tokens([UNK, EOS, "a"]))
    assert isinstance(v, Vocab)


def test_vocab_from_tokens_checks_the_specials():
    with pytest.raises(UserError, match="id 0.*'<unk>'"):
        vocab_from_tokens([EOS, UNK])
    with pytest.raises(UserError, match="duplicate"):
        vocab_from_tokens([UNK, EOS, "a", "a"])


def test_save_load_round_trip(tmp_path):
    v = build_vocab({"the": 9, "naïve": 2, "don't": 2, "3.14": 1, "<s>": 1})
    path = tmp_path / "vocab.txt"
    save_vocab(v, path)
    assert path.read_text(encoding="utf-8").splitlines()[:2] == [UNK, EOS]
    assert load_vocab(path) == v
    assert load_vocab(path).index == v.index
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.txt"]  # no temp file left


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("old\n")
    save_vocab(build_vocab({"new": 1}), path)
    assert load_vocab(path).tokens == (UNK, EOS, "new")


def test_load_accepts_crlf_and_bom(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"\xef\xbb\xbf<unk>\r\n<eos>\r\nword\r\n")
    assert load_vocab(path).tokens == (UNK, EOS, "word")


@pytest.mark.parametrize(
    "content, fault",
    [
        (b"<unk>\n<eos>\n\nword\n", r"line 3: empty token"),
        (b"<unk>\n<eos>\nword\nword\n", r"line 4: duplicate token 'word' \(also at line 3\)"),
        (b"<unk>\n<eos>\ntwo words\n", r"line 3: token 'two words' contains whitespace"),
        (b"<unk>\n<eos>\nword \n", r"line 3: .*contains whitespace"),
        (b"<unk>\n<eos>\ntab\tbed\n", r"line 3: .*contains whitespace"),
        (b"<eos>\n<unk>\nword\n", r"line 1: expected '<unk>' here, found '<eos>'"),
        (b"<unk>\nword\n<eos>\n", r"line 2: expected '<eos>' here, found 'word'"),
        (b"<unk>\n", r"1 token\(s\)"),
        (b"", r"0 token\(s\)"),
        (b"<unk>\n<eos>\ncaf\xe9\n", r"line 3: invalid UTF-8 at byte offset 15"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, content, fault):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fault) as e:
        load_vocab(path)
    assert str(e.value).startswith(str(path))


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file") as e:
        load_vocab(tmp_path / "nope.txt")
    assert "nope.txt" in str(e.value)


# --------------------------------------------------------------------------------------------
# vocab.file: a fixed vocabulary from a word list, as users give it (config key, --set)


def _train_words(corpus):
    return corpus["train"].read_text(encoding="utf-8").split()


def test_vocab_file_fixes_the_vocabulary(tiny_config, corpus, tmp_path, run_cli):
    import json
    from collections import Counter as C
    (tmp_path / "lexicon.txt").write_text("the\ncat\nsees\n\nzebra\n<s>\n</s>\n<unk>\nmoon\n.\n", encoding="utf-8")
    out = tmp_path / "fixed"
    code, _, err = run_cli("train", tiny_config, "--set", "vocab.file=lexicon.txt", "--set", "train.max_steps=3",
                           "--out", out)  # relative to the config's folder, as data paths
    assert code == 0, err
    assert "vocabulary 8 (vocab.file " in err, err
    counts = C(_train_words(corpus))
    listed = ["the", "cat", "sees", "zebra", "moon", "."]
    want = ("<unk>", "<eos>") + tuple(sorted(listed, key=lambda w: (-counts[w], w)))
    assert load_vocab(out / "vocab.txt").tokens == want and want[-1] == "zebra"  # never seen: last, still a word
    result = json.loads(run_cli("eval", out, corpus["train"], "--json")[1])
    assert result["oov"] == sum(n for w, n in counts.items() if w not in listed) > 0  # every other word is <unk>
    text = tmp_path / "z.txt"
    text.write_text("the zebra sees the moon .\n", encoding="utf-8")
    rec = json.loads(run_cli("score", out, text, "--format", "json", "--words")[1])
    assert rec["oov"] == 0 and rec["oov_positions"] == [] and rec["tokens"][1][0] == "zebra"
    assert "fixed, from vocab.file" in run_cli("info", out)[1]


def test_vocab_file_from_a_config_file(tiny_config, corpus, tmp_path, run_cli):
    """vocab.file written in the YAML file (relative to the file's folder) fixes the vocabulary
    as --set does, and the model directory's config keeps it."""
    import yaml
    words = ["the", "cat", "moon"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    config = yaml.safe_load(Path(tiny_config).read_text(encoding="utf-8"))
    config["data"] = {k: str(Path(tiny_config).parent / v) if isinstance(v, str) and not Path(v).is_absolute()
                      else v for k, v in config["data"].items()}
    config.setdefault("vocab", {})["file"] = "lists/words.txt"
    config.setdefault("train", {})["max_steps"] = 2
    path = tmp_path / "from-file.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = run_cli("train", path, "--out", out)
    assert code == 0, err
    assert set(load_vocab(out / "vocab.txt").tokens) == {"<unk>", "<eos>", *words}
    kept = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert str(kept["vocab"]["file"]).endswith("words.txt")


def test_another_word_list_gets_its_own_token_cache(tiny_config, corpus, tmp_path, run_cli):
    """The token ids are cached by the vocabulary's hash: a second list over the same text must
    not reuse the first list's ids."""
    import json
    counts = Counter(_train_words(corpus))
    for name, words in (("a.txt", ["the", "cat"]), ("b.txt", ["the", "dog", "a", "."])):
        (tmp_path / name).write_text("\n".join(words) + "\n", encoding="utf-8")
        out = tmp_path / name.replace(".txt", "")
        code, _, err = run_cli("train", tiny_config, "--set", f"vocab.file={name}", "--set", "train.max_steps=1",
                               "--out", out, "-q")
        assert code == 0, err
        end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        result = json.loads(run_cli("eval", out, corpus["train"], "--json")[1])
        assert result["oov"] == sum(n for w, n in counts.items() if w not in words), name
        assert end["event"] == "end" and len(load_vocab(out / "vocab.txt")) == len(words) + 2


@pytest.mark.parametrize("text, fragment", [
    ("the\ncat 12\n", "lexicon.txt: line 2: 2 fields; a vocabulary file has one word per line"),
    ("the\ncat\nthe\n", "lexicon.txt: line 3: 'the' is listed twice (also on line 1)"),
    ("<unk>\n\n<s>\n", "lexicon.txt: no words"),
    (None, "lexicon.txt: no such file"),
])
def test_a_bad_word_list_is_one_line_naming_it(tiny_config, tmp_path, run_cli, text, fragment):
    from conftest import assert_clean_error
    if text is not None:
        (tmp_path / "lexicon.txt").write_text(text, encoding="utf-8")
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli("train", tiny_config, "--set", "vocab.file=lexicon.txt", "--out", tmp_path / "never",
                               *extra)
        assert_clean_error(code, err, 2, fragment)
    assert not (tmp_path / "never").exists()


def test_vocab_file_with_a_kept_init_vocabulary_is_refused(tiny_model, tiny_config, tmp_path, run_cli):
    (tmp_path / "lexicon.txt").write_text("the\ncat\n", encoding="utf-8")
    code, _, err = run_cli("train", tiny_config, "--set", f"vocab.file={tmp_path / 'lexicon.txt'}", "--init",
                           tiny_model[0], "--out", tmp_path / "never")
    assert code == 2 and "add --init-vocab new" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("train", tiny_config, "--set", f"vocab.file={tmp_path / 'lexicon.txt'}", "--init",
                           tiny_model[0], "--init-vocab", "new", "--set", "train.max_steps=1", "--out", tmp_path / "new")
    assert code == 0 and load_vocab(tmp_path / "new" / "vocab.txt").tokens == ("<unk>", "<eos>", "the", "cat"), err
