"""--resume as users type it (the command they started with, plus --resume), the lock's pid in
every refusal of a folder a live run holds, and metrics.jsonl of runs stopped by max_steps."""

import json
import subprocess
import sys

import pytest
from conftest import HOLD_LOCK, assert_same_arrays, interrupted_run, weights

from rnnlm_cli import train as train_mod
from rnnlm_cli.config import load_config


def test_resume_with_the_config_given_again_equals_an_uninterrupted_run(tiny_config, tmp_path, run_cli):
    train_mod.run(load_config(tiny_config, ["train.epochs=3"]), tmp_path / "whole")
    interrupted_run(tiny_config, tmp_path / "cut")
    code, _, err = run_cli("train", tiny_config, "--set", "train.epochs=3", "--out", tmp_path / "cut", "--resume", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "cut"))


def test_resume_with_the_config_may_change_the_resume_keys(tiny_config, tmp_path, run_cli):
    interrupted_run(tiny_config, tmp_path / "cut")
    code, out, err = run_cli("train", tiny_config, "--set", "train.epochs=4", "--set", "train.log_every=3",
                             "--out", tmp_path / "cut", "--resume", "-q")
    assert code == 0, err
    assert "in 4 epochs" in out


def test_resume_with_a_different_config_names_each_differing_key(tiny_config, tmp_path, run_cli):
    interrupted_run(tiny_config, tmp_path / "cut")
    other = tmp_path / "other.yaml"
    other.write_text(tiny_config.read_text().replace("hidden_dim: 12", "hidden_dim: 13")
                     .replace("bptt: 6", "bptt: 7"), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()}
    code, _, err = run_cli("train", other, "--set", "train.epochs=3", "--set", "train.lr=0.5",
                           "--out", tmp_path / "cut", "--resume")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in ("model.hidden_dim (12 → 13)", "train.bptt (6 → 7)", "train.lr (1.0 → 0.5)", str(other)):
        assert fragment in err, err
    assert "train.epochs" not in err.split("only")[0]  # a key --resume may change is not a difference
    assert {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()} == before  # nothing written


def test_resume_without_config_still_refuses_other_keys(tiny_config, tmp_path, run_cli):
    interrupted_run(tiny_config, tmp_path / "cut")
    code, _, err = run_cli("train", "--set", "model.hidden_dim=5", "--out", tmp_path / "cut", "--resume")
    assert code == 2 and "model.hidden_dim" in err and "cannot change on --resume" in err


@pytest.fixture
def held_folder(tiny_config, tmp_path):
    """An interrupted run's folder whose lock a live process (another pid) holds."""
    out = tmp_path / "cut"
    interrupted_run(tiny_config, out)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("how", ["new run", "resume", "resume with config", "resume with other config"])
def test_a_folder_held_by_a_live_run_is_refused_naming_its_pid(held_folder, tiny_config, tmp_path, run_cli, how):
    out, pid = held_folder
    other = tmp_path / "other.yaml"
    other.write_text(tiny_config.read_text().replace("hidden_dim: 12", "hidden_dim: 13"), encoding="utf-8")
    args = {"new run": [tiny_config, "--out", out],
            "resume": ["--out", out, "--resume"],
            "resume with config": [tiny_config, "--out", out, "--resume"],
            "resume with other config": [other, "--out", out, "--resume"]}[how]
    code, _, err = run_cli("train", *args)
    assert code == 2 and f"another rnnlm run (pid {pid}) is writing this folder" in err, err


def test_a_run_stopped_by_max_steps_logs_its_last_step_and_loss(tiny_config, tmp_path):
    out = tmp_path / "short"
    summary = train_mod.run(load_config(tiny_config, ["train.max_steps=7", "train.log_every=10"]), out)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in train] == [7]
    end = events[-1]
    assert end["event"] == "end" and end["lr"] == 1.0 and end["train_loss"] > 0
    assert end["train_loss"] == pytest.approx(summary["train_loss"])
    assert end["stop_reason"] == "reached max_steps 7"


def test_a_full_run_puts_the_last_epochs_train_loss_in_the_end_record(tiny_config, tmp_path):
    out = tmp_path / "full"
    train_mod.run(load_config(tiny_config), out)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_epoch = [e for e in events if e["event"] == "epoch"][-1]
    assert events[-1]["train_loss"] == pytest.approx(last_epoch["train_loss"])
    assert events[-1]["lr"] > 0


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_resume_with_nothing_to_do_says_so_and_changes_nothing(tiny_config, tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("train", tiny_config, "--out", out, "-q")
    assert code == 0, err
    code, stdout, err = run_cli("train", "--out", out, "--resume", "--set", "train.epochs=3", "-q")
    assert code == 0 and "reached 3 epochs" in stdout, err
    assert "--set train.epochs=3" in (out / "README.md").read_text()
    before = _files(out)
    for args in (["--out", out, "--resume"], [tiny_config, "--out", out, "--resume"],
                 ["--out", out, "--resume", "--set", "train.epochs=2"]):
        code, stdout, err = run_cli("train", *args)
        assert code == 0 and stdout == "", (args, err)
        assert err.strip() == (f"nothing to do: {out} is complete: it trained 3 epochs and train.epochs is "
                               "2 (--set train.epochs=N trains on to epoch N); "
                               f"nothing was changed"), err
        assert _files(out) == before  # the record of the run as it was, card and info included
    code, stdout, err = run_cli("train", "--out", out, "--resume", "--set", "train.epochs=4", "-q")
    assert code == 0 and "reached 4 epochs" in stdout, err  # something to do: it trains on


def test_a_resume_past_max_steps_has_nothing_to_do(tiny_config, tmp_path, run_cli):
    out = tmp_path / "short"
    code, stdout, err = run_cli("train", tiny_config, "--set", "train.max_steps=5", "--out", out, "-q")
    assert code == 0 and "reached max_steps 5" in stdout, err
    before = _files(out)
    code, _, err = run_cli("train", "--out", out, "--resume")
    assert code == 0 and "nothing to do" in err and "train.max_steps is 5" in err, err
    assert _files(out) == before
    code, stdout, err = run_cli("train", "--out", out, "--resume", "--set", "train.max_steps=8", "-q")
    assert code == 0 and "reached max_steps 8" in stdout, err


def test_reached_one_epoch_is_singular(tiny_config, tmp_path, run_cli):
    code, stdout, err = run_cli("train", tiny_config, "--set", "train.epochs=1", "--out", tmp_path / "one", "-q")
    assert code == 0 and "| reached 1 epoch |" in stdout and "in 1 epoch |" in stdout, err
    card = (tmp_path / "one" / "README.md").read_text()
    assert "(reached 1 epoch)" in card and "It ran 1 epoch," in card and ", 1 epoch, seed" in card, card
    text = run_cli("info", tmp_path / "one")[1]
    assert "complete (reached 1 epoch)" in text and "1 epochs" not in text, text
