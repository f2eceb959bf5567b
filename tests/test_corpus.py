"""The token cache (corpus.py): the ids of a corpus encoded once, mapped later; a stale or damaged
cache is rebuilt, never used; a cache that cannot be written is a clear error and leaves no
file; several train files read as one text; the block tokenizer equals the line tokenizer."""

import errno
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlm_cli import corpus, data
from rnnlm_cli.config import load_config
from rnnlm_cli.errors import UserError, WriteError
from rnnlm_cli.vocab import build_vocab


def _reference(paths, tokenizer="whitespace", vocab=None):
    """The stream and vocabulary of the line-by-line reader (data.py), the files' texts joined."""
    counts = None
    for p in paths:
        c, _, _ = data.count_words(p, tokenizer)
        counts = c if counts is None else counts + c
    vocab = vocab or build_vocab(counts)
    streams = [data.encode_file(p, vocab, tokenizer, allow_empty=True)[0] for p in paths]
    ids = np.concatenate([streams[0]] + [s[1:] for s in streams[1:]])
    return vocab, ids


def _write(path, text):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _cache_files(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_first_run_encodes_later_runs_map_the_same_ids(tmp_path, corpus):
    cache = tmp_path / "cache"
    vocab, enc = corpus_train = corpus_mod_train([corpus["train"]], cache)
    ref_vocab, ref_ids = _reference([corpus["train"]])
    assert vocab == ref_vocab and np.array_equal(enc.ids, ref_ids)
    assert enc.ids.dtype == np.uint16
    assert np.array_equal(enc.id_counts, np.bincount(ref_ids, minlength=len(vocab)))
    _, stats = data.encode_file(corpus["train"], vocab, "whitespace")
    assert enc.stats == stats
    names = _cache_files(cache)
    assert len(names) == 2 and {n.rsplit(".", 1)[1] for n in names} == {"counts", "ids"}
    before = {n: os.stat(cache / n).st_mtime_ns for n in names}

    def fail(*args, **kwargs):
        raise AssertionError("a cached corpus was read again")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "encode_blocks", fail)
        vocab2, enc2 = corpus_mod_train([corpus["train"]], cache)
    assert vocab2 == vocab and np.array_equal(enc2.ids, enc.ids) and enc2.stats == enc.stats
    assert {n: os.stat(cache / n).st_mtime_ns for n in _cache_files(cache)} == before
    assert corpus_train[1].ids.base is not None  # a view of the mapping, not a copy


def corpus_mod_train(paths, cache, **kw):
    return corpus.train_corpus([str(p) for p in paths], kw.pop("tokenizer", "whitespace"), cache, **kw)


def test_batchify_and_windows_are_views_of_the_mapping(tmp_path, corpus):
    _, enc = corpus_mod_train([corpus["train"]], tmp_path / "c")
    streams = data.batchify(enc.ids, 4)
    assert np.shares_memory(streams, enc.ids)
    inputs, targets = next(data.iter_windows(streams, 5))
    assert np.shares_memory(inputs, enc.ids) and not enc.ids.flags.writeable


@pytest.mark.parametrize("change", ["text", "mtime", "vocab", "tokenizer", "truncated", "garbage"])
def test_a_cache_that_does_not_match_is_rebuilt_never_used(tmp_path, change):
    src = _write(tmp_path / "train.txt", "a b c\nb c\nc\n")
    cache = tmp_path / "cache"
    vocab, enc = corpus_mod_train([src], cache)
    ids_file = cache / [n for n in _cache_files(cache) if n.endswith(".ids")][0]
    tokenizer = "whitespace"
    if change == "text":
        _write(src, "a b c\nb c\nd d d d\n")
    elif change == "mtime":
        os.utime(src, ns=(1, 1))
    elif change == "vocab":
        vocab = build_vocab({"c": 3, "b": 2})
    elif change == "tokenizer":
        tokenizer = "simple"
    elif change == "truncated":
        ids_file.write_bytes(ids_file.read_bytes()[:-3])
    else:
        raw = bytearray(ids_file.read_bytes())
        raw[:5] = b"xxxxx"
        ids_file.write_bytes(bytes(raw))
    got = corpus.encoded([str(src)], vocab, tokenizer, cache)
    _, want = _reference([src], tokenizer, vocab)
    assert np.array_equal(got.ids, want)


