"""rnnlm tune (tune.py, the command, the API): the ladder search, EM's weights against known
optima, every row's perplexity equal to what eval gives with the row's flags (cache, dynamic sgd
and rms, mixtures), the best row the argmin of the table, --json's shape, the valid file by
default and never the test file, one-line errors, the model directory untouched."""

import json
import math
import shlex
import shutil

import numpy as np
import pytest

import rnnlm_cli
from rnnlm_cli import data, mix, tune
from rnnlm_cli import train as train_mod
from rnnlm_cli.config import load_config
from rnnlm_cli.errors import UserError

from conftest import assert_clean_error, files, write_corpus, write_tiny_config


# --------------------------------------------------------------------------------------------
# The grids and the search


def test_the_ladder_is_round_numbers_that_print_back_exactly():
    values = [tune.rung(i) for i in range(-30, 13)]
    assert values[:7] == [1e-5, 1.5e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4]
    assert values[-7:] == [10, 15, 20, 30, 50, 70, 100]
    assert all(float(repr(v)) == v and tune.rung_index(v) == i for i, v in zip(range(-30, 13), values))
    assert tune.rung(tune.nearest_rung(2.4)) == 2 and tune.rung(tune.nearest_rung(4.2e-4)) == 5e-4


def _counting(f):
    calls = []

    def score(v):
        calls.append(v)
        return f(v)
    return score, calls


def test_ladder_search_goes_coarse_then_fine_toward_the_better_neighbour():
    score, calls = _counting(lambda v: (math.log(v) - math.log(1.7)) ** 2)
    best, ppl, edge = tune.ladder_search(score, tune.rung_index(2.0))
    assert calls == [2.0, 1.0, 5.0, 1.5] and best == 1.5 and not edge
    # the minimum far below the start: coarse steps down until it is passed, at most `extend`
    score, calls = _counting(lambda v: (math.log(v) - math.log(0.08)) ** 2)
    best, _, edge = tune.ladder_search(score, tune.rung_index(2.0))
    assert calls == [2.0, 1.0, 5.0, 0.5, 0.2, 0.1, 0.07] and best == 0.07 and edge  # refined outward
    score, calls = _counting(lambda v: (math.log(v) - math.log(0.08)) ** 2)
    best, _, edge = tune.ladder_search(score, tune.rung_index(2.0), extend=5)
    assert best == 0.07 and not edge and calls[-2:] == [0.05, 0.07]
    # what is known is not measured again; without refine, no fine rung
    score, calls = _counting(lambda v: v)
    tune.ladder_search(score, tune.rung_index(2e-5), extend=0, refine=False, known={tune.rung_index(2e-5): 1.0})
    assert calls == [1e-5, 5e-5]


def test_walk_up_climbs_while_it_helps():
    score, calls = _counting(lambda v: abs(v - 0.004))
    assert tune.walk_up(score, baseline=1.0) == (0.005, 0.001) and calls == [1e-3, 2e-3, 5e-3, 1e-2]
    score, calls = _counting(lambda v: 2.0)
    assert tune.walk_up(score, baseline=1.0) == (0.0, 1.0) and calls == [1e-3]


def test_theta_grid_is_relative_to_the_scale_of_the_states():
    grid = tune.theta_grid(20.0)
    assert len(grid) == len(tune.THETA_MULTIPLES) and grid == tuple(sorted(grid))
    assert grid[0] == 0.025 and grid[-1] == 25.6 and 0.05 in grid and 1.6 in grid
    assert all(float(f"{t:.3g}") == t for t in grid)
    assert tune.theta_grid(0.0) == tune.theta_grid(1.0)


# --------------------------------------------------------------------------------------------
# EM


def test_em_finds_the_known_optimum_of_disjoint_components():
    # each target is given probability by one component only: the optimum is w_k = n_k / N
    n = np.array([30, 50, 20])
    rng = np.random.default_rng(0)
    logps = np.full((3, n.sum()), -np.inf)
    start = np.concatenate(([0], np.cumsum(n)))
    for k in range(3):
        logps[k, start[k]:start[k + 1]] = np.log(rng.uniform(0.01, 0.9, n[k]))
    weights, _ = tune.em_weights(logps)
    assert weights == pytest.approx(n / n.sum(), abs=1e-9)


def _log_likelihood(logps, w):
    return float(np.logaddexp.reduce(np.log(w)[:, None] + logps, axis=0).sum())


