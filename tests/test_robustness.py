"""Robustness: bad input, faults and hostile files never crash the tool or lose a model.

Every user error is one line on stderr (no traceback) with exit code 2; write faults exit 1
with one line; files that existed before a failure are byte-identical after it.
"""

import errno
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from conftest import assert_clean_error, assert_same_arrays, files, weights, write_corpus, write_tiny_config
from conftest import train_reference as _reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlm_cli import checkpoint, data, evaluate
from rnnlm_cli import train as train_mod
from rnnlm_cli.config import SECTION_TYPES, all_keys, load_config
from rnnlm_cli.errors import UserError
from rnnlm_cli.vocab import EOS, build_vocab

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# helpers


def events(model_dir):
    return [json.loads(line) for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    """A private copy of the session's tiny trained model."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model[0], out)
    return out


# --------------------------------------------------------------------------------------------
# 1. one error path: exit 2 and one line for user errors, exit 1 for the unexpected


@pytest.mark.parametrize("args, fragments", [
    (["sample", "{model}", "--temperature", "-1"], ["--temperature"]),
    (["sample", "{model}", "--temperature", "nan"], ["--temperature", "nan"]),
    (["sample", "{model}", "--temperature", "inf"], ["--temperature", "inf"]),
    (["sample", "{model}", "--top-k", "0"], ["--top-k"]),
    (["sample", "{model}", "--top-k", "100000"], ["--top-k 100000", "larger than the vocabulary"]),
    (["sample", "{model}", "--words", "0"], ["--words"]),
    (["sample", "{model}", "--words", "-3"], ["--words"]),
    (["sample", "{model}", "--seed", "-1"], ["--seed"]),
    (["gradcheck", "--tolerance", "nan"], ["--tolerance"]),
    (["eval", "{model}", "--batch-size", "0"], ["--batch-size"]),
    (["eval", "{model}", "no-such-file.txt"], ["no-such-file.txt", "no such file"]),
    (["eval", "no-such-model"], ["no-such-model"]),
    (["train", "--out", "no-such-run", "--resume"], ["no-such-run"]),
    (["train", "--bogus"], ["--bogus", "rnnlm train --help"]),
    (["bogus-command"], ["bogus-command"]),
    (["config", "--set", "train.lr"], ["train.lr", "KEY=VALUE"]),
    (["config", "--set", "model.hidden_dim=[[["], ["model.hidden_dim", "not valid YAML"]),
    (["config", "--set", "train.lr=.inf"], ["train.lr", "finite"]),
    (["config", "--set", "data.train=a\x00b"], ["data.train", "not valid YAML"]),
    (["config", "--set", 'data.train="a\\0b"'], ["data.train", "NUL"]),
    (["config", "--set", "model.hiden_dim=3"], ["did you mean 'model.hidden_dim'"]),
])
def test_user_errors_are_one_line_with_exit_2(tiny_model, run_cli, args, fragments):
    before = files(tiny_model[0])
    args = [str(tiny_model[0]) if a == "{model}" else a for a in args]
    code, out, err = run_cli(*args)
    assert_clean_error(code, err, 2, *fragments)
    assert files(tiny_model[0]) == before


@pytest.mark.parametrize("text, fragment", [
    ("[" * 1500 + "]" * 1500, "nested too deeply"),  # PyYAML recurses: RecursionError
    ("model:\n  ? \"hidden\\ndim\"\n  : 3\n", "unknown key"),  # a key with a line break
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
     "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
     "model: {hidden_dim: *h}\n", "unknown section"),  # "billion laughs": never expanded
    ("model: {hidden_dim: 8}\ntrain: {lr: 1e-3, clip_norm: 1e-3}\n", None),  # YAML 1.2 floats are numbers
], ids=["deep", "key with a line break", "billion laughs", "1e-3"])
def test_hostile_or_odd_yaml(tmp_path, run_cli, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    t0 = time.perf_counter()
    code, out, err = run_cli("config", path)
    assert time.perf_counter() - t0 < 5
    if fragment is None:
        assert code == 0 and "lr: 0.001" in out, err
    else:
        assert_clean_error(code, err, 2, str(path), fragment)


def test_unexpected_error_exits_1_with_traceback_only_under_debug(tiny_model, run_cli, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(evaluate, "evaluate_ids", broken)
    code, _, err = run_cli("eval", tiny_model[0])
    assert_clean_error(code, err, 1, "unexpected RuntimeError", "boom\\nsecond line", "--debug")
    with pytest.raises(RuntimeError):
        run_cli("--debug", "eval", tiny_model[0])


def test_read_error_inside_the_line_generator(tmp_path, run_cli, monkeypatch):
    """An OSError while reading (raised inside the streaming generator) names the file."""
    path = tmp_path / "corpus.txt"
    path.write_text("a b\n" * 10, encoding="utf-8")

    class FailingFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def peek(self, n):
            return self.f.peek(n)

        def readline(self, n):
            raise OSError(errno.EIO, "Input/output error")

    real_open = data._open_binary
    monkeypatch.setattr(data, "_open_binary", lambda p: FailingFile(real_open(p)))
    code, _, err = run_cli("vocab", path)
    assert_clean_error(code, err, 2, str(path), "read error", "Input/output error")


# --------------------------------------------------------------------------------------------
# 2. model directories: every damaged or hostile file is refused with a clear message


class _Pwned:
    """Unpickling this would create a folder: a test that it never happens."""

    marker = None

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _resave(model_dir, change, name="weights.npz"):
    arrays = weights(model_dir, name)
    change(arrays)
    np.savez(Path(model_dir) / name, **arrays)


def _flip_data(path):
    """Flip a byte of an array's data (the CRC-32 of its zip entry no longer matches)."""
    raw = bytearray(path.read_bytes())
    raw[raw.rfind(b"\x93NUMPY") + 200] ^= 0xFF
    path.write_bytes(bytes(raw))


def _huge_header(model_dir):
    """A member whose .npy header claims 10**12 floats: refused before any allocation."""
    arrays = weights(model_dir)
    path = Path(model_dir) / "weights.npz"
    np.savez(path, **arrays)
    import zipfile
    with zipfile.ZipFile(path, "a") as zf:
        header = b"\x93NUMPY\x01\x00"
        text = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
        text += b" " * (64 - (len(header) + 2 + len(text) + 1) % 64) + b"\n"
        zf.writestr("zz.npy", header + len(text).to_bytes(2, "little") + text + b"\0" * 64)


def _pickled(model_dir):
    arrays = weights(model_dir)
    arrays["output.b"] = np.array([_Pwned()] * arrays["output.b"].size, dtype=object)
    np.savez(Path(model_dir) / "weights.npz", **arrays)


def _set_info(model_dir, text):
    (Path(model_dir) / "info.json").write_text(text, encoding="utf-8")


DAMAGES = {
    "no config.yaml": (lambda d: (d / "config.yaml").unlink(), ["config.yaml", "missing"]),
    "no vocab.txt": (lambda d: (d / "vocab.txt").unlink(), ["vocab.txt", "missing"]),
    "no weights.npz": (lambda d: (d / "weights.npz").unlink(), ["weights.npz", "no such file"]),
    "truncated weights": (lambda d: (d / "weights.npz").write_bytes((d / "weights.npz").read_bytes()[:900]),
                          ["weights.npz", "truncated or corrupted"]),
    "flipped byte": (lambda d: _flip_data(d / "weights.npz"), ["weights.npz", "corrupted"]),
    "not a zip": (lambda d: (d / "weights.npz").write_bytes(b"hello"), ["weights.npz", "truncated or corrupted"]),
    "empty weights": (lambda d: (d / "weights.npz").write_bytes(b""), ["weights.npz"]),
    "wrong shape": (lambda d: _resave(d, lambda a: a.update(embedding=a["embedding"][:, :-1])),
                    ["weights.npz", "'embedding' has shape"]),
    "vocab size": (lambda d: (d / "vocab.txt").write_text((d / "vocab.txt").read_text() + "extra\n"),
                   ["weights.npz", "vocabulary"]),
    "missing array": (lambda d: _resave(d, lambda a: a.pop("output.b")), ["weights.npz", "output.b"]),
    "extra array": (lambda d: _resave(d, lambda a: a.update(spare=np.zeros(2))), ["weights.npz", "spare"]),
    "integer array": (lambda d: _resave(d, lambda a: a.update({"output.b": a["output.b"].astype(np.int64)})),
                      ["weights.npz", "output.b", "dtype"]),
    "NaN": (lambda d: _resave(d, lambda a: a["embedding"].__setitem__((0, 0), np.nan)),
            ["weights.npz", "embedding", "NaN or infinite"]),
    "inf": (lambda d: _resave(d, lambda a: a["output.W"].__setitem__((1, 1), -np.inf)),
            ["weights.npz", "output.W", "NaN or infinite"]),
    "absurd weights": (lambda d: _resave(d, lambda a: (a["output.W"].fill(3e38), a["output.W"][0].fill(-3e38),
                                                       a["embedding"].__imul__(1e30))), ["absurdly large"]),
    "pickled objects": (_pickled, ["weights.npz", "pickled", "refused"]),
    "huge header": (_huge_header, ["weights.npz"]),
    "newer format": (lambda d: _set_info(d, '{"format_version": 99}'), ["info.json", "99", "upgrade"]),
    "garbage info": (lambda d: _set_info(d, "{not json"), ["info.json"]),
    "bad config": (lambda d: (d / "config.yaml").write_text("model: [1,\n"), ["config.yaml"]),
    "bad config key": (lambda d: (d / "config.yaml").write_text("model: {hiden_dim: 3}\n"),
                       ["config.yaml", "hiden_dim"]),
    "binary vocab": (lambda d: (d / "vocab.txt").write_bytes(b"<unk>\n<eos>\n\xff\n"), ["vocab.txt", "line 3"]),
    "weights a folder": (lambda d: ((d / "weights.npz").unlink(), (d / "weights.npz").mkdir()), ["weights.npz"]),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_model_directory_is_refused(model_copy, run_cli, tmp_path, damage):
    _Pwned.marker = tmp_path / "pwned"
    change, fragments = DAMAGES[damage]
    change(model_copy)
    before = files(model_copy)
    for command in (["eval", model_copy], ["sample", model_copy, "--words", "3"]):
        code, _, err = run_cli(*command)
        assert_clean_error(code, err, 2, *fragments)
    assert files(model_copy) == before
    assert not _Pwned.marker.exists()  # the pickle was never run


def _ckpt_change(change):
    def apply(model_dir):
        arrays = weights(model_dir, "checkpoint.npz")
        change(arrays)
        np.savez(Path(model_dir) / "checkpoint.npz", **arrays)
    return apply


def _meta(change):
    def apply(arrays):
        meta = json.loads(str(arrays["meta"]))
        change(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    return apply


CHECKPOINT_DAMAGES = {
    "missing": (lambda d: (d / "checkpoint.npz").unlink(), ["checkpoint.npz", "no checkpoint"]),
    "truncated": (lambda d: (d / "checkpoint.npz").write_bytes((d / "checkpoint.npz").read_bytes()[:1000]),
                  ["checkpoint.npz"]),
    "NaN parameter": (_ckpt_change(lambda a: a["param.rnn.0.W_h"].__setitem__((0, 0), np.nan)),
                      ["checkpoint.npz", "rnn.0.W_h", "NaN"]),
    "pickled meta": (_ckpt_change(lambda a: a.update(meta=np.array([_Pwned()], dtype=object))),
                     ["checkpoint.npz", "pickled"]),
    "no meta": (_ckpt_change(lambda a: a.pop("meta")), ["checkpoint.npz", "meta"]),
    "numeric meta": (_ckpt_change(lambda a: a.update(meta=np.array(1.0))), ["checkpoint.npz", "meta"]),
    "hidden shape": (_ckpt_change(lambda a: a.update(hidden=np.zeros((1, 3, 12), np.float32))),
                     ["checkpoint.npz", "hidden"]),
    "newer format": (_ckpt_change(_meta(lambda m: m.update(format_version=99))), ["checkpoint.npz", "newer"]),
    "bad progress": (_ckpt_change(_meta(lambda m: m["progress"].update(window="x"))),
                     ["checkpoint.npz", "progress.window"]),
    "unknown progress": (_ckpt_change(_meta(lambda m: m["progress"].update(surprise=1))),
                         ["checkpoint.npz", "surprise"]),
    "bad rng": (_ckpt_change(_meta(lambda m: m.update(rng={"bit_generator": "nope"}))), ["checkpoint.npz", "RNG"]),
    "optimizer state": (_ckpt_change(lambda a: a.update({"opt.adam.t": np.zeros((), np.int64)})),
                        ["checkpoint.npz", "optimizer"]),
    "wrong best shape": (_ckpt_change(lambda a: a.update({"best.output.b": np.zeros(3, np.float32)})),
                         ["checkpoint.npz", "output.b"]),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES)
def test_damaged_checkpoint_is_refused_on_resume(model_copy, run_cli, tmp_path, damage):
    _Pwned.marker = tmp_path / "pwned"
    change, fragments = CHECKPOINT_DAMAGES[damage]
    change(model_copy)
    before = files(model_copy)
    code, _, err = run_cli("train", "--out", model_copy, "--resume", "--set", "train.epochs=3", "-q")
    assert_clean_error(code, err, 2, *fragments)
    assert files(model_copy) == before
    assert not _Pwned.marker.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                                   max_size=3))
def test_fuzzed_weights_load_or_are_refused(tiny_model, cut, flips):
    """Random truncations and byte flips of weights.npz: loaded, or a clean UserError."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "m"
        shutil.copytree(tiny_model[0], model_dir)
        raw = bytearray((model_dir / "weights.npz").read_bytes())
        for pos, x in flips:
            raw[pos % len(raw)] ^= x
        (model_dir / "weights.npz").write_bytes(bytes(raw[: max(cut, len(raw) // 2) if cut else len(raw)]))
        try:
            _, _, params = checkpoint.load_model(model_dir)
        except UserError as e:
            assert "weights.npz" in str(e)
        else:
            assert all(np.isfinite(v).all() for v in params.values())


# --------------------------------------------------------------------------------------------
# 3. atomic writes, a full disk, the metrics log, the lock


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
# 4. divergence: roll back, halve the learning rate, give up after MAX_ROLLBACKS


@pytest.mark.parametrize("where", ["loss", "valid"])
def test_a_nan_rolls_back_and_training_goes_on(tiny_config, tmp_path, run_cli, monkeypatch, where):
    out = tmp_path / "run"
    if where == "loss":  # step 30 returns NaN once: back to the checkpoint at step 20
        real_step, calls = train_mod.train_step, {"n": 0}

        def train_step(*args, **kwargs):
            loss, state, norm = real_step(*args, **kwargs)
            calls["n"] += 1
            return (math.nan if calls["n"] == 30 else loss), state, norm
        monkeypatch.setattr(train_mod, "train_step", train_step)
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


# --------------------------------------------------------------------------------------------
# 5. signals and kill -9 on a real process; --resume equals an uninterrupted run


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


# --------------------------------------------------------------------------------------------
# 6. inputs


@pytest.mark.parametrize("content, fragments", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ["line 1", "invalid UTF-8", "byte offset 0"]),
    ("hello world\n".encode("utf-16-le"), ["line 1", "NUL byte", "UTF-16"]),
    (b"fine\nline two\n\x1f\x8b\x08\x00\xff\x00", ["line 3", "byte offset"]),
])
def test_binary_files_are_refused(tiny_config, tmp_path, run_cli, content, fragments):
    path = tmp_path / "binary.txt"
    path.write_bytes(content)
    before = files(tmp_path)
    code, _, err = run_cli("vocab", path)
    assert_clean_error(code, err, 2, str(path), *fragments)
    code, _, err = run_cli("train", tiny_config, "--set", f"data.train={path}", "--out", tmp_path / "out")
    assert_clean_error(code, err, 2, str(path), *fragments)
    assert files(tmp_path) == before  # no model folder created


def test_one_enormous_line_in_bounded_memory(tmp_path):
    words = [f"w{i}" for i in range(1000)]
    path = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    line = " ".join(words[i] for i in rng.integers(0, 1000, 1_100_000))
    path.write_text(line, encoding="utf-8")
    assert path.stat().st_size > 5_000_000
    counts, n_words, n_lines = data.count_words(path, "whitespace")
    assert (n_words, n_lines) == (1_100_000, 1)
    vocab = build_vocab(counts)
    tracemalloc.start()
    try:
        ids, stats = data.encode_file(path, vocab, "whitespace")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats["targets"] == 1_100_001 and ids[-1] == vocab.eos_id
    assert peak < 30e6, peak  # the ids (4.4 MB twice) and a 64 KiB block's words, not the whole line


def test_line_endings_bom_and_unicode_whitespace(tmp_path, run_cli):
    """LF, CRLF, CR end lines; a BOM is skipped; tabs and Unicode spaces (U+00A0, U+3000, U+2028)
    separate words (str.split()); a zero-width space does not."""
    path = tmp_path / "mixed.txt"
    path.write_bytes("\ufeffa b\r\nc\td\re\u00a0f\u3000g\n \t\u00a0\n\nh\u2028i\x0cj\r\nk\u200bl".encode("utf-8"))
    counts, n_words, n_lines = data.count_words(path, "whitespace")
    vocab = build_vocab(counts)
    ids, stats = data.encode_file(path, vocab, "whitespace")
    assert [vocab.tokens[i] for i in ids] == [EOS, "a", "b", EOS, "c", "d", EOS, "e", "f", "g", EOS,
                                             "h", "i", "j", EOS, "k\u200bl", EOS]
    assert (n_words, n_lines, stats["targets"]) == (11, 5, 16)
    code, out, err = run_cli("vocab", path, "--json")
    assert code == 0 and json.loads(out.splitlines()[1])["lines"] == 5


@pytest.mark.parametrize("prompt", ["zebra xyzzy", "", "   \t "])
def test_prompts_of_unknown_words_or_nothing(tiny_model, run_cli, prompt):
    code, out, err = run_cli("sample", tiny_model[0], "--prompt", prompt, "--words", 5, "--seed", 1)
    assert code == 0 and out.strip(), err
    if prompt.strip():
        assert err.strip().splitlines() == ["warning: not in the vocabulary, read as <unk>: zebra xyzzy"]
    else:
        assert err == ""


def test_eval_of_an_empty_file_is_a_clear_line_and_exit_0(tiny_model, tmp_path, run_cli):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n\t\n", encoding="utf-8")
    test_file = tiny_model[1].parent / "test.txt"
    code, out, err = run_cli("eval", tiny_model[0], empty, test_file)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0] == f"{empty}: no tokens (the file is empty or only whitespace): nothing to evaluate"
    assert "perplexity" in lines[1]
    code, out, _ = run_cli("eval", tiny_model[0], empty, "--json")
    row = json.loads(out)
    assert code == 0 and row["targets"] == 0 and row["perplexity"] is None


def test_train_file_as_valid_file_is_allowed_with_a_warning(tiny_config, corpus, tmp_path, run_cli):
    code, out, err = run_cli("train", tiny_config, "--set", f"data.valid={corpus['train']}", "-q",
                             "--set", "train.epochs=1", "--out", tmp_path / "out")
    assert code == 0, err
    assert err.strip().splitlines() == [f"warning: data.train and data.valid are the same file ({corpus['train']}): "
                                        f"valid perplexity will be optimistic"]


def test_paths_with_spaces_and_non_ascii_names(tmp_path, run_cli):
    folder = tmp_path / "my data" / "ünïcödé 日本"
    folder.mkdir(parents=True)
    config = write_tiny_config(folder, write_corpus(folder), name="my config ü.yaml")
    out = tmp_path / "runs" / "mödel 1"
    code, stdout, err = run_cli("train", config, "--out", out, "-q")
    assert code == 0 and str(out) in stdout, err
    code, stdout, err = run_cli("eval", out)
    assert code == 0 and "日本" in stdout, err
    code, stdout, err = run_cli("sample", out, "--prompt", "the cat", "--words", 3)
    assert code == 0 and stdout.startswith("the cat"), err
    code, _, err = run_cli("eval", out, folder / "fehlt ä.txt")
    assert_clean_error(code, err, 2, "fehlt ä.txt")


# --------------------------------------------------------------------------------------------
# 7. fuzzing: the only outcomes are success or a clean UserError


SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["1e-3", "1.5", ".inf", "whitespace", "elman", "sgd"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
NAMES = st.sampled_from(sorted({k.split(".")[1] for k in all_keys()})) | st.text(max_size=8)
SECTIONS = st.dictionaries(NAMES, VALUES, max_size=4) | VALUES
DOCUMENTS = st.dictionaries(st.sampled_from(list(SECTION_TYPES)) | st.text(max_size=6), SECTIONS, max_size=4) | VALUES


@settings(max_examples=150, deadline=None)
@given(document=DOCUMENTS, raw=st.none() | st.text(max_size=80))
def test_fuzzed_config_files_load_or_fail_cleanly(document, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(raw if raw is not None else yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        try:
            load_config(path)
        except UserError as e:
            assert str(e)


OVERRIDES = (st.tuples(st.sampled_from(all_keys()) | st.text(max_size=10), st.sampled_from(["=", "", "=="]),
                       st.text(max_size=12) | st.sampled_from(["null", "3", "-1", "0.5", "1e9", "[1, 2]", "{a: 1}",
                                                               "'x'", "yes", ".nan", "relu"]))
             .map("".join) | st.text(max_size=30))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(OVERRIDES, min_size=1, max_size=3))
def test_fuzzed_set_options_through_the_cli(run_cli, overrides):
    code, out, err = run_cli("config", *[f"--set={o}" for o in overrides])
    if code == 0:
        assert isinstance(yaml.safe_load(out), dict)
    else:
        assert_clean_error(code, err, 2)


TEXT = st.lists(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(
    ["\r", "\n", "\r\n", " ", "\t", "\u00a0", "\u3000", "\u2028", "\x85", "\ufeff", "\x00", "<unk>", "<eos>",
     "é", "İ", "ΑΣ", "'", "-", "...", "3.14"]), max_size=40).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT, tokenizer=st.sampled_from(["whitespace", "simple"]), block=st.sampled_from([3, 7, 1 << 16]))
def test_fuzzed_unicode_text_gives_the_reference_tokens(text, tokenizer, block):
    """Any Unicode text: the SPEC token stream (lines end at LF/CRLF/CR, a leading BOM is
    skipped), read in blocks of any size; a NUL character is the one clean refusal."""
    import re
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(data, "_BLOCK", block):
        path = Path(tmp) / "t.txt"
        path.write_bytes(text.encode("utf-8"))
        try:
            counts, n_words, n_lines = data.count_words(path, tokenizer)
            vocab = build_vocab(counts)
            ids, stats = data.encode_file(path, vocab, tokenizer, allow_empty=True)
        except UserError as e:
            assert "\x00" in text and "NUL" in str(e)
            return
    assert "\x00" not in text
    expected = [EOS]
    for line in re.split("\r\n|\r|\n", text[1:] if text.startswith("\ufeff") else text):
        words = data.tokenize(line, tokenizer)
        if words:
            expected += words + [EOS]
    assert [vocab.tokens[i] for i in ids] == expected
    assert stats["targets"] == n_words + n_lines == len(expected) - 1


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=120), block=st.sampled_from([2, 5, 1 << 16]))
def test_fuzzed_bytes_read_or_fail_cleanly(raw, block):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(data, "_BLOCK", block):
        path = Path(tmp) / "b.txt"
        path.write_bytes(raw)
        try:
            counts, n_words, n_lines = data.count_words(path, "whitespace")
            ids, stats = data.encode_file(path, build_vocab(counts), "whitespace", allow_empty=True)
        except UserError as e:
            assert str(e).startswith(f"{path}: line ")
            return
    assert stats["targets"] == n_words + n_lines == len(ids) - 1


@pytest.mark.parametrize("make_path, fragment", [
    (lambda tmp: tmp / "missing", "no such file"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: str(tmp / "a\0b"), "not a valid file name"),
])
def test_the_three_file_readers_report_open_failures_alike(tmp_path, make_path, fragment):
    """A corpus, a config and a weights file that cannot be opened: one UserError naming it."""
    from rnnlm_cli import checkpoint, config, data

    path = make_path(tmp_path)
    readers = [lambda: data._open_binary(path), lambda: config.read_yaml(Path(path)),
               lambda: checkpoint.read_npz(path)]
    for read in readers:
        with pytest.raises(UserError) as e:
            read()
        assert fragment in str(e.value) and "\n" not in str(e.value)
