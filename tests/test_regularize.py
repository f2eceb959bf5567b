"""The regularizers and weight averaging (docs/regularization.md): every gradient checked in float64 with
the masks held fixed (each key × cell × output kind), the masks' structure, weight decay of
untouched rows, the running mean, resume during averaging, and the keys from a config file and
the command line."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import assert_same_arrays, interrupted_run, weights

from rnnlm_cli import average, gradcheck, layers, model, optim, regularize, train
from rnnlm_cli.config import ModelConfig, TrainConfig, load_config

KEYS = {  # one regularizer at a time: (model keys, ar/tar/weight_decay)
    "dropout_input": (dict(dropout_input=0.4), {}),
    "dropout_between": (dict(dropout_between=0.4, layers=2), {}),
    "dropout_locked": (dict(dropout=0.4, dropout_locked=True, layers=2), {}),
    "dropout_embedding": (dict(dropout_embedding=0.4), {}),
    "weight_drop": (dict(weight_drop=0.4, layers=2), {}),
    "ar": (dict(dropout=0.3), dict(ar=2.0)),
    "tar": (dict(layers=2), dict(tar=1.5)),
    "weight_decay": ({}, dict(weight_decay=0.05)),
}
OUTPUTS = [("softmax", False), ("softmax", True), ("class", True), ("hsm", False)]


@pytest.mark.parametrize("output,tied", OUTPUTS)
@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("key", list(KEYS))
def test_gradient_of_each_regularizer(key, cell, output, tied):
    model_keys, objective = KEYS[key]
    m = ModelConfig(cell=cell, embedding_dim=6, hidden_dim=6, output=output, tie_weights=tied, **model_keys)
    results = gradcheck.check_model(m, vocab_size=11, batch_size=3, bptt=4, samples=20, **objective)
    worst = max(err for _, err, _ in results)
    assert worst < gradcheck.TOLERANCE, results


def test_all_together_and_with_sentence_resets():
    m = ModelConfig(cell="lstm", layers=2, embedding_dim=6, hidden_dim=6, tie_weights=True, output="class",
                    dropout=0.3, dropout_input=0.2, dropout_between=0.1, dropout_locked=True, dropout_embedding=0.3,
                    weight_drop=0.4)
    results = gradcheck.check_model(m, 11, 3, 5, samples=25, resets=True, ar=2.0, tar=1.0, weight_decay=0.01)
    assert max(err for _, err, _ in results) < gradcheck.TOLERANCE, results


@pytest.mark.parametrize("plant", ["tar", "ar", "weight_drop", "dropout"])
def test_a_planted_error_fails_the_check(plant, monkeypatch):
    """The check can fail: each regularizer's backward, made wrong, is caught."""
    m = ModelConfig(cell="lstm", embedding_dim=6, hidden_dim=6, weight_drop=0.4, dropout=0.4, dropout_locked=True)
    if plant == "tar":
        real = regularize.tar_backward
        monkeypatch.setattr(regularize, "tar_backward", lambda d, r, c: real(d, r, 1.2 * c))
    elif plant == "ar":
        real = regularize.ar_backward
        monkeypatch.setattr(regularize, "ar_backward", lambda d, x, c: real(d, x, 0.8 * c))
    elif plant == "weight_drop":
        monkeypatch.setattr(regularize, "undrop_weight_grads", lambda grads, masks, n: None)
    else:  # the backward forgets the locked mask
        monkeypatch.setattr(regularize, "dropout_backward", lambda dout, mask: dout)
    results = gradcheck.check_model(m, 11, 3, 4, samples=20, ar=2.0, tar=1.0)
    assert max(err for _, err, _ in results) > 1e-4


