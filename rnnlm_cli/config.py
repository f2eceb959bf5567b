"""The YAML config: defaults < config file < `--set` overrides, validated before any work starts.

A config has four sections (`data`, `vocab`, `model`, `train`), each a dataclass below. Every key
has a type, and numbers a range; an unknown key is an error that suggests the closest valid key.
Relative paths in `data` resolve against the folder of the config file they came from.
"""

import dataclasses
import difflib
import glob
import re
import reprlib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, open_failed


def _key(default, *, choices=None, low=None, high=None, low_open=False, nullable=False, many=False, words=(),
         doc=""):
    """A config key: its default, the allowed choices or numeric range, and a one-line doc.
    `many`: a string key that also takes a non-empty list of strings; `words`: the strings a
    number key also takes (train.average: auto)."""
    meta = dict(choices=choices, low=low, high=high, low_open=low_open, nullable=nullable, many=many, words=words,
                doc=doc)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    train: str | list | None = _key(None, nullable=True, many=True,
                                    doc="training text (UTF-8, one sentence per line): a file, a glob pattern or a "
                                        "list of them, read in order as one text; required")
    valid: str | None = _key(None, nullable=True,
                             doc="validation text: picks the kept model and drives the lr schedule; required")
    test: str | None = _key(None, nullable=True, doc="test text, evaluated at the end (optional)")
    tokenizer: str = _key("whitespace", choices=("whitespace", "simple"),
                          doc="whitespace: pre-tokenized text; simple: lowercase, split punctuation")
    cache_dir: str | None = _key(None, nullable=True,
                                 doc="folder of the token cache (null: $RNNLM_CACHE_DIR, else "
                                     "$XDG_CACHE_HOME/rnnlm, else ~/.cache/rnnlm)")
    independent: bool = _key(False, doc="every sentence starts from the zero state (the state is reset at each "
                                        "<eos>), in training and evaluation")


@dataclass
class VocabConfig:
    min_count: int = _key(1, low=1, doc="drop words seen fewer times in train (they become <unk>)")
    max_size: int | None = _key(None, low=3, nullable=True,
                                doc="cap on the vocabulary size, <unk> and <eos> included")
    file: str | None = _key(None, nullable=True,
                            doc="a fixed vocabulary (SRILM's -vocab): a word list, one word per line; each of its "
                                "words gets an id, in data.train or not, any other word is <unk>; min_count and "
                                "max_size are not used (null: the vocabulary is built from data.train)")


@dataclass
class ModelConfig:
    cell: str = _key("elman", choices=("elman", "lstm", "gru"), doc="recurrent cell")
    activation: str = _key("tanh", choices=("sigmoid", "tanh", "relu"), doc="Elman activation f (LSTM/GRU: fixed)")
    embedding_dim: int = _key(64, low=1, doc="E: size of a word's input vector")
    hidden_dim: int = _key(128, low=1, doc="H: size of each layer's hidden state")
    layers: int = _key(1, low=1, doc="L: stacked recurrent layers")
    loss: str = _key("cross_entropy", choices=("cross_entropy", "squared_error"), doc="per-target loss")
    output: str = _key("softmax", choices=("softmax", "class", "hsm"),
                       doc="softmax: full softmax over V; class: Mikolov's class-factored softmax (exact); "
                           "hsm: hierarchical softmax over a Huffman tree of the train frequencies (exact)")
    classes: int | None = _key(None, low=1, nullable=True, doc="class output: number of classes (null: about √V)")
    dropout: float = _key(0.0, low=0.0, high=0.95,
                          doc="dropout on the non-recurrent connections (Zaremba et al.), training only: before "
                              "the output layer, and the default of dropout_input and dropout_between")
    dropout_input: float | None = _key(None, low=0.0, high=0.95, nullable=True,
                                       doc="dropout on the embedding output (null: model.dropout)")
    dropout_between: float | None = _key(None, low=0.0, high=0.95, nullable=True,
                                         doc="dropout between recurrent layers (null: model.dropout)")
    dropout_locked: bool = _key(False, doc="variational (locked) dropout: one mask per stream per window, the "
                                           "same at every time step, for the three dropouts above")
    dropout_embedding: float = _key(0.0, low=0.0, high=0.95,
                                    doc="word-type dropout: each window drops every word id's embedding row with "
                                        "this probability (all its occurrences), survivors scaled by 1/(1-p)")
    weight_drop: float = _key(0.0, low=0.0, high=0.95,
                              doc="DropConnect on every layer's W_h: one mask over its entries per window, shared "
                                  "by every stream and step, survivors scaled by 1/(1-p)")
    tie_weights: bool = _key(False, doc="output.W is embedding transposed (needs embedding_dim = hidden_dim)")
    init: str = _key("torch", choices=("torch", "uniform"),
                     doc="torch: recurrent weights ±1/sqrt(H), the rest ±init_scale; uniform: all ±init_scale")
    init_scale: float = _key(0.1, low=0.0, low_open=True, doc="range of the uniform initialization")
    forget_bias: float = _key(0.0, doc="LSTM: initial bias of the forget gate")


