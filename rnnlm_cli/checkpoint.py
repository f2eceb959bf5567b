"""The training state, and its checkpoint on disk (DIR/checkpoint.npz) for --resume.

A TrainingState holds everything a run needs to go on exactly where it is: the current and the
best parameters, the optimizer state, the carried hidden state, the progress (data position,
schedule, counters) and the random generator (dropout masks). `snapshot()` copies it (the run
rolls back to a snapshot after a divergence); `save` / `load` write and read the checkpoint.

checkpoint.npz holds arrays under prefixes (`param.`, `best.`, `opt.`, and `hidden`) and, as one
JSON string `meta` (no pickle), the progress and the generator's state.
"""

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, files, model, modeldir, optim
from .errors import UserError

# Why training ended (Progress.stop); None while it goes on.
STOP_EPOCHS, STOP_MAX_STEPS, STOP_SCHEDULE = "epochs", "max_steps", "schedule"
# Which weights are the model (Progress.keep): the best validated, or those after the last step.
KEEP_BEST, KEEP_LAST = "best", "last"


@dataclass
class Progress:
    """Everything about where training is that a checkpoint must restore (JSON-able)."""
    epoch: int = 1
    window: int = 0  # next window of this epoch
    step: int = 0
    tokens: int = 0
    lr: float = 1.0
    halving: bool = False
    best_ce: float | None = None
    stop: str | None = None  # STOP_*: why training ended
    keep: str = KEEP_LAST  # KEEP_*: nothing is validated yet, so the current weights are the model
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # wall time of the run so far, every part before a --resume included
    epoch_loss_sum: float = 0.0
    epoch_targets: int = 0
    last_loss: float | None = None  # the loss of the last step
    metrics_bytes: int = 0
    history: list = field(default_factory=list)
    rollbacks: int = 0  # divergences rolled back so far
    train_tokens: int = 0  # length of the training stream: resume refuses a changed data.train
    init_from: str | None = None  # the --init model directory the run started from (the model card says so)
    average_from: int | None = None  # the epoch weight averaging started at (auto: chose to start at)
    average_step: int | None = None  # the steps before averaging started
    average_count: int = 0  # the updates averaged so far
    processes: int = 1  # the MPI processes training the run (K of mpiexec -n K): --resume needs as many


def stop_reason(stop, train_cfg):
    """The words for a STOP_* value, as the end line and metrics.jsonl print them."""
    epochs = f"{train_cfg.epochs} epoch{'' if train_cfg.epochs == 1 else 's'}"
    return {STOP_EPOCHS: f"reached {epochs}", STOP_MAX_STEPS: f"reached max_steps {train_cfg.max_steps}",
            STOP_SCHEDULE: "valid perplexity stopped improving", None: ""}[stop]


