"""Large corpora as users give them (README "Large corpora"), from config files and the command
line: data.train as a list, a glob or one file through every command that reads a config."""

import bz2
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import assert_clean_error, assert_same_arrays, weights, write_corpus

# --------------------------------------------------------------------------------------------
# data.train: one file, a list, a glob

TRAIN_FORMS = {
    "file": "data/train.txt",
    "list": "[data/parts/part-1.txt, data/parts/part-2.txt, data/parts/part-3.txt]",
    "glob": "'data/parts/part-*.txt'",
}


def _project(folder, train):
    """A project laid out as users do: data/ (the train text whole, and cut into three parts),
    a config beside it naming data.train as `train`. -> the config's path."""
    data = folder / "data"
    (data / "parts").mkdir(parents=True)
    corpus = write_corpus(data)
    lines = corpus["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    for k, (a, b) in enumerate(((0, 100), (100, 180), (180, len(lines))), start=1):
        (data / "parts" / f"part-{k}.txt").write_text("".join(lines[a:b]), encoding="utf-8")
    config = folder / "cfg.yaml"
    config.write_text(f"""\
data:
  train: {train}
  valid: data/valid.txt
  test: data/test.txt
model: {{embedding_dim: 8, hidden_dim: 12}}
train: {{batch_size: 4, bptt: 6, epochs: 2, lr: 1.0, clip_norm: 1.0, eval_batch_size: 2, log_every: 10}}
""", encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{form: (config, model dir)}: the tiny config trained with data.train in each form."""
    from rnnlm_cli import cli
    out = {}
    for form, train in TRAIN_FORMS.items():
        folder = tmp_path_factory.mktemp(form)
        config = _project(folder, train)
        with pytest.raises(SystemExit) as e:
            cli.main(["train", str(config), "--out", str(folder / "runs" / "m"), "-q"])
        assert e.value.code in (0, None)
        out[form] = (config, folder / "runs" / "m")
    return out


def test_a_list_a_glob_and_one_file_train_the_same_model(trained):
    """The parts read in order are the whole text: the same stream, so the same weights."""
    reference = weights(trained["file"][1])
    for form in ("list", "glob"):
        assert_same_arrays(weights(trained[form][1]), reference)


@pytest.mark.parametrize("form", ["list", "glob"])
def test_the_model_directory_names_every_file(trained, form, run_cli):
    config, model = trained[form]
    parts = [str(config.parent / "data" / "parts" / f"part-{k}.txt") for k in (1, 2, 3)]
    saved = yaml.safe_load((model / "config.yaml").read_text(encoding="utf-8"))
    if form == "list":
        assert saved["data"]["train"] == parts
        assert saved["data_from_model_dir"]["train"] == [f"../../data/parts/part-{k}.txt" for k in (1, 2, 3)]
    else:
        assert saved["data"]["train"] == str(config.parent / "data" / "parts" / "part-*.txt")
        assert saved["data_from_model_dir"]["train"] == "../../data/parts/part-*.txt"
    card = (model / "README.md").read_text(encoding="utf-8")
    train_row = next(line for line in card.splitlines() if line.startswith("| train |"))
    if form == "list":
        assert all(f"`{p}`" in train_row for p in parts), train_row
    code, out, err = run_cli("info", model)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("data     train"))
    assert ("part-1.txt, " in line and "part-3.txt" in line) if form == "list" else "part-*.txt" in line
    code, out, err = run_cli("info", model, "--json")
    assert code == 0 and json.loads(out)["config"]["data"]["train"] == saved["data"]["train"], err


@pytest.mark.parametrize("form", ["list", "glob"])
def test_dry_run_counts_every_file(trained, form, run_cli):
    config, _ = trained[form]
    code, out, err = run_cli("train", config, "--dry-run")
    assert code == 0, err
    row = next(x for x in err.splitlines() if x.startswith("dry run: data.train"))
    whole = run_cli("train", trained["file"][0], "--dry-run")[2]
    whole_row = next(x for x in whole.splitlines() if x.startswith("dry run: data.train"))
    assert "part-1.txt and 2 more files" in row
    assert row.split(": ", 2)[2] == whole_row.split(": ", 2)[2]  # the same words, lines and targets


@pytest.mark.parametrize("form", ["list", "glob"])
def test_resume_continues_exactly(trained, form, tmp_path, run_cli):
    config, model = trained[form]
    out = tmp_path / "m"
    code, _, err = run_cli("train", config, "--set", "train.max_steps=40", "--out", out, "-q")
    assert code == 0, err
    code, _, err = run_cli("train", config, "--set", "train.max_steps=null", "--out", out, "--resume", "-q")
    assert code == 0, err
    assert_same_arrays(weights(out), weights(model))
    resumed, whole = weights(out, "checkpoint.npz"), weights(model, "checkpoint.npz")
    assert_same_arrays({k: v for k, v in resumed.items() if k != "meta"},
                       {k: v for k, v in whole.items() if k != "meta"})  # meta: times differ


@pytest.mark.parametrize("form", ["list", "glob"])
def test_init_from_a_model_trained_on_a_list(trained, form, tmp_path, run_cli):
    config, model = trained[form]
    code, _, err = run_cli("train", config, "--init", model, "--set", "train.max_steps=1", "--out", tmp_path / "a",
                           "-q")
    assert code == 0, err
    code, _, err = run_cli("train", config, "--init", model, "--init-vocab", "new", "--set", "train.max_steps=1",
                           "--out", tmp_path / "b", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "a"), weights(tmp_path / "b"))  # the same words: the same vocabulary


def test_init_from_a_model_with_other_words_warns_naming_the_list(trained, tmp_path, run_cli):
    config, _ = trained["list"]
    other = _project(tmp_path / "other", "data/train.txt")
    for name in ("train", "valid", "test"):
        path = other.parent / "data" / f"{name}.txt"
        path.write_text(path.read_text(encoding="utf-8").replace("the ", "une "), encoding="utf-8")
    code, _, err = run_cli("train", other, "--out", tmp_path / "fr", "-q", "--set", "train.epochs=1")
    assert code == 0, err
    code, _, err = run_cli("train", config, "--init", tmp_path / "fr", "--set", "train.max_steps=1",
                           "--out", tmp_path / "m")
    assert code == 0, err
    assert "as <unk>" in err and "part-1.txt and 2 more files" in err, err


@pytest.mark.parametrize("form", ["list", "glob"])
def test_a_moved_project_finds_its_own_files(trained, form, tmp_path, run_cli):
    """A project moved away (its old folder gone): the model's config finds the train files
    beside it, entry by entry; resume, info, eval and a new run from its config.yaml work."""
    config, _ = trained[form]
    moved = tmp_path / "moved"
    shutil.copytree(config.parent, moved)
    original = tmp_path / "original"
    shutil.move(config.parent, original)  # the saved absolute paths now point nowhere
    try:
        model = moved / "runs" / "m"
        code, out, err = run_cli("info", model, "--json")
        assert code == 0, err
        train = json.loads(out)["config"]["data"]["train"]
        assert str(moved) in (train if isinstance(train, str) else train[0]), train
        code, _, err = run_cli("train", model / "config.yaml", "--set", "train.max_steps=3", "--out",
                               tmp_path / "again", "-q")
        assert code == 0, err
        code, _, err = run_cli("train", "--out", model, "--resume", "--set", "train.epochs=3", "-q")
        assert code == 0, err
    finally:
        shutil.move(original, config.parent)


def test_a_glob_that_matches_nothing_is_one_line(tmp_path, run_cli):
    config = _project(tmp_path, "'data/nothing-*.txt'")
    for args in (("train", config, "--out", tmp_path / "m"), ("train", config, "--dry-run")):
        code, _, err = run_cli(*args)
        assert_clean_error(code, err, 2, "data.train", "nothing-*.txt", "matches no file")
    assert not (tmp_path / "m").exists()


def test_a_missing_file_in_a_list_is_named(tmp_path, run_cli):
    config = _project(tmp_path, "[data/parts/part-1.txt, data/parts/part-9.txt]")
    code, _, err = run_cli("train", config, "--out", tmp_path / "m")
    assert_clean_error(code, err, 2, "part-9.txt")
    assert not (tmp_path / "m").exists()



# --------------------------------------------------------------------------------------------
# Compressed text: gzip, bzip2, xz, recognized by their first bytes

COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def _compressed(path, kind, name=None):
    """Write path's bytes compressed as `kind` beside it (as path.kind, or `name`) -> the new path."""
    out = path.with_name(name or f"{path.name}.{kind}")
    out.write_bytes(COMPRESS[kind](path.read_bytes()))
    return out


def _with_data(config, **keys):
    """Rewrite a _project config's data paths: keys like train="data/train.txt.gz"."""
    text = config.read_text(encoding="utf-8")
    for key, value in keys.items():
        start = text.index(f"  {key}: ")
        end = text.index("\n", start)
        text = text[:start] + f"  {key}: {value}" + text[end:]
    config.write_text(text, encoding="utf-8")
    return config


@pytest.mark.parametrize("kind", COMPRESS)
def test_a_compressed_corpus_trains_to_the_same_weights_bit_for_bit(trained, kind, tmp_path, run_cli):
    config = _project(tmp_path, "data/train.txt")
    data = tmp_path / "data"
    for name in ("train", "valid", "test"):
        _compressed(data / f"{name}.txt", kind)
    _with_data(config, train=f"data/train.txt.{kind}", valid=f"data/valid.txt.{kind}", test=f"data/test.txt.{kind}")
    code, _, err = run_cli("train", config, "--out", tmp_path / "m", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "m"), weights(trained["file"][1]))
    code, _, err = run_cli("train", config, "--dry-run")
    plain = run_cli("train", trained["file"][0], "--dry-run")[2]
    assert code == 0 and [x.split(": ", 2)[2] for x in err.splitlines()] == \
        [x.split(": ", 2)[2] for x in plain.splitlines()], err


def test_a_list_of_mixed_compressed_and_plain_parts(trained, tmp_path, run_cli):
    config = _project(tmp_path, "data/train.txt")
    parts = tmp_path / "data" / "parts"
    _compressed(parts / "part-1.txt", "gz", "part-1.gz")
    _compressed(parts / "part-2.txt", "xz", "part-2.data")  # the first bytes say what a file is, not its name
    _with_data(config, train="[data/parts/part-1.gz, data/parts/part-2.data, data/parts/part-3.txt]")
    code, _, err = run_cli("train", config, "--out", tmp_path / "m", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "m"), weights(trained["file"][1]))


