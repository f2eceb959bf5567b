"""The neural cache (cache.py; eval --cache, score --carry --cache, the Python API): its
probabilities against a plain per-token float64 computation, at every batch size, with --mix
and --dynamic; --cache 0 exactly static; the commands' figures agree; bad options are one-line
errors; the model directory is never modified."""

import json
import math

import numpy as np
import pytest

import rnnlm_cli
from rnnlm_cli import cache, data, evaluate, mix, model
from rnnlm_cli import train as train_mod
from rnnlm_cli.config import Config, ModelConfig, load_config
from rnnlm_cli.errors import UserError
from rnnlm_cli.vocab import vocab_from_tokens

from conftest import assert_clean_error, files


def _model(cell, V=8, seed=0, independent=False):
    """(config, vocab, params) of a random float64 model with a small vocabulary (words repeat:
    the cache has something to find)."""
    config = Config()
    config.model = ModelConfig(cell=cell, embedding_dim=5, hidden_dim=6, layers=2)
    config.train.bptt = 4
    config.data.independent = independent
    vocab = vocab_from_tokens(["<unk>", "<eos>"] + [f"w{i}" for i in range(V - 2)])
    rng = np.random.default_rng(seed)
    params = model.init_params(config.model, V, seed, "float64")
    for key in model.trainable(params, config.model):
        params[key] = params[key] + rng.normal(0, 0.5, params[key].shape)
    return config, vocab, params


def _stream(n, seed, V=8, eos=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, n)
    ids[0] = eos
    return ids


# --------------------------------------------------------------------------------------------
# The reference: one token at a time, float64, written plainly


