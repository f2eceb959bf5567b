"""SIGTERM/SIGINT save a checkpoint, kill -9 loses nothing: --resume is bit-for-bit an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_clean_error, assert_same_arrays, weights, write_corpus, write_tiny_config
from conftest import train_reference as _reference


REPO = Path(__file__).resolve().parent.parent

LONG = ["train.epochs=8", "train.schedule=constant", "train.log_every=1", "train.checkpoint_every=10"]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    config = write_tiny_config(folder, write_corpus(folder))
    return config, _reference(config, LONG, folder / "reference")


def _start(config, out):
    sets = [a for o in LONG for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "rnnlm_cli.cli", "train", str(config), "--out", str(out), "-q",
                             *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for_lines(proc, out, n, timeout=60):
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.returncode} {proc.stderr.read().decode()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("the run wrote no metrics in time")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_resume_is_bit_for_bit(long_run, tmp_path, run_cli, signum, code):
    config, reference = long_run
    out = tmp_path / "run dir"
    proc = _start(config, out)
    try:
        _wait_for_lines(proc, out, 3)
        if signum == signal.SIGTERM:  # meanwhile, a second run on the same folder is refused
            second, _, err = run_cli("train", "--out", out, "--resume")
            assert_clean_error(second, err, 2, f"pid {proc.pid}", "another rnnlm run")
            assert proc.poll() is None
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
    finally:
        proc.kill()
    stderr = proc.stderr.read().decode()
    assert "--resume" in stderr and "Traceback" not in stderr
    assert json.loads((out / "info.json").read_text())["status"] == "interrupted"
    assert not (out / ".lock").exists()
    result, _, err = run_cli("train", "--out", out, "--resume", "-q")
    assert result == 0, err
    assert_same_arrays(weights(out), reference)


def test_kill_9_then_resume_is_bit_for_bit(long_run, tmp_path, run_cli):
    config, reference = long_run
    out = tmp_path / "run"
    proc = _start(config, out)
    try:
        _wait_for_lines(proc, out, 25)  # past the checkpoint at step 20
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    assert (out / ".lock").exists()  # stale: its process is gone, so it blocks nothing
    result, _, err = run_cli("train", "--out", out, "--resume", "-q")
    assert result == 0, err
    assert_same_arrays(weights(out), reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no lock, no temp files


def test_ctrl_c_during_the_final_evaluation_skips_it_at_once(tiny_config, tmp_path, run_cli, monkeypatch):
    """Training is over and its weights saved when the exact evaluation starts: Ctrl-C there
    stops at once (exit 130), the run is recorded complete with the evaluation skipped, and the
    user is told that `rnnlm eval DIR` runs it; a --resume then has nothing to do."""
    from rnnlm_cli import evaluate, model
    real, calls = evaluate.evaluate_ids, []

    def ctrl_c_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as the user presses Ctrl-C
        return real(*args, **kwargs)
    monkeypatch.setattr(evaluate, "evaluate_ids", ctrl_c_first)
    forward, windows = model.forward, []
    monkeypatch.setattr(model, "forward", lambda *a, **k: windows.append(k.get("need_grad", True)) or forward(*a, **k))
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", tiny_config, "--set", "train.max_steps=5", "--out", out)
    assert code == 130 and "Traceback" not in err, err
    assert windows.count(False) == 0 and len(calls) == 1  # no window of valid or test was evaluated
    assert err.strip().splitlines()[-1] == (f"interrupted: final evaluation skipped; training is complete and the "
                                           f"model is saved in {out}; evaluate it later with: rnnlm eval {out}")
    info = json.loads((out / "info.json").read_text())
    assert info["status"] == "complete" and info["final_evaluation"] == "skipped" and info["test_ppl"] is None
    end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["final_evaluation"] == "skipped" and end["valid_ppl"] is None
    assert "The final evaluation was skipped" in (out / "README.md").read_text()
    monkeypatch.undo()
    code, text, err = run_cli("info", out)
    assert code == 0 and "final evaluation skipped" in text and f"rnnlm eval {out}" in text, text
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli("train", "--out", out, "--resume")
    assert code == 0 and "nothing to do" in err and f"rnnlm eval {out} runs it" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, text, err = run_cli("eval", out)
    assert code == 0 and "perplexity" in text and err == "", err
