"""Data-parallel training on MPI (distributed.py): `mpiexec -n 2 rnnlm train` equals one process
(every array, float64, to 1e-12 relative), resume after killing the whole job, one clear message
on errors. Needs mpi4py and mpiexec (`pip install -e '.[test,mpi]'`); skipped, saying why, without.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_arrays, weights, write_corpus, write_tiny_config

REPO = Path(__file__).resolve().parent.parent


def _mpiexec():
    """The mpiexec beside this Python (a virtualenv's, from the `mpich` package) or on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _why_not():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the Python interpreter"
    return None


needs_mpi = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
FLOAT64 = ["train.dtype=float64"]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _command(config, out, sets, ranks, *extra):
    train = [sys.executable, "-m", "rnnlm_cli.cli", "train", str(config), "--out", str(out), "-q",
             *[a for s in sets for a in ("--set", s)], *extra]
    return ([_mpiexec(), "-n", str(ranks)] if ranks else []) + train


def _train(config, out, sets, ranks=2, *extra):
    """(exit code, stderr) of `mpiexec -n ranks rnnlm train ...` (ranks 0: no mpiexec)."""
    proc = subprocess.run(_command(config, out, sets, ranks, *extra), capture_output=True, text=True,
                          env=_env(), timeout=300)
    return proc.returncode, proc.stderr


def _checkpoint(out):
    with np.load(Path(out) / "checkpoint.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def _assert_close(a, b, rtol=1e-12):
    """Every array of a equals b's to rtol relative to its largest entry (integers exactly)."""
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if not np.issubdtype(a[k].dtype, np.floating):
            assert np.array_equal(a[k], b[k]), k
            continue
        scale = max(float(np.abs(b[k]).max()), 1e-300)
        assert float(np.abs(a[k] - b[k]).max()) <= rtol * scale, (k, float(np.abs(a[k] - b[k]).max()) / scale)


def _assert_same_run(one, two):
    """Two model directories trained alike: weights, checkpoint arrays, optimizer state, RNG and
    the progress (step, epoch, lr, schedule) agree."""
    _assert_close(weights(two), weights(one))
    (a, meta_a), (b, meta_b) = _checkpoint(two), _checkpoint(one)
    _assert_close(a, b)
    assert meta_a["rng"] == meta_b["rng"]
    exact = ("epoch", "window", "step", "tokens", "lr", "halving", "stop", "keep", "rollbacks", "train_tokens")
    for key in exact:
        assert meta_a["progress"][key] == meta_b["progress"][key], key
    for key in ("best_ce", "epoch_loss_sum", "last_loss"):
        x, y = meta_a["progress"][key], meta_b["progress"][key]
        assert (x is None and y is None) or abs(x - y) <= 1e-12 * abs(y), key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi")
    return folder, write_tiny_config(folder, write_corpus(folder))


CASES = {
    "elman-sgd": [],
    "lstm-adam-dropout": ["model.cell=lstm", "model.dropout=0.3", "train.optimizer=adam", "train.lr=0.01",
                          "model.layers=2"],
    "class-tied-gru-adam": ["model.cell=gru", "model.output=class", "model.tie_weights=true",
                            "model.embedding_dim=12", "train.optimizer=adam", "train.lr=0.01", "model.dropout=0.2"],
    "elman-sgd-clipped-class": ["model.output=class", "train.clip_norm=0.05", "train.batch_size=6"],
    "lstm-independent-sentences": ["model.cell=lstm", "data.independent=true", "train.optimizer=adam", "train.lr=0.01"],
    "awd-lstm-averaged": ["model.cell=lstm", "model.layers=2", "model.dropout=0.3", "model.dropout_input=0.2",
                          "model.dropout_between=0.1", "model.dropout_locked=true", "model.dropout_embedding=0.1",
                          "model.weight_drop=0.3", "train.ar=2", "train.tar=1", "train.weight_decay=1e-4",
                          "train.average=2", "model.tie_weights=true", "model.embedding_dim=12"],
    "awd-gru-class-auto": ["model.cell=gru", "model.output=class", "model.weight_drop=0.2", "model.dropout=0.2",
                           "model.dropout_embedding=0.2", "train.average=auto", "train.nonmono=1", "train.ar=1"],
}


@needs_mpi
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(setup, tmp_path, case):
    folder, config = setup
    sets = FLOAT64 + ["train.epochs=2"] + CASES[case]
    code, err = _train(config, tmp_path / "one", sets, ranks=0)
    assert code == 0, err
    code, err = _train(config, tmp_path / "two", sets, ranks=2)
    assert code == 0, err
    assert err == ""  # rank 0 alone prints, and -q prints nothing but the end line (stdout)
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == [x["event"] for x in
                                           map(json.loads, (tmp_path / "one" / "metrics.jsonl").read_text().splitlines())]
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no lock, no temp file
    assert f"mpiexec -n 2 rnnlm train {tmp_path / 'two'}/config.yaml" in (tmp_path / "two" / "README.md").read_text()
    assert "mpiexec" not in (tmp_path / "one" / "README.md").read_text()  # the card says how the run was launched


@needs_mpi
@pytest.mark.parametrize("case", ["class-tied-gru-adam", "awd-lstm-averaged"])
def test_two_ranks_with_the_sums_overlapped_equal_one_process(setup, tmp_path, case):
    """On one machine the default sums after the backward pass (RNNLM_MPI_OVERLAP=auto); the
    overlap that several machines get is checked here by asking for it."""
    folder, config = setup
    sets = FLOAT64 + ["train.epochs=2"] + CASES[case]
    code, err = _train(config, tmp_path / "one", sets, ranks=0)
    assert code == 0, err
    proc = subprocess.run(_command(config, tmp_path / "two", sets, 2), capture_output=True, text=True,
                          env={**_env(), "RNNLM_MPI_OVERLAP": "thread"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(tmp_path / "one", tmp_path / "two")


LONG = FLOAT64 + ["train.epochs=8", "train.schedule=constant", "train.log_every=1", "train.checkpoint_every=10",
                  "model.cell=lstm", "model.dropout=0.2"]


def _wait_for_lines(proc, out, n, timeout=120):
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.returncode} {proc.stderr.read().decode()}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the run wrote no metrics in time")


def _wait_until_gone(group, timeout=30):
    """Until no live process (zombies aside) is left in process group `group` (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return
        time.sleep(0.05)


@needs_mpi
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_two_ranks_resume_after_the_job_is_killed(setup, tmp_path, how):
    folder, config = setup
    reference = tmp_path / "reference"
    code, err = _train(config, reference, LONG, ranks=2)
    assert code == 0, err
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(config, out, LONG, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), start_new_session=True)
    try:
        _wait_for_lines(proc, out, 25)  # past the checkpoint at step 20
        if how == "SIGKILL":
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks at once
            proc.wait(timeout=60)
            _wait_until_gone(proc.pid)  # a rank inside a write or fsync dies when it returns
        else:
            proc.send_signal(signal.SIGTERM)  # mpiexec forwards it to the ranks: they agree and checkpoint
            proc.wait(timeout=60)
            assert json.loads((out / "info.json").read_text())["status"] == "interrupted"
            assert f"continue with: mpiexec -n 2 rnnlm train --out {out} --resume".encode() in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = _train(config, out, LONG, 0, "--resume")  # one process: refused, naming both numbers
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "trained by 2 MPI processes (mpiexec -n 2)" in lines[0] and "this is 1 process" in lines[0], err
    assert f"mpiexec -n 2 rnnlm train --out {out} --resume" in lines[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, err = _train(config, out, LONG, 2, "--resume")
    assert code == 0, err
    assert_same_arrays(weights(out), weights(reference))  # same K: bit for bit
    a, b = _checkpoint(out), _checkpoint(reference)
    assert_same_arrays(a[0], b[0])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@needs_mpi
def test_a_batch_the_ranks_cannot_share_is_one_clear_error(setup, tmp_path):
    folder, config = setup
    code, err = _train(config, tmp_path / "x", ["train.batch_size=5"], ranks=2)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.batch_size 5" in lines[0], err
    assert not (tmp_path / "x").exists()


@needs_mpi
def test_an_error_on_rank_0_alone_ends_every_rank(setup, tmp_path):
    """A folder that holds a model: only rank 0 looks at it; the others must not wait forever."""
    folder, config = setup
    out = tmp_path / "taken"
    out.mkdir()
    (out / "weights.npz").write_bytes(b"x")
    start = time.monotonic()
    code, err = _train(config, out, [], ranks=2)
    assert code == 2 and time.monotonic() - start < 60
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], err


FAULT = """
import os
from rnnlm_cli import train
if os.environ.get("PMI_RANK") == "1":
    calls, real = [0], train.window_gradient
    def window_gradient(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 30:
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)
    train.window_gradient = window_gradient
from rnnlm_cli.cli import main
main()
"""


@needs_mpi
def test_an_error_on_one_rank_mid_training_ends_the_job(setup, tmp_path):
    """Rank 1 fails at its 30th window while rank 0 waits in the allreduce: the job ends at once
    with rank 1's message (MPI Abort) and the exit code of an unexpected error; the last
    checkpoint is left for --resume."""
    folder, config = setup
    out = tmp_path / "run"
    cmd = _command(config, out, LONG, 2)
    cmd[cmd.index("-m"):cmd.index("train")] = ["-c", FAULT]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert time.monotonic() - start < 100
    assert proc.returncode == 1, proc.stderr
    ours = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert ours == ["error: rank 1: unexpected RuntimeError: injected fault; stopping all 2 processes"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _checkpoint(out)[1]["progress"]["step"] == 20
    code, err = _train(config, out, LONG, 2, "--resume")
    assert code == 0, err


def test_mpiexec_without_mpi4py_says_how_to_install_it(tmp_path, tiny_config):
    """Started by an MPI launcher (its variables set) where mpi4py cannot be imported."""
    env = {**_env(), "PMI_SIZE": "2", "PMI_RANK": "0"}
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from rnnlm_cli.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "train", str(tiny_config), "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mpi4py is not installed" in lines[0] and "rnnlm[mpi]" in lines[0], proc.stderr
    assert not (tmp_path / "m").exists()
    proc = subprocess.run([sys.executable, "-c", code, "train", str(tiny_config), "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, env={**env, "PMI_RANK": "1"}, timeout=120)
    assert proc.returncode == 2 and proc.stderr == ""  # the other ranks end quietly


@needs_mpi
def test_two_ranks_roll_back_and_give_up_like_one_process(setup, tmp_path):
    """Divergence on 2 ranks: the same rollbacks (rank 0 logs them, once), then one message and
    exit 2 on every rank, the last good model kept."""
    folder, config = setup
    sets = ["train.lr=1e6", "train.clip_norm=null", "model.activation=relu"]
    code, err = _train(config, tmp_path / "two", sets, ranks=2)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 4 and all(x.startswith("warning:") for x in lines[:3]), err
    assert lines[-1].startswith("error: training diverged"), err
    events = [json.loads(x)["event"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e != "train"] == ["rollback"] * 3 + ["diverged"]
    assert json.loads((tmp_path / "two" / "info.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("cfg", [
    dict(cell="elman"), dict(cell="lstm", dropout=0.3, layers=2),
    dict(cell="gru", output="class", tie_weights=True, embedding_dim=10, dropout=0.2),
    dict(cell="lstm", layers=2, dropout=0.3, dropout_input=0.2, dropout_between=0.1, dropout_locked=True,
         dropout_embedding=0.2, weight_drop=0.4, tie_weights=True),
    dict(cell="elman", layers=2, dropout_embedding=0.3, weight_drop=0.2, output="hsm"),
    dict(cell="gru", layers=2, dropout_locked=True, dropout=0.3, weight_drop=0.3, output="class")])
@pytest.mark.parametrize("ar,tar", [(0.0, 0.0), (2.0, 1.0)])
def test_blocks_of_streams_sum_to_the_batch_gradient(cfg, ar, tar):
    """The decomposition a data-parallel run relies on, without MPI: the gradients of K blocks of
    streams, each scaled by 1 / the whole window's target count, each with its block of the whole
    batch's masks (regularize.stream_block: per-stream dropout cut, embedding rows and W_h
    entries whole), with AR and TAR, sum to the batch's gradient."""
    from rnnlm_cli import model, regularize, train
    from rnnlm_cli.config import ModelConfig
    m = ModelConfig(**{"embedding_dim": 10, "hidden_dim": 10, **cfg})
    V, N, T = 30, 6, 5
    params = model.init_params(m, V, 3, "float64", np.arange(V) + 1.0)
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(0, V, (N, T)), rng.integers(0, V, (N, T))
    hidden = rng.normal(size=model.init_state(m, N, "float64").shape)
    masks = regularize.draw_masks(np.random.default_rng(7), m, T, N, V, "float64")

    def dense(g):
        return g.dense() if hasattr(g, "dense") else g
    loss, full, _ = train.window_gradient(params, m, inputs, targets, hidden, {}, masks, ar=ar, tar=tar)
    for K in (2, 3):
        summed, loss_sum = None, 0.0
        for k in range(K):
            a, b = k * N // K, (k + 1) * N // K
            part_loss, grads, _ = train.window_gradient(params, m, inputs[a:b], targets[a:b], hidden[..., a:b, :],
                                                        {}, regularize.stream_block(masks, a, b),
                                                        scale=1.0 / (N * T), ar=ar, tar=tar)
            loss_sum += part_loss * (b - a) * T
            summed = ({key: dense(g) for key, g in grads.items()} if summed is None
                      else {key: summed[key] + dense(g) for key, g in grads.items()})
        assert abs(loss_sum / (N * T) - loss) <= 1e-12 * abs(loss)
        for key, g in full.items():
            want = dense(g)
            assert np.abs(summed[key] - want).max() <= 1e-12 * np.abs(want).max(), (K, key)


# --------------------------------------------------------------------------------------------
# Validation divided among the ranks; the gradient summed while the backward pass runs


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 4, 10])
@pytest.mark.parametrize("K", [2, 3])
def test_the_ranks_shares_of_validation_sum_to_the_whole(reset, batch, K):
    """Each rank reads its share of the valid streams (distributed.valid_share); the sums over
    the ranks are the one process's figure (float64: to the last bits of the sum)."""
    from rnnlm_cli import distributed, evaluate, model
    from rnnlm_cli.config import ModelConfig
    m = ModelConfig(embedding_dim=6, hidden_dim=7, cell="lstm")
    V, EOS = 20, 0
    rng = np.random.default_rng(5)
    ids = rng.integers(1, V, 403)
    ids[0] = EOS
    ids[rng.choice(np.arange(1, 400), 40, replace=False)] = EOS
    params = model.init_params(m, V, 1, "float64", np.ones(V))
    reset_at = EOS if reset else None
    whole = evaluate.evaluate_ids(params, m, ids, batch, 5, reset_at)
    shares = [distributed.valid_share(distributed.World(k, K), ids, batch, reset_at) for k in range(K)]
    parts = [evaluate.evaluate_ids(params, m, part, n, 5, reset_at) for part, n in shares]
    assert sum(c for _, c in parts) == whole[1]
    assert sum(t for t, _ in parts) == pytest.approx(whole[0], rel=1e-12)
    if batch >= K:  # every rank has streams: about 1/K of the targets each
        assert max(c for _, c in parts) <= 1.5 * whole[1] / K


