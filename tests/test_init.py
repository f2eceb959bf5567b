"""--init on new text: the warning when the init model's vocabulary covers it poorly, and
--init-vocab new (the vocabulary built from the new text, the shared words' rows copied)."""

import random
import textwrap

import numpy as np
import pytest
from conftest import weights, write_corpus, write_tiny_config

from rnnlm_cli import output
from rnnlm_cli.config import ModelConfig, load_config
from rnnlm_cli.model import init_params
from rnnlm_cli.vocab import load_vocab


def _sea_sentences(seed, n):
    """Another grammar: a few words shared with conftest's ('the', 'a', 'sees', '.'), most new."""
    rng = random.Random(seed)
    subjects = ["the fish", "a whale", "the old crab", "a gull", "the cat"]
    verbs = ["sees", "eats", "chases", "hides near"]
    objects = ["the reef", "a shell", "the tide", "a wave", "the shore"]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(n)]


@pytest.fixture(scope="module")
def sea(tmp_path_factory):
    """(folder, config path) of the new text, data paths relative to the folder."""
    folder = tmp_path_factory.mktemp("sea")
    for name, seed, n in (("train", 11, 300), ("valid", 12, 40), ("test", 13, 40)):
        (folder / f"sea-{name}.txt").write_text("\n".join(_sea_sentences(seed, n)) + "\n", encoding="utf-8")
    config = folder / "sea.yaml"
    config.write_text(textwrap.dedent("""\
        data: {train: sea-train.txt, valid: sea-valid.txt, test: sea-test.txt}
        model: {embedding_dim: 8, hidden_dim: 12}
        train: {batch_size: 4, bptt: 6, epochs: 1, clip_norm: 1.0, eval_batch_size: 2}
        """), encoding="utf-8")
    return folder, config


# One update with a vanishing rate: the weights written are the starting ones to 1e-6.
FROZEN = ("--set", "train.max_steps=1", "--set", "train.lr=1e-12")


def _base(tmp_path, run_cli, *settings):
    """A model trained on conftest's corpus (with `settings`) -> (its folder, its config)."""
    config = write_tiny_config(tmp_path, write_corpus(tmp_path))
    out = tmp_path / "base"
    code, _, err = run_cli("train", config, *[a for s in settings for a in ("--set", s)], "--out", out, "-q")
    assert code == 0, err
    return out, config


def test_init_warns_when_its_vocabulary_covers_the_new_text_poorly(tmp_path, sea, run_cli):
    base, base_config = _base(tmp_path, run_cli)
    code, out, err = run_cli("train", sea[1], "--init", base, "--out", tmp_path / "kept", "-q")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--init-vocab new" in warning[0], err
    kept_vocab = load_vocab(base / "vocab.txt")
    assert load_vocab(tmp_path / "kept" / "vocab.txt") == kept_vocab  # the default keeps it, as before
    words = (sea[0] / "sea-train.txt").read_text().split()
    oov = sum(w not in kept_vocab.index for w in words) / (len(words) + 300)
    assert f"{oov:.2%}" in warning[0] and oov > 0.05
    # text the init model covers: no warning
    code, _, err = run_cli("train", base_config, "--init", base, "--out", tmp_path / "same", "-q")
    assert code == 0 and "warning" not in err, err


@pytest.mark.parametrize("settings", [[], ["model.output=class", "model.classes=4"],
                                      ["model.cell=lstm", "model.tie_weights=true", "model.embedding_dim=12"]])