def test_compressed_files_are_never_cut_into_parts(tmp_path, monkeypatch):
    """The first encoding of a big corpus cuts it into parts at byte offsets; a compressed file
    is read whole in one part, and the stream is the line reader's."""
    from rnnlm_cli import corpus, data
    texts = ["a b\nc d e\n\n  f\n" * 60, "g a\r\nb\n" * 80, "h i j\n" * 70, "last line without end"]
    paths = []
    for i, text in enumerate(texts):
        plain = tmp_path / f"p{i}.txt"
        plain.write_text(text, encoding="utf-8")
        paths.append(str(_compressed(plain, "gz") if i in (1, 3) else plain))
    monkeypatch.setattr(corpus, "PART_BYTES", 150)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    parts = corpus._parts(paths, corpus.sources(paths), "whitespace")
    assert len(parts) > 1
    flat = [entry for part in parts for entry in part]
    assert [e for e in flat if isinstance(e, str)] == [paths[1], paths[3]]  # whole, each in one part
    assert all(isinstance(e, tuple) and e[0] not in (paths[1], paths[3]) for e in flat if not isinstance(e, str))
    vocab, enc = corpus.train_corpus(paths, "whitespace", tmp_path / "cache")
    want = [data.encode_file(p, vocab, "whitespace", allow_empty=True)[0] for p in paths]
    assert np.array_equal(enc.ids, np.concatenate([want[0]] + [w[1:] for w in want[1:]]))


