"""Shared fixtures: a tiny corpus and a tiny config, and a way to run the CLI in-process; and the
helpers several test files use (import them with `from conftest import ...`)."""

import random
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rnnlm_cli import cli
from rnnlm_cli.gradcheck import numerical_gradient


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """The token cache of every run in the tests (subprocesses inherit it) in a temporary folder,
    never in the user's ~/.cache."""
    import os
    os.environ["RNNLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("token-cache"))
    yield


def _sentences(seed, n):
    """Sentences from a small grammar: enough structure for a model to beat unigram quickly."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "the old man", "my sister", "the king", "a bird"]
    verbs = ["sees", "likes", "follows", "finds", "calls"]
    objects = ["the river", "a house", "the bread", "the moon", "a small boat", "the city"]
    endings = [".", "today .", "again .", "at night ."]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(endings)}"
            for _ in range(n)]


def write_corpus(folder):
    """Write the tiny corpus into `folder`: {'train', 'valid', 'test'} paths."""
    paths = {}
    for name, seed, n in (("train", 1, 300), ("valid", 2, 40), ("test", 3, 40)):
        path = folder / f"{name}.txt"
        path.write_text("\n".join(_sentences(seed, n)) + "\n", encoding="utf-8")
        paths[name] = path
    return paths


def write_tiny_config(folder, corpus, name="tiny.yaml"):
    """Write the tiny config (data paths relative to `folder`) and return its path."""
    path = folder / name
    path.write_text(textwrap.dedent(f"""\
        data:
          train: {corpus['train'].name}
          valid: {corpus['valid'].name}
          test: {corpus['test'].name}
        model:
          embedding_dim: 8
          hidden_dim: 12
        train:
          batch_size: 4
          bptt: 6
          epochs: 2
          lr: 1.0
          clip_norm: 1.0
          eval_batch_size: 2
          log_every: 10
        """), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    """{'train', 'valid', 'test'} paths of a tiny tokenized corpus."""
    return write_corpus(tmp_path)


@pytest.fixture
def tiny_config(tmp_path, corpus):
    """A config file for a model that trains in well under a second."""
    return write_tiny_config(tmp_path, corpus)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(model directory, config path) of the tiny config trained once for the session: tests
    that damage it must work on a copy."""
    folder = tmp_path_factory.mktemp("tiny-model")
    config = write_tiny_config(folder, write_corpus(folder))
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    out = folder / "model"
    train.run(load_config(config), out)
    return out, config


@pytest.fixture
def run_cli(capsys):
    """run_cli(*args) -> (exit code, stdout, stderr) of `rnnlm args...` run in this process."""
    def run(*args):
        try:
            cli.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        else:
            code = 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


# --------------------------------------------------------------------------------------------
# helpers. The robustness contract (test_errors.py ... test_fuzz.py): every user error is one line
# on stderr (no traceback) with exit code 2; write faults exit 1 with one line; files that existed
# before a failure are byte-identical after it.


def files(folder):
    """{relative path: bytes} of every file under folder."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(model_dir, name="weights.npz"):
    with np.load(Path(model_dir) / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def train_reference(config_path, overrides, folder):
    """Train the config (with its --set overrides) uninterrupted into folder; its weights."""
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    train.run(load_config(config_path, overrides), folder)
    return weights(folder)


def assert_clean_error(code, err, expected_code, *fragments):
    """Exit code, exactly one line on stderr, 'error: ...', no traceback, the fault named."""
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def num_grad_of(f, x, dout=None):
    """Numerical gradient with respect to every entry of x of the scalar f(), or, given dout,
    of sum(f() * dout)."""
    if dout is not None:
        return numerical_gradient(lambda: float(np.sum(f() * dout)), x, np.arange(x.size)).reshape(x.shape)
    return numerical_gradient(f, x, np.arange(x.size)).reshape(x.shape)


def interrupted_run(tiny_config, out, overrides=("train.epochs=3",), at_call=25):
    """Train the tiny config into `out` and stop it as Ctrl-C would at the at_call-th check."""
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return signal.SIGINT if calls["n"] == at_call else None

    with pytest.raises(train.Interrupted):
        train.run(load_config(tiny_config, list(overrides)), out, should_stop=stop)


# A process that holds the flock of the file argv[1] (a run's DIR/.lock) until it is killed.
HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"%d\\n" % os.getpid())
    print("held", flush=True)
    time.sleep(60)
""")


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory):
    """({kind: model directory}, config path): the tiny config run once to each way a run can
    stand, for `info`, `plot` and the model card. Tests that change one must work on a copy.

    complete     4 epochs, step schedule from epoch 2 (lr cuts after epochs 2, 3 and 4)
    interrupted  Ctrl-C in epoch 2 (checkpoint saved, info.json says interrupted)
    crashed      stopped without a word in epoch 2, as by kill -9: info.json still says training
    rollback     a NaN loss at step 30 rolled back to the checkpoint of step 20, then complete
    diverged     lr 1e6: three rollbacks, then training gives up
    """
    import math
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    from rnnlm_cli.errors import Diverged
    folder = tmp_path_factory.mktemp("runs")
    config = write_tiny_config(folder, write_corpus(folder))
    dirs = {k: folder / k for k in ("complete", "interrupted", "crashed", "rollback", "diverged")}
    train.run(load_config(config, ["train.epochs=4", "train.schedule=step", "train.decay_start=2"]), dirs["complete"])
    interrupted_run(config, dirs["interrupted"], at_call=130)
    calls = {"n": 0}

    def crash():
        calls["n"] += 1
        if calls["n"] == 130:
            raise RuntimeError("the machine went away")
    with pytest.raises(RuntimeError):
        train.run(load_config(config, ["train.epochs=3"]), dirs["crashed"], should_stop=crash)
    with pytest.MonkeyPatch.context() as patch:
        real, steps = train.window_gradient, {"n": 0}

        def window_gradient(*args, **kwargs):
            loss, grads, state = real(*args, **kwargs)
            steps["n"] += 1
            return (math.nan if steps["n"] == 30 else loss), grads, state
        patch.setattr(train, "window_gradient", window_gradient)
        train.run(load_config(config, ["train.checkpoint_every=20", "train.epochs=3"]), dirs["rollback"])
    with pytest.raises(Diverged):
        train.run(load_config(config, ["train.lr=1e6", "train.clip_norm=null", "model.activation=relu"]),
                  dirs["diverged"])
    return dirs, config