def test_em_weights_are_the_maximum_likelihood_mixture():
    rng = np.random.default_rng(1)
    T = 4000
    # two components, each better on its own half of the targets: an interior optimum
    p = rng.uniform(0.05, 0.5, (2, T))
    p[0, : T // 3] *= 0.1
    p[1, T // 3:] *= 0.3
    logps = np.log(p)
    weights, iterations = tune.em_weights(logps, tol=1e-10)
    grid = np.linspace(0.001, 0.999, 9981)
    brute = grid[np.argmax([_log_likelihood(logps, np.array([w, 1 - w])) for w in grid])]
    assert weights[0] == pytest.approx(brute, abs=2e-4) and 1 < iterations < 5000
    # the stationarity (KKT) condition of the optimum: mean_t p_kt / p_mix(t) = 1 for every w_k > 0
    three = np.log(rng.uniform(0.01, 1.0, (3, T)) * np.array([[1.0], [0.6], [0.3]]))
    w, _ = tune.em_weights(three, tol=1e-12)
    ratio = np.exp(three - np.logaddexp.reduce(np.log(w)[:, None] + three, axis=0)).mean(axis=1)
    assert np.all((np.abs(ratio - 1) < 1e-6) | ((w < 1e-6) & (ratio <= 1 + 1e-6)))
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    # a useless component gets weight 0; a target nobody predicts is left out
    worse = np.log(p[:1] * 0.5)
    w, _ = tune.em_weights(np.vstack([logps[:1], worse]))
    assert w[1] < 1e-4
    with_zero = np.hstack([logps, [[-np.inf], [-np.inf]]])
    assert np.allclose(tune.em_weights(with_zero, tol=1e-10)[0], weights, atol=1e-9)


def test_rounded_weights_are_a_valid_weights_flag():
    for raw in ([0.3333333, 0.3333333, 0.3333334], [0.70004, 0.29996], [1.0, 0.0], [0.123456, 0.654321, 0.222223]):
        text, values = tune.round_weights(np.array(raw))
        assert mix.parse_weights(text, len(raw)) == values
        assert abs(sum(values) - 1) <= 1e-9 and max(abs(a - b) for a, b in zip(values, raw)) <= 2e-4


# --------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny trained models of the same vocabulary (float32 Elman, float64 LSTM), their folder,
    and a file of another "LM"'s per-target probabilities of the valid text, good where the
    models are not (every third target), so that the best mixture has weights inside (0, 1)."""
    folder = tmp_path_factory.mktemp("tune")
    corpus = write_corpus(folder)
    config = write_tiny_config(folder, corpus)
    train_mod.run(load_config(config), folder / "a")
    train_mod.run(load_config(config, ["train.dtype=float64", "model.cell=lstm", "train.seed=3"]), folder / "b")
    vocab = rnnlm_cli.load(folder / "a").vocab
    targets = data.encode_file(corpus["valid"], vocab, "whitespace")[1]["targets"]
    probs = folder / "other.probs"
    probs.write_text("".join("0.9\n" if t % 3 == 0 else "0.02\n" for t in range(targets)), encoding="utf-8")
    return folder / "a", folder / "b", folder, probs


def _tune(run_cli, *args):
    code, out, err = run_cli("tune", *args, "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 1
    return json.loads(out)


def _eval(run_cli, model_dir, path, flags):
    code, out, err = run_cli("eval", model_dir, path, "--json", *shlex.split(flags))
    assert code == 0, err
    return json.loads(out)


def _same(row, result):
    assert row["perplexity"] == pytest.approx(result["perplexity"], rel=1e-12, abs=0)
    assert row["cross_entropy"] == pytest.approx(result["cross_entropy"], rel=1e-12, abs=0)


def test_cache_rows_equal_eval_and_the_best_is_their_argmin(models, run_cli):
    a, _, folder, _ = models
    before = files(a)
    result = _tune(run_cli, a, "--cache", "40")
    valid = folder / "valid.txt"
    assert result["file"] == str(valid)  # the model's valid file by default, never its test file
    cache_rows = [r for r in result["rows"] if r["method"] == "cache"]
    assert [r["method"] for r in result["rows"]] == ["static"] + ["cache"] * len(cache_rows)
    assert len(cache_rows) == len(result["cache_thetas"]) * len(tune.LAMBDAS) == len(tune.THETA_MULTIPLES) * 12
    assert result["best"] == min(result["rows"], key=lambda r: r["perplexity"])
    assert result["flags"] == result["best"]["flags"] and result["flags"].startswith("--cache 40 --cache-theta ")
    worst = max(cache_rows, key=lambda r: r["perplexity"])
    for row in (result["best"], worst, cache_rows[len(cache_rows) // 2]):
        _same(row, _eval(run_cli, a, valid, row["flags"]))
    static = _eval(run_cli, a, valid, "")
    assert result["static"]["perplexity"] == pytest.approx(static["perplexity"], rel=1e-9)
    assert result["best"]["perplexity"] < static["perplexity"]
    assert files(a) == before


def test_dynamic_rows_equal_eval(models, run_cli):
    a, b, folder, _ = models
    before = files(a), files(b)
    valid = folder / "valid.txt"
    result = _tune(run_cli, b, "--dynamic", "sgd")
    rows = [r for r in result["rows"] if r["method"] == "dynamic"]
    assert len(rows) >= 5 and {r["settings"]["dynamic"]["rule"] for r in rows} == {"sgd"}
    assert result["best"] == min(result["rows"], key=lambda r: r["perplexity"])
    for row in (result["best"], max(rows, key=lambda r: r["perplexity"])):
        assert "--dynamic-rule sgd" in row["flags"]
        _same(row, _eval(run_cli, b, valid, row["flags"]))
    rms = _tune(run_cli, a, "--dynamic", "rms", "--dynamic-stats", "2000", "--dynamic-segment", "5")
    assert rms["dynamic_stats"] == 2000 and rms["statistics_seconds"] >= 0
    rows = [r for r in rms["rows"] if r["method"] == "dynamic"]
    epsilons = {r["settings"]["dynamic"]["epsilon"] for r in rows}
    assert {1e-5, 2e-5, 5e-5} <= epsilons
    row = rows[-1]  # a setting with a tuned epsilon (and whatever decay won)
    assert "--dynamic-segment 5" in row["flags"] and "--dynamic-stats 2000" in row["flags"]
    _same(row, _eval(run_cli, a, valid, row["flags"]))
    assert (files(a), files(b)) == before


def test_dynamic_then_cache_reads_the_adapted_states(models, run_cli):
    a, _, folder, _ = models
    result = _tune(run_cli, a, "--dynamic", "sgd", "--cache", "30")
    methods = [r["method"] for r in result["rows"]]
    assert methods.index("cache") > max(i for i, m in enumerate(methods) if m == "dynamic")
    cache_rows = [r for r in result["rows"] if r["method"] == "cache"]
    best_dynamic = min((r for r in result["rows"] if r["method"] in ("static", "dynamic")),
                       key=lambda r: r["perplexity"])
    assert all(r["settings"]["dynamic"] == best_dynamic["settings"]["dynamic"] for r in cache_rows)
    row = cache_rows[7]
    assert row["flags"].startswith(best_dynamic["flags"])
    _same(row, _eval(run_cli, a, folder / "valid.txt", row["flags"]))


def test_mixture_weights_by_em_reproduce_through_eval(models, run_cli):
    a, b, folder, probs = models
    before = files(a), files(b)
    valid = folder / "valid.txt"
    result = _tune(run_cli, a, "--mix", b, "--mix-probs", probs)
    assert [r["method"] for r in result["rows"]] == ["static", "component", "component", "mix"]
    mixed = result["rows"][-1]
    weights = mixed["settings"]["weights"]
    assert mixed["flags"] == f"--mix {b} --mix-probs {probs} --weights {','.join(f'{w:g}' for w in weights)}"
    assert abs(sum(weights) - 1) < 1e-9 and 0.05 < weights[0] < 0.95 and 0.05 < weights[2] < 0.95
    assert result["em_weights"] == pytest.approx(weights, abs=1e-4) and result["em_iterations"] >= 1
    assert mixed["perplexity"] < min(r["perplexity"] for r in result["rows"][:3])
    for row in result["rows"]:  # each component alone, and the mixture
        _same(row, _eval(run_cli, a, valid, row["flags"]))
    # the weights are the maximum-likelihood ones: moving 0.01 of weight anywhere makes it worse
    for k, j in ((k, j) for k in range(3) for j in range(3) if k != j and weights[k] >= 0.01):
        moved = [w - 0.01 if i == k else w + 0.01 if i == j else w for i, w in enumerate(weights)]
        flags = mixed["flags"].rsplit(" ", 1)[0] + " " + ",".join(f"{max(w, 0.0):.6f}" for w in moved)
        assert _eval(run_cli, a, valid, flags)["perplexity"] > mixed["perplexity"], (k, j)
    assert (files(a), files(b)) == before


def test_text_output_and_the_api(models, run_cli):
    a, _, folder, _ = models
    code, out, err = run_cli("tune", a, "--cache", "40")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"tune {a} on {folder / 'valid.txt'}: ") and "| static " in lines[1]
    assert sum(" theta " in line and "best lambda" in line for line in lines) == len(tune.THETA_MULTIPLES)
    as_json = _tune(run_cli, a, "--cache", "40")
    assert lines[-1] == f"flags: {as_json['flags']}" and f"rnnlm eval {a} FILE {as_json['flags']}" in out
    assert f"rnnlm score {a} FILE --carry {as_json['flags']}" in out
    code, quiet, err = run_cli("tune", a, "--cache", "40", "-q")
    assert code == 0 and quiet.splitlines()[0].startswith("best: ") and quiet.splitlines()[-1] == lines[-1]
    api = rnnlm_cli.load(a).tune(cache=40)
    assert [r["perplexity"] for r in api["rows"]] == [r["perplexity"] for r in as_json["rows"]]
    assert api["flags"] == as_json["flags"]
    with pytest.raises(UserError, match="nothing to tune"):
        rnnlm_cli.load(a).tune()
    with pytest.raises(UserError, match="--cache -5"):
        rnnlm_cli.load(a).tune(cache=-5)


def test_the_valid_file_can_be_named_but_not_the_test_file(models, run_cli, tmp_path):
    a, _, folder, _ = models
    other = tmp_path / "other.txt"
    other.write_text((folder / "valid.txt").read_text()[:400], encoding="utf-8")
    result = _tune(run_cli, a, "--cache", "--valid", other)
    assert result["file"] == str(other) and result["flags"].startswith("--cache 500 ")
    assert result["targets"] == _eval(run_cli, a, other, "")["targets"]
    for test in (folder / "test.txt", tmp_path / "link.txt"):
        if test.name == "link.txt":
            test.symlink_to(folder / "test.txt")
        code, _, err = run_cli("tune", a, "--cache", "--valid", test)
        assert_clean_error(code, err, 2, f"--valid {test}", "test file", "data.test")


@pytest.mark.parametrize("args, fragment", [
    (["--valid", "nowhere.txt", "--cache"], "--valid nowhere.txt: no such file"),
    (["--cache", "abc"], "--cache"),
    (["--cache", "0"], "--cache 0"),
    (["--cache", "-5"], "-5"),  # an optional value: click reads -5 (even in --cache=-5) as an option
    ([], "nothing to tune"),
    (["--dynamic", "adam"], "--dynamic"),
    (["--cache", "--dynamic-segment", "5"], "--dynamic-segment: needs --dynamic"),
    (["--dynamic", "sgd", "--dynamic-lr", "0"], "--dynamic-lr"),
    (["--mix-probs", "nowhere.probs"], "nowhere.probs"),
])
def test_bad_input_is_one_line_exit_2(models, run_cli, args, fragment):
    a = models[0]
    before = files(a)
    code, out, err = run_cli("tune", a, *args)
    assert_clean_error(code, err, 2, fragment)
    assert out == "" and files(a) == before


def test_a_model_whose_valid_file_is_gone(tmp_path, run_cli):
    corpus = write_corpus(tmp_path)
    out = tmp_path / "model"
    train_mod.run(load_config(write_tiny_config(tmp_path, corpus), ["train.max_steps=3"]), out)
    corpus["valid"].unlink()
    code, _, err = run_cli("tune", out, "--cache")
    assert_clean_error(code, err, 2, "valid file", "valid.txt", "--valid FILE")
    shutil.copy(corpus["test"], tmp_path / "elsewhere.txt")
    assert _tune(run_cli, out, "--cache", "--valid", tmp_path / "elsewhere.txt")["targets"] > 0


def test_help_has_examples_and_every_option(run_cli):
    code, out, _ = run_cli("tune", "--help")
    assert code == 0 and "Examples:" in out and "rnnlm tune runs/ptb --cache" in out
    for option in ("--valid FILE", "--cache [W]", "--dynamic [sgd|rms]", "--dynamic-lr", "--dynamic-segment",
                   "--dynamic-stats", "--dynamic-stats-from", "--mix MODEL_DIR", "--mix-probs", "--json", "--quiet"):
        assert option in out, option