@dataclass
class TrainConfig:
    batch_size: int = _key(20, low=1, doc="N: parallel streams the training text is cut into")
    bptt: int = _key(35, low=1, doc="T: time steps per window of truncated BPTT")
    epochs: int = _key(10, low=1, doc="upper bound on passes over the training text")
    max_steps: int | None = _key(None, low=1, nullable=True, doc="stop after this many updates (null: no limit)")
    optimizer: str = _key("sgd", choices=("sgd", "adam", "lazy_adam"),
                          doc="sgd: θ ← θ − lr·∇θJ; adam: Kingma & Ba; lazy_adam: adam, but the rows of "
                              "sparse gradients (embedding, class columns, hsm nodes) a window did not touch "
                              "keep their moments and weights (PyTorch's SparseAdam)")
    lr: float = _key(1.0, low=0.0, low_open=True, words=("auto",),
                     doc="learning rate (auto: the rate measured to work for model.cell and train.optimizer, "
                         "see docs/training.md)")
    clip_norm: float | None = _key(5.0, low=0.0, low_open=True, nullable=True, words=("auto",),
                                   doc="clip the global gradient norm to this (null: no clipping; auto: by "
                                       "model.cell and train.optimizer, as train.lr)")
    schedule: str = _key("halving", choices=("halving", "step", "plateau", "constant"),
                         doc="halving: Mikolov's RNNLM schedule (docs/training.md); step: ×lr_decay after every "
                             "epoch from decay_start on (Zaremba et al.); plateau: ×lr_decay after an epoch "
                             "that does not improve valid perplexity (pytorch/examples); constant: fixed lr")
    lr_decay: float = _key(0.5, low=0.0, high=1.0, low_open=True, doc="factor of each learning-rate cut")
    decay_start: int = _key(4, low=1, doc="step: the first epoch after which the rate is cut")
    min_improvement: float = _key(1.003, low=1.0,
                                  doc="halving: an epoch must shrink valid perplexity by this factor")
    seed: int = _key(1, low=0, doc="seeds initialization and everything random")
    dtype: str = _key("float32", choices=("float32", "float64"), doc="floating-point type of the numerics")
    eval_batch_size: int = _key(10, low=1, doc="streams used to compute valid perplexity between epochs")
    checkpoint_every: int | None = _key(None, low=1, nullable=True,
                                        doc="also save a resumable checkpoint every this many steps")
    log_every: int = _key(100, low=1, doc="steps between metrics.jsonl records of train loss")
    keep_checkpoint: bool = _key(True, doc="keep checkpoint.npz when the run completes (it lets --resume "
                                           "train on; eval and sample never need it)")
    ar: float = _key(0.0, low=0.0, doc="activation regularization: ar · mean of the squared top-layer outputs "
                                       "after their dropout, added to the objective (not to logged losses)")
    tar: float = _key(0.0, low=0.0, doc="temporal activation regularization: tar · mean of (h_t − h_{t−1})² of the "
                                        "top layer's outputs before dropout, added to the objective")
    weight_decay: float = _key(0.0, low=0.0, doc="L2 weight decay: weight_decay · θ added to every trained "
                                                 "array's gradient before clipping, every step")
    average: int | None = _key(None, low=1, nullable=True, words=("auto",),
                               doc="weight averaging: from the start of this epoch (auto: once valid perplexity "
                                   "is no better than the best before the last `nonmono` epochs) the running mean "
                                   "of the weights after each update is validated, kept and evaluated (null: off)")
    nonmono: int = _key(5, low=1, doc="average auto: the epochs a non-improving validation looks back past")
    adam_beta1: float = _key(0.9, low=0.0, high=1.0, doc="adam: decay of the first moment")
    adam_beta2: float = _key(0.999, low=0.0, high=1.0, doc="adam: decay of the second moment")
    adam_eps: float = _key(1e-8, low=0.0, low_open=True, doc="adam: denominator guard")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        self.auto = {}  # {"train.lr": "lstm, sgd", ...}: the keys `auto` set (resolve_auto), not a config key