def test_the_token_cache_is_keyed_on_the_compressed_file(tmp_path, monkeypatch):
    from rnnlm_cli import corpus, data
    plain = tmp_path / "t.txt"
    plain.write_text("a b c\nb c\n", encoding="utf-8")
    gz = [str(_compressed(plain, "gz"))]
    vocab, first = corpus.train_corpus(gz, "whitespace", tmp_path / "cache")
    with monkeypatch.context() as mp:
        mp.setattr(data, "encode_blocks", lambda *a, **k: pytest.fail("a cached corpus was read again"))
        assert np.array_equal(corpus.train_corpus(gz, "whitespace", tmp_path / "cache")[1].ids, first.ids)
    plain.write_text("a b c\nb c\nc c c\n", encoding="utf-8")
    _compressed(plain, "gz")
    os.utime(gz[0], ns=(1, 1))  # another text, even with an old mtime (the size differs)
    assert corpus.train_corpus(gz, "whitespace", tmp_path / "cache")[1].stats["lines"] == 3


def test_compressed_text_in_eval_score_vocab_and_mix_probs(tiny_model, tmp_path, run_cli):
    model, config = tiny_model
    test = config.parent / "test.txt"
    packed = {kind: _compressed(test, kind, f"test-{kind}") for kind in COMPRESS}
    for kind, path in packed.items():
        plain, got = (json.loads(run_cli("eval", model, p, "--json")[1]) for p in (test, path))
        assert {**got, "file": None} == {**plain, "file": None}, kind
        assert run_cli("score", model, path, "--format", "json")[1] == run_cli("score", model, test, "--format",
                                                                               "json")[1]
        assert run_cli("score", model, path, "--carry")[1] == run_cli("score", model, test, "--carry")[1]
        plain, got = ([json.loads(x) for x in run_cli("vocab", p, "--json")[1].splitlines()] for p in (test, path))
        assert [{**row, "file": None} for row in got] == [{**row, "file": None} for row in plain]
    targets = json.loads(run_cli("eval", model, test, "--json")[1])["targets"]
    probs = tmp_path / "probs.txt"
    probs.write_text("0.01\n" * targets, encoding="utf-8")
    figures = [json.loads(run_cli("eval", model, test, "--mix-probs", p, "--json")[1])["perplexity"]
               for p in (probs, _compressed(probs, "bz2"))]
    assert figures[0] == figures[1] and figures[0] is not None