@dataclass
class TrainingState:
    params: dict
    best: dict | None  # the best validated parameters (never changed in place)
    opt_state: dict
    hidden: np.ndarray
    progress: Progress
    rng: np.random.Generator
    average: dict | None = None  # the running mean of the weights while averaging (average.py)

    @classmethod
    def new(cls, config, params):
        """The state a run starts from: `params`, no best, fresh optimizer and zero hidden state."""
        tc = config.train
        trained = {k: params[k] for k in model.trainable(params, config.model)}
        return cls(params, None, optim.init_state(tc.optimizer, trained),
                   model.init_state(config.model, tc.batch_size, tc.dtype), Progress(lr=tc.lr),
                   np.random.default_rng(tc.seed))

    def kept(self):
        """The weights that are the model now (what weights.npz holds): the best validated, or
        the last (averaged while averaging)."""
        if self.progress.keep == KEEP_BEST and self.best is not None:
            return self.best
        return self.average if self.average is not None else self.params

    def snapshot(self):
        """A copy that later steps cannot change."""
        rng = np.random.default_rng()
        rng.bit_generator.state = copy.deepcopy(self.rng.bit_generator.state)
        return TrainingState({k: v.copy() for k, v in self.params.items()}, self.best,
                             {k: v.copy() for k, v in self.opt_state.items()}, self.hidden.copy(),
                             copy.deepcopy(self.progress), rng,
                             None if self.average is None else {k: v.copy() for k, v in self.average.items()})

    def save(self, out_dir):
        arrays = {f"param.{k}": v for k, v in self.params.items()}
        arrays.update({f"best.{k}": v for k, v in (self.best or {}).items()})
        arrays.update({f"avg.{k}": v for k, v in (self.average or {}).items()})
        arrays.update({f"opt.{k}": v for k, v in self.opt_state.items()})
        arrays["hidden"] = self.hidden
        meta = {"format_version": modeldir.FORMAT_VERSION, "progress": self.progress.__dict__,
                "rng": self.rng.bit_generator.state}
        arrays["meta"] = np.array(json.dumps(meta))
        files.write_npz(Path(out_dir) / modeldir.CHECKPOINT, arrays)

    @classmethod
    def load(cls, out_dir, config, vocab_size):
        """The state DIR/checkpoint.npz holds, every part checked against the config and the
        vocabulary size: a damaged checkpoint is a UserError naming what is wrong."""
        path = Path(out_dir) / modeldir.CHECKPOINT
        arrays, meta = _read(path, config, vocab_size)

        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        params, best, opt_state = part("param."), part("best.") or None, part("opt.")
        averaged = part("avg.") or None
        unknown = sorted(k for k in arrays if not k.startswith(("param.", "best.", "opt.", "avg.")))
        if unknown:
            raise UserError(f"{path}: unexpected arrays {', '.join(unknown)} in a checkpoint")
        modeldir.check_params(params, config, vocab_size, f"{path} (current parameters)")
        if best is not None:
            modeldir.check_params(best, config, vocab_size, f"{path} (best parameters)")
        if averaged is not None:
            modeldir.check_params(averaged, config, vocab_size, f"{path} (averaged parameters)")
        _check_opt_state(opt_state, config, params, path)
        want = model.init_state(config.model, config.train.batch_size).shape
        modeldir.check_arrays({"hidden": meta["hidden"]}, {"hidden": want}, path, "array")
        progress = _progress(meta["progress"], path, best is not None)
        if (averaged is None) != (progress.average_step is None):
            raise UserError(f"{path}: corrupted checkpoint (averaging started at step {progress.average_step} but "
                            f"{'no' if averaged is None else 'an'} average is saved)")
        return cls(params, best, opt_state, meta["hidden"], progress, _rng(meta["rng"], path), averaged)


def _read(path, config, vocab_size):
    """(arrays but meta and hidden, meta with the hidden array added) of a checkpoint file."""
    if not path.exists():
        raise UserError(f"{path}: no checkpoint to resume from (was this folder written by rnnlm train?)")
    shapes = list(model.param_shapes(config.model, vocab_size).values())
    max_bytes = files.npz_size_bound(shapes * 5) + (1 << 20)  # params, best, average, two optimizer moments, state
    arrays = files.read_npz(path, "checkpoint", max_bytes=max_bytes)
    meta_array = arrays.pop("meta", None)
    hidden = arrays.pop("hidden", None)
    if meta_array is None or hidden is None:
        raise UserError(f"{path}: corrupted checkpoint (no '{'meta' if meta_array is None else 'hidden'}' array)")
    meta = _meta(meta_array, path)
    meta["hidden"] = hidden
    return arrays, meta


def read_progress(out_dir):
    """The Progress that DIR/checkpoint.npz holds (None when there is none), read from its meta
    array alone, not the parameters: where the run would resume (`rnnlm info`)."""
    path = Path(out_dir) / modeldir.CHECKPOINT
    if not path.exists():
        return None
    meta_array = files.read_npz(path, "checkpoint", only={"meta"}).get("meta")
    if meta_array is None:
        raise UserError(f"{path}: corrupted checkpoint (no 'meta' array)")
    return _progress(_meta(meta_array, path)["progress"], path, has_best=True)