# `train.lr: auto` and `train.clip_norm: auto`: (model.cell, train.optimizer) -> (lr, clip_norm), the
# values measured to work with this project's mean-per-target loss (docs/training.md, "Learning rates": the table
# and where each figure comes from). Elman with SGD is the built-in config's (configs/default.yaml).
AUTO_TRAIN = {
    ("elman", "sgd"): (1.0, 0.5), ("elman", "adam"): (0.002, 0.5), ("elman", "lazy_adam"): (0.002, 0.5),
    ("lstm", "sgd"): (20.0, 0.25), ("lstm", "adam"): (0.002, 0.25), ("lstm", "lazy_adam"): (0.002, 0.25),
    ("gru", "sgd"): (20.0, 0.25), ("gru", "adam"): (0.002, 0.25), ("gru", "lazy_adam"): (0.002, 0.25),
}


def resolve_auto(config: Config) -> Config:
    """train.lr and train.clip_norm `auto` replaced by AUTO_TRAIN's values for the config's cell
    and optimizer; config.auto records which (dump_config says so in the saved config.yaml)."""
    t, m = config.train, config.model
    lr, clip = AUTO_TRAIN[(m.cell, t.optimizer)]
    for key, value in (("lr", lr), ("clip_norm", clip)):
        if getattr(t, key) == "auto":
            setattr(t, key, value)
            config.auto[f"train.{key}"] = f"{m.cell}, {t.optimizer}"
    return config


SECTION_TYPES = {"data": DataConfig, "vocab": VocabConfig, "model": ModelConfig, "train": TrainConfig}
PATH_KEYS = ("train", "valid", "test", "cache_dir")


def builtin_dir() -> Path:
    """The folder holding the built-in `configs/` and `data/` (the repo root or the installed copy)."""
    installed = Path(__file__).resolve().parent / "_builtin"
    if (installed / "configs" / "default.yaml").is_file():
        return installed
    return Path(__file__).resolve().parent.parent  # an editable install: the repo itself


def default_config_path() -> Path:
    return builtin_dir() / "configs" / "default.yaml"


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTION_TYPES.items() for f in dataclasses.fields(cls)]


