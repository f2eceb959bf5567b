"""Dynamic evaluation (dynamic.py): the sgd and rms rules against plain float64 references, the
statistics of the rms rule, the lazy decay of sparse arrays, `--dynamic 0` = static, the sgd
rule's figures unchanged, and the options through `eval`, `score --carry` and the Python API."""

import copy
import json
import shutil

import numpy as np
import pytest

import rnnlm_cli
from conftest import assert_clean_error, files
from rnnlm_cli import data, dynamic, evaluate, layers, model, optim, output, parallel
from rnnlm_cli.config import Config, ModelConfig
from rnnlm_cli.vocab import coverage, vocab_from_tokens

# every cell and output kind at least once, tied and untied
KINDS = [("elman", "softmax", False), ("lstm", "class", False), ("gru", "hsm", False),
         ("lstm", "softmax", True), ("gru", "class", True), ("elman", "hsm", False)]


def _model(cell, output_kind, tie=False, V=15, seed=0):
    """(config, vocab, params) of a random float64 model (2 layers, 4 classes)."""
    config = Config()
    E = 6 if tie else 5
    config.model = ModelConfig(cell=cell, output=output_kind, embedding_dim=E, hidden_dim=6, classes=4, layers=2,
                               tie_weights=tie)
    config.train.bptt = 4
    config.train.clip_norm = 0.5
    vocab = vocab_from_tokens(["<unk>", "<eos>"] + [f"w{i}" for i in range(V - 2)])
    rng = np.random.default_rng(seed)
    params = model.init_params(config.model, V, seed, "float64")
    for key in model.trainable(params, config.model):
        params[key] = params[key] + rng.normal(0, 0.3, params[key].shape)
    return config, vocab, params


def _dense(g):
    return g.dense() if hasattr(g, "dense") else g


def _dense_grads(params, model_cfg, inputs, targets, state):
    """(dense float64 gradients of the window's mean cross-entropy, log P of each target, new state)."""
    rows = np.empty(targets.shape)
    _, state, cache = model.forward(params, model_cfg, inputs, targets, state, row_loss=rows)
    return {k: _dense(g) for k, g in model.backward(cache).items()}, -rows.reshape(-1), state


def _random_ms(params, model_cfg, seed=1):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(0.0, 0.2, params[k].shape) for k in model.trainable(params, model_cfg)}


def _reference_step(theta, theta0, g, rule, lr, decay, ms=None, eps=None, clip_norm=None):
    """The rule as written, over every entry of every array, in float64."""
    if rule == "sgd":
        norm = np.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
        scale = clip_norm / (norm + 1e-6) if clip_norm is not None and norm > clip_norm else 1.0
        return {k: theta[k] - lr * scale * g[k] + decay * (theta0[k] - theta[k]) for k in g}
    mean = np.mean([ms[k].mean() for k in ms])
    r = {k: np.minimum(ms[k] / mean, 1.0 / decay) if decay else ms[k] / mean for k in ms}
    return {k: theta[k] - lr * g[k] / (ms[k] + eps) + decay * r[k] * (theta0[k] - theta[k]) for k in g}


def _plan(rule, lr, segment, decay=0.0, ms=None, eps=1e-3, clip_norm=None):
    return dynamic.Plan(dynamic.Settings(lr, rule=rule, segment=segment, decay=decay, epsilon=eps), clip_norm, ms)


def _adapted(state):
    """The adapted weights of a running adaptation, up to date, without changing it."""
    return dynamic.current(copy.deepcopy(state))


# --------------------------------------------------------------------------------------------
# The rules, entry by entry


