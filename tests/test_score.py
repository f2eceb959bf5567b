"""rnnlm score (independent and carried readings, the formats, n-best ids, stdin), interpolation
(--mix, --weights, --mix-probs), dynamic evaluation, the Python API and the new sampling options."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import rnnlm_cli
from rnnlm_cli import evaluate, model, score
from rnnlm_cli import train as train_mod
from rnnlm_cli.config import Config, ModelConfig, load_config
from rnnlm_cli.vocab import vocab_from_tokens

LINES = ["the cat sees the moon .", "", "a dog likes zebra today .", "the king finds a house again .",
         "   ", "my sister calls the city at night ."]


def _model(cell, output, V=15, seed=0):
    """(config, vocab, params) of a random float64 model, as score's functions take models."""
    config = Config()
    config.model = ModelConfig(cell=cell, output=output, embedding_dim=5, hidden_dim=6, classes=4, layers=2)
    config.train.bptt = 4
    vocab = vocab_from_tokens(["<unk>", "<eos>"] + [f"w{i}" for i in range(V - 2)])
    rng = np.random.default_rng(seed)
    params = model.init_params(config.model, V, seed, "float64")
    for key in model.trainable(params, config.model):
        params[key] = params[key] + rng.normal(0, 0.4, params[key].shape)
    return config, vocab, params


def _random_lines(vocab, n, seed):
    rng = np.random.default_rng(seed)
    words = list(vocab.tokens[2:]) + ["oov_word"]
    return [(k + 1, None, [words[i] for i in rng.integers(0, len(words), rng.integers(0, 9))]) for k in range(n)]


def _alone(config, vocab, params, tokens):
    """log P of one sentence computed on its own: <eos> + words -> words + <eos>, zero state."""
    ids = np.array([vocab.eos_id] + [vocab.index.get(w, vocab.unk_id) for w in tokens] + [vocab.eos_id])
    rows = np.empty((1, len(ids) - 1))
    state = model.init_state(config.model, 1, "float64")
    model.forward(params, config.model, ids[None, :-1], ids[None, 1:], state, need_grad=False, row_loss=rows)
    return -rows.sum()


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
@pytest.mark.parametrize("output", ["softmax", "class", "hsm"])
def test_independent_scores_equal_each_sentence_alone(cell, output):
    m = _model(cell, output)
    lines = _random_lines(m[1], 40, 1)
    for batch_size in (1, 5, 64):
        records = list(score.score_independent([m], [1.0], lines, batch_size))
        assert [r["line"] for r in records] == list(range(1, 41))
        for rec, (_, _, tokens) in zip(records, lines):
            assert rec["targets"] == len(tokens) + 1
            assert abs(rec["logprob"] - _alone(*m, tokens)) < 1e-9


@pytest.mark.parametrize("cell", ["elman", "lstm"])
@pytest.mark.parametrize("output", ["softmax", "class", "hsm"])
def test_carried_scores_sum_to_evals_total(cell, output):
    config, vocab, params = m = _model(cell, output, seed=2)
    lines = _random_lines(vocab, 30, 3)
    records = list(score.score_carried([m], [1.0], lines))
    stream = [vocab.eos_id]
    for _, _, tokens in lines:
        if tokens:
            stream += [vocab.index.get(w, vocab.unk_id) for w in tokens] + [vocab.eos_id]
    total, count = evaluate.evaluate_ids(params, config.model, np.array(stream), 1, config.train.bptt)
    assert sum(r["targets"] for r in records) == count
    assert abs(sum(r["logprob"] for r in records) + total) < 1e-9
    assert all(r["targets"] == 0 and r["logprob"] == 0 for r, (_, _, t) in zip(records, lines) if not t)


def test_independent_scores_do_not_depend_on_the_order_of_the_lines():
    m = _model("lstm", "softmax", seed=4)
    lines = _random_lines(m[1], 25, 5)
    forward = {tuple(t): r["logprob"] for (_, _, t), r in zip(lines, score.score_independent([m], [1.0], lines))}
    backward = list(reversed(lines))
    for (_, _, t), r in zip(backward, score.score_independent([m], [1.0], backward, 3)):
        assert r["logprob"] == pytest.approx(forward[tuple(t)], abs=1e-12)


