"""Training: determinism, resume equals an uninterrupted run, --init, max_steps, optimizers."""

import signal

import numpy as np
import pytest
from conftest import assert_same_arrays, weights

from rnnlm_cli import model, modeldir, optim
from rnnlm_cli import train as train_mod
from rnnlm_cli.config import load_config


def test_same_seed_same_weights_bit_for_bit(tiny_config, tmp_path):
    config = load_config(tiny_config)
    train_mod.run(config, tmp_path / "a")
    train_mod.run(load_config(tiny_config), tmp_path / "b")
    assert_same_arrays(weights(tmp_path / "a"), weights(tmp_path / "b"))
    train_mod.run(load_config(tiny_config, ["train.seed=2"]), tmp_path / "c")
    assert not np.array_equal(weights(tmp_path / "a")["embedding"], weights(tmp_path / "c")["embedding"])


@pytest.mark.parametrize("extra", [
    [],
    ["train.optimizer=adam", "train.lr=0.01"],
    ["model.cell=lstm", "model.dropout=0.3"],  # the dropout masks' generator is restored too
    ["model.cell=gru", "model.tie_weights=true", "model.embedding_dim=12"],
])
def test_resume_after_a_signal_equals_an_uninterrupted_run(tiny_config, tmp_path, extra):
    overrides = ["train.epochs=3"] + extra
    train_mod.run(load_config(tiny_config, overrides), tmp_path / "whole")

    calls = {"n": 0}

    def stop_at_step_40():
        calls["n"] += 1
        return signal.SIGINT if calls["n"] == 40 else None

    with pytest.raises(train_mod.Interrupted):
        train_mod.run(load_config(tiny_config, overrides), tmp_path / "cut", should_stop=stop_at_step_40)
    assert modeldir.check_format(tmp_path / "cut")["status"] == "interrupted"
    train_mod.run(load_config(tiny_config, overrides), tmp_path / "cut", resume=True)
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
    assert (tmp_path / "whole" / "metrics.jsonl").read_text().count('"epoch"') == \
        (tmp_path / "cut" / "metrics.jsonl").read_text().count('"epoch"')


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_config, tmp_path):
    """A crash (as kill -9) loses the steps after the last checkpoint; resume replays them."""
    overrides = ["train.epochs=3", "train.checkpoint_every=7"]
    train_mod.run(load_config(tiny_config, overrides), tmp_path / "whole")

    class Crash(Exception):
        pass

    class CrashingReporter(train_mod.SilentReporter):
        steps = 0

        def step(self, tokens, loss, lr):
            self.steps += 1
            if self.steps == 150:  # mid second epoch, not on a checkpoint step
                raise Crash

    with pytest.raises(Crash):
        train_mod.run(load_config(tiny_config, overrides), tmp_path / "cut", reporter=CrashingReporter())
    train_mod.run(load_config(tiny_config, overrides), tmp_path / "cut", resume=True)
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "cut"))


def test_init_and_one_plain_sgd_step(tiny_config, tmp_path):
    """--init A --set train.max_steps=1 gives exactly one update θ − lr·∇θJ from A's weights."""
    base = tmp_path / "base"
    train_mod.run(load_config(tiny_config), base)
    config = load_config(tiny_config, ["train.max_steps=1", "train.lr=1", "train.clip_norm=null",
                                       "train.batch_size=1"])
    summary = train_mod.run(config, tmp_path / "one", init_dir=base)
    assert summary["steps"] == 1
    start = weights(base)
    cfg, vocab, _ = modeldir.load_model(base)
    from rnnlm_cli import data
    ids, _ = data.encode_file(config.data.train, vocab, "whitespace")
    streams = data.batchify(ids, 1)
    inputs, targets = next(data.iter_windows(streams, config.train.bptt))
    params = {k: v.copy() for k, v in start.items()}
    _, grads, _ = model.loss_and_grads(params, cfg.model, inputs, targets, model.init_state(cfg.model, 1))
    optim.sgd_update(params, grads, 1.0)
    assert_same_arrays(params, weights(tmp_path / "one"))
    assert (tmp_path / "one" / "vocab.txt").read_text() == (base / "vocab.txt").read_text()


def test_max_steps_keeps_the_last_weights_and_resume_extends_it(tiny_config, tmp_path):
    out = tmp_path / "m"
    train_mod.run(load_config(tiny_config, ["train.max_steps=5"]), out)
    after_5 = weights(out)
    current = {k[len("param."):]: v for k, v in weights(out, "checkpoint.npz").items() if k.startswith("param.")}
    assert_same_arrays(after_5, current)
    summary = train_mod.run(load_config(tiny_config, ["train.max_steps=9"]), out, resume=True)
    assert summary["steps"] == 9
    straight = tmp_path / "s"
    train_mod.run(load_config(tiny_config, ["train.max_steps=9"]), straight)
    assert_same_arrays(weights(out), weights(straight))


def test_halving_schedule_halves_then_stops(tiny_config, tmp_path):
    """Mikolov's schedule: once an epoch improves valid log-likelihood by less than the factor,
    the rate halves every epoch; the next such epoch ends training."""
    import json
    out = tmp_path / "h"
    summary = train_mod.run(load_config(tiny_config, ["train.epochs=6", "train.min_improvement=1.5"]), out)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [e["lr"] for e in epochs if e["event"] == "epoch"]
    assert lrs == [1.0, 1.0, 0.5]  # epoch 2 gains < ×1.5: halve from then on; epoch 3 too: stop
    assert summary["stop_reason"] == "valid perplexity stopped improving"