def test_init_vocab_new_copies_the_shared_words_rows(tmp_path, sea, run_cli, settings):
    base, _ = _base(tmp_path, run_cli, *settings)
    out = tmp_path / "new"
    args = [a for s in settings for a in ("--set", s)]
    code, _, err = run_cli("train", sea[1], *args, "--init", base, "--init-vocab", "new", "--out", out, *FROZEN)
    assert code == 0, err
    assert "warning" not in err and "rows copied" in err, err
    old_vocab, new_vocab = load_vocab(base / "vocab.txt"), load_vocab(out / "vocab.txt")
    code, _, _ = run_cli("vocab", sea[0] / "sea-train.txt", "--save", tmp_path / "v.txt")
    assert new_vocab == load_vocab(tmp_path / "v.txt")  # built from the new text
    shared = [w for w in new_vocab.tokens if w in old_vocab.index]
    assert 4 < len(shared) < len(new_vocab) - 5
    new_ids = [new_vocab.index[w] for w in shared]
    old_ids = [old_vocab.index[w] for w in shared]
    old, new = weights(base), weights(out)
    config = load_config(sea[1], settings)
    counts = np.bincount(np.array([new_vocab.index[w] for w in
                                   ["<eos>"] + (sea[0] / "sea-train.txt").read_text().replace("\n", " <eos> ").split()]),
                         minlength=len(new_vocab))
    fresh = init_params(config.model, len(new_vocab), config.train.seed, "float32", counts)
    assert set(new) == set(fresh)
    axes = {"embedding": 0, **output.word_axes(config.model)}
    for key, value in new.items():
        if key in axes:
            a = axes[key]
            np.testing.assert_allclose(np.take(value, new_ids, a), np.take(old[key], old_ids, a), atol=1e-6)
            others = [i for i in range(len(new_vocab)) if i not in new_ids]
            np.testing.assert_allclose(np.take(value, others, a), np.take(fresh[key], others, a), atol=1e-6)
        elif key.startswith("rnn."):
            np.testing.assert_allclose(value, old[key], atol=1e-6, err_msg=key)  # the recurrent layers whole
        else:  # class arrays: rebuilt from the new frequencies, initialized as usual
            np.testing.assert_allclose(value, fresh[key], atol=1e-6, err_msg=key)
            if not np.issubdtype(value.dtype, np.floating):
                assert value.shape != old[key].shape or not np.array_equal(value, old[key]), key


def test_init_vocab_new_lowers_the_oov_rate_and_needs_init(tmp_path, sea, run_cli):
    base, _ = _base(tmp_path, run_cli)
    rates = {}
    for mode in ("keep", "new"):
        code, _, err = run_cli("train", sea[1], "--init", base, "--init-vocab", mode, "--out", tmp_path / mode, "-q")
        assert code == 0, err
        code, out, _ = run_cli("eval", tmp_path / mode, "--json")
        rates[mode] = float(out.split('"oov_rate": ')[1].split(",")[0])
    assert rates["new"] < 0.01 < 0.05 < rates["keep"]
    code, _, err = run_cli("train", sea[1], "--init-vocab", "new", "--out", tmp_path / "x")
    assert code == 2 and "--init" in err and not (tmp_path / "x").exists()


def test_every_output_kind_says_which_arrays_follow_the_words():
    for name, module in output.KINDS.items():
        cfg = ModelConfig(output=name, hidden_dim=4, classes=2)
        shapes = module.param_shapes(cfg, 10)
        assert isinstance(module.WORD_AXES, dict), name
        if module.TIED is not None:  # a kind with a word matrix declares it (hsm has none: its nodes follow the tree)
            assert module.TIED in module.WORD_AXES, name
        for key, axis in module.WORD_AXES.items():
            assert key in shapes and shapes[key][axis] == 10, (name, key)


@pytest.mark.parametrize("settings,fragments", [
    (["model.output=class"], ["model.output: softmax there, class here", "--set model.output=softmax"]),
    (["model.cell=lstm"], ["model.cell: elman there, lstm here", "--set model.cell=elman"]),
    (["model.hidden_dim=16", "model.layers=2"], ["model.hidden_dim: 12 there, 16 here", "model.layers: 1 there, 2 here"]),
    (["model.activation=relu"], ["model.activation: tanh there, relu here"]),
    (["data.tokenizer=simple"], ["data.tokenizer: whitespace there, simple here", "--init-vocab new"]),
])
def test_init_names_the_config_keys_its_model_does_not_fit(tmp_path, run_cli, settings, fragments):
    base, config = _base(tmp_path, run_cli)
    args = [a for s in settings for a in ("--set", s)]
    for extra in ([], ["--dry-run"]):  # the dry run checks it too
        code, _, err = run_cli("train", config, *args, "--init", base, "--out", tmp_path / "never", *extra)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --init {base}: its model does not "
                                                                     f"fit this config: "), err
        for fragment in fragments:
            assert fragment in lines[0], (fragment, err)
        assert "array" not in lines[0]
    assert not (tmp_path / "never").exists()


def test_init_vocab_new_may_read_the_text_with_another_tokenizer(tmp_path, run_cli):
    base, config = _base(tmp_path, run_cli)
    code, _, err = run_cli("train", config, "--set", "data.tokenizer=simple", "--init", base, "--init-vocab", "new",
                           "--out", tmp_path / "new", *FROZEN)
    assert code == 0, err