def test_several_files_and_globs_read_as_one_text(tmp_path):
    parts = [_write(tmp_path / f"part-{i}.txt", text) for i, text in
             enumerate(["one two\nthree\n", "\n\nfour five", "six\r\nseven\n"])]
    cache = tmp_path / "cache"
    vocab, enc = corpus_mod_train(parts, cache)
    ref_vocab, ref_ids = _reference(parts)
    assert vocab == ref_vocab and np.array_equal(enc.ids, ref_ids)
    assert enc.stats["lines"] == 5 and enc.stats["words"] == 7 and enc.stats["targets"] == 12
    files = corpus.files_of(str(tmp_path / "part-*.txt"))
    assert files == [str(p) for p in parts]
    assert np.array_equal(corpus_mod_train(files, cache)[1].ids, ref_ids)
    with pytest.raises(UserError, match=r"data.train: .*nothing-\*.txt: the pattern matches no file"):
        corpus.files_of(str(tmp_path / "nothing-*.txt"))


def test_config_takes_a_list_of_train_files_resolved_like_one(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train: [a.txt, 'parts/*.txt']\n  valid: v.txt\n", encoding="utf-8")
    c = load_config(config)
    assert c.data.train == [str(tmp_path / "a.txt"), str(tmp_path / "parts" / "*.txt")]
    for bad, message in ((["a.txt", 3], r"data.train\[1\]: expected a path"), ([], "an empty list")):
        with pytest.raises(UserError, match=message):
            load_config(config, [f"data.train={bad}"])


def test_more_than_65535_words_are_uint32(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    src = _write(tmp_path / "big.txt", "\n".join(" ".join(words[i:i + 10]) for i in range(0, 70_000, 10)) + "\n")
    vocab, enc = corpus_mod_train([src], tmp_path / "cache")
    assert len(vocab) == 70_002 and enc.ids.dtype == np.uint32
    assert np.array_equal(enc.ids, _reference([src])[1]) and int(enc.ids.max()) == 70_001


def test_a_cache_folder_that_cannot_be_made_is_a_clear_error(tmp_path, corpus):
    blocker = _write(tmp_path / "a-file", "x")
    with pytest.raises(UserError, match=r"data.cache_dir: cannot write the token cache in .*a-file.*writable"):
        corpus_mod_train([corpus["train"]], blocker / "cache")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_a_clear_error(tmp_path, corpus):
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        with pytest.raises(UserError, match="data.cache_dir: cannot write the token cache"):
            corpus_mod_train([corpus["train"]], cache)
    finally:
        cache.chmod(0o700)


def test_a_full_disk_leaves_no_cache_file(tmp_path, corpus, monkeypatch):
    cache = tmp_path / "cache"
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises((WriteError, UserError)) as e:
        corpus_mod_train([corpus["train"]], cache)
    assert "No space left" in str(e.value)
    assert not list(cache.iterdir())  # neither a cache file nor a temporary one
    monkeypatch.setattr(os, "fsync", real)
    vocab, enc = corpus_mod_train([corpus["train"]], cache)
    assert np.array_equal(enc.ids, _reference([corpus["train"]])[1])


def test_a_killed_runs_temporary_file_is_cleared(tmp_path, corpus):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = _write(cache / ".corpus-0123.ids.999999999.tmp", "half")
    corpus_mod_train([corpus["train"]], cache)
    assert not stale.exists()


# The block tokenizer (data._whitespace_blocks) against the line reader, on hostile text.
_PIECES = st.sampled_from(["a", "bb", "<unk>", "<eos>", "é", "日本", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n",
                           "\u00a0", "\u3000", "\u2028", "\x85", "\x0c", "\ufeff", "x" * 40])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_PIECES, max_size=60), st.booleans(), st.sampled_from([7, 16, 1 << 22]))