@pytest.mark.parametrize("cell, kind, tie", KINDS)
@pytest.mark.parametrize("rule", ["rms", "sgd"])
def test_one_update_equals_the_rule_written_out(cell, kind, tie, rule):
    config, vocab, theta0 = _model(cell, kind, tie)
    ms = _random_ms(theta0, config.model)
    plan = _plan(rule, 0.05, 5, decay=0.3, ms=ms, clip_norm=0.5)
    state = dynamic.start(theta0, config.model, plan)
    rng = np.random.default_rng(3)
    for key in ms:  # adapted weights away from θ₀, so that the pull back is not zero
        state["params"][key] += rng.normal(0, 0.1, theta0[key].shape)
    theta = {k: v.copy() for k, v in state["params"].items()}
    ids = rng.integers(0, 15, (1, 6))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    h0 = model.init_state(config.model, 1, "float64")
    g, _, _ = _dense_grads(theta, config.model, inputs, targets, h0)
    expected = _reference_step(theta, theta0, g, rule, 0.05, 0.3, ms, 1e-3, 0.5)

    dynamic.refresh(state, inputs, targets)
    _, _, cache = model.forward(state["params"], config.model, inputs, targets, h0)
    dense_state = copy.deepcopy(state)
    grads = dynamic.gradient(state, cache)  # the forms the reader uses (factored, sparse) ...
    dense = model.backward(cache, sparse_embedding=True)  # ... and training's (dense matrices)
    dynamic.update(state, grads)
    dynamic.update(dense_state, dense)
    for got in (dynamic.current(state), dynamic.current(dense_state)):
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-13, err_msg=key)
        for key in set(theta0) - set(expected):  # the output layer's buffers
            assert np.array_equal(got[key], theta0[key])


@pytest.mark.parametrize("cell, kind, tie", KINDS)
def test_the_readers_gradient_forms_hold_the_dense_gradient(cell, kind, tie):
    """dynamic.gradient's forms (recurrent matrices factored, a tied embedding's rows) hold the
    dense gradient, and global_norm (the sgd rule's clipping) is its norm."""
    config, vocab, params = _model(cell, kind, tie)
    ids = np.random.default_rng(6).integers(0, 15, (2, 8))  # two streams: the factors have T·N rows
    h0 = model.init_state(config.model, 2, "float64")
    _, _, cache = model.forward(params, config.model, ids[:, :-1], ids[:, 1:], h0)
    dense = {k: _dense(g) for k, g in model.backward(cache).items()}
    state = dynamic.start(params, config.model, _plan("rms", 0.1, 7, ms=_random_ms(params, config.model)))
    forms = dynamic.gradient(state, cache)
    assert set(forms) == set(dense)
    assert all(isinstance(forms[f"rnn.{l}.{w}"], layers.Outer) for l in range(2) for w in ("W_x", "W_h"))
    if tie and kind == "class":
        assert isinstance(forms["embedding"], layers.RowBlocks)
        assert np.array_equal(forms["embedding"].dense(), dense["embedding"])  # the same sums, exactly
    for key in dense:
        np.testing.assert_allclose(_dense(forms[key]), dense[key], rtol=1e-12, atol=1e-15, err_msg=key)
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in dense.values()))
    assert dynamic.global_norm(forms) == pytest.approx(norm, rel=1e-12)
    left, right = np.random.default_rng(1).normal(size=(2, 3, 40)), np.random.default_rng(2).normal(size=(3, 50))
    for factor in left:  # thin factors: the norm from the M × M products, not the (40, 50) product
        thin = {"w": layers.Outer(factor, right, (40, 50)), "b": right[0].copy()}
        expected = np.sqrt(np.sum((factor.T @ right) ** 2) + np.sum(right[0] ** 2))
        assert dynamic.global_norm(thin) == pytest.approx(expected, rel=1e-12)


def test_decay_rates_are_clipped_to_one_over_lambda():
    ms = {"a": np.array([0.0, 1.0, 3.0]), "b": np.array([[2.0, 2.0]])}  # array means 4/3 and 2: mean 5/3
    r = dynamic.decay_rates(ms, 0.4)
    np.testing.assert_allclose(r["a"], [0.0, 0.6, 1.8])
    np.testing.assert_allclose(r["b"], [[1.2, 1.2]])
    np.testing.assert_allclose(dynamic.decay_rates(ms, 0.8)["a"], [0.0, 0.6, 1.25])