def _layout(ids, batch_size, reset_at):
    """[(stream's ids, position in ids[1:] of each of its targets or -1)] as the reading cuts the file."""
    batch_size = max(1, min(batch_size, len(ids) // 2))
    if reset_at is not None and batch_size > 1:
        streams, index = data.pack_sentences(ids, batch_size, reset_at)
        return list(zip(streams, index))
    streams = data.batchify(ids, batch_size)
    L = streams.shape[1]
    return [(streams[n], np.arange(n * L, n * L + L - 1)) for n in range(batch_size)]


def _read_token_by_token(config, params, stream, reset_at):
    """(h_t (L−1, H), P(x_{t+1} | h_t) (L−1,)) of one stream, one step at a time."""
    state = model.init_state(config.model, 1, "float64")
    hs, ps = [], []
    for t in range(len(stream) - 1):
        top, state, _ = model.hidden_forward(params, config.model, stream[t:t + 1, None], state, reset_at=reset_at)
        probs = np.exp(model.output_log_probs(params, config.model, top[0])[0])
        hs.append(top[0, 0].astype(np.float64))
        ps.append(probs[stream[t + 1]])
    return np.array(hs), np.array(ps)


def _cache_prob(hs, stream, t, window, theta):
    """Σ_i softmax(θ h_t·h_i) 1{x_{i+1} = x_{t+1}} over the min(W, t) positions before t."""
    i = np.arange(max(0, t - window), t)
    scores = theta * np.array([hs[t] @ hs[k] for k in i])
    a = np.exp(scores - scores.max())
    a /= a.sum()
    return sum(a_k for a_k, k in zip(a, i) if stream[k + 1] == stream[t + 1])


def reference(models, weights, ids, batch_size, window, theta, lam, reset_all=False, states=None):
    """log p of every target of ids under (1 − λ)·Σ_k w_k p_k + λ·p_cache (the first model's
    states, or `states` [(L−1, H) per stream] if given); NaN where not scored."""
    out = np.full(len(ids) - 1, np.nan)
    for n, (stream, index) in enumerate(_layout(ids, batch_size, models[0][1].eos_id if reset_all or
                                                models[0][0].data.independent else None)):
        p_mix, first_states = 0.0, None
        for (config, vocab, params), w in zip(models, weights):
            reset_at = vocab.eos_id if reset_all or config.data.independent else None
            hs, ps = _read_token_by_token(config, params, stream, reset_at)
            p_mix = p_mix + w * ps
            first_states = hs if first_states is None else first_states
        hs = first_states if states is None else states[n]
        for t in range(len(stream) - 1):
            if index[t] < 0:
                continue
            p = p_mix[t] if t == 0 else (1 - lam) * p_mix[t] + lam * _cache_prob(hs, stream, t, window, theta)
            with np.errstate(divide="ignore"):
                out[index[t]] = np.log(p)
    return out


def cached(models, weights, ids, batch_size, window, theta, lam, dynamic=None):
    """The same through mix.mixed_log_probs and cache.mix (what eval and score --carry run)."""
    settings = cache.Settings(window, theta, lam)
    with np.errstate(invalid="ignore"):  # the unscored remainder of a batched reading is NaN
        mixed, logp_cache = mix.mixed_log_probs(models, weights, ids, batch_size, False, dynamic, None, settings)
    return cache.mix(mixed, logp_cache, lam)


def assert_same_log_probs(got, expected):
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.parametrize("cell", ["elman", "lstm"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_cache_equals_the_per_token_reference(cell, batch_size):
    m = _model(cell, seed=1)
    ids = _stream(41, 2)  # bptt 4: windows cut the cache's history in many places
    for window in (1, 3, 7, 100):  # 100: longer than every stream
        for theta in (0.0, 0.7, 3.0):
            for lam in (0.0, 0.3, 1.0):
                assert_same_log_probs(cached([m], [1.0], ids, batch_size, window, theta, lam),
                                      reference([m], [1.0], ids, batch_size, window, theta, lam))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_cache_with_mix_uses_the_first_models_states_and_mixes_last(batch_size):
    a, b = _model("elman", seed=3), _model("gru", seed=4)
    ids = _stream(37, 5)
    for window, theta, lam in ((2, 1.0, 0.2), (9, 0.5, 0.5), (50, 0.0, 1.0)):
        for weights in ([0.6, 0.4], [0.0, 1.0]):  # a weight of 0 on the first model: still its states
            assert_same_log_probs(cached([a, b], weights, ids, batch_size, window, theta, lam),
                                  reference([a, b], weights, ids, batch_size, window, theta, lam))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_cache_of_a_model_with_sentence_resets(batch_size):
    m = _model("lstm", seed=6, independent=True)
    ids = _stream(45, 7)
    assert_same_log_probs(cached([m], [1.0], ids, batch_size, 6, 1.5, 0.25),
                          reference([m], [1.0], ids, batch_size, 6, 1.5, 0.25))


def test_lambda_zero_is_exactly_the_model_and_lambda_one_the_cache():
    m = _model("elman", seed=8)
    ids = _stream(30, 9)
    static = evaluate.stream_log_probs(m[2], m[0].model, ids, 4)
    logp, logp_cache = evaluate.stream_log_probs(m[2], m[0].model, ids, 4, cache=cache.Settings(5, 1.0, 0.0))
    assert np.array_equal(logp, static)  # bit-identical
    assert np.array_equal(cache.mix(logp, logp_cache, 0.0), static)
    only_cache = cache.mix(logp, logp_cache, 1.0)
    assert only_cache[0] == static[0]  # the first target: nothing in the cache, the model alone
    assert np.array_equal(only_cache[1:], logp_cache[1:])
    assert np.isneginf(logp_cache).any()  # a word never seen after a remembered state


def test_dynamic_cache_uses_the_adapting_models_states(monkeypatch):
    m = _model("lstm", seed=10)
    ids = _stream(33, 11)
    seen = []
    real = model.forward

    def recording(*args, top_states=None, **kwargs):
        out = real(*args, top_states=top_states, **kwargs)
        seen.append(top_states.copy())  # (1, T, H): the states that scored these targets
        return out
    monkeypatch.setattr(model, "forward", recording)
    settings = cache.Settings(5, 0.8, 0.3)
    logp, logp_cache = evaluate.stream_log_probs(m[2], m[0].model, ids, 4, dynamic=0.5, clip_norm=1.0, cache=settings)
    monkeypatch.setattr(model, "forward", real)
    assert np.array_equal(logp, evaluate.stream_log_probs(m[2], m[0].model, ids, 4, dynamic=0.5, clip_norm=1.0))
    hs = np.concatenate(seen, axis=1)[0]
    static_hs = _read_token_by_token(m[0], m[2], ids, None)[0]
    assert not np.allclose(hs, static_hs)  # the model did adapt
    expected = [np.nan] + [math.log(_cache_prob(hs, ids, t, 5, 0.8)) if _cache_prob(hs, ids, t, 5, 0.8) > 0
                           else -math.inf for t in range(1, len(ids) - 1)]
    assert_same_log_probs(logp_cache, np.array(expected))


def test_several_thetas_at_once_and_in_blocks_of_streams(monkeypatch):
    m = _model("gru", seed=12)
    ids = _stream(50, 13)
    thetas = (0.0, 0.5, 2.0)
    _, together = evaluate.stream_log_probs(m[2], m[0].model, ids, 4, 3, cache=cache.Settings(7, thetas))
    assert together.shape == (3, len(ids) - 1)
    for k, theta in enumerate(thetas):
        _, alone = evaluate.stream_log_probs(m[2], m[0].model, ids, 4, 3, cache=cache.Settings(7, theta))
        assert_same_log_probs(together[k], alone)
    monkeypatch.setattr(cache, "BLOCK_ENTRIES", 1)  # one stream at a time
    _, blocked = evaluate.stream_log_probs(m[2], m[0].model, ids, 4, 3, cache=cache.Settings(7, thetas))
    assert_same_log_probs(blocked, together)


def test_window_log_probs_keeps_the_last_w_states():
    rng = np.random.default_rng(0)
    memory = cache.empty(2, 4)
    for T in (3, 1, 5, 2):
        _, memory = cache.window_log_probs(rng.normal(size=(2, T, 4)), rng.integers(0, 5, (2, T)), memory, 6)
    assert memory.states.shape == (2, 6, 4) and memory.next_ids.shape == (2, 6)


@pytest.mark.parametrize("args, fragment", [
    ((-1, 1.0, 0.1), "--cache -1"), ((2.5, 1.0, 0.1), "--cache 2.5"), ((5, -0.5, 0.1), "--cache-theta -0.5"),
    ((5, math.nan, 0.1), "--cache-theta nan"), ((5, math.inf, 0.1), "--cache-theta inf"),
    ((5, 1.0, 1.5), "--cache-lambda 1.5"), ((5, 1.0, -0.1), "--cache-lambda -0.1"),
    ((5, 1.0, math.nan), "--cache-lambda nan")])
def test_bad_settings(args, fragment):
    with pytest.raises(UserError, match=fragment):
        cache.settings(*args)
    assert cache.settings(0, 7.0, 0.9) is None  # off
    assert cache.settings(3).as_json() == {"window": 3, "theta": 1.0, "lambda": 0.1}


# --------------------------------------------------------------------------------------------
# Through the command line and the Python API

TEXT = ["the cat sees the moon .", "the cat sees the moon again .", "", "a dog likes the river today .",
        "the king finds a house again .", "my sister calls the city at night .", "the cat sees the moon ."]
CACHE = ["--cache", "20", "--cache-theta", "0.5", "--cache-lambda", "0.2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny trained models of the same vocabulary (float32 Elman, float64 LSTM), a text."""
    from conftest import write_corpus, write_tiny_config
    folder = tmp_path_factory.mktemp("cache")
    config = write_tiny_config(folder, write_corpus(folder))
    train_mod.run(load_config(config), folder / "a")
    train_mod.run(load_config(config, ["train.dtype=float64", "model.cell=lstm", "train.seed=3"]), folder / "b")
    text = folder / "text.txt"
    text.write_text("\n".join(TEXT) + "\n", encoding="utf-8")
    return folder / "a", folder / "b", text


def _json(run_cli, *args):
    code, out, err = run_cli(*args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_cache_zero_is_exactly_static(models, run_cli):
    a, b, text = models
    before = files(a)
    for extra in ([], ["--mix", b], ["--batch-size", "3"]):
        static = run_cli("eval", a, text, "--json", *extra)
        off = run_cli("eval", a, text, "--json", *extra, "--cache", "0", "--cache-theta", "3", "--cache-lambda", "0.9")
        assert static == off and static[0] == 0 and "cache" not in json.loads(static[1])
    assert (run_cli("score", a, text, "--carry", "--format", "json", "--words") ==
            run_cli("score", a, text, "--carry", "--format", "json", "--words", "--cache", "0"))
    assert run_cli("score", a, text, "--cache", "0") == run_cli("score", a, text)
    assert files(a) == before


def test_eval_score_and_the_api_agree(models, run_cli):
    a, b, text = models
    before = files(a), files(b)
    for m, extra in ((a, []), (b, []), (a, ["--mix", b, "--weights", "0.3,0.7"]), (b, ["--dynamic", "0.3"])):
        result = _json(run_cli, "eval", m, text, "--json", *CACHE, *extra)[0]
        assert result["cache"] == {"window": 20, "theta": 0.5, "lambda": 0.2}
        recs = _json(run_cli, "score", m, text, "--carry", "--format", "json", *CACHE, *extra)
        assert sum(r["targets"] for r in recs) == result["targets"]
        assert -sum(r["logprob"] for r in recs) == pytest.approx(result["cross_entropy"] * result["targets"],
                                                                 rel=1e-12)
        static = _json(run_cli, "eval", m, text, "--json", *extra)[0]
        assert result["perplexity"] != static["perplexity"]
    lm = rnnlm_cli.load(a)
    api = lm.evaluate(text, cache=20, cache_theta=0.5, cache_lambda=0.2)
    assert api == _json(run_cli, "eval", a, text, "--json", *CACHE)[0]
    recs = lm.score(TEXT, carry=True, cache=20, cache_theta=0.5, cache_lambda=0.2)
    cli_recs = _json(run_cli, "score", a, text, "--carry", "--format", "json", "--words", *CACHE)
    assert [r["tokens"] for r in recs] == [r["tokens"] for r in cli_recs]
    assert lm.evaluate(text, cache=0, cache_theta=5.0) == _json(run_cli, "eval", a, text, "--json")[0]
    assert (files(a), files(b)) == before


def test_eval_cache_at_every_batch_size_matches_the_reference(models, run_cli):
    a, _, text = models
    lm = rnnlm_cli.load(a)
    ids, _ = data.encode_file(text, lm.vocab, lm.config.data.tokenizer)
    for batch_size in (1, 3):
        result = _json(run_cli, "eval", a, text, "--json", "--batch-size", batch_size, *CACHE)[0]
        expected = reference([lm._parts()], [1.0], ids, batch_size, 20, 0.5, 0.2)
        scored = ~np.isnan(expected)
        assert result["targets"] == scored.sum()
        assert result["cross_entropy"] == pytest.approx(-expected[scored].mean(), rel=1e-5)  # a float32 model


def test_the_cache_helps_on_repeated_running_text(models, run_cli, tmp_path):
    a, _, text = models
    repeated = tmp_path / "repeated.txt"
    repeated.write_text(text.read_text() * 5, encoding="utf-8")
    static = _json(run_cli, "eval", a, repeated, "--json")[0]
    cached_ = _json(run_cli, "eval", a, repeated, "--json", "--cache", "100", "--cache-lambda", "0.3")[0]
    assert cached_["perplexity"] < static["perplexity"]


def test_bad_cache_options_are_one_line_errors(models, run_cli):
    a, _, text = models
    before = files(a)
    code, _, err = run_cli("score", a, text, "--cache", "5")
    assert_clean_error(code, err, 2, "--cache 5 needs --carry")
    for args, fragment in ((["--cache", "-3"], "--cache -3"), (["--cache", "2.5"], "--cache"),
                           (["--cache", "5", "--cache-theta", "-1"], "--cache-theta -1"),
                           (["--cache", "5", "--cache-theta", "nan"], "--cache-theta nan"),
                           (["--cache", "5", "--cache-lambda", "2"], "--cache-lambda 2")):
        for command in (["eval", a, text], ["score", a, text, "--carry"]):
            code, _, err = run_cli(*command, *args)
            assert_clean_error(code, err, 2, fragment)
    code, _, err = run_cli("eval", a, text, "--cache", "5", "--cache-lambda", "1")
    assert_clean_error(code, err, 2, "--cache-lambda 1", "probability 0")
    with pytest.raises(UserError, match="carry=True"):
        rnnlm_cli.load(a).score(TEXT, cache=5)
    assert files(a) == before