def test_block_tokenizer_equals_the_line_reader(tmp_path, pieces, bom, read):
    text = ("\ufeff" if bom else "") + "".join(pieces)
    src = _write(tmp_path / "t.txt", text)
    vocab = build_vocab(data.count_words(src, "whitespace")[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "_READ", read)  # small reads: blocks cut inside lines and words
        stats = {"words": 0, "lines": 0}
        get = {**vocab.index, data.SENTINEL: len(vocab)}.get
        got = np.concatenate(list(data.encode_blocks([src], "whitespace", lambda b: [get(w, 0) for w in b],
                                                     len(vocab), vocab.eos_id, stats)))
    want, want_stats = data.encode_file(src, vocab, "whitespace", allow_empty=True)
    assert np.array_equal(got, want)
    assert (stats["words"], stats["lines"]) == (want_stats["words"], want_stats["lines"])


@pytest.mark.parametrize("bad, where", [(b"ok\nbad \xff byte\n", "line 2: invalid UTF-8"),
                                        (b"ok\nnul \x00 here\n", "line 2: NUL byte")])
def test_block_tokenizer_errors_name_the_line(tmp_path, bad, where):
    src = _write(tmp_path / "bad.txt", bad)
    with pytest.raises(UserError, match=where):
        corpus_mod_train([src], tmp_path / "cache")


def test_a_vocabulary_of_100k_words_end_to_end(tmp_path, run_cli):
    """V ≈ 100k (ids past 65,535, a uint32 cache): train with the class output, eval, score, sample."""
    rng = np.random.default_rng(0)
    V = 100_000
    words = np.array([f"w{i}" for i in range(V)])

    def text(n, seed):
        ids = np.concatenate([np.random.default_rng(seed).permutation(V), rng.integers(0, V, n)])
        return "\n".join(" ".join(words[ids[i:i + 12]]) for i in range(0, len(ids), 12)) + "\n"
    _write(tmp_path / "train.txt", text(100_000, 1))
    _write(tmp_path / "valid.txt", " ".join(words[[70_000, 99_999, 5, 65_536]]) + "\n")
    config = tmp_path / "big.yaml"
    config.write_text("data: {train: train.txt, valid: valid.txt, test: valid.txt}\n"
                      "model: {embedding_dim: 4, hidden_dim: 6, output: class}\n"
                      "train: {batch_size: 4, bptt: 5, max_steps: 3, eval_batch_size: 1}\n", encoding="utf-8")
    out = tmp_path / "model"
    code, _, err = run_cli("train", config, "--out", out, "-q", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err
    from rnnlm_cli.vocab import load_vocab
    vocab = load_vocab(out / "vocab.txt")
    assert len(vocab) == V + 2
    headers = [corpus.read_header(p) for p in (tmp_path / "cache").glob("*.ids")]
    assert len(headers) == 2 and {h["dtype"] for h in headers} == {"uint32"}  # train, and valid = test
    code, outp, err = run_cli("eval", out, tmp_path / "valid.txt", "--json")
    assert code == 0, err
    import json
    result = json.loads(outp)
    assert result["targets"] == 5 and result["oov"] == 0 and np.isfinite(result["perplexity"])
    code, outp, err = run_cli("score", out, tmp_path / "valid.txt", "--format", "json", "--words")
    assert code == 0, err
    scored = json.loads(outp.splitlines()[0])
    assert scored["oov"] == 0 and len(scored["tokens"]) == 5 and np.isfinite(scored["logprob"])
    assert abs(scored["logprob"] + result["cross_entropy"] * 5) < 1e-9 * abs(scored["logprob"])  # nats, as eval
    code, outp, err = run_cli("sample", out, "--prompt", "w99999 w70000", "--words", "20", "--seed", "3")
    assert code == 0 and "warning" not in err, err
    assert all(w in vocab.index for w in outp.split())
    _, enc = corpus_mod_train([tmp_path / "train.txt"], tmp_path / "cache")
    assert enc.ids.dtype == np.uint32 and int(enc.ids.max()) == V + 1


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc/self/statm")
def test_release_gives_back_the_pages_already_read(tmp_path):
    """Walking an epoch touches every page of the mapped ids; corpus.release drops those behind
    the windows, so resident memory does not grow with the corpus (training calls it)."""
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    words = [f"w{i}" for i in range(300)]
    src = _write(tmp_path / "t.txt", "\n".join(" ".join(words) for _ in range(7000)) + "\n")  # 2.1M tokens
    _, enc = corpus_mod_train([src], tmp_path / "cache")
    streams = data.batchify(enc.ids, 8)
    before = resident()
    assert int(streams.sum()) > 0  # every page read
    grown = resident() - before
    assert grown > 3e6  # 4.2 MB of uint16 ids
    corpus.release(streams, streams.shape[1])
    assert resident() - before < 0.2 * grown
    corpus.release(np.arange(10).reshape(2, 5), 5)  # not mapped: nothing to do


def test_a_corpus_cut_into_parts_encodes_as_one(tmp_path, monkeypatch):
    """The first encoding cuts big corpora into parts encoded by one process per core; the
    parts (cut after a line end, across files) give the stream of the line reader."""
    texts = ["a b\nc d e\n\n  f\n" * 50, "g a\r\nb\n" * 30, "last line without end"]
    paths = [_write(tmp_path / f"p{i}.txt", t) for i, t in enumerate(texts)]
    srcs = corpus.sources(paths)
    for part_bytes in (97, 300, 1000):
        monkeypatch.setattr(corpus, "PART_BYTES", part_bytes)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
        parts = corpus._parts([str(p) for p in paths], srcs, "whitespace")
        assert len(parts) == max(1, min(4, sum(s["size"] for s in srcs) // part_bytes))
        cache = tmp_path / f"cache-{part_bytes}"
        vocab, enc = corpus_mod_train(paths, cache)
        ref_vocab, ref_ids = _reference(paths)
        assert vocab == ref_vocab and np.array_equal(enc.ids, ref_ids)
        assert enc.stats["lines"] == _reference_stats(paths)["lines"]


def _reference_stats(paths):
    lines = sum(data.count_words(p, "whitespace")[2] for p in paths)
    return {"lines": lines}
