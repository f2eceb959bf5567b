"""The Python API: a small, stable surface for scripts, giving the same numbers as the commands.

    import rnnlm_cli
    lm = rnnlm_cli.load("runs/default")
    lm.score(["and god said", "let there be light"])   # like `rnnlm score --format json`
    lm.evaluate("data/test.txt")                        # like `rnnlm eval --json`
    lm.evaluate("data/test.txt", cache=500)             # like `rnnlm eval --json --cache 500`
    lm.tune(cache=500, dynamic="sgd")                   # like `rnnlm tune --json --cache 500 --dynamic sgd`
    lm.sample(prompt="and god", words=20, seed=1)        # like `rnnlm sample`

Errors are rnnlm_cli.errors.UserError (bad files, options) with the same one-line messages the
commands print.
"""

import dataclasses

from . import cache as neural_cache, mix, modeldir, sample, score
from . import dynamic as dyn
from .errors import UserError

DYNAMIC_KEYS = ("rule", "segment", "decay", "epsilon", "stats", "stats_from")


def load(model_dir):
    """The model in a model directory (as `rnnlm eval` reads it) -> LanguageModel."""
    return LanguageModel(model_dir)


class LanguageModel:
    """A trained model: `config`, `vocab` (tokens, index) and `params` (the weights.npz arrays)."""

    def __init__(self, model_dir):
        self.path = str(model_dir)
        self.config, self.vocab, self.params = modeldir.load_model(model_dir)
        self._plans = {}

    def __repr__(self):
        m = self.config.model
        return (f"LanguageModel({self.path!r}: {m.cell} {m.layers}x{m.hidden_dim}, output {m.output}, "
                f"vocabulary {len(self.vocab)})")

    def score(self, sentences, *, carry=False, mix_with=(), weights=None, dynamic=None, batch_size=32, cache=0,
              cache_theta=1.0, cache_lambda=0.1, keep_sentence_markers=False, **dynamic_options):
        """One dict per sentence (a string, tokenized like the training data), the same figures
        as `rnnlm score --format json --words`: line, words, targets, oov, logprob (natural log),
        log10prob, perplexity, tokens ([token, logprob] per target, the final <eos> included)
        and oov_positions (the indexes in tokens of the words scored as <unk>). A leading <s>
        and a trailing </s> are dropped unless keep_sentence_markers (as the command's
        --keep-sentence-markers). Independent sentences unless carry=True (one stream, as `--carry`).
        mix_with: other LanguageModels to interpolate with `weights` (this model's first).
        cache W > 0 (with carry=True): the neural cache, as `--cache W --cache-theta θ
        --cache-lambda λ`. dynamic: the learning rate of dynamic evaluation (carry=True), with
        the options of `--dynamic-*` as keywords: dynamic_rule, dynamic_segment, dynamic_decay,
        dynamic_epsilon, dynamic_stats, dynamic_stats_from."""
        if isinstance(sentences, str):
            raise UserError("score: give a list of sentences (a single string would be read as characters)")
        components = [self._parts()] + [other._parts() for other in mix_with]
        mixed_weights = (mix.parse_weights(",".join(map(str, weights)), len(components)) if weights is not None
                         else [1.0 / len(components)] * len(components))
        if dynamic is not None and not carry:
            raise UserError("score: dynamic needs carry=True (dynamic evaluation reads one stream)")
        settings = neural_cache.settings(cache, cache_theta, cache_lambda)
        if settings is not None and not carry:
            raise UserError("score: cache needs carry=True (the cache remembers the stream read so far; independent "
                            "sentences have none)")
        lines = [(k + 1, None, score.line_tokens(text, self.config.data.tokenizer, keep_sentence_markers))
                 for k, text in enumerate(sentences)]
        plans = self._dynamic_plans(components, dynamic, dynamic_options)
        records = (score.score_carried(components, mixed_weights, lines, plans, None, settings) if carry
                   else score.score_independent(components, mixed_weights, lines, batch_size))
        return [dict(rec, tokens=[list(pair) for pair in rec["tokens"]]) for rec in records]

    def evaluate(self, path, *, batch_size=1, dynamic=None, cache=0, cache_theta=1.0, cache_lambda=0.1,
                 **dynamic_options):
        """The figures of `rnnlm eval --json` for one text file; cache W > 0: with the neural
        cache, as `--cache W --cache-theta θ --cache-lambda λ`; dynamic and the dynamic_*
        keywords as in `score`."""
        components, weights = [self._parts()], [1.0]
        settings = neural_cache.settings(cache, cache_theta, cache_lambda)
        plans = self._dynamic_plans(components, dynamic, dynamic_options)
        return mix.evaluate_file(components, weights, path, batch_size, plans, None, self.path, settings)

    def tune(self, path=None, *, cache=None, dynamic=None, mix_with=(), mix_probs=None, dynamic_lr=None,
             dynamic_segment=None, dynamic_stats=None, dynamic_stats_from=None):
        """The search of `rnnlm tune` on the text file `path` (default: the model's valid file; never
        its test file), as a dict: the object `rnnlm tune --json` prints (rows, best, flags).
        cache=W tunes the cache's θ and λ at window W; dynamic="sgd" or "rms" dynamic evaluation
        (dynamic_lr: where its learning rate's search starts; the other dynamic_* keywords as in
        `score`, not tuned); mix_with (other LanguageModels) and mix_probs (a file of per-target
        probabilities) the interpolation weights."""
        from . import tune
        settings = tune.request(cache, dynamic, bool(mix_with) or mix_probs is not None, lr=dynamic_lr,
                                segment=dynamic_segment, stats=dynamic_stats, stats_from=dynamic_stats_from)
        for other in mix_with:
            mix.check_same_vocabulary(self.path, self._parts(), other.path, other._parts())
        path = tune.validation_file(self.config, None if path is None else str(path), self.path)
        search = tune.Search([self._parts()] + [other._parts() for other in mix_with], path, mix_probs,
                             [other.path for other in mix_with])
        return search.run(cache, settings, dynamic_lr)

    def sample(self, prompt="", *, words=50, temperature=1.0, top_k=None, top_p=None, seed=0, count=1,
               stop_at_eos=False):
        """A list of `count` generated texts, as `rnnlm sample` prints them (<eos> as a line
        break; with count > 1 each sample is one sentence drawn with seed + k)."""
        texts, _ = sample.sample_texts(self.params, self.config, self.vocab, prompt, words, temperature, top_k, seed,
                                       stop_at_eos, self.path, top_p, count)
        return texts

    def _parts(self):
        return self.config, self.vocab, self.params

    def _dynamic_plans(self, components, lr, options):
        """The models' dynamic.Plans for these settings (None: static), the rms statistics
        computed once per model and settings and kept for the next call."""
        given = {}
        for keyword, value in options.items():
            if not keyword.startswith("dynamic_") or keyword[len("dynamic_"):] not in DYNAMIC_KEYS:
                raise UserError(f"unexpected keyword {keyword!r} (dynamic evaluation takes "
                                f"{', '.join('dynamic_' + k for k in DYNAMIC_KEYS)})")
            if value is not None:
                given[keyword[len("dynamic_"):]] = value
        if lr is None:
            if given:
                raise UserError(f"dynamic_{next(iter(given))}: needs dynamic=LR (the learning rate of dynamic "
                                f"evaluation)")
            return None
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise UserError(f"dynamic={lr!r}: the learning rate must be a number")
        settings = dyn.check(dyn.Settings(float(lr), **given))
        # the statistics depend on the rule, segment and text only: one computation serves every LR, λ and ε
        reading = dataclasses.replace(settings, lr=1.0, decay=0.0, epsilon=dyn.Settings.epsilon)
        key = (reading, tuple(id(params) for _, _, params in components))
        if key not in self._plans:  # the models are kept with their plans, so their ids stay theirs
            self._plans[key] = ([params for _, _, params in components], mix.dynamic_plans(components, reading))
        return [plan._replace(settings=dataclasses.replace(settings, segment=plan.settings.segment))
                for plan in self._plans[key][1]]
