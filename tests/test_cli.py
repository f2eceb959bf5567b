"""End to end on a tiny corpus: train -> eval -> sample, and the commands' contracts."""

import json

import numpy as np
import pytest
from conftest import weights as read_weights

from rnnlm_cli import __version__


@pytest.fixture
def trained(tmp_path, tiny_config, run_cli):
    out = tmp_path / "model"
    code, stdout, stderr = run_cli("train", tiny_config, "--out", out)
    assert code == 0, stderr
    return out, stdout, stderr


def test_version_and_help(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out
    for command in ("train", "eval", "sample", "gradcheck", "vocab", "config"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and "Example" in out, command


def test_train_writes_the_model_directory(trained, corpus):
    out, stdout, stderr = trained
    for name in ("config.yaml", "vocab.txt", "weights.npz", "metrics.jsonl", "info.json", "checkpoint.npz"):
        assert (out / name).is_file(), name
    assert not (out / ".lock").exists()
    assert "| end |" in stdout and "unigram" in stdout
    assert set(read_weights(out)) == {"embedding", "rnn.0.W_x", "rnn.0.W_h", "rnn.0.b", "output.W", "output.b"}
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("epoch") == 2
    assert events[-1]["event"] == "end"
    end = events[-1]
    assert end["valid_ppl"] < end["unigram_valid_ppl"]  # it learned something beyond word frequencies
    info = json.loads((out / "info.json").read_text())
    assert info["format_version"] == 1 and info["status"] == "complete"


def test_eval_counts_and_json(trained, corpus, run_cli):
    out, _, _ = trained
    oov_file = corpus["test"].parent / "oov.txt"
    oov_file.write_text("the cat sees a zebra\n\nthe dog xyzzy .\n", encoding="utf-8")
    code, stdout, _ = run_cli("eval", out, corpus["test"], oov_file, "--json")
    assert code == 0
    rows = [json.loads(line) for line in stdout.splitlines()]
    test_words = sum(len(line.split()) for line in corpus["test"].read_text().splitlines())
    assert rows[0]["targets"] == test_words + 40
    assert rows[1]["targets"] == 9 + 2 and rows[1]["oov"] == 2  # 'zebra', 'xyzzy' ('dog' is seen: 'a dog')
    for row in rows:
        assert row["perplexity"] == pytest.approx(np.exp(row["cross_entropy"]))
        assert row["bits_per_token"] == pytest.approx(row["cross_entropy"] / np.log(2))
    # the default file is the config's test file
    code, stdout, _ = run_cli("eval", out)
    assert code == 0 and "perplexity" in stdout and "test.txt" in stdout


def test_eval_batch_one_is_the_exact_stream(trained, corpus, run_cli):
    """batch 1 equals feeding the whole file through the model in one window, carried state."""
    from rnnlm_cli import data, model, modeldir
    out, _, _ = trained
    config, vocab, params = modeldir.load_model(out)
    ids, _ = data.encode_file(corpus["valid"], vocab, "whitespace")
    state = model.init_state(config.model, 1)
    loss, _, _ = model.forward(params, config.model, ids[None, :-1], ids[None, 1:], state, need_grad=False)
    code, stdout, _ = run_cli("eval", out, corpus["valid"], "--json")
    assert json.loads(stdout)["cross_entropy"] == pytest.approx(loss, rel=1e-5)


def test_sample_seed_temperature_and_top_k(trained, run_cli):
    out, _, _ = trained
    a = run_cli("sample", out, "--words", 20, "--seed", 3)
    b = run_cli("sample", out, "--words", 20, "--seed", 3)
    c = run_cli("sample", out, "--words", 20, "--seed", 4)
    assert a[0] == 0 and a[1] == b[1] and a[1].strip()
    assert a[1] != c[1]
    greedy = run_cli("sample", out, "--words", 15, "--temperature", 0, "--prompt", "the cat")
    top1 = run_cli("sample", out, "--words", 15, "--top-k", 1, "--seed", 9, "--prompt", "the cat")
    assert greedy[1] == top1[1] and greedy[1].startswith("the cat")
    stop = run_cli("sample", out, "--words", 200, "--stop-at-eos", "--seed", 1)
    assert stop[1].count("\n") <= 1  # text, then at most the one final line break of echo
    unknown = run_cli("sample", out, "--prompt", "zebra", "--words", 3)
    assert unknown[0] == 0 and "zebra" in unknown[2] and "<unk>" in unknown[2]


def test_gradcheck_command(run_cli):
    code, out, _ = run_cli("gradcheck", "--set", "model.activation=sigmoid", "--set", "model.layers=2")
    assert code == 0 and "passed" in out and "rnn.1.W_h" in out
    code, out, _ = run_cli("gradcheck", "--tolerance", "1e-30")
    assert code == 1 and "FAIL" in out


def test_vocab_command_json(corpus, run_cli, tmp_path):
    saved = tmp_path / "v.txt"
    code, out, _ = run_cli("vocab", corpus["train"], corpus["valid"], "--json", "--save", saved)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["vocab_size"] == len(saved.read_text().splitlines())
    for row in lines[1:]:
        assert {"words", "lines", "targets", "oov", "oov_rate"} <= set(row)
        assert row["targets"] == row["words"] + row["lines"]


def test_config_dry_run_and_overrides(tiny_config, run_cli):
    code, out, _ = run_cli("train", tiny_config, "--set", "model.hidden_dim=33", "--dry-run")
    assert code == 0 and "hidden_dim: 33" in out
    code, out, _ = run_cli("config", "--keys")
    assert code == 0 and "train.clip_norm" in out


def test_refuses_to_overwrite_a_model(trained, tiny_config, run_cli):
    out, _, _ = trained
    before = (out / "weights.npz").read_bytes()
    code, _, err = run_cli("train", tiny_config, "--out", out)
    assert code == 2 and "--resume" in err
    assert (out / "weights.npz").read_bytes() == before


@pytest.mark.parametrize("setting,fragment", [
    ("model.hiden_dim=4", "did you mean 'model.hidden_dim'"),
    ("model.hidden_dim=0", "model.hidden_dim"),
    ("model.hidden_dim=abc", "expected an integer"),
    ("train.lr=-1", "train.lr"),
    ("model.activation=softsign", "model.activation"),
    ("train.batch_size=100000", "shorter than one window"),
    ("data.train=missing.txt", "missing.txt"),
])
def test_bad_config_values(tiny_config, run_cli, tmp_path, setting, fragment):
    out = tmp_path / "never"
    code, stdout, err = run_cli("train", tiny_config, "--set", setting, "--out", out)
    assert code == 2, err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_yaml_syntax_error_names_the_line(tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hidden_dim: 4\n  layers: [1,\n", encoding="utf-8")
    code, _, err = run_cli("train", bad)
    assert code == 2 and "bad.yaml" in err and "line" in err


def test_bad_corpus_files(tmp_path, tiny_config, corpus, run_cli):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"fine line\nbad \xff byte\n")
    for path, fragment in ((empty, "no tokens"), (binary, "line 2")):
        code, _, err = run_cli("train", tiny_config, "--set", f"data.train={path}", "--out", tmp_path / "x")
        assert code == 2 and str(path.name) in err and fragment in err, err
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("setting", [["model.output=class", "model.classes=5"],
                                     ["model.cell=lstm", "model.dropout=0.2", "model.tie_weights=true",
                                      "model.embedding_dim=12"],
                                     ["model.cell=gru", "train.optimizer=adam", "train.lr=0.01"]])
def test_train_eval_sample_other_models(tiny_config, tmp_path, run_cli, setting):
    out = tmp_path / "m"
    args = [a for s in setting for a in ("--set", s)]
    code, stdout, err = run_cli("train", tiny_config, *args, "--out", out)
    assert code == 0, err
    end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["valid_ppl"] < end["unigram_valid_ppl"]
    code, stdout, _ = run_cli("eval", out, "--json")
    assert code == 0 and json.loads(stdout)["perplexity"] == pytest.approx(end["test_ppl"], rel=1e-6)
    code, stdout, _ = run_cli("sample", out, "--words", 10, "--prompt", "the king")
    assert code == 0 and stdout.startswith("the king")


def test_config_reference_is_current():
    """The config table of docs/training.md is `rnnlm config --keys`: it changes when a key does
    (python scripts/update_config_table.py rewrites it)."""
    from pathlib import Path
    from rnnlm_cli.config import describe_keys
    page = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text(encoding="utf-8")
    assert describe_keys() in page, "docs/training.md: run python scripts/update_config_table.py"


def test_builtin_config_finds_the_shipped_corpus(tmp_path, monkeypatch):
    """`rnnlm train` with no CONFIG works from any folder: the built-in config's paths resolve."""
    from pathlib import Path
    from rnnlm_cli.config import load_config
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    for key in ("train", "valid", "test"):
        assert Path(getattr(config.data, key)).is_file(), key