REDUCE = """
import json, sys
import numpy as np
from rnnlm_cli import distributed, layers
w = distributed.world()

def grads_of(rank):
    rng = np.random.default_rng(rank)
    cols = [(0, 3), (3, 8), (8, 20), (20, 21)]
    mine = [c for k, c in enumerate(cols) if (k + rank) % 2 == 0 or k == 2]
    return {"output.b": rng.normal(size=21), "output.W": layers.ColumnBlocks(mine, [rng.normal(size=(4, b - a))
            for a, b in mine], (4, 21)), "rnn.1.W_h": rng.normal(size=(300, 300)), "rnn.1.b": rng.normal(size=30),
            "rnn.0.W_x": rng.normal(size=(40, 30)).T, "rnn.0.b": rng.normal(size=30).astype(np.float64),
            "embedding": layers.SparseRows(np.array([1, 5, 7 + rank]), rng.normal(size=(3, 4)), (10, 4))}

def dense(g):
    return g.dense() if hasattr(g, "dense") else g
blocking = distributed.allreduce_gradient(w, 1.5 + w.rank, grads_of(w.rank), {})
reducer = distributed.Reducer(w, {})
mine = grads_of(w.rank)
order = ["output.b", "output.W", "rnn.1.W_h", "rnn.1.b", "rnn.0.W_x", "rnn.0.b"]
for keys in (order[:2], order[2:4], order[4:]):
    reducer.ready([(k, mine[k]) for k in keys])
overlapped = reducer.finish(1.5 + w.rank, mine)
again = reducer.finish(0.5, grads_of(w.rank))  # a reducer serves window after window
expect = {k: sum(dense(grads_of(r)[k]) for r in range(w.size)) for k in mine}
out = {"keys": list(overlapped[1]) == list(mine), "loss": [blocking[0], overlapped[0], again[0]],
       "same": all(np.array_equal(dense(blocking[1][k]), dense(overlapped[1][k])) for k in mine),
       "again": all(np.array_equal(dense(again[1][k]), dense(overlapped[1][k])) for k in mine),
       "sum": all(np.allclose(dense(overlapped[1][k]), expect[k], rtol=1e-14, atol=0) for k in mine),
       "kinds": [type(overlapped[1][k]).__name__ for k in mine]}
outs = w.comm.gather(out)
if w.rank == 0:
    print(json.dumps(outs), flush=True)
"""