def test_interpolation_is_the_weighted_sum_of_probabilities():
    a, b = _model("elman", "softmax", seed=6), _model("gru", "class", seed=7)
    lines = _random_lines(a[1], 10, 8)
    ra = list(score.score_independent([a], [1.0], lines))
    rb = list(score.score_independent([b], [1.0], lines))
    mixed = list(score.score_independent([a, b], [0.3, 0.7], lines))
    for x, y, z in zip(ra, rb, mixed):
        expect = [math.log(0.3 * math.exp(p) + 0.7 * math.exp(q)) for (_, p), (_, q) in zip(x["tokens"], y["tokens"])]
        assert [lp for _, lp in z["tokens"]] == pytest.approx(expect, abs=1e-12)
    only_a = list(score.score_independent([a, b], [1.0, 0.0], lines))
    assert [r["logprob"] for r in only_a] == [r["logprob"] for r in ra]  # exactly that model's figures


# --------------------------------------------------------------------------------------------
# Through the command line


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny trained models (float32 and float64, the same vocabulary) and a text file."""
    from conftest import write_corpus, write_tiny_config
    folder = tmp_path_factory.mktemp("score")
    config = write_tiny_config(folder, write_corpus(folder))
    train_mod.run(load_config(config), folder / "a")
    train_mod.run(load_config(config, ["train.dtype=float64", "model.cell=lstm", "train.seed=3"]), folder / "b")
    text = folder / "lines.txt"
    text.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return folder / "a", folder / "b", text


def test_plain_format_one_log10_per_line(models, run_cli):
    a, _, text = models
    code, out, err = run_cli("score", a, text)
    assert code == 0, err
    values = [float(v) for v in out.splitlines()]
    assert len(values) == len(LINES) and all(v < 0 for v in values)
    code, out_e, _ = run_cli("score", a, text, "--log-base", "e")
    assert [float(v) for v in out_e.splitlines()] == pytest.approx([v * math.log(10) for v in values], rel=1e-5)


def test_json_format_fields_and_words(models, run_cli):
    a, _, text = models
    code, out, err = run_cli("score", a, text, "--format", "json", "--words")
    recs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["line"] for r in recs] == list(range(1, len(LINES) + 1))
    third = recs[2]
    assert (third["words"], third["targets"], third["oov"]) == (6, 7, 1)  # "zebra" is not in the vocabulary
    assert [t for t, _ in third["tokens"]] == LINES[2].split() + ["<eos>"]
    assert sum(lp for _, lp in third["tokens"]) == pytest.approx(third["logprob"])
    assert third["log10prob"] == pytest.approx(third["logprob"] / math.log(10))
    assert third["perplexity"] == pytest.approx(math.exp(-third["logprob"] / 7))
    assert recs[1]["targets"] == 1 and recs[4]["targets"] == 1  # empty and blank lines: the <eos> alone
    code, out, _ = run_cli("score", a, text, "--format", "json")
    assert "tokens" not in json.loads(out.splitlines()[0])


def test_carry_sums_to_evals_total(models, run_cli):
    _, b, text = models
    code, out, _ = run_cli("score", b, text, "--carry", "--format", "json")
    recs = [json.loads(line) for line in out.splitlines()]
    code2, out2, _ = run_cli("eval", b, text, "--json")
    result = json.loads(out2)
    assert code == code2 == 0 and len(recs) == len(LINES)
    assert sum(r["targets"] for r in recs) == result["targets"]
    assert -sum(r["logprob"] for r in recs) == pytest.approx(result["cross_entropy"] * result["targets"], abs=1e-9)
    assert recs[1]["targets"] == 0 and recs[1]["perplexity"] is None


def test_nbest_ids_kaldi_and_srilm(models, run_cli, tmp_path):
    a, _, _ = models
    nbest = tmp_path / "nbest.txt"
    nbest.write_text("utt1-1 the cat sees the moon .\nutt1-2 the cat sees a moon .\nutt2-1\n", encoding="utf-8")
    code, out, _ = run_cli("score", a, nbest, "--nbest")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and [r[0] for r in rows] == ["utt1-1", "utt1-2", "utt2-1"]
    code, out_k, _ = run_cli("score", a, nbest, "--format", "kaldi")
    costs = [line.split(" ") for line in out_k.splitlines()]
    assert [c[0] for c in costs] == ["utt1-1", "utt1-2", "utt2-1"]
    assert [float(c[1]) for c in costs] == pytest.approx([-float(r[1]) * math.log(10) for r in rows], rel=1e-5)
    plain = tmp_path / "plain.txt"
    plain.write_text("the cat sees the moon .\n", encoding="utf-8")
    assert float(run_cli("score", a, plain)[1]) == pytest.approx(float(rows[0][1]))  # the id is not scored
    code, out_s, _ = run_cli("score", a, plain, "--format", "srilm", "--words")
    lines = out_s.splitlines()
    assert lines[0] == "the cat sees the moon ." and lines[1].startswith("\tp( the | <s> ) \t= [rnn] ")
    assert lines[7].startswith("\tp( </s> | . ... )")
    assert lines[8] == "1 sentences, 6 words, 0 OOVs" and lines[9].startswith("0 zeroprobs, logprob= ")
    assert lines[-2].startswith(f"file {plain}: 1 sentences, 6 words, 0 OOVs")


def test_oov_words_are_marked_as_scored_as_unk(models, run_cli):
    a, _, text = models
    recs = [json.loads(line) for line in run_cli("score", a, text, "--format", "json", "--words")[1].splitlines()]
    assert recs[2]["tokens"][3][0] == "zebra" and recs[2]["oov_positions"] == [3] and recs[2]["oov"] == 1
    assert all(r["oov_positions"] == [] for k, r in enumerate(recs) if k != 2)
    assert rnnlm_cli.load(a).score(LINES)[2]["oov_positions"] == [3]  # the Python API too
    code, out, _ = run_cli("score", a, text, "--format", "srilm", "--words")
    lines = out.splitlines()
    at = lines.index("a dog likes zebra today .")  # the sentence as it was written
    assert lines[at + 4].startswith("\tp( <unk> | likes ... ) \t= [rnn] "), lines[at:at + 9]  # as ngram -unk
    assert lines[at + 5].startswith("\tp( today | <unk> ... ) \t= [rnn] ")
    assert lines[at + 8] == "1 sentences, 6 words, 1 OOVs"
    assert "<unk>" not in "".join(lines[:at])


def test_sentence_markers_are_the_boundary_not_words(models, run_cli, tmp_path):
    a, _, _ = models
    marked, bare = tmp_path / "marked.txt", tmp_path / "bare.txt"
    marked.write_text("<s> the cat sees the moon . </s>\n<s> </s>\nthe <s> king finds </s> a\n\t<s>  a dog .  </s> \n",
                      encoding="utf-8")
    bare.write_text("the cat sees the moon .\n\nthe <s> king finds </s> a\na dog .\n", encoding="utf-8")
    for args in ([], ["--carry"]):
        got, want = (run_cli("score", a, f, "--format", "json", "--words", *args)[1] for f in (marked, bare))
        assert got == want and len(got.splitlines()) == 4, args  # markers inside a line stay words
    code, out, _ = run_cli("score", a, marked, "--format", "json", "--keep-sentence-markers")
    first = json.loads(out.splitlines()[0])
    assert code == 0 and (first["words"], first["oov"]) == (8, 2)  # as before: two unknown words
    nbest = tmp_path / "nbest.txt"
    nbest.write_text("utt1 <s> the cat sees the moon . </s>\nutt2 <s> </s>\n", encoding="utf-8")
    code, out, _ = run_cli("score", a, nbest, "--format", "kaldi")
    costs = [line.split(" ") for line in out.splitlines()]
    assert code == 0 and [c[0] for c in costs] == ["utt1", "utt2"]
    alone = json.loads(run_cli("score", a, bare, "--format", "json")[1].splitlines()[0])
    assert float(costs[0][1]) == pytest.approx(-alone["logprob"], abs=1e-6)


def test_sentence_markers_with_the_simple_tokenizer(tiny_config, tmp_path, run_cli):
    out = tmp_path / "simple"
    code, _, err = run_cli("train", tiny_config, "--set", "data.tokenizer=simple", "--set", "train.max_steps=2",
                           "--out", out, "-q")
    assert code == 0, err
    text = tmp_path / "t.txt"
    text.write_text("<s> The cat sees the moon. </s>\nthe cat sees the moon .\n", encoding="utf-8")
    first, second = (json.loads(line) for line in run_cli("score", out, text, "--format", "json")[1].splitlines())
    assert first["words"] == second["words"] == 6 and first["logprob"] == second["logprob"]


def test_an_nbest_line_without_an_id_is_refused_naming_it(models, run_cli, tmp_path):
    a, _, _ = models
    nbest = tmp_path / "nbest.txt"
    nbest.write_text("utt1 the cat sees the moon .\nutt2\n  \nutt3 a dog .\n", encoding="utf-8")
    for args in (["--format", "kaldi"], ["--nbest"], ["--nbest", "--carry"], ["--nbest", "--format", "json"]):
        code, out, err = run_cli("score", a, nbest, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith(f"error: {nbest}: line 3: an empty line, but --nbest"), err
    nbest.write_text("utt1 the cat sees the moon .\nutt2\n", encoding="utf-8")  # an id alone: an empty hypothesis
    code, out, err = run_cli("score", a, nbest, "--format", "kaldi")
    assert code == 0 and out.splitlines()[1].startswith("utt2 "), err


def test_score_reads_standard_input(models):
    a, _, text = models
    proc = subprocess.run([sys.executable, "-m", "rnnlm_cli.cli", "score", str(a)], input=text.read_bytes(),
                          capture_output=True)
    from_file = subprocess.run([sys.executable, "-m", "rnnlm_cli.cli", "score", str(a), str(text)],
                               capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == from_file.stdout and len(proc.stdout.splitlines()) == len(LINES)


def test_mix_weights_and_mix_probs(models, run_cli, tmp_path):
    a, b, text = models
    alone = run_cli("eval", a, text, "--json")[1]
    assert json.loads(run_cli("eval", a, text, "--json", "--mix", b, "--weights", "1,0")[1]) == json.loads(alone)
    mixed = json.loads(run_cli("eval", a, text, "--json", "--mix", b, "--weights", "0.5,0.5")[1])
    sa, sb = (json.loads(run_cli("eval", m, text, "--json")[1])["perplexity"] for m in (a, b))
    assert mixed["perplexity"] < max(sa, sb)
    # another LM's per-target probabilities: the model's own, in both layouts, give its figures back
    per_target = [lp for line in run_cli("score", a, text, "--carry", "--format", "json", "--words")[1].splitlines()
                  for _, lp in json.loads(line)["tokens"]]
    one_per_line = tmp_path / "probs.txt"
    one_per_line.write_text("".join(f"{math.exp(lp)!r}\n" for lp in per_target), encoding="utf-8")
    srilm = tmp_path / "srilm.txt"
    srilm.write_text("some sentence\n" + "".join(f"\tp( w | h ...) \t= [2gram] {math.exp(lp)!r} [ {lp / math.log(10)} ]\n"
                                                 for lp in per_target) + "1 sentences, 3 words, 0 OOVs\n", encoding="utf-8")
    for probs in (one_per_line, srilm):
        code, out, err = run_cli("eval", a, text, "--json", "--mix-probs", probs, "--weights", "0.5,0.5")
        assert code == 0, err
        assert json.loads(out)["perplexity"] == pytest.approx(json.loads(alone)["perplexity"], rel=1e-6)


@pytest.mark.parametrize("args, fragment", [
    (["--mix", "{b}", "--weights", "0.5,0.6"], "sum to 1.1"),
    (["--mix", "{b}", "--weights", "0.5"], "1 weight(s) for 2 component(s)"),
    (["--mix", "{b}", "--weights", "a,b"], "comma-separated numbers"),
    (["--mix", "{other}"], "vocabulary differs"),
    (["--dynamic", "-1"], "--dynamic -1.0"),
    (["--mix-probs", "{bad_probs}"], "line 2"),
])
def test_bad_mixing_options_are_one_line_errors(models, run_cli, tmp_path, tiny_config, args, fragment):
    a, b, text = models
    other = tmp_path / "other"
    train_mod.run(load_config(tiny_config, ["vocab.max_size=20", "train.max_steps=1"]), other)
    bad_probs = tmp_path / "bad.txt"
    bad_probs.write_text("0.5\n1.5\n", encoding="utf-8")
    args = [x.format(b=b, other=other, bad_probs=bad_probs) for x in args]
    for command in ("eval", "score"):
        code, out, err = run_cli(command, a, text, *args)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_dynamic_evaluation(models, run_cli):
    a, b, text = models
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    static = json.loads(run_cli("eval", b, text, "--json")[1])
    zero = json.loads(run_cli("eval", b, text, "--json", "--dynamic", "0")[1])
    assert zero["perplexity"] == static["perplexity"]
    repeated = text.parent / "repeated.txt"
    repeated.write_text(text.read_text() * 20, encoding="utf-8")
    plain = json.loads(run_cli("eval", b, repeated, "--json")[1])
    adapted = json.loads(run_cli("eval", b, repeated, "--json", "--dynamic", "0.5")[1])
    assert adapted["perplexity"] < plain["perplexity"]  # it learns the repeated text as it reads it
    scored = run_cli("score", b, repeated, "--carry", "--dynamic", "0.5", "--format", "json")[1].splitlines()
    total = -sum(json.loads(line)["logprob"] for line in scored)
    assert total == pytest.approx(adapted["cross_entropy"] * adapted["targets"], rel=1e-9)
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before  # the model directory is never modified
    code, _, err = run_cli("score", b, text, "--dynamic", "0.1")
    assert code == 2 and "--dynamic needs --carry" in err


def test_python_api_gives_the_commands_numbers(models, run_cli):
    a, _, text = models
    lm = rnnlm_cli.load(a)
    recs = lm.score(LINES)
    cli_recs = [json.loads(line) for line in run_cli("score", a, text, "--format", "json", "--words")[1].splitlines()]
    assert [r["logprob"] for r in recs] == [r["logprob"] for r in cli_recs]
    assert lm.evaluate(text)["perplexity"] == json.loads(run_cli("eval", a, text, "--json")[1])["perplexity"]
    assert lm.sample(prompt="the cat", words=8, seed=3) == [run_cli("sample", a, "--prompt", "the cat", "--words", 8,
                                                                     "--seed", 3)[1].rstrip("\n")]
    assert len(lm.sample(count=3, seed=1, top_p=0.9)) == 3


def test_sample_top_p_and_count(models, run_cli):
    a, _, _ = models
    code, out, _ = run_cli("sample", a, "--count", 4, "--seed", 7, "--words", 30)
    samples = out.splitlines()
    assert code == 0 and len(samples) == 4
    for k, text in enumerate(samples):  # each sample is reproducible on its own
        alone = run_cli("sample", a, "--seed", 7 + k, "--words", 30, "--stop-at-eos")[1].rstrip("\n")
        assert text == alone.replace("\n", " ").strip()
    greedy = run_cli("sample", a, "--temperature", 0, "--words", 12)[1]
    nucleus = run_cli("sample", a, "--top-p", 1e-9, "--words", 12, "--seed", 5)[1]
    assert nucleus == greedy  # a tiny nucleus holds only the most likely word
    code, _, err = run_cli("sample", a, "--top-p", 1.5)
    assert code == 2 and "--top-p" in err


def test_an_independent_model_trains_and_evaluates_exactly_batched(tiny_config, tmp_path, run_cli):
    out = tmp_path / "indep"
    code, _, err = run_cli("train", tiny_config, "--set", "data.independent=true", "--set", "train.dtype=float64",
                           "--out", out, "-q")
    assert code == 0, err
    figures = [json.loads(run_cli("eval", out, "--json", "--batch-size", n)[1]) for n in (1, 3, 16)]
    assert len({f["targets"] for f in figures}) == 1
    assert figures[1]["cross_entropy"] == pytest.approx(figures[0]["cross_entropy"], rel=1e-12)
    assert figures[2]["cross_entropy"] == pytest.approx(figures[0]["cross_entropy"], rel=1e-12)
    code, out_gc, _ = run_cli("gradcheck", "--set", "data.independent=true", "--set", "model.cell=gru")
    assert code == 0 and "sentence resets" in out_gc


@pytest.mark.parametrize("content, fragment", [
    (None, "no such file"),
    (b"\x00\x01binary", "NUL byte"),
    (b"caf\xe9 latin-1\n", "invalid UTF-8"),
])
def test_bad_input_files_are_one_line_errors(models, run_cli, tmp_path, content, fragment):
    a, _, _ = models
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    for args in (["score", a, path], ["score", a, path, "--carry"], ["eval", a, path, "--dynamic", "0.1"]):
        code, out, err = run_cli(*args)
        assert code == 2 and fragment in err and str(path) in err and len(err.strip().splitlines()) == 1, err


def test_a_damaged_model_is_refused_by_score(models, run_cli, tmp_path):
    import shutil
    a, _, text = models
    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    (broken / "weights.npz").write_bytes(b"not a zip")
    code, _, err = run_cli("score", broken, text)
    assert code == 2 and "weights.npz" in err and "Traceback" not in err
