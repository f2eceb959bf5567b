"""Generating text: condition the state on `<eos>` + the prompt, then draw one word at a time."""

import numpy as np

from . import data, model
from .errors import UserError


def pick(probs, rng, temperature, top_k):
    """The next word id from probabilities (V,) already sharpened by the temperature.
    temperature 0 is greedy (argmax); top_k keeps only the k most likely words."""
    if temperature == 0 or top_k == 1:
        return int(np.argmax(probs))
    if top_k is not None and top_k < probs.shape[0]:
        cut = np.partition(probs, -top_k)[-top_k]
        probs = np.where(probs >= cut, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.shape[0], p=probs))


def generate(params, model_cfg, prompt_ids, eos_id, words, temperature=1.0, top_k=None, seed=0,
             stop_at_eos=False):
    """Yield `words` generated word ids after conditioning on `<eos>` + prompt_ids.

    The state starts at zero and reads `<eos>` first, as every token stream does (docs/model-directory.md), so an
    empty prompt samples from the start of a sentence."""
    rng = np.random.default_rng(seed)
    dtype = params["embedding"].dtype
    state = model.init_state(model_cfg, 1, dtype)
    context = [eos_id] + list(prompt_ids)
    if len(context) > 1:  # all but the last only move the state: no output layer needed
        _, state, _ = model.hidden_forward(params, model_cfg, np.array(context[:-1])[:, None], state)
    current = context[-1]
    for _ in range(words):
        probs, state = model.step_probs(params, model_cfg, np.array([current]), state,
                                        temperature if temperature > 0 else 1.0)
        current = pick(probs[0], rng, temperature, top_k)
        yield current
        if stop_at_eos and current == eos_id:
            return


def sample_text(params, config, vocab, prompt, words, temperature=1.0, top_k=None, seed=0, stop_at_eos=False,
                model_dir="model"):
    """-> (the prompt's tokens and `words` generated words as text, <eos> as a line break;
    the prompt's words that are not in the vocabulary, read as <unk>)."""
    tokens = data.tokenize(prompt, config.data.tokenizer)
    unknown = [w for w in tokens if w not in vocab.index]
    prompt_ids = [vocab.index.get(w, vocab.unk_id) for w in tokens]
    out = list(tokens)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for i in generate(params, config.model, prompt_ids, vocab.eos_id, words, temperature, top_k, seed,
                              stop_at_eos):
                out.append(vocab.tokens[i])
    except ValueError as e:
        if "probabilit" not in str(e).lower():
            raise
        raise UserError(f"{model_dir}: the model gives no valid probabilities ({e}); are its weights "
                        f"absurdly large?") from None
    text = " ".join(out).replace(" <eos> ", "\n").replace("<eos> ", "\n").replace(" <eos>", "\n")
    return text.replace("<eos>", "\n").rstrip("\n"), unknown