def test_score_reads_compressed_standard_input(tiny_model):
    model, config = tiny_model
    test = config.parent / "test.txt"
    run = [sys.executable, "-m", "rnnlm_cli.cli", "score", str(model)]
    plain = subprocess.run(run, input=test.read_bytes(), capture_output=True, check=True).stdout
    for kind, compress in COMPRESS.items():
        got = subprocess.run(run, input=compress(test.read_bytes()), capture_output=True)
        assert got.returncode == 0 and got.stdout == plain, (kind, got.stderr)
    damaged = subprocess.run(run, input=gzip.compress(test.read_bytes())[:-30], capture_output=True)
    assert damaged.returncode == 2 and damaged.stderr.decode().strip().splitlines()[-1].startswith(
        "error: standard input: truncated gzip file"), damaged.stderr


def _damage(path, how):
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        return bytes(raw[: len(raw) // 2])
    raw[len(raw) // 2] ^= 0x55  # a byte of the compressed data, mid-file
    return bytes(raw)


@pytest.mark.parametrize("kind", COMPRESS)
@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_archive_is_one_line_and_destroys_nothing(kind, how, tmp_path, run_cli, tiny_model):
    config = _project(tmp_path, "data/train.txt")
    train = _compressed(tmp_path / "data" / "train.txt", kind)
    train.write_bytes(_damage(train, how))
    _with_data(config, train=f"data/{train.name}")
    for args in (("train", config, "--out", tmp_path / "m"), ("train", config, "--dry-run"),
                 ("eval", tiny_model[0], train), ("score", tiny_model[0], train), ("vocab", train)):
        code, _, err = run_cli(*args)
        assert_clean_error(code, err, 2, str(train))
        if how == "truncated":
            assert f"truncated {dict(gz='gzip', bz2='bzip2', xz='xz')[kind]} file" in err
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------------------------
# eval and score in bounded memory: the stream read in chunks of whole windows, state carried


def _json_rows(out):
    return [json.loads(x) for x in out.splitlines()]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of one window (the tiny config's bptt 6) and a record of every chunk read."""
    from rnnlm_cli import evaluate, stream
    monkeypatch.setattr(stream, "CHUNK_TARGETS", 1)
    seen = []
    real_ids, real_logp = evaluate.evaluate_ids, evaluate.stream_log_probs

    def evaluate_ids(params, cfg, ids, *args, **kwargs):
        seen.append(len(ids))
        return real_ids(params, cfg, ids, *args, **kwargs)

    def stream_log_probs(params, cfg, ids, *args, **kwargs):
        seen.append(len(ids))
        return real_logp(params, cfg, ids, *args, **kwargs)
    monkeypatch.setattr(evaluate, "evaluate_ids", evaluate_ids)
    monkeypatch.setattr(evaluate, "stream_log_probs", stream_log_probs)
    return seen


def _reference(model, path, **options):
    """Today's figures of `rnnlm eval`: the file encoded whole, its stream read at once."""
    from rnnlm_cli import cache as neural_cache, data, evaluate, mix, modeldir
    config, vocab, params = modeldir.load_model(model)
    ids, _ = data.encode_file(path, vocab, config.data.tokenizer, allow_empty=True)
    if not options:
        return evaluate.evaluate_ids(params, config.model, ids, 1, config.train.bptt,
                                     evaluate.reset_id(config, vocab))[0] / (len(ids) - 1)
    models = [(config, vocab, params)] * options.get("models", 1)
    weights = options.get("weights", [1.0 / len(models)] * len(models))
    cache = options.get("cache")
    extra = options.get("probs")
    logp = mix.mixed_log_probs(models, weights, ids, 1, False, options.get("dynamic"), extra, cache)
    if cache is not None:
        logp = neural_cache.mix(*logp, cache.lam)
    return -float(logp.sum()) / (len(ids) - 1)


def _rms_plans(model, lr, segment, decay, stats):
    """The rms rule's plan of a model, as eval makes it (the statistics of its training text)."""
    from rnnlm_cli import dynamic, mix, modeldir
    settings = dynamic.Settings(lr, rule="rms", segment=segment, decay=decay, stats=stats)
    return mix.dynamic_plans([modeldir.load_model(model)], settings)


def test_eval_streams_the_file_with_todays_figures(tiny_model, small_chunks, tmp_path, run_cli):
    from rnnlm_cli.cache import Settings
    model, config = tiny_model
    test = config.parent / "test.txt"
    code, out, err = run_cli("eval", model, test, "--json")
    assert code == 0, err
    assert max(small_chunks) == 7 and len(small_chunks) > 40  # one window at a time, not the file
    assert json.loads(out)["cross_entropy"] == _reference(model, test)  # the same sums in the same order
    targets = json.loads(out)["targets"]
    probs = tmp_path / "probs.txt"
    probs.write_text("".join(f"{0.01 + 0.001 * (k % 7)}\n" for k in range(targets)), encoding="utf-8")
    for options, reference in (
            (["--dynamic", "0.1"], {"dynamic": 0.1}),
            (["--cache", "20", "--cache-theta", "0.5", "--cache-lambda", "0.2"], {"cache": Settings(20, 0.5, 0.2)}),
            (["--mix", model, "--weights", "0.3,0.7"], {"models": 2, "weights": [0.3, 0.7]}),
            (["--mix-probs", probs, "--weights", "0.8,0.2"],
             {"weights": [0.8, 0.2], "probs": np.array([0.01 + 0.001 * (k % 7) for k in range(targets)])}),
            (["--dynamic", "0.1", "--cache", "9"], {"dynamic": 0.1, "cache": Settings(9)}),
            (["--dynamic", "0.001", "--dynamic-rule", "rms", "--dynamic-segment", "4", "--dynamic-decay", "0.01",
              "--dynamic-stats", "300"], {"dynamic": _rms_plans(model, 0.001, 4, 0.01, 300)})):
        small_chunks.clear()
        code, out, err = run_cli("eval", model, test, "--json", *options)
        assert code == 0, err
        assert max(small_chunks) == (5 if "--dynamic-segment" in options else 7), options  # whole segments
        got = json.loads(out)
        assert got["targets"] == targets and got["cross_entropy"] == pytest.approx(_reference(model, test, **reference),
                                                                                    rel=1e-13, abs=0), options


def test_eval_of_a_file_within_one_chunk_gives_todays_figures_exactly(tiny_model, run_cli):
    from rnnlm_cli.cache import Settings
    model, config = tiny_model
    test = config.parent / "test.txt"
    for options, reference in ((["--dynamic", "0.1"], {"dynamic": 0.1}), (["--cache", "20"], {"cache": Settings(20)})):
        got = json.loads(run_cli("eval", model, test, "--json", *options)[1])
        assert got["cross_entropy"] == _reference(model, test, **reference), options


def test_mix_probs_of_the_wrong_length_is_named_when_streaming(tiny_model, small_chunks, tmp_path, run_cli):
    model, config = tiny_model
    test = config.parent / "test.txt"
    targets = json.loads(run_cli("eval", model, test, "--json")[1])["targets"]
    for n in (targets - 5, targets + 3):
        probs = tmp_path / f"p{n}.txt"
        probs.write_text("0.01\n" * n, encoding="utf-8")
        code, _, err = run_cli("eval", model, test, "--mix-probs", probs)
        assert_clean_error(code, err, 2, f"--mix-probs {probs}: {n} probabilities for the {targets} targets")


def test_score_carry_streams_with_todays_records(tiny_model, tmp_path, monkeypatch, run_cli):
    """Lines straddle the chunks: every record (per-word log-probs too) is as reading at once."""
    from rnnlm_cli import stream
    model, config = tiny_model
    text = tmp_path / "t.txt"
    text.write_text("\n" + config.parent.joinpath("test.txt").read_text(encoding="utf-8") + "\n\nthe cat\n\n\n",
                    encoding="utf-8")
    runs = {}
    for chunk in (None, 1, 20):
        if chunk:
            monkeypatch.setattr(stream, "CHUNK_TARGETS", chunk)
            monkeypatch.setattr(stream, "LINES_PER_BLOCK", 3)
        for options in ((), ("--dynamic", "0.1"), ("--cache", "7"), ("--mix", model)):
            code, out, err = run_cli("score", model, text, "--carry", "--format", "json", "--words", *options)
            assert code == 0, err
            runs.setdefault(options, []).append(out)
    for options, outs in runs.items():
        assert outs[0] == outs[1] == outs[2], options
        rows = _json_rows(outs[0])
        assert len(rows) == 46 and rows[0]["targets"] == 0 and rows[-1]["targets"] == 0
    total = sum(r["logprob"] for r in _json_rows(runs[()][0]))
    assert -total / json.loads(run_cli("eval", model, text, "--json")[1])["targets"] == pytest.approx(
        json.loads(run_cli("eval", model, text, "--json")[1])["cross_entropy"], rel=1e-12)


def test_an_independent_model_streams_too(tmp_path, small_chunks, run_cli):
    from rnnlm_cli import modeldir
    corpus = write_corpus(tmp_path)
    config = _project(tmp_path, "data/train.txt")
    config.write_text(config.read_text(encoding="utf-8").replace("  test: data/test.txt\n",
                                                                 "  test: data/test.txt\n  independent: true\n"))
    code, _, err = run_cli("train", config, "--out", tmp_path / "m", "-q", "--set", "train.epochs=1")
    assert code == 0, err
    assert modeldir.load_model(tmp_path / "m")[0].data.independent
    small_chunks.clear()
    got = json.loads(run_cli("eval", tmp_path / "m", corpus["test"], "--json")[1])
    assert max(small_chunks) == 7
    assert got["cross_entropy"] == pytest.approx(_reference(tmp_path / "m", corpus["test"]), rel=1e-13, abs=0)


def test_score_srilm_keeps_sums_not_records(tiny_model, run_cli):
    model, config = tiny_model
    code, out, err = run_cli("score", model, config.parent / "test.txt", "--format", "srilm")
    assert code == 0, err
    rows = _json_rows(run_cli("score", model, config.parent / "test.txt", "--format", "json")[1])
    log10 = sum(r["log10prob"] for r in rows)
    assert f"file {config.parent / 'test.txt'}: 40 sentences, 295 words, 0 OOVs" in out
    assert f"logprob= {log10:.6g} ppl=" in out
