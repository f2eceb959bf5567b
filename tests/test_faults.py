"""Write faults (full disk, metrics append, vocab save) and divergence (NaN rollback, giving up)."""

import errno
import json
import math
import os
import stat
from pathlib import Path

import pytest
from conftest import assert_clean_error, assert_same_arrays, files, weights
from conftest import train_reference as _reference

from rnnlm_cli import evaluate
from rnnlm_cli import train as train_mod


def events(model_dir):
    return [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# a full disk, the metrics log, a vocabulary file


def test_full_disk_keeps_the_previous_files_and_resume_finishes(tiny_config, tmp_path, run_cli, monkeypatch):
    overrides = ["train.checkpoint_every=20", "train.epochs=3"]
    reference = _reference(tiny_config, overrides, tmp_path / "reference")
    out = tmp_path / "run"
    real_fsync = os.fsync
    state = {"writes": 0, "before": None}

    def fsync(fd):  # the 10th file written (a checkpoint or weights mid-training) hits a full disk
        if stat.S_ISREG(os.fstat(fd).st_mode):
            state["writes"] += 1
            if state["writes"] == 10:
                state["before"] = {k: v for k, v in files(out).items() if not k.startswith(".")}
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sets = [a for o in overrides for a in ("--set", o)]
    code, _, err = run_cli("train", tiny_config, "--out", out, "-q", *sets)
    assert_clean_error(code, err, 1, "No space left on device", "left as it was", "--resume")
    assert files(out) == state["before"]  # byte-identical, no temporary file left behind
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, _, err = run_cli("train", "--out", out, "--resume", "-q")
    assert code == 0, err
    assert_same_arrays(weights(out), reference)


def test_metrics_append_failure_cannot_touch_the_model(tiny_config, tmp_path, run_cli, monkeypatch):
    overrides = ["train.log_every=5", "train.checkpoint_every=30"]
    reference = _reference(tiny_config, overrides, tmp_path / "reference")
    out = tmp_path / "run"
    real_write = os.write
    state = {"appends": 0, "before": None}

    def write(fd, payload):  # the 8th append to metrics.jsonl writes half a line, then the disk is full
        metrics = out / "metrics.jsonl"
        if metrics.exists() and os.fstat(fd).st_ino == os.stat(metrics).st_ino:
            state["appends"] += 1
            if state["appends"] == 8:
                state["before"] = {k: v for k, v in files(out).items() if k not in ("metrics.jsonl", ".lock")}
                real_write(fd, payload[: len(payload) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, payload)

    monkeypatch.setattr(os, "write", write)
    sets = [a for o in overrides for a in ("--set", o)]
    code, _, err = run_cli("train", tiny_config, "--out", out, "-q", *sets)
    monkeypatch.setattr(os, "write", real_write)
    assert_clean_error(code, err, 1, "metrics.jsonl", "No space left on device", "model files are untouched")
    assert {k: v for k, v in files(out).items() if k != "metrics.jsonl"} == state["before"]
    assert len(events(out)) == 7  # whole lines only: the half line was cut off again
    code, _, err = run_cli("train", "--out", out, "--resume", "-q")
    assert code == 0, err
    assert_same_arrays(weights(out), reference)


def test_vocab_save_failure_keeps_the_old_file(corpus, tmp_path, run_cli, monkeypatch):
    saved = tmp_path / "v.txt"
    saved.write_text("<unk>\n<eos>\nold\n", encoding="utf-8")
    before = files(tmp_path)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run_cli("vocab", corpus["train"], "--save", saved)
    assert_clean_error(code, err, 1, str(saved), "No space left on device", "left as it was")
    assert files(tmp_path) == before
    monkeypatch.undo()
    code, _, err = run_cli("vocab", corpus["train"], "--save", tmp_path / "no" / "such" / "folder" / "v.txt")
    assert_clean_error(code, err, 2, "folder", "choose another path")


# --------------------------------------------------------------------------------------------
# divergence: roll back, halve the learning rate, give up after MAX_ROLLBACKS


@pytest.mark.parametrize("where", ["loss", "valid"])
def test_a_nan_rolls_back_and_training_goes_on(tiny_config, tmp_path, run_cli, monkeypatch, where):
    out = tmp_path / "run"
    if where == "loss":  # step 30 returns NaN once: back to the checkpoint at step 20
        real_step, calls = train_mod.window_gradient, {"n": 0}

        def window_gradient(*args, **kwargs):
            loss, grads, state = real_step(*args, **kwargs)
            calls["n"] += 1
            return (math.nan if calls["n"] == 30 else loss), grads, state
        monkeypatch.setattr(train_mod, "window_gradient", window_gradient)
        expected = {"step": 30, "to_step": 20, "lr": 0.5}
    else:  # the first validation gives inf: back to the last checkpoint (step 100 of 105)
        real_eval, calls = evaluate.evaluate_ids, {"n": 0}

        def evaluate_ids(*args, **kwargs):
            calls["n"] += 1
            total, count = real_eval(*args, **kwargs)
            return (math.inf if calls["n"] == 1 else total), count
        monkeypatch.setattr(evaluate, "evaluate_ids", evaluate_ids)
        expected = {"step": 105, "to_step": 100, "lr": 0.5, "reason": "valid cross-entropy inf"}
    code, stdout, err = run_cli("train", tiny_config, "--out", out, "-q", "--set", "train.checkpoint_every=20")
    assert code == 0, err
    assert "warning: training diverged" in err and "rolled back" in err and "Traceback" not in err
    rollbacks = [e for e in events(out) if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["rollbacks"] == 1
    assert expected.items() <= rollbacks[0].items()
    assert [e["lr"] for e in events(out) if e["event"] == "epoch"][0] == 0.5
    assert json.loads((out / "info.json").read_text())["status"] == "complete"
    meta = json.loads(str(weights(out, "checkpoint.npz")["meta"]))
    assert meta["progress"]["rollbacks"] == 1  # kept across --resume


def test_divergence_stops_after_max_rollbacks_with_the_last_good_model(tiny_config, tmp_path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("train", tiny_config, "--out", out, "-q", "--set", "train.lr=1e6",
                           "--set", "train.clip_norm=null", "--set", "model.activation=relu")
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == train_mod.MAX_ROLLBACKS + 1 and all(line.startswith("warning:") for line in lines[:-1])
    assert lines[-1].startswith("error: training diverged") and "train.lr" in lines[-1] and "weights.npz" in lines[-1]
    kinds = [e["event"] for e in events(out) if e["event"] != "train"]
    assert kinds == ["rollback"] * train_mod.MAX_ROLLBACKS + ["diverged"]
    lrs = [e["lr"] for e in events(out) if e["event"] == "rollback"]
    assert lrs == [5e5, 2.5e5, 1.25e5]
    assert json.loads((out / "info.json").read_text())["status"] == "diverged"
    kept = weights(out)  # the last good model: here the state before the first step
    start = {k[len("param."):]: v for k, v in weights(out, "checkpoint.npz").items() if k.startswith("param.")}
    assert_same_arrays(kept, start)
    code, stdout, err = run_cli("eval", out)
    assert code == 0 and "perplexity" in stdout, err