def _meta(meta_array, path):
    """The checked JSON object of a checkpoint's meta array."""
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise UserError(f"{path}: corrupted checkpoint ('meta' is not a JSON string)")
    try:
        meta = json.loads(str(meta_array))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: corrupted checkpoint (meta: {e})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{path}: corrupted checkpoint (meta has no format_version)")
    if version > modeldir.FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version} is newer than this rnnlm ({__version__}) reads "
                        f"({modeldir.FORMAT_VERSION}); upgrade rnnlm")
    for key in ("progress", "rng"):
        if not isinstance(meta.get(key), dict):
            raise UserError(f"{path}: corrupted checkpoint (meta has no '{key}')")
    return meta


def _check_opt_state(opt_state, config, params, path):
    """The optimizer state has exactly the arrays train.optimizer keeps, floats finite, counters
    non-negative integers."""
    trained = {k: params[k] for k in model.trainable(params, config.model)}
    expected = optim.init_state(config.train.optimizer, trained)
    missing, extra = sorted(set(expected) - set(opt_state)), sorted(set(opt_state) - set(expected))
    if missing or extra:
        raise UserError(f"{path}: the optimizer state does not match train.optimizer "
                        f"{config.train.optimizer} (missing {missing}, unexpected {extra})")
    floats = {k: v.shape for k, v in expected.items() if np.issubdtype(v.dtype, np.floating)}
    modeldir.check_arrays({k: opt_state[k] for k in floats}, floats, f"{path} (optimizer state)")
    for k, want in expected.items():  # counters such as adam.t
        v = opt_state[k]
        if k not in floats and (v.shape != want.shape or not np.issubdtype(v.dtype, np.integer) or (v < 0).any()):
            raise UserError(f"{path}: optimizer state '{k}' is not a count (shape {v.shape}, dtype {v.dtype})")


_COUNTS = ("epoch", "window", "step", "tokens", "epoch_targets", "metrics_bytes", "rollbacks", "train_tokens",
           "average_count", "processes")
_NUMBERS = ("lr", "train_seconds", "wall_seconds", "epoch_loss_sum", "best_ce", "last_loss")


def _progress(raw, source, has_best):
    """The Progress of a checkpoint's meta, each field checked. A checkpoint of rnnlm 0.x before
    the explicit stop/keep fields (`done`, `stop_reason`) is read too."""
    raw = dict(raw)
    if "done" in raw or "stop_reason" in raw:
        done, reason = raw.pop("done", False), raw.pop("stop_reason", "")
        raw["stop"] = (None if not done else STOP_SCHEDULE if not str(reason).startswith("reached")
                       else STOP_MAX_STEPS if "max_steps" in str(reason) else STOP_EPOCHS)
        raw["keep"] = KEEP_BEST if has_best else KEEP_LAST
    fields = {f.name for f in dataclasses.fields(Progress)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise UserError(f"{source}: corrupted checkpoint (unknown progress fields {', '.join(unknown)})")
    progress = Progress(**raw)
    for name in _COUNTS:
        value = getattr(progress, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in ("epoch", "processes") else 0):
            raise UserError(f"{source}: corrupted checkpoint (progress.{name} = {str(value)[:40]})")
    for name in _NUMBERS:
        value = getattr(progress, name)
        if value is None and name in ("best_ce", "last_loss"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                name == "lr" and value <= 0):
            raise UserError(f"{source}: corrupted checkpoint (progress.{name} = {str(value)[:40]})")
    for name in ("average_from", "average_step"):
        value = getattr(progress, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UserError(f"{source}: corrupted checkpoint (progress.{name} = {str(value)[:40]})")
    if (not isinstance(progress.history, list) or not isinstance(progress.halving, bool)
            or not isinstance(progress.init_from, (str, type(None)))
            or progress.stop not in (None, STOP_EPOCHS, STOP_MAX_STEPS, STOP_SCHEDULE)
            or progress.keep not in (KEEP_BEST, KEEP_LAST)):
        raise UserError(f"{source}: corrupted checkpoint (progress)")
    return progress


def _rng(state, source):
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise UserError(f"{source}: corrupted checkpoint (RNG state: {e})") from None
    return rng