def test_adam_on_sparse_gradients_equals_dense_adam():
    """The in-place, sparse-aware Adam is Adam: same result as the textbook update on dense grads."""
    from rnnlm_cli.layers import ColumnBlocks, SparseRows
    rng = np.random.default_rng(0)
    params = {"e": rng.normal(size=(6, 3)), "w": rng.normal(size=(3, 8)), "b": rng.normal(size=4)}
    state = optim.adam_init(params)
    ref_p = {k: v.copy() for k, v in params.items()}
    ref_m = {k: np.zeros_like(v) for k, v in params.items()}
    ref_v = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(1, 4):
        grads = {"e": SparseRows(np.array([1, 4]), rng.normal(size=(2, 3)), (6, 3)),
                 "w": ColumnBlocks([(0, 2), (5, 8)], [rng.normal(size=(3, 2)), rng.normal(size=(3, 3))], (3, 8)),
                 "b": rng.normal(size=4)}
        dense = {k: (g.dense() if hasattr(g, "dense") else g.copy()) for k, g in grads.items()}
        optim.adam_update(params, grads, state, 0.01)
        for k, g in dense.items():
            ref_m[k] = 0.9 * ref_m[k] + 0.1 * g
            ref_v[k] = 0.999 * ref_v[k] + 0.001 * g * g
            m_hat, v_hat = ref_m[k] / (1 - 0.9 ** t), ref_v[k] / (1 - 0.999 ** t)
            ref_p[k] -= 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8 / np.sqrt(1 - 0.999 ** t))  # Kingma & Ba, "efficient" ε
    for k in params:
        np.testing.assert_allclose(params[k], ref_p[k], rtol=1e-10, atol=1e-12)


def test_lazy_adam_updates_only_the_rows_a_window_touched():
    """lazy_adam: a touched row (column) has its moments decayed and updated and its weight moved
    with Adam's bias-corrected step; an untouched one keeps weight and moments (Adam's momentum
    would move it); dense arrays are exactly Adam's."""
    from rnnlm_cli.layers import ColumnBlocks, SparseRows
    rng = np.random.default_rng(1)
    params = {"e": rng.normal(size=(6, 3)), "w": rng.normal(size=(3, 8)), "b": rng.normal(size=4)}
    lazy, dense = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
    s_lazy, s_dense = optim.adam_init(lazy), optim.adam_init(dense)
    ref_p, ref_m, ref_v = params["e"].copy(), np.zeros((6, 3)), np.zeros((6, 3))
    for t, rows in enumerate(([1, 4], [4], [0, 4]), start=1):
        g_rows, g_b, g_w = rng.normal(size=(len(rows), 3)), rng.normal(size=4), rng.normal(size=(3, 2))
        g1 = g_rows if t == 1 else g1
        for p, s, flag in ((lazy, s_lazy, True), (dense, s_dense, False)):
            grads = {"e": SparseRows(np.array(rows), g_rows.copy(), (6, 3)), "b": g_b.copy(),
                     "w": ColumnBlocks([(2, 4)], [g_w.copy()], (3, 8))}
            optim.adam_update(p, grads, s, 0.01, lazy=flag)
        ref_m[rows] = 0.9 * ref_m[rows] + 0.1 * g_rows
        ref_v[rows] = 0.999 * ref_v[rows] + 0.001 * g_rows ** 2
        step = 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        ref_p[rows] -= step * ref_m[rows] / (np.sqrt(ref_v[rows]) + 1e-8)
    np.testing.assert_allclose(lazy["e"], ref_p, rtol=1e-12)
    assert np.array_equal(lazy["e"][[2, 3, 5]], params["e"][[2, 3, 5]])  # never touched: never moved
    assert np.array_equal(s_lazy["adam.m.e"][1], (1 - 0.9) * g1[0])  # row 1, touched at step 1 only, kept its moment
    assert not np.allclose(lazy["e"][1], dense["e"][1])  # which Adam goes on applying at steps 2 and 3
    assert np.array_equal(lazy["b"], dense["b"])  # a dense gradient: Adam exactly
    assert np.array_equal(lazy["w"][:, [0, 1, 4, 5, 6, 7]], params["w"][:, [0, 1, 4, 5, 6, 7]])
    assert np.array_equal(lazy["w"][:, 2:4], dense["w"][:, 2:4])  # always touched: the same as Adam


def test_lazy_adam_trains_and_resumes(tiny_config, tmp_path, run_cli):
    """A run with lazy_adam keeps Adam's state in its checkpoint and resumes bit for bit."""
    overrides = ["train.epochs=2", "train.optimizer=lazy_adam", "train.lr=0.01", "model.output=hsm"]
    summary = train_mod.run(load_config(tiny_config, overrides), tmp_path / "whole")
    assert summary["valid_ppl"] < summary["unigram_valid_ppl"]
    calls = {"n": 0}

    def stop_at_step_30():
        calls["n"] += 1
        return signal.SIGINT if calls["n"] == 30 else None

    with pytest.raises(train_mod.Interrupted):
        train_mod.run(load_config(tiny_config, overrides), tmp_path / "cut", should_stop=stop_at_step_30)
    code, _, err = run_cli("train", "--out", tmp_path / "cut", "--resume", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