@pytest.mark.parametrize("cell, kind, tie", KINDS)
def test_rms_statistics_equal_a_plain_reference(cell, kind, tie):
    config, vocab, params = _model(cell, kind, tie)
    ids = np.random.default_rng(5).integers(0, 15, 24)  # 23 targets: windows of 5, the last of 3
    got, windows = dynamic.rms_statistics(params, config.model, ids, 5)
    squares, state, count = {}, model.init_state(config.model, 1, "float64"), 0
    for start in range(0, 23, 5):
        window = ids[start:start + 6]
        g, _, state = _dense_grads(params, config.model, window[None, :-1], window[None, 1:], state)
        for k, v in g.items():
            squares[k] = squares.get(k, 0.0) + v * v
        count += 1
    assert windows == count == 5
    assert set(got) == set(squares) == set(model.trainable(params, config.model))
    for k in squares:
        np.testing.assert_allclose(got[k], np.sqrt(squares[k] / count), rtol=1e-12, atol=1e-15, err_msg=k)


# --------------------------------------------------------------------------------------------
# Sparse arrays: lazy decay = the dense computation


def _stream_with_rows_left_alone():
    """Segments of 4 that use words 2-6, then only 7-11 for three segments, then 2-6 again: rows
    (and classes, and hsm nodes) touched, left alone for several updates, then read again."""
    rng = np.random.default_rng(7)
    parts = [rng.integers(2, 7, 8), rng.integers(7, 12, 12), rng.integers(2, 7, 8), rng.integers(0, 15, 5)]
    return np.concatenate([[1]] + parts)


@pytest.mark.parametrize("cell, kind, tie", KINDS)
@pytest.mark.parametrize("rule", ["rms", "sgd"])
def test_lazy_decay_of_sparse_rows_equals_the_dense_computation(cell, kind, tie, rule):
    config, vocab, theta0 = _model(cell, kind, tie)
    ids = _stream_with_rows_left_alone()
    ms = _random_ms(theta0, config.model)
    plan = _plan(rule, 0.05, 4, decay=0.2, ms=ms, clip_norm=0.5)
    # the dense reference: every entry of every array, every segment
    theta = {k: v.copy() for k, v in theta0.items()}
    h, expected_logp, expected_after = model.init_state(config.model, 1, "float64"), [], []
    for start in range(0, len(ids) - 1, 4):
        window = ids[start:start + 5]
        g, logp, h = _dense_grads(theta, config.model, window[None, :-1], window[None, 1:], h)
        expected_logp.append(logp)
        theta.update(_reference_step(theta, theta0, g, rule, 0.05, 0.2, ms, 1e-3, 0.5))
        expected_after.append({k: v.copy() for k, v in theta.items()})
    # the lazy one, update by update
    state = dynamic.start(theta0, config.model, plan)
    # the embedding's rows are decayed lazily unless tied to a dense word matrix (the softmax's)
    assert set(state["lazy"]) == ({"embedding"} if not tie or kind == "class" else set()) | set(
        output.sparse_axes(config.model))
    h = model.init_state(config.model, 1, "float64")
    for k, (inputs, targets) in enumerate(data.iter_windows(ids[None, :], 4)):
        dynamic.refresh(state, inputs, targets)
        rows = np.empty(targets.shape)
        _, h, cache = model.forward(state["params"], config.model, inputs, targets, h, row_loss=rows)
        np.testing.assert_allclose(-rows.reshape(-1), expected_logp[k], rtol=1e-12)
        dynamic.update(state, dynamic.gradient(state, cache))
        after = _adapted(state)
        for key in expected_after[k]:
            np.testing.assert_allclose(after[key], expected_after[k][key], rtol=1e-11, atol=1e-13, err_msg=key)
    # some rows really were left alone (and so decayed lazily), and the reader gives the same figures
    if state["lazy"]:
        assert any((state["stamp"][key] < state["n"]).any() & (state["stamp"][key] > 0).any()
                   for key in state["stamp"])
    got = evaluate.stream_log_probs(theta0, config.model, ids, 99, 1, None, plan)
    np.testing.assert_allclose(got, np.concatenate(expected_logp), rtol=1e-12)


