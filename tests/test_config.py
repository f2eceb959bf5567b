"""The config as users write it: errors that name where a value came from (the file or the
--set), every problem of a config at once, a text file given as the config, data.train as a
folder or a `**` pattern, and train.lr / train.clip_norm `auto`."""

import json
import textwrap

import pytest
from conftest import assert_clean_error, assert_same_arrays, weights

from rnnlm_cli.config import AUTO_TRAIN, default_config_path, load_config


# --------------------------------------------------------------------------------------------
# where a bad value came from


@pytest.mark.parametrize("command", ["config", "train", "gradcheck"])
def test_an_error_from_set_names_the_set_not_the_config_file(tiny_config, run_cli, tmp_path, command):
    out = ["--out", tmp_path / "never"] if command == "train" else []
    code, _, err = run_cli(command, tiny_config, "--set", "model.cell=banana", *out)
    assert_clean_error(code, err, 2, "--set 'model.cell=banana': model.cell: 'banana' is not one of elman, lstm, gru")
    assert tiny_config.name not in err
    assert not (tmp_path / "never").exists()


def test_keys_valid_alone_but_not_together_name_each_origin(tiny_config, tmp_path, run_cli):
    code, _, err = run_cli("gradcheck", "--set", "model.output=class", "--set", "model.loss=squared_error")
    assert_clean_error(code, err, 2, "--set 'model.output=class', --set 'model.loss=squared_error': "
                                     "model.output class works with model.loss cross_entropy")
    assert "default.yaml" not in err  # the built-in config said neither
    mixed = tmp_path / "class.yaml"
    mixed.write_text(tiny_config.read_text().replace("model:\n", "model:\n  output: class\n"), encoding="utf-8")
    code, _, err = run_cli("config", mixed, "--set", "model.loss=squared_error")
    assert_clean_error(code, err, 2, f"{mixed}, --set 'model.loss=squared_error': model.output class works")


# --------------------------------------------------------------------------------------------
# every problem at once


PYTORCH_STYLE = textwrap.dedent("""\
    data: {train: train.txt, valid: valid.txt}
    model: {type: LSTM, nhid: 200, emsize: 200, nlayers: 2, tied: true, dropout: 0.2}
    train: {learning_rate: 20, clip: 0.25, epochs: 40, batch_size: 20, bptt: 35, seed: 1111, log_interval: 200}
    """)


def test_every_unknown_key_is_reported_at_once_with_its_suggestion(tmp_path, run_cli):
    config = tmp_path / "pytorch.yaml"
    config.write_text(PYTORCH_STYLE, encoding="utf-8")
    code, _, err = run_cli("train", config, "--set", "model.dropout=2", "--out", tmp_path / "never")
    assert_clean_error(code, err, 2, "9 problems in the config", f"in {config}: ",
                       "in --set 'model.dropout=2': model.dropout: 2.0 is out of range")
    for key, meant in (("model.type", "model.cell"), ("model.nhid", "model.hidden_dim"),
                       ("model.emsize", "model.embedding_dim"), ("model.nlayers", "model.layers"),
                       ("model.tied", "model.tie_weights"), ("train.learning_rate", "train.lr"),
                       ("train.clip", "train.clip_norm")):
        assert f"unknown key '{key}' (did you mean '{meant}'?)" in err, (key, err)
    assert "unknown key 'train.log_interval'" in err
    assert not (tmp_path / "never").exists()


def test_one_problem_reads_as_before(run_cli):
    code, _, err = run_cli("config", "--set", "model.type=lstm")
    assert_clean_error(code, err, 2, "--set 'model.type=lstm': unknown key 'model.type' (did you mean 'model.cell'?)")


# --------------------------------------------------------------------------------------------
# a text file given as the config


@pytest.mark.parametrize("text", ["the cat sat on the mat .\nand then : it left\n", "one line of text\nand another\n"],
                         ids=["a YAML error", "a YAML string"])