# What other tools call our keys (PyTorch's word_language_model, Keras, nanoGPT, fairseq, ...):
# an unknown key with one of these names suggests ours, whatever section it was written in.
ALIASES = {
    "learning_rate": "train.lr", "lr_rate": "train.lr", "base_lr": "train.lr",
    "lr_decay_rate": "train.lr_decay", "decay_rate": "train.lr_decay", "lr_decay_factor": "train.lr_decay",
    "gamma": "train.lr_decay", "lr_schedule": "train.schedule", "scheduler": "train.schedule",
    "hidden_size": "model.hidden_dim", "nhid": "model.hidden_dim", "hidden": "model.hidden_dim",
    "hidden_units": "model.hidden_dim", "n_hidden": "model.hidden_dim", "rnn_size": "model.hidden_dim",
    "emsize": "model.embedding_dim", "embedding_size": "model.embedding_dim", "embed_dim": "model.embedding_dim",
    "emb_dim": "model.embedding_dim", "embed_size": "model.embedding_dim", "n_embd": "model.embedding_dim",
    "nlayers": "model.layers", "num_layers": "model.layers", "n_layers": "model.layers", "n_layer": "model.layers",
    "dropout_rate": "model.dropout", "dropout_prob": "model.dropout", "keep_prob": "model.dropout",
    "rnn_type": "model.cell", "cell_type": "model.cell", "tied": "model.tie_weights",
    "tie": "model.tie_weights", "tie_embeddings": "model.tie_weights",
    "seq_len": "train.bptt", "bptt_len": "train.bptt", "seq_length": "train.bptt", "sequence_length": "train.bptt",
    "num_steps": "train.bptt", "block_size": "train.bptt", "unroll": "train.bptt",
    "batch": "train.batch_size", "bsz": "train.batch_size",
    "epochs_max": "train.epochs", "max_epochs": "train.epochs", "num_epochs": "train.epochs",
    "n_epochs": "train.epochs", "max_epoch": "train.epochs",
    "max_iters": "train.max_steps", "max_iter": "train.max_steps", "max_updates": "train.max_steps",
    "grad_clip": "train.clip_norm", "clip": "train.clip_norm", "max_grad_norm": "train.clip_norm",
    "clip_grad_norm": "train.clip_norm", "gradient_clip": "train.clip_norm", "max_norm": "train.clip_norm",
    "optim": "train.optimizer", "type": "model.cell", "model_type": "model.cell", "model": "model.cell",
    "rnn_cell": "model.cell", "cell": "model.cell", "random_seed": "train.seed", "precision": "train.dtype",
    "beta1": "train.adam_beta1", "beta2": "train.adam_beta2", "eps": "train.adam_eps",
    "min_freq": "vocab.min_count", "min_frequency": "vocab.min_count", "vocab_size": "vocab.max_size",
    "max_vocab": "vocab.max_size", "max_vocab_size": "vocab.max_size",
    "train_file": "data.train", "valid_file": "data.valid", "dev_file": "data.valid",
    "test_file": "data.test",
}


def key_by_meaning(name: str, options) -> str | None:
    """The key among `options` that an unknown `name` (SECTION.KEY or KEY) means: another
    tool's name for it (ALIASES) or the same key name in another section; else None."""
    short = name.rsplit(".", 1)[-1].strip().lower().replace("-", "_")
    if ALIASES.get(short) in options:
        return ALIASES[short]
    same_name = [o for o in options if o.rsplit(".", 1)[-1] == short]
    return same_name[0] if len(same_name) == 1 else None


def closest_key(name: str, options) -> str | None:
    """The valid option meant by an unknown `name`: by meaning first, then by spelling."""
    options = list(options)
    close = key_by_meaning(name, options) or difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return close if isinstance(close, str) or not close else close[0]


def _suggest(name: str, options) -> str:
    close = closest_key(name, options)
    return f" (did you mean '{close}'?)" if close else ""


def _type_name(f) -> str:
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[_base_type(f)]
    return name + "".join(f" or {word}" for word in f.metadata["words"])


def _base_type(f) -> type:
    """`int | None` -> int."""
    if isinstance(f.type, type):
        return f.type
    return next(t for t in typing.get_args(f.type) if t is not type(None))


_FLOAT_RE = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _show(value) -> str:
    """repr(value), cut short: a hostile YAML (nested aliases) must not be printed in full."""
    return _REPR.repr(value)


def _check_value(where: str, f, value):
    """Type- and range-check one value; return it converted (an int is accepted as a float)."""
    meta = f.metadata
    if meta["many"] and isinstance(value, list):
        if not value:
            raise UserError(f"{where}: an empty list (expected a path or a list of paths)")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item or "\x00" in item:
                raise UserError(f"{where}[{i}]: expected a path (a non-empty string), got {_show(item)}")
        return list(value)
    if isinstance(value, str) and value in meta["words"]:
        return value
    if value is None:
        if meta["nullable"]:
            return None
        raise UserError(f"{where}: must not be null (expected {_type_name(f)})")
    want = _base_type(f)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string; YAML 1.2 and users read a number
    if isinstance(value, bool) and want is not bool or not isinstance(value, want):
        raise UserError(f"{where}: expected {_type_name(f)}, got {_show(value)}")
    if meta["choices"] and value not in meta["choices"]:
        raise UserError(f"{where}: {_show(value)} is not one of {', '.join(meta['choices'])}"
                        f"{_suggest(str(value), meta['choices'])}")
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        raise UserError(f"{where}: {value!r} is out of range (must be {'>' if meta['low_open'] else '>='} {low})")
    if high is not None and value > high:
        raise UserError(f"{where}: {value!r} is out of range (must be <= {high})")
    if want is float and value != value:
        raise UserError(f"{where}: must be a number, got NaN")
    if want is float and value in (float("inf"), float("-inf")):
        raise UserError(f"{where}: must be a finite number, got {value}")
    if want is str and "\x00" in value:
        raise UserError(f"{where}: {_show(value)} contains a NUL character")
    return value


