"""The hierarchical softmax (output/hsm.py): the Huffman tree, its validation on load, the layer's
backward against central differences, and the distribution being exact and normalized."""

import heapq
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, files, weights

from rnnlm_cli import model
from rnnlm_cli.config import ModelConfig
from rnnlm_cli.errors import UserError
from rnnlm_cli.gradcheck import TOLERANCE, numerical_gradient, rel_error
from rnnlm_cli.output import hsm

ZIPF = np.array([500, 300, 120, 80, 40, 33, 20, 9, 7, 5, 5, 3, 1, 1, 0, 0, 2])


def paths(counts):
    return hsm.huffman_paths(np.asarray(counts), hsm.max_depth(len(counts)))


def optimal_cost(weights):
    """Σ weight · code length of an optimal prefix code: the sum of Huffman's merged weights."""
    heap, cost = list(weights), 0
    heapq.heapify(heap)
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@pytest.mark.parametrize("counts", [ZIPF, np.ones(13, int), [5, 0], [1, 2, 3], np.arange(40) ** 2])
def test_the_tree_is_a_huffman_code_over_counts_plus_one(counts):
    nodes, codes, lengths = paths(counts)
    weights = np.asarray(counts) + 1
    assert int(weights @ lengths) == optimal_cost(weights.tolist())  # optimal: shortest expected path
    assert np.sum(2.0 ** -lengths) == 1.0  # Kraft equality: a complete binary tree
    hsm.check_buffers({hsm.NODES: nodes, hsm.CODES: codes, hsm.LENGTHS: lengths}, len(counts), "t")
    words = {tuple(codes[w, :lengths[w]]) for w in range(len(counts))}
    assert len(words) == len(counts)  # every word its own code


def test_the_tree_is_deterministic_with_ties_and_numbered_breadth_first():
    a, b = paths(np.ones(13, int)), paths(np.ones(13, int))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    nodes, _, lengths = paths(ZIPF)
    for w in range(len(ZIPF)):
        assert np.all(np.diff(nodes[w, :lengths[w]]) > 0)  # children numbered after their parents
    assert lengths[0] <= lengths[1] <= lengths[3] <= lengths[12]  # frequent words sit near the root


def test_a_tree_deeper_than_the_limit_is_built_from_smoothed_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib[::-1]) - 1  # Fibonacci weights: Huffman gives a path as long as V − 1
    assert paths(counts[:30])[2].max() == 29  # below the limit: the plain Huffman tree
    nodes, codes, lengths = paths(counts)
    assert hsm.max_depth(40) == nodes.shape[1] == 32 and 1 <= lengths.min() and lengths.max() <= 32
    hsm.check_buffers({hsm.NODES: nodes, hsm.CODES: codes, hsm.LENGTHS: lengths}, 40, "t")
    assert np.sum(2.0 ** -lengths) == 1.0 and lengths[0] < lengths[-1]


def tree_arrays(counts=ZIPF):
    nodes, codes, lengths = paths(counts)
    return {hsm.NODES: nodes, hsm.CODES: codes, hsm.LENGTHS: lengths}


def _swap_leaf(a):
    """Word 0 takes word 1's path: two words on one leaf, one leaf without a word."""
    a[hsm.NODES][0], a[hsm.CODES][0], a[hsm.LENGTHS][0] = a[hsm.NODES][1], a[hsm.CODES][1], a[hsm.LENGTHS][1]


def _cycle(a):
    """A word's path goes back to a node it passed."""
    w = int(np.argmax(a[hsm.LENGTHS]))
    a[hsm.NODES][w, a[hsm.LENGTHS][w] - 1] = a[hsm.NODES][w, 1]


def _prefix(a):
    """A word's path cut short: its leaf would be an inner node."""
    w = int(np.argmax(a[hsm.LENGTHS]))
    a[hsm.NODES][w, a[hsm.LENGTHS][w] - 1] = 0
    a[hsm.CODES][w, a[hsm.LENGTHS][w] - 1] = 0
    a[hsm.LENGTHS][w] -= 1