def test_masks_have_the_structure_the_keys_promise():
    m = ModelConfig(cell="gru", layers=3, embedding_dim=5, hidden_dim=7, dropout=0.5, dropout_input=0.3,
                    dropout_between=0.4, dropout_locked=True, dropout_embedding=0.5, weight_drop=0.5)
    masks = regularize.draw_masks(np.random.default_rng(0), m, 9, 4, 50, "float32")
    assert masks["input"].shape == (1, 4, 5) and masks["output"].shape == (1, 4, 7)  # one per stream per window
    assert [k for k in masks if k.startswith("between")] == ["between.0", "between.1"]
    assert masks["weight.2"].shape == (7, 21) and masks["embedding"].shape == (50,)
    for name, p in (("input", 0.3), ("between.0", 0.4), ("output", 0.5), ("embedding", 0.5), ("weight.0", 0.5)):
        assert set(np.unique(masks[name])) <= {0.0, np.float32(1 / (1 - p))}, name
    ids = np.array([[3, 3, 4], [4, 3, 3]])  # (T, N): every occurrence of a word has its word's scale
    scales = regularize.embedding_scales(ids, masks["embedding"])[..., 0]
    assert np.all(scales[ids == 3] == masks["embedding"][3]) and np.all(scales[ids == 4] == masks["embedding"][4])
    block = regularize.stream_block(masks, 1, 3)
    assert block["input"].shape == (1, 2, 5) and block["weight.0"] is masks["weight.0"]
    assert regularize.draw_masks(np.random.default_rng(0), ModelConfig(), 9, 4, 50, "float32") is None


def test_plain_dropout_draws_what_it_drew_before_the_new_keys():
    """The masks of a config with model.dropout only are the generator's draws of old: one
    (T, N, D) uniform array per place, in forward order, kept where >= p."""
    m = ModelConfig(cell="lstm", layers=2, embedding_dim=5, hidden_dim=7, dropout=0.3)
    masks = regularize.draw_masks(np.random.default_rng(4), m, 6, 3, 40, "float32")
    rng = np.random.default_rng(4)
    for name, width in (("input", 5), ("between.0", 7), ("output", 7)):
        want = (rng.random((6, 3, width), dtype=np.float32) >= 0.3).astype(np.float32) * np.float32(1 / 0.7)
        assert np.array_equal(masks[name], want), name
    assert list(masks) == ["input", "between.0", "output"]


def test_ar_and_tar_change_the_gradient_not_the_reported_loss():
    m = ModelConfig(cell="lstm", embedding_dim=6, hidden_dim=6, dropout=0.3)
    params, inputs, targets, state = gradcheck.random_problem(m, 11, 3, 5, seed=2)
    masks = regularize.draw_masks(np.random.default_rng(1), m, 5, 3, 11, "float64")
    plain, g_plain, _ = model.loss_and_grads(params, m, inputs, targets, state.copy(), masks)
    loss, g_reg, _ = model.loss_and_grads(params, m, inputs, targets, state.copy(), masks, ar=2.0, tar=1.0)
    assert loss == plain
    assert not np.allclose(g_plain["rnn.0.W_h"], g_reg["rnn.0.W_h"])


def test_weight_decay_reaches_rows_the_window_did_not_touch():
    """Every row decays every step (dense), also the embedding rows and hsm/class columns that a
    sparse gradient leaves out: one SGD step gives θ − lr (g + λθ) everywhere."""
    params = {"embedding": np.arange(12, dtype=np.float64).reshape(6, 2)}
    grads = {"embedding": layers.SparseRows(np.array([1, 4]), np.ones((2, 2)), (6, 2))}
    tc = TrainConfig(clip_norm=None, weight_decay=0.1)
    before = params["embedding"].copy()
    train.apply_gradient(params, grads, optim.init_state("sgd", params), 0.5, tc)
    want = before - 0.5 * (grads["embedding"].dense() + 0.1 * before)
    np.testing.assert_allclose(params["embedding"], want, rtol=0, atol=1e-15)
    assert params["embedding"][0, 1] != before[0, 1]  # row 0 was not in the window and decayed