def _section_from_dict(name: str, raw, origin, problems):
    """The section's dataclass from its raw mapping; every unknown key or bad value is added to
    `problems` as (origin, message), `origin(key)` naming where the key's value came from."""
    cls = SECTION_TYPES[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append((origin(None), f"section '{name}' must be a mapping of keys to values, got {_show(raw)}"))
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        full = f"{name}.{key}"
        if key not in fields:
            problems.append((origin(full), f"unknown key {_show(full)}{_suggest(full, all_keys())}"))
            continue
        try:
            values[key] = _check_value(full, fields[key], value)
        except UserError as e:
            problems.append((origin(full), str(e)))
    return cls(**values)


def _raise_problems(problems):
    """One UserError for all the problems found, on one line: `ORIGIN: message` for one; for
    several, each message once, after their common origin when they share one."""
    if not problems:
        return
    if len(problems) == 1:
        raise UserError(f"{problems[0][0]}: {problems[0][1]}")
    origins = list(dict.fromkeys(o for o, _ in problems))
    if len(origins) == 1:
        raise UserError(f"{origins[0]}: {len(problems)} problems: " + "; ".join(m for _, m in problems))
    raise UserError(f"{len(problems)} problems in the config: " + "; ".join(
        f"in {o}: " + "; ".join(m for where, m in problems if where == o) for o in origins))


def config_from_dict(raw, source: str = "config", origins=None) -> Config:
    """Validate a plain dict (as YAML gives it) into a Config, `train.lr` and `train.clip_norm`
    `auto` resolved (AUTO_TRAIN). `source` names the file in errors; `origins` ({"section.key":
    "--set 'section.key=value'"}, see override_origins) the values that --set gave, which
    errors name instead. Every unknown key and bad value is reported at once."""
    origins = origins or {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the config must be a mapping with sections data, vocab, model, train")

    def origin(key):  # "section.key", or None for the file itself
        return origins.get(key, source)

    def section_origin(name):  # an unknown section: the --set that made it, if one did
        keys = [f"{name}.{k}" for k in raw[name]] if isinstance(raw[name], dict) else []
        return " ".join(origins[k] for k in keys) if keys and all(k in origins for k in keys) else source
    problems = []
    for name in raw:
        if name not in SECTION_TYPES:
            meant = key_by_meaning(str(name), all_keys())
            hint = (f" ('{meant}'? keys go inside their section: {meant.split('.')[0]}: {{{meant.split('.')[1]}: ...}})"
                    if meant else _suggest(str(name), SECTION_TYPES))
            problems.append((section_origin(name), f"unknown section {_show(str(name))}{hint} (sections: "
                                                   f"{', '.join(SECTION_TYPES)})"))
    sections = {name: _section_from_dict(name, raw.get(name), origin, problems) for name in SECTION_TYPES}
    _raise_problems(problems)
    config = Config(**sections)
    _check_combinations(config, raw, source, origins)
    return resolve_auto(config)


def _check_combinations(config, raw, source, origins):
    """Keys valid alone but not together; the error names where each of them came from."""
    def where(*keys):
        given = [origins[k] for k in keys if k in origins]
        in_file = any(k not in origins and isinstance(raw.get(k.split(".")[0]), dict)
                      and k.split(".")[1] in raw[k.split(".")[0]] for k in keys)
        return ", ".join(([source] if in_file or not given else []) + given)
    m = config.model
    if m.tie_weights and m.embedding_dim != m.hidden_dim:
        raise UserError(f"{where('model.tie_weights', 'model.embedding_dim', 'model.hidden_dim')}: model.tie_weights "
                        f"needs model.embedding_dim = model.hidden_dim (got {m.embedding_dim} and {m.hidden_dim})")
    if m.output in ("class", "hsm") and m.loss != "cross_entropy":
        raise UserError(f"{where('model.output', 'model.loss')}: model.output {m.output} works with model.loss "
                        f"cross_entropy only")
    if m.output == "hsm" and m.tie_weights:
        raise UserError(f"{where('model.output', 'model.tie_weights')}: model.tie_weights cannot be used with "
                        f"model.output hsm (its node vectors are not word vectors: there is no (H, V) word matrix "
                        f"to tie to the embedding)")


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def read_yaml(path: Path):
    """safe_load a YAML file; errors name the file and the line (and, for a file that is not
    named .yaml/.yml and does not read as a mapping, say it looks like a text corpus)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
        raise open_failed(path, e, "a YAML config file") from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where} YAML syntax error: {problem}{_text_hint(path)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: the config must be a mapping with sections data, vocab, model, train"
                        f"{_text_hint(path)}")
    return raw


def _text_hint(path: Path) -> str:
    """For a config file that is not YAML and not named like it: the way to train on a text file."""
    if path.suffix.lower() in (".yaml", ".yml"):
        return ""
    return (f"; it looks like text, not a config: to train on a text file, name it as data: rnnlm train "
            f"--set data.train={path} --set data.valid=VALID_FILE")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`--set model.hidden_dim=256` -> (['model', 'hidden_dim'], 256); the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=0.5")
    key, value_text = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {text!r}: KEY must be SECTION.NAME, e.g. train.lr{_suggest(key, all_keys())}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except (yaml.YAMLError, RecursionError):
        raise UserError(f"--set {_show(text)}: the value is not valid YAML") from None
    return parts, value


def apply_overrides(raw: dict, overrides) -> dict:
    """`raw` with the --set overrides put in (unknown keys too: config_from_dict reports them,
    naming the --set of each, see override_origins)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides:
        (section, name), value = parse_override(text)
        current = raw.get(section)
        raw[section] = dict(current) if isinstance(current, dict) else {}
        raw[section][name] = value
    return raw


def override_origins(overrides) -> dict:
    """{"section.key": "--set 'section.key=value'"}: where errors say a value came from (the last
    --set of a key wins, as in apply_overrides)."""
    return {".".join(parse_override(text)[0]): f"--set {_show(text)}" for text in overrides}


def resolve_paths(config: Config, base: Path) -> Config:
    """Make data paths and vocab.file absolute, relative ones against `base` (the config file's folder)."""
    for key in PATH_KEYS:
        value = getattr(config.data, key)
        if isinstance(value, list):
            setattr(config.data, key, [_resolved(f"data.{key}", v, base) for v in value])
        elif value is not None:
            setattr(config.data, key, _resolved(f"data.{key}", value, base))
    if config.vocab.file is not None:
        config.vocab.file = _resolved("vocab.file", config.vocab.file, base)
    return config


def _resolved(key, value, base):
    path = Path(os.path.expanduser(value))
    try:
        return str(path if path.is_absolute() else (base / path).resolve())
    except (OSError, RuntimeError, ValueError) as e:  # e.g. a symlink loop
        raise UserError(f"{key}: {value}: not a usable path ({e})") from None
# A model directory's config.yaml has, besides the four sections, the data paths relative to its
# own folder (the absolute ones are in `data`): see locate_data.
RELATIVE_PATHS = "data_from_model_dir"


def relative_paths(config: Config, folder) -> dict:
    """{key: the (absolute) data path of `key` relative to `folder`} for the RELATIVE_PATHS section
    (a list of them for a data.train list; a glob pattern stays a pattern)."""
    folder = Path(os.path.abspath(folder))

    def rel(value):
        return [os.path.relpath(v, folder) for v in value] if isinstance(value, list) else os.path.relpath(value, folder)
    return {key: rel(getattr(config.data, key)) for key in PATH_KEYS if getattr(config.data, key) is not None}


def locate_data(config: Config, relative, base: Path, source: str) -> Config:
    """Where a saved config's data files are now: for each key with a path in `relative` (the
    RELATIVE_PATHS section, relative to `base`, the config file's folder), that file if it
    exists and is not the absolute path's file (the model directory was copied or moved with
    its data); otherwise the absolute path of `data`, as saved. A data.train list is located
    entry by entry (a glob pattern: where it matches files, other than the saved pattern's)."""
    if relative is None:
        return config
    if not isinstance(relative, dict) or not all(_is_path(v) or isinstance(v, list) and all(map(_is_path, v))
                                                 for v in relative.values()):
        raise UserError(f"{source}: {RELATIVE_PATHS} must map data keys to paths, got {_show(relative)}")
    for key in PATH_KEYS:
        saved, rel = getattr(config.data, key), relative.get(key)
        if saved is None or rel is None or isinstance(saved, list) != isinstance(rel, list):
            continue
        if isinstance(saved, list):
            if len(saved) == len(rel):
                setattr(config.data, key, [_located(s, r, base) for s, r in zip(saved, rel)])
        else:
            setattr(config.data, key, _located(saved, rel, base))
    return config


def _is_path(value) -> bool:
    return isinstance(value, str) and "\x00" not in value


def _located(saved: str, rel: str, base: Path) -> str:
    """`rel` (relative to `base`) if it names files that `saved` does not, else `saved`."""
    near = os.path.normpath(os.path.join(os.path.abspath(base), os.path.expanduser(rel)))
    found = _matches(near)
    return near if found and found != _matches(saved) else saved


def _matches(path: str) -> list:
    """The real paths of the files a path (or glob pattern) names, in order: [] if none."""
    names = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    return [os.path.realpath(n) for n in names if os.path.isfile(n)]


def load_config(path=None, overrides=()) -> Config:
    """Defaults < the YAML file at `path` (the built-in default when None) < `--set` overrides.
    A model directory's config.yaml is a config too (its RELATIVE_PATHS section applied)."""
    path = Path(path) if path is not None else default_config_path()
    raw = read_yaml(path)
    relative = raw.pop(RELATIVE_PATHS, None) if raw else None
    raw = apply_overrides(raw, overrides)
    config = resolve_paths(config_from_dict(raw, source=str(path), origins=override_origins(overrides)),
                           path.resolve().parent)
    if isinstance(relative, dict):  # a path given by --set is the one meant
        overridden = {text.split("=", 1)[0].strip() for text in overrides}
        relative = {k: v for k, v in relative.items() if f"data.{k}" not in overridden}
    return locate_data(config, relative, path.parent, str(path))


# The keys --resume may change: how long to train and how often to log or checkpoint.
RESUME_KEYS = ("train.epochs", "train.max_steps", "train.checkpoint_every", "train.log_every", "data.cache_dir",
               "train.keep_checkpoint")


def _flat(config: Config) -> dict:
    return {f"{s}.{k}": v for s, section in config_to_dict(config).items() for k, v in section.items()}


def resume_config(saved: Config, given: Config | None, overrides=(), given_source="CONFIG",
                  saved_source="the saved config") -> Config:
    """The config a --resume continues with: the saved one, with the RESUME_KEYS taken from the
    config the user gave again (`given`, its --set applied) or, without one, from `overrides`.
    Any other difference is refused, naming each key with its saved and given values."""
    if given is None:
        for text in overrides:
            key = text.split("=", 1)[0].strip()
            if key not in RESUME_KEYS:
                raise UserError(f"--set {key}: cannot change on --resume (allowed: {', '.join(sorted(RESUME_KEYS))})")
        return config_from_dict(apply_overrides(config_to_dict(saved), overrides), source=saved_source,
                                origins=override_origins(overrides))
    old, new = _flat(saved), _flat(given)
    differ = [f"{k} ({_show(old[k])} → {_show(new[k])})" for k in old if k not in RESUME_KEYS and old[k] != new[k]]
    if differ:
        raise UserError(f"{given_source}: differs from {saved_source}, which --resume continues, in "
                        f"{'; '.join(differ)}; resume with the same config (only {', '.join(RESUME_KEYS)} may "
                        f"change), or train it as a new run with another --out")
    merged = config_to_dict(saved)
    for key in RESUME_KEYS:
        section, name = key.split(".")
        merged[section][name] = new[key]
    return config_from_dict(merged, source=saved_source)


def changed_keys(saved: Config, config: Config) -> dict:
    """{key: value in config} for every key whose value differs from saved's."""
    old, new = _flat(saved), _flat(config)
    return {k: v for k, v in new.items() if old[k] != v}


def dump_config(config: Config) -> str:
    """The config as YAML; a value that `auto` chose says so in a comment (`lr: 20.0  # auto: lstm, sgd`)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
    if not config.auto:
        return text
    lines, section = [], None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.rstrip(":")
        elif f"{section}.{line.strip().split(':', 1)[0]}" in config.auto:
            line += f"  # auto: {config.auto[section + '.' + line.strip().split(':', 1)[0]]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def describe_keys() -> str:
    """A Markdown table of every key, its default and meaning (docs/training.md, `rnnlm config --keys`)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for section, cls in SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            choices = f" ({' / '.join(f.metadata['choices'])})" if f.metadata["choices"] else ""
            default = "null" if f.default is None else f.default
            rows.append(f"| `{section}.{f.name}` | `{default}` | {f.metadata['doc']}{choices} |")
    return "\n".join(rows)


def _dropout_words(m) -> str:
    """`dropout 0.5` as before the per-place keys; `dropout 0.4 (input 0.3, between 0.2, locked)`."""
    places = [f"{name} {p:g}" for name, p in (("input", m.dropout_input), ("between", m.dropout_between))
              if p is not None and p != m.dropout] + (["locked"] if m.dropout_locked else [])
    if not m.dropout and not any(p for p in (m.dropout_input, m.dropout_between)):
        return ""
    return f"dropout {m.dropout:g}" + (f" ({', '.join(places)})" if places else "")


def paths_text(value) -> str:
    """A data key's value as text: a path or pattern, or a list of them joined by ", "."""
    return ", ".join(value) if isinstance(value, list) else str(value)


def short_form(config: Config) -> dict:
    """The config in four lines, {"data", "vocab", "model", "train"}: what `rnnlm info` and the
    model card print (config.yaml has every key)."""
    d, v, m, t = config.data, config.vocab, config.model, config.train
    data = f"train {paths_text(d.train)}, valid {d.valid}, test {d.test or 'none'}; tokenizer {d.tokenizer}" + (
        "; sentences independent" if d.independent else "")
    vocab = (f"fixed, from vocab.file {v.file}" if v.file else
             f"min_count {v.min_count}" + (f", max_size {v.max_size}" if v.max_size else ""))
    cell = m.cell + (f" ({m.activation})" if m.cell == "elman" else "")
    extras = [f"{m.classes} classes" if m.classes else "", _dropout_words(m),
              f"embedding dropout {m.dropout_embedding:g}" if m.dropout_embedding else "",
              f"weight drop {m.weight_drop:g}" if m.weight_drop else "", "tied weights" if m.tie_weights else "",
              f"forget bias {m.forget_bias:g}" if m.cell == "lstm" and m.forget_bias else ""]
    model = (f"{cell}, {m.layers} layer{'s' if m.layers > 1 else ''}, E {m.embedding_dim}, H {m.hidden_dim}, "
             f"output {m.output}, loss {m.loss}" + "".join(f", {x}" for x in extras if x))
    schedule = {"step": f"step schedule (×{t.lr_decay:g} from epoch {t.decay_start})",
                "plateau": f"plateau schedule (×{t.lr_decay:g})", "constant": "constant lr",
                "halving": f"halving schedule (×{t.lr_decay:g})"}[t.schedule]
    train = (f"{t.optimizer} lr {t.lr:g}, clip {'none' if t.clip_norm is None else f'{t.clip_norm:g}'}, {schedule}, "
             f"batch {t.batch_size} × bptt {t.bptt}, {t.epochs} epoch{'' if t.epochs == 1 else 's'}"
             + (f", max_steps {t.max_steps}" if t.max_steps else "") + f", seed {t.seed}, {t.dtype}"
             + "".join(f", {name} {value:g}" for name, value in (("ar", t.ar), ("tar", t.tar),
                                                                  ("weight decay", t.weight_decay)) if value)
             + (f", averaging from epoch {t.average}" if isinstance(t.average, int) else
                f", averaging auto (nonmono {t.nonmono})" if t.average == "auto" else ""))
    return {"data": data, "vocab": vocab, "model": model, "train": train}