@pytest.mark.parametrize("rule", ["rms", "sgd"])
def test_small_blocks_on_two_threads_give_the_same_figures(rule, monkeypatch):
    """The fused step of the factored matrices formed a row at a time, every step split over
    two threads, the lazy decay's catch-up on runs of one id: the figures of the plain reading."""
    config, vocab, theta0 = _model("lstm", "class", True)
    ids = _stream_with_rows_left_alone()
    plan = _plan(rule, 0.05, 4, decay=0.2, ms=_random_ms(theta0, config.model), clip_norm=0.5)
    whole = evaluate.stream_log_probs(theta0, config.model, ids, 99, 1, None, plan)
    monkeypatch.setattr(dynamic, "FUSED_BLOCK", 30)  # one row of a (6, 24) matrix a block
    monkeypatch.setattr(dynamic, "RUN", 1)  # views of runs, however short
    monkeypatch.setattr(parallel, "MIN_BLOCK", 4)
    monkeypatch.setattr(dynamic, "SPLIT", 4)
    monkeypatch.setattr(parallel, "_workers", 2)
    np.testing.assert_allclose(evaluate.stream_log_probs(theta0, config.model, ids, 99, 1, None, plan), whole,
                               rtol=1e-12)


def test_without_decay_only_the_touched_rows_change():
    config, vocab, theta0 = _model("lstm", "hsm")
    state = dynamic.start(theta0, config.model, _plan("rms", 0.05, 4, ms=_random_ms(theta0, config.model)))
    ids = np.array([[1, 3, 4, 3, 5]])
    _, _, cache = model.forward(state["params"], config.model, ids[:, :-1], ids[:, 1:],
                                model.init_state(config.model, 1, "float64"))
    dynamic.update(state, dynamic.gradient(state, cache))
    changed = np.flatnonzero((state["params"]["embedding"] != theta0["embedding"]).any(axis=1))
    assert list(changed) == [1, 3, 4] and state["lazy"] == {}


def test_the_callers_weights_are_never_written():
    config, vocab, theta0 = _model("gru", "class")
    before = {k: v.copy() for k, v in theta0.items()}
    ids = _stream_with_rows_left_alone()
    for rule in ("sgd", "rms"):
        evaluate.stream_log_probs(theta0, config.model, ids, 4, 1, None,
                                  _plan(rule, 0.1, 3, 0.1, _random_ms(theta0, config.model), clip_norm=1.0))
    assert all(np.array_equal(before[k], theta0[k]) for k in before)


# --------------------------------------------------------------------------------------------
# Static when LR is 0; the sgd rule as it always was


@pytest.mark.parametrize("cell, kind, tie", KINDS[:3])
def test_dynamic_zero_is_exactly_static(cell, kind, tie):
    config, vocab, params = _model(cell, kind, tie)
    ids = np.random.default_rng(2).integers(0, 15, 30)
    static = evaluate.stream_log_probs(params, config.model, ids, 4)
    for rule in ("sgd", "rms"):
        zero = _plan(rule, 0.0, 3, decay=0.5, ms=_random_ms(params, config.model))
        assert np.array_equal(evaluate.stream_log_probs(params, config.model, ids, 4, 1, None, zero), static)
        settings = dynamic.Settings(0.0, rule=rule)
        assert evaluate.dynamic_plan(config, vocab, params, settings) is None  # nothing read, nothing adapted
    assert np.array_equal(evaluate.stream_log_probs(params, config.model, ids, 4, 1, None, 0.0), static)


def _todays_dynamic_evaluation(params, model_cfg, ids, bptt, batch_size, lr, clip_norm):
    """stream_log_probs's dynamic evaluation as it was before the rms rule (commit ce8c8ec)."""
    import dataclasses
    model_cfg = dataclasses.replace(model_cfg, loss="cross_entropy")
    logp = np.full(len(ids) - 1, np.nan)
    streams, index = evaluate._streams(ids, batch_size, None)
    params = {k: v.copy() for k, v in params.items()}
    state = model.init_state(model_cfg, streams.shape[0], params["embedding"].dtype)
    workspace, start = {}, 0
    for inputs, targets in data.iter_windows(streams, bptt):
        rows = np.empty(targets.shape)
        _, state, cache = model.forward(params, model_cfg, inputs, targets, state, need_grad=True,
                                        workspace=workspace, row_loss=rows)
        where = index[:, start:start + targets.shape[1]]
        logp[where[where >= 0]] = -rows[where >= 0]
        start += targets.shape[1]
        grads = model.backward(cache, workspace, sparse_embedding=True)
        scale = optim.clip_factor(optim.global_norm(grads), clip_norm)
        optim.sgd_update(params, grads, lr * scale)
    return logp