HOSTILE = {
    "node id too large": lambda a: a[hsm.NODES].__setitem__((3, 1), 99),
    "negative node id": lambda a: a[hsm.NODES].__setitem__((3, 1), -1),
    "code 2": lambda a: a[hsm.CODES].__setitem__((3, 0), 2),
    "length 0": lambda a: a[hsm.LENGTHS].__setitem__(4, 0),
    "length past the depth": lambda a: a[hsm.LENGTHS].__setitem__(4, 99),
    "padding not zero": lambda a: a[hsm.NODES].__setitem__((0, -1), 1),
    "not from the root": lambda a: a[hsm.NODES].__setitem__((5, 0), 1),
    "two words on one leaf": _swap_leaf,
    "a path with a cycle": _cycle,
    "a leaf inside the tree": _prefix,
    "float codes": lambda a: a.update({hsm.CODES: a[hsm.CODES].astype(np.float64)}),
}


@pytest.mark.parametrize("damage", HOSTILE)
def test_a_hostile_tree_is_refused(damage):
    arrays = tree_arrays()
    HOSTILE[damage](arrays)
    with pytest.raises(UserError, match="weights.npz: arrays 'output.path_nodes'"):
        hsm.check_buffers(arrays, len(ZIPF), "weights.npz")


# --------------------------------------------------------------------------------------------
# The layer


def layer_problem(seed=0, M=9, H=5, counts=ZIPF):
    rng = np.random.default_rng(seed)
    V = len(counts)
    arrays = tree_arrays(counts)
    vectors, bias = rng.normal(0, 0.7, (V - 1, H)), rng.normal(0, 0.5, V - 1)
    h, targets = rng.normal(size=(M, H)), rng.integers(0, V, M)
    targets[:3] = [int(np.argmax(arrays[hsm.LENGTHS])), 0, 0]  # the deepest word, and a repeated target
    return h, vectors, bias, arrays, targets


@pytest.mark.parametrize("top", [0, 3, 1000])  # all nodes deep, some on top, all on top
def test_hsm_backward_against_central_differences(monkeypatch, top):
    monkeypatch.setattr(hsm, "TOP_NODES", top)
    h, vectors, bias, a, targets = layer_problem()
    args = (a[hsm.NODES], a[hsm.CODES], a[hsm.LENGTHS], targets, 0.25)

    def loss():
        return 0.25 * hsm.hsm_forward(h, vectors, bias, *args, need_grad=False)[0]

    _, cache = hsm.hsm_forward(h, vectors, bias, *args)
    dh, d_vectors, d_bias = hsm.hsm_backward(cache)
    assert np.all(np.diff(d_vectors.ids) > 0) and np.array_equal(d_vectors.ids, d_bias.ids)
    touched = np.unique(a[hsm.NODES][targets][np.arange(a[hsm.NODES].shape[1]) < a[hsm.LENGTHS][targets][:, None]])
    assert set(touched) <= set(d_vectors.ids) and len(d_vectors.ids) <= len(touched) + min(top, len(bias) // 2)
    for x, analytic in ((h, dh), (vectors, d_vectors.dense()), (bias, d_bias.dense())):
        numeric = numerical_gradient(loss, x, np.arange(x.size)).reshape(x.shape)
        assert rel_error(analytic, numeric) < TOLERANCE


def test_planted_error_is_caught():
    """The check above can fail: a wrong sign in one node's gradient is far above tolerance."""
    h, vectors, bias, a, targets = layer_problem(seed=1)
    args = (a[hsm.NODES], a[hsm.CODES], a[hsm.LENGTHS], targets)
    _, cache = hsm.hsm_forward(h, vectors, bias, *args)
    _, d_vectors, _ = hsm.hsm_backward(cache)
    wrong = d_vectors.dense()
    wrong[0] *= -1
    numeric = numerical_gradient(lambda: hsm.hsm_forward(h, vectors, bias, *args, need_grad=False)[0], vectors,
                                 np.arange(vectors.size)).reshape(vectors.shape)
    assert rel_error(wrong, numeric) > 1e-3


def test_the_distribution_is_exact_and_normalized():
    """Σ_w P(w | h) = 1 from log_probs, which also gives the loss and target_log_probs exactly."""
    h, vectors, bias, a, targets = layer_problem(seed=2, M=6)
    params = {hsm.VECTORS: vectors, hsm.BIAS: bias, **a}
    logp = hsm.log_probs(params, h)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-13)
    picked = logp[np.arange(6), targets]
    np.testing.assert_allclose(hsm.target_log_probs(params, h, targets), picked, rtol=1e-13)
    loss, _ = hsm.hsm_forward(h, vectors, bias, a[hsm.NODES], a[hsm.CODES], a[hsm.LENGTHS], targets,
                              need_grad=False)
    assert loss == pytest.approx(-picked.sum(), rel=1e-13)
    # and it is the product of the branch probabilities along the path
    w = targets[0]
    z = h[0] @ vectors[a[hsm.NODES][w, :a[hsm.LENGTHS][w]]].T + bias[a[hsm.NODES][w, :a[hsm.LENGTHS][w]]]
    s = 1 - 2 * a[hsm.CODES][w, :a[hsm.LENGTHS][w]]
    assert np.exp(picked[0]) == pytest.approx(np.prod(1 / (1 + np.exp(-s * z))), rel=1e-12)


