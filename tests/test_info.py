"""`rnnlm info`: each figure it reports read back against the files of the model directory, for
runs that completed, were interrupted, crashed, rolled back, diverged or are still training; a
damaged or missing directory is one line and exit 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOLD_LOCK, assert_clean_error, weights

from rnnlm_cli import __version__


def events(model_dir):
    return [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]


def progress(model_dir):
    return json.loads(str(weights(model_dir, "checkpoint.npz")["meta"]))["progress"]


def info_json(run_cli, model_dir):
    code, out, err = run_cli("info", model_dir, "--json")
    assert code == 0 and not err, err
    return json.loads(out)


def test_info_of_a_complete_run_matches_its_files(run_dirs, run_cli):
    out = run_dirs[0]["complete"]
    s = info_json(run_cli, out)
    end = events(out)[-1]
    epochs = [e for e in events(out) if e["event"] == "epoch"]
    arrays = weights(out)
    assert s["status"] == "complete" and s["detail"] == end["stop_reason"] == "reached 4 epochs"
    assert s["rnnlm_version"] == json.loads((out / "info.json").read_text())["rnnlm_version"] == __version__
    assert s["vocab_size"] == len((out / "vocab.txt").read_text().splitlines())
    assert {k: (tuple(p["shape"]), p["count"]) for k, p in s["parameters"].items()} == \
        {k: (a.shape, a.size) for k, a in arrays.items()}
    assert s["parameter_total"] == sum(a.size for a in arrays.values())
    assert (s["epochs"], s["steps"], s["tokens"]) == (len(epochs), end["steps"], end["tokens"]) and s["epochs"] == 4
    best = min(epochs, key=lambda e: e["valid_ppl"])
    assert (s["best_valid_ppl"], s["best_epoch"]) == (best["valid_ppl"], best["epoch"])
    for key in ("valid_ppl", "test_ppl", "unigram_valid_ppl", "tokens_per_sec", "train_seconds", "wall_seconds", "lr"):
        assert s[key] == end[key], key
    assert s["lr"] == 0.125  # three cuts by 0.5 of the step schedule: after epochs 2, 3 and 4
    assert s["config"]["train"]["schedule"] == "step" and s["resume_from"] is None and s["pid"] is None


def test_info_text_names_the_figures(run_dirs, run_cli):
    out = run_dirs[0]["complete"]
    end = events(out)[-1]
    code, text, err = run_cli("info", out)
    assert code == 0, err
    total = sum(a.size for a in weights(out).values())
    for fragment in (f"{out}: complete (reached 4 epochs)", f"rnnlm {__version__}", "elman (tanh), 1 layer, E 8, H 12",
                     "sgd lr 1, clip 1, step schedule", f"{total:,} trained", "rnn.0.W_h", "12×12",
                     f"kept model {end['valid_ppl']:.2f} (exact)", f"test     {end['test_ppl']:.2f}",
                     f"{end['steps']} steps", f"unigram {end['unigram_valid_ppl']:.2f}"):
        assert fragment in text, (fragment, text)
    assert "resume" not in text


def test_info_of_an_interrupted_run_says_where_it_resumes(run_dirs, run_cli):
    out = run_dirs[0]["interrupted"]
    s = info_json(run_cli, out)
    p = progress(out)
    assert s["status"] == "interrupted" and "SIGINT" in s["detail"]
    assert (s["steps"], s["tokens"], s["epochs"]) == (p["step"], p["tokens"], len(p["history"])) and s["epochs"] == 1
    assert s["resume_from"] == {"epoch": p["epoch"], "step": p["step"], "processes": 1} == {
        "epoch": 2, "step": p["step"], "processes": 1}
    assert s["test_ppl"] is None and s["valid_ppl"] is None
    assert s["best_valid_ppl"] == [e for e in events(out) if e["event"] == "epoch"][0]["valid_ppl"]
    code, text, _ = run_cli("info", out)
    assert f"rnnlm train --out {out} --resume" in text and "until the run ends" in text


def test_info_of_a_crashed_run_says_it_stopped_without_a_word(run_dirs, run_cli):
    out = run_dirs[0]["crashed"]
    assert json.loads((out / "info.json").read_text())["status"] == "training"
    s = info_json(run_cli, out)
    assert s["status"] == "interrupted" and "killed or crashed" in s["detail"] and s["pid"] is None
    last = [e for e in events(out) if e["event"] == "train"][-1]
    assert (s["steps"], s["tokens"]) == (last["step"], last["tokens"])  # what the log saw
    assert s["resume_from"] == {"epoch": 2, "step": progress(out)["step"], "processes": 1}  # the checkpoint after epoch 1


def test_info_of_a_resumed_run_that_crashed(run_dirs, tmp_path, run_cli):
    """--resume cuts the log back to the checkpoint (the interrupted record goes) and leaves
    info.json saying interrupted: a crash after that is told by the missing record."""
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    out = tmp_path / "again"
    shutil.copytree(run_dirs[0]["interrupted"], out)

    def crash():
        raise RuntimeError("the machine went away")
    with pytest.raises(RuntimeError):
        train.run(load_config(out / "config.yaml"), out, resume=True, should_stop=crash)
    assert json.loads((out / "info.json").read_text())["status"] == "interrupted"
    s = info_json(run_cli, out)
    assert s["status"] == "interrupted" and "killed or crashed after a --resume" in s["detail"], s["detail"]


def test_info_of_a_run_with_a_rollback(run_dirs, run_cli):
    out = run_dirs[0]["rollback"]
    s = info_json(run_cli, out)
    assert s["status"] == "complete" and s["rollbacks"] == 1
    assert s["steps"] == events(out)[-1]["steps"]


def test_info_of_a_diverged_run(run_dirs, run_cli):
    out = run_dirs[0]["diverged"]
    s = info_json(run_cli, out)
    recorded = json.loads((out / "info.json").read_text())
    assert s["status"] == "diverged" and s["rollbacks"] == 3
    assert recorded["reason"] in s["detail"] and f"model of step {recorded['step']}" in s["detail"]
    code, text, _ = run_cli("info", out)
    assert "resume" not in text and "until the run ends" not in text


@pytest.fixture
def live_run(run_dirs, tmp_path):
    """A copy of the crashed run whose lock a live process holds: a run still training."""
    out = tmp_path / "live"
    shutil.copytree(run_dirs[0]["crashed"], out)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc.pid
    proc.kill()
    proc.wait()


def test_info_of_a_run_in_progress_names_its_pid(live_run, run_cli):
    out, pid = live_run
    s = info_json(run_cli, out)
    assert s["status"] == "training" and s["pid"] == pid and str(pid) in s["detail"]
    code, text, _ = run_cli("info", out)
    assert f"training (pid {pid} is writing it)" in text and "resume   " not in text


def test_info_of_a_resumed_run_in_progress_is_training(run_dirs, tmp_path, run_cli):
    """A resumed run leaves info.json saying interrupted until its status changes: the lock tells."""
    out = tmp_path / "resumed"
    shutil.copytree(run_dirs[0]["interrupted"], out)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert info_json(run_cli, out)["status"] == "training"
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------
# damaged and missing directories


def _copy(run_dirs, tmp_path, kind="complete"):
    out = tmp_path / kind
    shutil.copytree(run_dirs[0][kind], out)
    return out


def test_info_of_a_missing_folder(tmp_path, run_cli):
    code, _, err = run_cli("info", tmp_path / "nothing")
    assert_clean_error(code, err, 2, "nothing", "not a model directory (no such folder)")


@pytest.mark.parametrize("damage, named", [
    (lambda d: (d / "weights.npz").write_bytes((d / "weights.npz").read_bytes()[:300]), "weights.npz"),
    (lambda d: (d / "config.yaml").unlink(), "config.yaml: missing"),
    (lambda d: (d / "info.json").write_text("{not json"), "info.json: unreadable"),
    (lambda d: (d / "metrics.jsonl").write_text("{\"event\": \"train\"}\nnot json\n"), "metrics.jsonl, line 2"),
    (lambda d: (d / "metrics.jsonl").write_text("{\"event\": \"epoch\", \"step\": 3}\n"), "metrics.jsonl, line 1"),
    (lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl: missing"),
])
def test_info_of_a_damaged_folder_is_one_line(run_dirs, tmp_path, run_cli, damage, named):
    out = _copy(run_dirs, tmp_path)
    damage(out)
    code, _, err = run_cli("info", out)
    assert_clean_error(code, err, 2, named)


def test_info_of_a_run_whose_checkpoint_is_damaged(run_dirs, tmp_path, run_cli):
    out = _copy(run_dirs, tmp_path, "interrupted")
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, _, err = run_cli("info", out)
    assert_clean_error(code, err, 2, "checkpoint.npz")


def test_a_record_being_written_is_left_out(run_dirs, tmp_path, run_cli):
    """A live run appends whole lines; a last line without its line break is still being written."""
    out = _copy(run_dirs, tmp_path, "crashed")
    before = info_json(run_cli, out)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "train", "epoch": 2, "st')
    assert info_json(run_cli, out)["steps"] == before["steps"]


def test_help_of_info_and_plot(run_cli):
    for command in ("info", "plot"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and "Example" in out, command