@pytest.mark.parametrize("cell, kind, tie", KINDS)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_sgd_rule_gives_exactly_todays_figures(cell, kind, tie, batch_size):
    config, vocab, params = _model(cell, kind, tie)
    params = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in params.items()}
    ids = np.random.default_rng(4).integers(0, 15, 40)
    today = _todays_dynamic_evaluation(params, config.model, ids, 4, batch_size, 0.3, 0.5)
    plan = evaluate.dynamic_plan(config, vocab, params, dynamic.Settings(0.3))  # sgd, segment = train.bptt
    assert plan.settings.segment == 4 and plan.clip_norm == 0.5
    assert np.array_equal(evaluate.stream_log_probs(params, config.model, ids, 4, batch_size, None, plan), today,
                          equal_nan=True)
    assert np.array_equal(evaluate.stream_log_probs(params, config.model, ids, 4, batch_size, None, 0.3, 0.5), today,
                          equal_nan=True)
    # --dynamic-segment K: the same rule in windows of K
    seven = evaluate.dynamic_plan(config, vocab, params, dynamic.Settings(0.3, segment=7))
    assert np.array_equal(evaluate.stream_log_probs(params, config.model, ids, 4, batch_size, None, seven),
                          _todays_dynamic_evaluation(params, config.model, ids, 7, batch_size, 0.3, 0.5),
                          equal_nan=True)


# --------------------------------------------------------------------------------------------
# The statistics' text


def test_the_statistics_read_the_head_of_the_training_text(corpus):
    vocab, _, _ = coverage(corpus["train"])
    ids, _ = data.encode_file(corpus["train"], vocab, "whitespace")
    for n in (1, 7, 100, 10 ** 6):
        assert np.array_equal(data.encode_head([corpus["train"]], vocab, "whitespace", n), ids[:n])
    both = data.encode_head([corpus["valid"], corpus["test"]], vocab, "whitespace", 10 ** 6)
    valid, _ = data.encode_file(corpus["valid"], vocab, "whitespace")
    test, _ = data.encode_file(corpus["test"], vocab, "whitespace")
    assert np.array_equal(both, np.concatenate((valid, test[1:])))


# --------------------------------------------------------------------------------------------
# Through the commands and the API


RMS = ["--dynamic", "0.002", "--dynamic-rule", "rms", "--dynamic-segment", "5", "--dynamic-decay", "0.05",
       "--dynamic-stats", "2000"]


def test_eval_and_score_with_the_rms_rule(tiny_model, run_cli, tmp_path):
    model_dir, config_path = tiny_model
    before = files(model_dir)
    test = config_path.parent / "test.txt"
    repeated = tmp_path / "repeated.txt"
    repeated.write_text(test.read_text() * 4, encoding="utf-8")
    static = json.loads(run_cli("eval", model_dir, repeated, "--json")[1])
    code, out, err = run_cli("eval", model_dir, repeated, "--json", *RMS)
    assert code == 0, err
    adapted = json.loads(out)
    assert adapted["perplexity"] < static["perplexity"]  # it learns the text as it reads it
    assert {k: adapted[k] for k in adapted if k.startswith("dynamic")} == {
        "dynamic": 0.002, "dynamic_rule": "rms", "dynamic_segment": 5, "dynamic_decay": 0.05,
        "dynamic_epsilon": 2e-5, "dynamic_stats": 2000, "dynamic_stats_from": str(config_path.parent / "train.txt")}
    sgd = json.loads(run_cli("eval", model_dir, repeated, "--json", "--dynamic", "0.5")[1])
    assert sgd["dynamic_rule"] == "sgd" and sgd["dynamic_segment"] == 6 and sgd["dynamic_epsilon"] is None
    # score --carry: the lines' log-probs sum to eval's total; the API gives the same numbers
    code, out, err = run_cli("score", model_dir, repeated, "--carry", "--format", "json", *RMS)
    assert code == 0, err
    total = -sum(json.loads(line)["logprob"] for line in out.splitlines())
    assert total == pytest.approx(adapted["cross_entropy"] * adapted["targets"], rel=1e-9)
    lm = rnnlm_cli.load(model_dir)
    options = dict(dynamic=0.002, dynamic_rule="rms", dynamic_segment=5, dynamic_decay=0.05, dynamic_stats=2000)
    assert lm.evaluate(repeated, **options) == adapted
    lines = repeated.read_text().splitlines()
    assert [r["logprob"] for r in lm.score(lines, carry=True, **options)] == [
        json.loads(line)["logprob"] for line in out.splitlines()]
    other_lr = json.loads(run_cli("eval", model_dir, repeated, "--json", *RMS[2:], "--dynamic", "0.004")[1])
    assert lm.evaluate(repeated, **dict(options, dynamic=0.004)) == other_lr
    assert len(lm._plans) == 1  # the statistics, computed once, serve every learning rate
    # statistics from another text; LR 0 is the static figure, whatever the rule
    other = json.loads(run_cli("eval", model_dir, repeated, "--json", *RMS, "--dynamic-stats-from", test)[1])
    assert other["dynamic_stats_from"] == str(test) and other["dynamic_stats"] < 2000
    zero = json.loads(run_cli("eval", model_dir, repeated, "--json", "--dynamic", "0", "--dynamic-rule", "rms")[1])
    assert zero == static
    assert files(model_dir) == before  # the model directory is never modified