def test_a_corpus_given_as_the_config_gets_the_way_to_train_on_it(tmp_path, run_cli, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    code, _, err = run_cli("train", corpus, "--out", tmp_path / "never")
    assert_clean_error(code, err, 2, str(corpus), "looks like text", f"--set data.train={corpus} --set data.valid=")
    assert "::" not in err and not (tmp_path / "never").exists()
    yaml_named = tmp_path / "c.yaml"
    yaml_named.write_text(text, encoding="utf-8")
    code, _, err = run_cli("train", yaml_named)
    assert_clean_error(code, err, 2, str(yaml_named))
    assert "looks like text" not in err  # a file named .yaml is meant as a config


# --------------------------------------------------------------------------------------------
# data.train: a folder, a ** pattern


def test_data_train_as_a_folder_shows_the_pattern_that_names_its_files(tiny_config, corpus, tmp_path, run_cli):
    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(3):
        (folder / f"part-{k}.txt").write_text("a b c\n", encoding="utf-8")
    code, _, err = run_cli("train", tiny_config, "--set", f"data.train={folder}", "--out", tmp_path / "never")
    assert_clean_error(code, err, 2, f"data.train: {folder} is a folder", f"--set 'data.train={folder}/*.txt'",
                       "3 .txt files there")
    assert not (tmp_path / "never").exists()


def test_data_train_pattern_with_two_stars_reads_the_subfolders(tiny_config, corpus, tmp_path, run_cli):
    lines = corpus["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    for k, part in enumerate((lines[:100], lines[100:200], lines[200:])):
        sub = tmp_path / "tree" / f"d{k}" / ("deeper" if k == 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"p{k}.txt").write_text("".join(part), encoding="utf-8")
    pattern = tmp_path / "tree" / "**" / "*.txt"
    code, _, err = run_cli("train", tiny_config, "--set", f"data.train={pattern}", "--dry-run")
    assert code == 0, err
    assert "2208 words on 300 lines" in err.splitlines()[0], err  # the three parts, as the whole file


# --------------------------------------------------------------------------------------------
# train.lr and train.clip_norm: auto


@pytest.mark.parametrize("cell,optimizer", list(AUTO_TRAIN))
def test_auto_gives_the_tables_values_and_says_so(run_cli, cell, optimizer):
    code, out, err = run_cli("config", "--set", f"model.cell={cell}", "--set", f"train.optimizer={optimizer}")
    assert code == 0, err
    lr, clip = AUTO_TRAIN[(cell, optimizer)]
    assert f"  lr: {lr}  # auto: {cell}, {optimizer}\n" in out
    assert f"  clip_norm: {clip}  # auto: {cell}, {optimizer}\n" in out


def test_the_builtin_config_uses_auto_and_trains_the_weights_of_its_old_numbers(tmp_path, run_cli):
    assert "lr: auto" in default_config_path().read_text() and "clip_norm: auto" in default_config_path().read_text()
    code, _, err = run_cli("train", "--set", "train.max_steps=3", "--out", tmp_path / "auto", "-q")
    assert code == 0, err
    code, _, err = run_cli("train", "--set", "train.max_steps=3", "--set", "train.lr=1.0", "--set",
                           "train.clip_norm=0.5", "--out", tmp_path / "numbers", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "auto"), weights(tmp_path / "numbers"))


def test_an_lstm_with_auto_trains_at_its_rate_and_resumes(tiny_config, tmp_path, run_cli):
    sets = ["--set", "model.cell=lstm", "--set", "train.lr=auto", "--set", "train.clip_norm=auto"]
    out = tmp_path / "lstm"
    code, _, err = run_cli("train", tiny_config, *sets, "--set", "train.max_steps=3", "--out", out, "-q")
    assert code == 0, err
    saved = (out / "config.yaml").read_text()
    assert "  lr: 20.0  # auto: lstm, sgd\n" in saved and "  clip_norm: 0.25  # auto: lstm, sgd\n" in saved
    assert load_config(out / "config.yaml").train.lr == 20.0
    end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["lr"] == 20.0
    # the same command again with --resume: the config given (auto) equals the saved one (numbers)
    code, stdout, err = run_cli("train", tiny_config, *sets, "--set", "train.max_steps=5", "--out", out, "--resume", "-q")
    assert code == 0 and "reached max_steps 5" in stdout, err


def test_auto_is_checked_like_any_value(run_cli):
    code, _, err = run_cli("config", "--set", "train.lr=automatic")
    assert_clean_error(code, err, 2, "--set 'train.lr=automatic': train.lr: expected a number or auto")
    code, _, err = run_cli("config", "--set", "train.clip_norm=[auto]")
    assert_clean_error(code, err, 2, "train.clip_norm: expected a number or auto")