@needs_mpi
@pytest.mark.parametrize("mode", ["auto", "thread", "calls", "off"])
def test_gradients_summed_during_the_backward_pass_equal_the_blocking_sum(tmp_path, mode):
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-c", REDUCE], capture_output=True, text=True,
                          env={**_env(), "RNNLM_MPI_OVERLAP": mode}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ranks = json.loads(proc.stdout)
    assert len(ranks) == 2
    for got in ranks:
        assert got["keys"] and got["same"] and got["again"] and got["sum"], got
        assert got["loss"] == [4.0, 4.0, 1.0]
        assert got["kinds"] == ["ndarray", "ColumnBlocks", "ndarray", "ndarray", "ndarray", "ndarray", "SparseRows"]


@needs_mpi
def test_a_bad_overlap_mode_is_one_line(setup, tmp_path):
    folder, config = setup
    proc = subprocess.run(_command(config, tmp_path / "x", [], 2), capture_output=True, text=True,
                          env={**_env(), "RNNLM_MPI_OVERLAP": "sometimes"}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "RNNLM_MPI_OVERLAP=sometimes" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()


SHARES = """
import json, os
from rnnlm_cli import evaluate
real, seen = evaluate.evaluate_ids, []
def evaluate_ids(params, cfg, ids, batch, *args, **kwargs):
    seen.append((len(ids), batch))
    return real(params, cfg, ids, batch, *args, **kwargs)
evaluate.evaluate_ids = evaluate_ids
try:
    from rnnlm_cli.cli import main
    main()
finally:
    with open(os.environ["SHARES_OUT"] + "." + os.environ.get("PMI_RANK", "0"), "w") as f:
        json.dump(seen, f)
"""


@needs_mpi
def test_two_ranks_validate_half_the_streams_each(setup, tmp_path):
    folder, config = setup
    cmd = _command(config, tmp_path / "two", ["train.epochs=1", "train.eval_batch_size=4"], 2)
    cmd[cmd.index("-m"):cmd.index("train")] = ["-c", SHARES]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "SHARES_OUT": str(tmp_path / "seen")},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = [json.loads((tmp_path / f"seen.{k}").read_text()) for k in (0, 1)]
    valid_tokens = 291 + 40 + 1  # the tiny valid corpus: 291 words on 40 lines, and the first <eos>
    epoch = [s[0] for s in seen]  # the end-of-epoch validation: then the final exact ones (batch 1)
    assert epoch == [[2 * (valid_tokens // 4), 2]] * 2  # streams 0-1 on rank 0, 2-3 on rank 1