def test_the_average_is_the_mean_of_the_weights_after_each_update(tiny_config, tmp_path, monkeypatch):
    """weights.npz after an epoch of averaging = the mean of the weights after each of its
    updates, computed here from copies taken after every update."""
    after = []
    real = train.apply_gradient

    def recording(params, grads, opt_state, lr, tc, workspace=None):
        norm = real(params, grads, opt_state, lr, tc, workspace)
        after.append({k: v.copy() for k, v in params.items()})
        return norm
    monkeypatch.setattr(train, "apply_gradient", recording)
    config = load_config(tiny_config, ["train.epochs=2", "train.average=2", "train.dtype=float64",
                                       "train.schedule=constant", "model.dropout=0.2"])
    train.run(config, tmp_path / "avg")
    per_epoch = len(after) // 2
    kept = weights(tmp_path / "avg")
    for key in ("embedding", "rnn.0.W_h", "output.W"):
        mean = np.mean([a[key] for a in after[per_epoch:]], axis=0)
        np.testing.assert_allclose(kept[key], mean, rtol=1e-10, atol=1e-13)
        assert not np.allclose(kept[key], after[-1][key])  # not the last weights
    events = [json.loads(x) for x in (tmp_path / "avg" / "metrics.jsonl").read_text().splitlines()]
    start = [e for e in events if e["event"] == "average"]
    assert len(start) == 1 and start[0]["epoch"] == 2 and start[0]["step"] == per_epoch


