"""Damaged model directories and checkpoints, fuzzed weights, the three file readers' open failures."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, files, weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlm_cli import modeldir
from rnnlm_cli.errors import UserError


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    """A private copy of the session's tiny trained model."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model[0], out)
    return out


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
            _, _, params = modeldir.load_model(model_dir)
        except UserError as e:
            assert "weights.npz" in str(e)
        else:
            assert all(np.isfinite(v).all() for v in params.values())


@pytest.mark.parametrize("make_path, fragment", [
    (lambda tmp: tmp / "missing", "no such file"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: str(tmp / "a\0b"), "not a valid file name"),
])
def test_the_three_file_readers_report_open_failures_alike(tmp_path, make_path, fragment):
    """A corpus, a config and a weights file that cannot be opened: one UserError naming it."""
    from rnnlm_cli import config, data, files

    path = make_path(tmp_path)
    readers = [lambda: data.open_text(path), lambda: config.read_yaml(Path(path)),
               lambda: files.read_npz(path)]
    for read in readers:
        with pytest.raises(UserError) as e:
            read()
        assert fragment in str(e.value) and "\n" not in str(e.value)