def test_missing_statistics_text_is_a_one_line_error(tiny_config, tmp_path, run_cli):
    out = tmp_path / "model"
    code, _, err = run_cli("train", tiny_config, "--set", "train.max_steps=2", "--out", out, "-q")
    assert code == 0, err
    test = tmp_path / "test.txt"
    code, _, err = run_cli("eval", out, test, *RMS, "--dynamic-stats-from", tmp_path / "nowhere.txt")
    assert_clean_error(code, err, 2, "--dynamic-stats-from", "nowhere.txt")
    (tmp_path / "train.txt").unlink()
    for command in (["eval", out, test], ["score", out, test, "--carry"]):
        code, _, err = run_cli(*command, *RMS)
        assert_clean_error(code, err, 2, "--dynamic-stats-from", "train.txt", "data.train")
    assert run_cli("eval", out, test, "--dynamic", "0.1")[0] == 0  # the sgd rule needs no statistics
    assert run_cli("eval", out, test, *RMS, "--dynamic-stats-from", test)[0] == 0


@pytest.mark.parametrize("args, fragment", [
    (["--dynamic-rule", "rms"], "--dynamic-rule: needs --dynamic LR"),
    (["--dynamic", "0.1", "--dynamic-decay", "2"], "--dynamic-decay"),
    (["--dynamic", "0.1", "--dynamic-segment", "0"], "--dynamic-segment"),
    (["--dynamic", "0.1", "--dynamic-rule", "adam"], "--dynamic-rule"),
    (["--dynamic", "0.1", "--dynamic-epsilon", "0"], "--dynamic-epsilon"),
])
def test_bad_dynamic_options_are_one_line_errors(tiny_model, run_cli, args, fragment):
    model_dir, config_path = tiny_model
    for command in (["eval"], ["score", "--carry"]):
        code, _, err = run_cli(*command, model_dir, config_path.parent / "test.txt", *args)
        assert_clean_error(code, err, 2, fragment)


def test_api_refuses_unknown_dynamic_keywords(tiny_model):
    lm = rnnlm_cli.load(tiny_model[0])
    with pytest.raises(rnnlm_cli.errors.UserError, match="dynamic_rate"):
        lm.evaluate(tiny_model[1].parent / "test.txt", dynamic=0.1, dynamic_rate=3)
    with pytest.raises(rnnlm_cli.errors.UserError, match="needs dynamic=LR"):
        lm.evaluate(tiny_model[1].parent / "test.txt", dynamic_rule="rms")


def test_a_copied_model_directory_finds_its_training_text(tiny_model, tmp_path, run_cli):
    model_dir, config_path = tiny_model
    shutil.copytree(config_path.parent, tmp_path / "copy")
    copied = tmp_path / "copy" / model_dir.name
    code, out, err = run_cli("eval", copied, tmp_path / "copy" / "test.txt", "--json", *RMS)
    assert code == 0, err
    assert json.loads(out)["dynamic_stats_from"] == str(tmp_path / "copy" / "train.txt")
