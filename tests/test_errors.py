"""One-line user errors (exit 2), hostile or odd YAML, unexpected errors (exit 1) and --debug, read errors."""

import errno
import time

import pytest
from conftest import assert_clean_error, files

from rnnlm_cli import data, evaluate


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

    real_open = data.open_text
    monkeypatch.setattr(data, "open_text", lambda p: FailingFile(real_open(p)))
    code, _, err = run_cli("vocab", path)
    assert_clean_error(code, err, 2, str(path), "read error", "Input/output error")
