"""Generating text: condition the state on `<eos>` + the prompt, then draw one word at a time."""

import math

import numpy as np

from . import data, model
from .errors import UserError


def pick(probs, rng, temperature, top_k, top_p=None):
    """The next word id from probabilities (V,) already sharpened by the temperature.
    temperature 0 is greedy (argmax); top_k keeps only the k most likely words; top_p (nucleus
    sampling, Holtzman et al.) keeps the fewest most likely words whose probabilities sum to at
    least top_p."""
    if temperature == 0 or top_k == 1:
        return int(np.argmax(probs))
    if top_k is not None and top_k < probs.shape[0]:
        cut = np.partition(probs, -top_k)[-top_k]
        probs = np.where(probs >= cut, probs, 0.0)
        probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        kept = order[:int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]  # the nucleus
        nucleus = np.zeros_like(probs)
        nucleus[kept] = probs[kept]
        probs = nucleus / nucleus.sum()
    return int(rng.choice(probs.shape[0], p=probs))


def generate(params, model_cfg, prompt_ids, eos_id, words, temperature=1.0, top_k=None, seed=0,
             stop_at_eos=False, top_p=None, reset_at=None, never=()):
    """Yield `words` generated word ids after conditioning on `<eos>` + prompt_ids; the ids in
    `never` (e.g. <unk>) get probability 0 and the rest is renormalized.

    The state starts at zero and reads `<eos>` first, as every token stream does
    (docs/model-directory.md), so an empty prompt samples from the start of a sentence.
    `reset_at` (<eos>, for a model trained with data.independent) resets the state whenever it
    is read, so each generated sentence starts afresh as in training."""
    rng = np.random.default_rng(seed)
    dtype = params["embedding"].dtype
    state = model.init_state(model_cfg, 1, dtype)
    context = [eos_id] + list(prompt_ids)
    if len(context) > 1:  # all but the last only move the state: no output layer needed
        _, state, _ = model.hidden_forward(params, model_cfg, np.array(context[:-1])[:, None], state,
                                           reset_at=reset_at)
    current = context[-1]
    for _ in range(words):
        probs, state = model.step_probs(params, model_cfg, np.array([current]), state,
                                        temperature if temperature > 0 else 1.0, reset_at)
        if never:
            probs[0, list(never)] = 0.0
            probs[0] /= probs[0].sum()
        current = pick(probs[0], rng, temperature, top_k, top_p)
        yield current
        if stop_at_eos and current == eos_id:
            return


def sample_text(params, config, vocab, prompt, words, temperature=1.0, top_k=None, seed=0, stop_at_eos=False,
                model_dir="model", top_p=None, no_unk=False):
    """-> (the prompt's tokens and `words` generated words as text, <eos> as a line break;
    the prompt's words that are not in the vocabulary, read as <unk>, each once). `no_unk`:
    never draw <unk>."""
    tokens = data.tokenize(prompt, config.data.tokenizer)
    unknown = list(dict.fromkeys(w for w in tokens if w not in vocab.index))
    prompt_ids = [vocab.index.get(w, vocab.unk_id) for w in tokens]
    reset_at = vocab.eos_id if config.data.independent else None
    out = list(tokens)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for i in generate(params, config.model, prompt_ids, vocab.eos_id, words, temperature, top_k, seed,
                              stop_at_eos, top_p, reset_at, (vocab.unk_id,) if no_unk else ()):
                out.append(vocab.tokens[i])
    except ValueError as e:
        if "probabilit" not in str(e).lower():
            raise
        raise UserError(f"{model_dir}: the model gives no valid probabilities ({e}); are its weights "
                        f"absurdly large?") from None
    text = " ".join(out).replace(" <eos> ", "\n").replace("<eos> ", "\n").replace(" <eos>", "\n")
    return text.replace("<eos>", "\n").rstrip("\n"), unknown


def check_options(temperature, top_k, top_p, count, vocab_size):
    """UserError for a sampling option out of range (what the commands and the API share)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or temperature < 0 or \
            0 < temperature < 1e-6:
        raise UserError(f"--temperature {temperature}: must be 0 (greedy) or a finite number >= 1e-6")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k {top_k}: must be at least 1")
    if top_k is not None and top_k > vocab_size:
        raise UserError(f"--top-k {top_k}: larger than the vocabulary ({vocab_size} words)")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p}: must be in (0, 1]")
    if count < 1:
        raise UserError(f"--count {count}: must be at least 1")


def sample_texts(params, config, vocab, prompt, words, temperature=1.0, top_k=None, seed=0, stop_at_eos=False,
                 model_dir="model", top_p=None, count=1, no_unk=False):
    """-> ([count] texts, unknown prompt words). count 1 is sample_text's text; with count > 1
    sample k is drawn with seed + k and ends at its first <eos> (one sentence per sample, one
    line each), so each is reproducible on its own: `--seed S+k --stop-at-eos` gives it again."""
    check_options(temperature, top_k, top_p, count, len(vocab))
    texts, unknown = [], []
    for k in range(count):
        text, unknown = sample_text(params, config, vocab, prompt, words, temperature, top_k, seed + k,
                                    stop_at_eos or count > 1, model_dir, top_p, no_unk)
        texts.append(text.replace("\n", " ") if count > 1 else text)
    return texts, unknown