def test_model_with_hsm_sums_to_one_and_float32_stays_float32():
    m = ModelConfig(embedding_dim=4, hidden_dim=6, output="hsm")
    params = model.init_params(m, len(ZIPF), seed=0, dtype="float32", counts=ZIPF)
    assert params[hsm.VECTORS].dtype == np.float32 and params[hsm.NODES].dtype == np.int64
    state = model.init_state(m, 2, "float32")
    inputs, targets = np.array([[1, 2, 3], [4, 0, 5]]), np.array([[2, 3, 16], [0, 5, 12]])
    loss, _, cache = model.forward(params, m, inputs, targets, state)
    grads = model.backward(cache)
    assert set(grads) == set(model.trainable(params, m)) and hsm.NODES not in grads
    assert all(v.dtype == np.float32 for g in grads.values() for v in ([g.rows] if hasattr(g, "rows") else [g]))
    top = model.hidden_forward(params, m, inputs.T, state)[0]
    logp = model.output_log_probs(params, m, top.reshape(-1, 6))
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The command line


def test_config_refuses_what_hsm_cannot_do(tmp_path, run_cli):
    code, _, err = run_cli("config", "--set", "model.output=hsm", "--set", "model.tie_weights=true",
                           "--set", "model.embedding_dim=128")
    assert_clean_error(code, err, 2, "model.tie_weights", "hsm")
    code, _, err = run_cli("config", "--set", "model.output=hsm", "--set", "model.loss=squared_error")
    assert_clean_error(code, err, 2, "model.output hsm", "cross_entropy")


def test_gradcheck_command_covers_hsm(run_cli):
    for extra in ([], ["--set", "model.layers=2", "--set", "model.cell=gru"]):
        code, out, err = run_cli("gradcheck", "--set", "model.output=hsm", *extra)
        assert code == 0, err
        assert "output.node_vectors" in out and "output.node_b" in out and "output.path_nodes" not in out


@pytest.fixture(scope="module")
def hsm_model(tmp_path_factory):
    from conftest import write_corpus, write_tiny_config
    from rnnlm_cli import train
    from rnnlm_cli.config import load_config
    folder = tmp_path_factory.mktemp("hsm-model")
    config = write_tiny_config(folder, write_corpus(folder))
    out = folder / "model"
    summary = train.run(load_config(config, ["model.output=hsm"]), out)
    return out, summary


def test_train_eval_sample_with_hsm(hsm_model, run_cli):
    import json
    out, summary = hsm_model
    assert summary["valid_ppl"] < summary["unigram_valid_ppl"]
    code, stdout, err = run_cli("eval", out, "--json")
    assert code == 0 and json.loads(stdout)["perplexity"] == pytest.approx(summary["test_ppl"], rel=1e-6), err
    code, stdout, _ = run_cli("sample", out, "--words", 10, "--prompt", "the king", "--seed", 3)
    assert code == 0 and stdout.startswith("the king")
    assert run_cli("sample", out, "--words", 10, "--seed", 3) == run_cli("sample", out, "--words", 10, "--seed", 3)


@pytest.mark.parametrize("damage", ["two words on one leaf", "node id too large", "length 0"])
def test_a_tampered_tree_in_a_model_directory_is_refused(hsm_model, tmp_path, run_cli, damage):
    out = tmp_path / "m"
    shutil.copytree(hsm_model[0], out)
    arrays = weights(out)
    change = HOSTILE[damage]
    change(arrays)
    np.savez(Path(out) / "weights.npz", **arrays)
    before = files(out)
    for command in (["eval", out], ["sample", out, "--words", "3"]):
        code, _, err = run_cli(*command)
        assert_clean_error(code, err, 2, "weights.npz", "output.path_nodes")
    assert files(out) == before