def test_resume_during_averaging_is_bit_exact(tiny_config, tmp_path, run_cli):
    sets = ["train.epochs=3", "train.average=2", "model.dropout=0.2", "model.weight_drop=0.3",
            "model.dropout_locked=true", "model.dropout_embedding=0.1", "train.ar=1", "train.tar=1",
            "train.weight_decay=1e-4", "model.cell=lstm"]
    train.run(load_config(tiny_config, sets), tmp_path / "whole")
    interrupted_run(tiny_config, tmp_path / "cut", overrides=sets, at_call=160)  # in epoch 2, averaging
    progress = json.loads((tmp_path / "cut" / "info.json").read_text())
    assert progress["status"] == "interrupted" and progress["epoch"] == 2
    code, _, err = run_cli("train", tiny_config, *[a for s in sets for a in ("--set", s)],
                           "--out", tmp_path / "cut", "--resume", "-q")
    assert code == 0, err
    assert_same_arrays(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
    whole, cut = (weights(tmp_path / name, "checkpoint.npz") for name in ("whole", "cut"))
    assert any(k.startswith("avg.") for k in whole)  # the average, the raw weights, the optimizer: all equal
    assert_same_arrays({k: v for k, v in whole.items() if k != "meta"}, {k: v for k, v in cut.items() if k != "meta"})


def test_auto_starts_after_a_non_improving_epoch():
    tc = TrainConfig(average="auto", nonmono=2)
    progress = type("P", (), {"average_from": None, "history": []})()
    progress.history = [{"valid_ppl": v} for v in (300.0, 200.0, 150.0, 140.0)]
    assert not average.auto_trigger(tc, progress, 139.0)  # better than the best before the last two
    assert average.auto_trigger(tc, progress, 201.0)  # worse than 200, the best before the last two
    progress.history = progress.history[:2]
    assert not average.auto_trigger(tc, progress, 500.0)  # not more than nonmono epochs yet
    assert not average.auto_trigger(TrainConfig(average=3), progress, 500.0)


def test_auto_from_the_command_line_records_where_it_began(tiny_config, tmp_path, run_cli):
    code, out, err = run_cli("train", tiny_config, "--set", "train.epochs=4", "--set", "train.average=auto",
                             "--set", "train.nonmono=1", "--set", "train.lr=30", "--set", "train.schedule=constant",
                             "--out", tmp_path / "r", "-q")
    assert code == 0, err
    events = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    began = [e for e in events if e["event"] == "average"]
    if began:  # the trigger: an epoch worse than the best before the last one
        e = began[0]["epoch"]
        ppl = [x["valid_ppl"] for x in epochs]
        assert ppl[e - 2] > min(ppl[:e - 2])
        code, out, _ = run_cli("info", tmp_path / "r")
        assert f"weights averaged from epoch {e}" in out
    else:
        ppl = [x["valid_ppl"] for x in epochs]
        assert all(ppl[i] <= min(ppl[:i]) for i in range(2, len(ppl)))


def test_gradcheck_command_with_the_new_keys(run_cli):
    code, out, err = run_cli("gradcheck", "--set", "model.cell=lstm", "--set", "model.layers=2",
                             "--set", "model.weight_drop=0.3", "--set", "model.dropout_locked=true",
                             "--set", "model.dropout=0.4", "--set", "model.dropout_embedding=0.2",
                             "--set", "train.ar=2", "--set", "train.tar=1", "--set", "train.weight_decay=0.01",
                             "--hidden-dim", "6", "--embedding-dim", "6", "--samples", "10")
    assert code == 0, out + err
    assert "weight_drop 0.3" in out and "locked" in out and "passed" in out


@pytest.mark.parametrize("setting,fragment", [
    ("train.average=sometimes", "train.average"), ("model.weight_drop=1.5", "model.weight_drop"),
    ("train.ar=-1", "train.ar"), ("model.dropout_locked=maybe", "model.dropout_locked"),
    ("train.nonmono=0", "train.nonmono")])
def test_bad_values_are_one_line(tiny_config, tmp_path, run_cli, setting, fragment):
    code, _, err = run_cli("train", tiny_config, "--set", setting, "--out", tmp_path / "r")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_keys_from_a_config_file(tiny_config, tmp_path, run_cli):
    """Every new key from a YAML file: the run uses them (info, card) and they are saved."""
    text = tiny_config.read_text().replace("model:\n", "model:\n  dropout_locked: true\n  weight_drop: 0.2\n"
                                           "  dropout: 0.2\n  dropout_input: 0.1\n  dropout_between: 0.3\n"
                                           "  dropout_embedding: 0.05\n  layers: 2\n")
    text = text.replace("train:\n", "train:\n  average: 2\n  ar: 1.0\n  tar: 0.5\n  weight_decay: 1.0e-5\n"
                                     "  nonmono: 3\n")
    path = tmp_path / "awd.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run_cli("train", path, "--set", "train.epochs=2", "--out", tmp_path / "r", "-q")
    assert code == 0, err
    code, out, _ = run_cli("info", tmp_path / "r")
    assert "weight drop 0.2" in out and "locked" in out and "averaging from epoch 2" in out
    assert "input 0.1" in out and "between 0.3" in out and "embedding dropout 0.05" in out
    assert "ar 1" in out and "tar 0.5" in out and "weight decay 1e-05" in out
    assert "weights averaged from epoch 2" in out
    assert "averaged from epoch 2" in (tmp_path / "r" / "README.md").read_text()
    saved = load_config(tmp_path / "r" / "config.yaml")
    assert (saved.model.dropout_embedding, saved.train.tar, saved.train.nonmono) == (0.05, 0.5, 3)


def test_evaluation_never_drops(tiny_model):
    """A model trained with every regularizer evaluates deterministically: no masks at eval."""
    m = dataclasses.replace(ModelConfig(cell="lstm", embedding_dim=6, hidden_dim=6), weight_drop=0.5,
                            dropout=0.5, dropout_embedding=0.5, dropout_locked=True)
    params, inputs, targets, state = gradcheck.random_problem(m, 11, 2, 4, seed=5)
    a = model.forward(params, m, inputs, targets, state.copy(), need_grad=False)[0]
    b = model.forward(params, dataclasses.replace(m, weight_drop=0.0, dropout=0.0, dropout_embedding=0.0),
                      inputs, targets, state.copy(), need_grad=False)[0]
    assert a == b
