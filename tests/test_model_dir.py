"""The model directory as users handle it: copied or moved with or without its data, scored while
its run is still training, and shared without its checkpoint."""

import json
import shutil
import signal

import pytest
from conftest import assert_clean_error, write_corpus, write_tiny_config

from rnnlm_cli import train as train_mod
from rnnlm_cli.config import load_config


def _project(folder, run_cli, *settings):
    """A project folder as users lay it out: data/, a config beside it, the model in runs/."""
    (folder / "data").mkdir(parents=True)
    config = write_tiny_config(folder, write_corpus(folder / "data"))
    config.write_text(config.read_text().replace("train: ", "train: data/").replace("valid: ", "valid: data/")
                      .replace("test: ", "test: data/"), encoding="utf-8")
    code, _, err = run_cli("train", config, *[a for s in settings for a in ("--set", s)],
                           "--out", folder / "runs" / "m", "-q")
    assert code == 0, err
    return folder / "runs" / "m"


def test_a_copied_project_finds_its_own_data(tmp_path, run_cli):
    _project(tmp_path / "a", run_cli)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "data" / "test.txt").write_text("the cat sees the moon .\n", encoding="utf-8")
    shutil.rmtree(tmp_path / "a")  # the absolute paths in b's config.yaml point into a/
    code, out, err = run_cli("eval", tmp_path / "b" / "runs" / "m", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["file"] == str(tmp_path / "b" / "data" / "test.txt") and row["targets"] == 7


def test_config_yaml_keeps_absolute_and_model_relative_paths(tmp_path, run_cli):
    import yaml
    model = _project(tmp_path / "a", run_cli)
    saved = yaml.safe_load((model / "config.yaml").read_text())
    assert saved["data"]["train"] == str(tmp_path / "a" / "data" / "train.txt")
    assert saved["data_from_model_dir"] == {k: f"../../data/{k}.txt" for k in ("train", "valid", "test")}
    # the model's config.yaml is a config for a new run too, from any folder
    code, _, err = run_cli("train", model / "config.yaml", "--set", "train.max_steps=2", "--out", tmp_path / "again")
    assert code == 0, err


def test_a_model_copied_alone_uses_the_absolute_paths(tmp_path, run_cli):
    model = _project(tmp_path / "a", run_cli)
    shutil.copytree(model, tmp_path / "elsewhere" / "m")
    code, out, err = run_cli("eval", tmp_path / "elsewhere" / "m", "--json")
    assert code == 0 and json.loads(out)["file"] == str(tmp_path / "a" / "data" / "test.txt"), err


def test_eval_of_a_model_whose_test_file_is_gone_says_how_to_pass_one(tmp_path, run_cli):
    model = _project(tmp_path / "a", run_cli)
    shutil.copytree(model, tmp_path / "elsewhere" / "m")
    shutil.rmtree(tmp_path / "a")
    code, _, err = run_cli("eval", tmp_path / "elsewhere" / "m")
    assert_clean_error(code, err, 2, "test file", str(tmp_path / "a" / "data" / "test.txt"), "is gone",
                       f"rnnlm eval {tmp_path / 'elsewhere' / 'm'} FILE")
    (tmp_path / "t.txt").write_text("the cat .\n", encoding="utf-8")
    code, out, err = run_cli("eval", tmp_path / "elsewhere" / "m", tmp_path / "t.txt")
    assert code == 0 and "perplexity" in out, err


def test_resume_of_a_moved_run_finds_its_data(tmp_path, run_cli):
    (tmp_path / "a" / "data").mkdir(parents=True)
    config = write_tiny_config(tmp_path / "a" / "data", write_corpus(tmp_path / "a" / "data"))
    stops = iter([None] * 30 + [signal.SIGINT])
    with pytest.raises(train_mod.Interrupted):
        train_mod.run(load_config(config), tmp_path / "a" / "runs" / "m", should_stop=lambda: next(stops, None))
    shutil.move(tmp_path / "a", tmp_path / "b")
    code, _, err = run_cli("train", "--out", tmp_path / "b" / "runs" / "m", "--resume", "-q")
    assert code == 0, err


# --------------------------------------------------------------------------------------------
# eval and sample while the run is still training


def test_eval_while_training_says_which_weights_it_scores(tmp_path, tiny_config, run_cli):
    out = tmp_path / "m"
    seen = []

    def look():  # called by the run after every step: eval the folder as another shell would
        if len(seen) in (0, 150):
            seen.append(run_cli("eval", out, "--json"))
        else:
            seen.append(None)
        return None

    train_mod.run_in_folder(load_config(tiny_config, ["train.epochs=2"]), out, should_stop=look)  # holds the lock
    (code0, out0, err0), (code1, out1, err1) = seen[0], seen[150]  # in epoch 1; in epoch 2 (105 steps each)
    assert code0 == 0 and "still training" in err0 and "no epoch is validated yet" in err0, err0
    assert "not a trained model" in err0
    assert code1 == 0 and "still training" in err1 and "best weights so far, from epoch 1" in err1, err1
    assert json.loads(out1)["perplexity"] < json.loads(out0)["perplexity"]
    code, _, err = run_cli("eval", out)
    assert code == 0 and err == ""  # complete: nothing to say


def test_eval_of_a_killed_run_says_it_did_not_finish(tmp_path, tiny_config, run_cli):
    out = tmp_path / "m"
    stops = iter([None] * 5 + [signal.SIGINT])
    with pytest.raises(train_mod.Interrupted):
        train_mod.run(load_config(tiny_config), out, should_stop=lambda: next(stops, None))
    info = json.loads((out / "info.json").read_text())
    (out / "info.json").write_text(json.dumps({**info, "status": "training"}))  # as a kill -9 leaves it
    code, _, err = run_cli("sample", out, "--words", 3)
    assert code == 0 and "stopped without finishing" in err and "--resume" in err, err


# --------------------------------------------------------------------------------------------
# checkpoint.npz after the run


def test_keep_checkpoint_false_leaves_a_small_model_and_resume_says_why_not(tmp_path, tiny_config, run_cli):
    out = tmp_path / "m"
    code, _, err = run_cli("train", tiny_config, "--set", "train.keep_checkpoint=false", "--out", out, "-q")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "info.json", "metrics.jsonl",
                                                     "vocab.txt", "weights.npz"]  # README.md: the model card
    code, out_text, _ = run_cli("eval", out)
    assert code == 0 and "perplexity" in out_text
    code, _, err = run_cli("train", "--out", out, "--resume", "--set", "train.epochs=4")
    assert_clean_error(code, err, 2, "nothing to resume", "complete", "--init")


def test_the_checkpoint_is_kept_by_default_and_lets_a_complete_run_train_on(tmp_path, tiny_config, run_cli):
    out = tmp_path / "m"
    assert run_cli("train", tiny_config, "--out", out, "-q")[0] == 0
    assert (out / "checkpoint.npz").is_file()
    code, stdout, err = run_cli("train", "--out", out, "--resume", "--set", "train.epochs=3", "-q")
    assert code == 0 and "in 3 epochs" in stdout, err
