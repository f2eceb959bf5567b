"""Training: truncated BPTT over the batchified training stream, the learning-rate schedule,
the kept model, checkpoints and resume.

Schedule `halving` (Mikolov's RNNLM toolkit): after each epoch the valid cross-entropy is
compared with the best so far. An epoch that made it worse is rejected (the best weights come
back). When an epoch improves it by less than the factor `min_improvement` (on the log-
likelihood), the learning rate is halved (× lr_decay) after this and every later epoch; if that happens
again once halving has begun, training stops. `epochs` and `max_steps` bound it in any case.

The kept model (weights.npz) is the one with the best valid perplexity; a run that stops at
`max_steps` keeps the weights after its last step instead (SPEC).

Divergence: a NaN or infinite loss, gradient norm, parameter or valid cross-entropy is caught
at once. The run then rolls back to the last good state (an in-memory copy of what the last
checkpoint holds: parameters, best parameters, optimizer state, carried hidden state, data
position, schedule and RNG state, taken at the start of every epoch and at every checkpoint),
halves the learning rate and goes on. A `rollback` record in metrics.jsonl says so. After
MAX_ROLLBACKS rollbacks in one run, the next divergence stops training: weights.npz keeps the
last good model, info.json says `diverged`, and errors.Diverged (exit code 2: the config's
train.lr/clip_norm must change) is raised.
"""

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import data, evaluate, model, optim
from .config import dump_config
from .errors import Diverged, UserError, WriteError
from .vocab import build_vocab

MAX_ROLLBACKS = 3  # per run (kept across --resume): the next divergence stops training


class Interrupted(Exception):
    """Training stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class SilentReporter:
    """The interface the CLI's progress display implements; this one shows nothing."""

    def info(self, text): pass
    def warn(self, text): pass
    def epoch_start(self, epoch, windows, start): pass
    def step(self, tokens, loss, lr): pass
    def epoch_end(self, record): pass


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
    done: bool = False
    stop_reason: str = ""
    train_seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_targets: int = 0
    metrics_bytes: int = 0
    history: list = field(default_factory=list)
    rollbacks: int = 0  # divergences rolled back so far
    train_tokens: int = 0  # length of the training stream: resume refuses a changed data.train


def train_step(params, model_cfg, train_cfg, opt_state, inputs, targets, state, lr, workspace=None, rng=None):
    """One window: forward, one-pass backward, clip, update. -> (loss, new state, grad norm).
    `workspace`: a dict kept across calls, holding the big scratch arrays; `rng` draws the
    dropout masks."""
    dropout_rng = rng if model_cfg.dropout > 0 else None
    loss, new_state, cache = model.forward(params, model_cfg, inputs, targets, state, workspace=workspace,
                                           dropout_rng=dropout_rng)
    grads = model.backward(cache, workspace, sparse_embedding=True)
    norm = optim.global_norm(grads)
    optim.update(train_cfg.optimizer, params, grads, opt_state, lr, train_cfg,
                 grad_scale=optim.clip_factor(norm, train_cfg.clip_norm))
    return loss, new_state, norm


# --------------------------------------------------------------------------------------------
# Setting up a run


def prepare_data(config, vocab=None):
    """Vocabulary (built from train unless given) and the encoded train/valid/test streams."""
    d = config.data
    for key in ("train", "valid"):
        if getattr(d, key) is None:
            raise UserError(f"config: data.{key} is required (a path to a text file)")
    if vocab is None:
        counts, _, _ = data.count_words(d.train, d.tokenizer)
        vocab = build_vocab(counts, config.vocab.min_count, config.vocab.max_size)
    train_ids, train_stats = data.encode_file(d.train, vocab, d.tokenizer)
    valid_ids, valid_stats = data.encode_file(d.valid, vocab, d.tokenizer)
    test = data.encode_file(d.test, vocab, d.tokenizer) if d.test else (None, None)
    return vocab, {"train": (train_ids, train_stats), "valid": (valid_ids, valid_stats), "test": test}


def _json_safe(value):
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_metric(out_dir, progress, record):
    """Append one JSON line to metrics.jsonl. The log is a separate file appended in one write:
    a failure (disk full) cannot touch the model files; the partial line is cut off again and
    a WriteError says that the model directory is intact."""
    line = (json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n").encode("utf-8")
    path = Path(out_dir) / ckpt.METRICS
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise ckpt.write_failure(path, e) from None
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, "short write (disk full?)")
        except OSError as e:
            try:
                os.ftruncate(fd, size)  # no half line left behind
            except OSError:
                pass
            raise WriteError(f"{path}: could not append ({e.strerror or e}); the model files are "
                             f"untouched") from None
    finally:
        os.close(fd)
    progress.metrics_bytes += len(line)


def _truncate_metrics(out_dir, size):
    """Drop metrics written after the checkpoint we resume from (they will be written again)."""
    path = Path(out_dir) / ckpt.METRICS
    try:
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
    except OSError as e:
        raise ckpt.write_failure(path, e) from None


def _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng):
    meta = {"progress": progress.__dict__, "rng": rng.bit_generator.state}
    ckpt.save_checkpoint(out_dir, params, best, opt_state, hidden, meta)


def _progress_from_meta(meta, source):
    """The Progress a checkpoint holds, each field checked: a damaged checkpoint is a UserError."""
    raw = meta["progress"]
    fields = {f.name: f for f in dataclasses.fields(Progress)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"{source}: corrupted checkpoint (unknown progress fields {', '.join(unknown)})")
    progress = Progress(**raw)
    counts = ("epoch", "window", "step", "tokens", "epoch_targets", "metrics_bytes", "rollbacks", "train_tokens")
    for name in counts:
        value = getattr(progress, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "epoch" else 0):
            raise UserError(f"{source}: corrupted checkpoint (progress.{name} = {str(value)[:40]})")
    for name in ("lr", "train_seconds", "epoch_loss_sum", "best_ce"):
        value = getattr(progress, name)
        if value is None and name == "best_ce":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                name == "lr" and value <= 0):
            raise UserError(f"{source}: corrupted checkpoint (progress.{name} = {str(value)[:40]})")
    if not isinstance(progress.history, list) or not isinstance(progress.stop_reason, str) or not all(
            isinstance(getattr(progress, n), bool) for n in ("halving", "done")):
        raise UserError(f"{source}: corrupted checkpoint (progress)")
    return progress


def _restore_rng(state, source):
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise UserError(f"{source}: corrupted checkpoint (RNG state: {e})") from None
    return rng


def _check_memory(config, vocab_size):
    """Refuse, before allocating anything, a model that cannot fit in this machine's memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    shapes = model.param_shapes(config.model, vocab_size)
    n = sum(math.prod(shape) for shape in shapes.values())
    tc = config.train
    itemsize = np.dtype(tc.dtype).itemsize
    copies = 4 + (2 if tc.optimizer == "adam" else 0)  # params, grads, best, rollback copy (+ moments)
    window = tc.batch_size * tc.bptt * (2 * vocab_size + 8 * config.model.hidden_dim * config.model.layers)
    need = (n * copies + window) * itemsize
    if need > total:
        m = config.model
        raise UserError(f"model too large: {n:,} parameters (vocabulary {vocab_size}, model.embedding_dim "
                        f"{m.embedding_dim}, model.hidden_dim {m.hidden_dim}, model.layers {m.layers}) need about "
                        f"{need / 2**30:.1f} GiB to train, more than this machine's {total / 2**30:.1f} GiB; "
                        f"use smaller sizes, vocab.max_size or train.batch_size")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError, TypeError):
        return False


class _Diverging(Exception):
    """A NaN/inf appeared; the message says where (caught in run, which rolls back)."""


def _check_finite(params, where):
    for key, value in params.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise _Diverging(f"{where}: parameter {key} is not finite")


@dataclass
class _Snapshot:
    """The last good state, in memory: what the last checkpoint holds, to roll back to."""
    params: dict
    best: dict | None
    opt_state: dict
    hidden: np.ndarray
    progress: Progress
    rng_state: dict

    @classmethod
    def take(cls, params, best, opt_state, hidden, progress, rng):
        return cls({k: v.copy() for k, v in params.items()}, best,  # best is never changed in place
                   {k: v.copy() for k, v in opt_state.items()}, hidden.copy(), copy.deepcopy(progress),
                   copy.deepcopy(rng.bit_generator.state))

    def restore(self):
        rng = np.random.default_rng()
        rng.bit_generator.state = copy.deepcopy(self.rng_state)
        return ({k: v.copy() for k, v in self.params.items()}, self.best,
                {k: v.copy() for k, v in self.opt_state.items()}, self.hidden.copy(), copy.deepcopy(self.progress),
                rng)


def _warn(reporter, text):
    getattr(reporter, "warn", reporter.info)(text)


def _roll_back(out_dir, snapshot, progress, reason, reporter):
    """-> (params, best, opt_state, hidden, progress, rng) of the last good state with the
    learning rate halved; or, past MAX_ROLLBACKS, save the last good model and raise Diverged."""
    failed_step = progress.step
    rollbacks = progress.rollbacks + 1
    good = snapshot.progress
    if rollbacks > MAX_ROLLBACKS:
        kept = snapshot.best if snapshot.best is not None else snapshot.params
        ckpt.write_npz(out_dir / ckpt.WEIGHTS, kept)
        _write_metric(out_dir, progress, {"event": "diverged", "epoch": progress.epoch, "step": failed_step,
                                          "reason": reason, "rollbacks": progress.rollbacks, "lr": progress.lr})
        ckpt.write_info(out_dir, status="diverged", step=good.step, epoch=good.epoch, reason=reason)
        which = "best validated" if snapshot.best is not None else f"last good (step {good.step})"
        raise Diverged(f"training diverged at step {failed_step} ({reason}) after {MAX_ROLLBACKS} rollbacks, each "
                       f"halving the learning rate (now {progress.lr:g}); {out_dir / ckpt.WEIGHTS} holds the {which} "
                       f"model. Use a smaller train.lr or set train.clip_norm and train again (--init {out_dir} "
                       f"starts from that model)")
    params, best, opt_state, hidden, restored, rng = snapshot.restore()
    restored.lr = progress.lr / 2.0  # halved once more at every rollback
    restored.rollbacks = rollbacks
    restored.metrics_bytes = progress.metrics_bytes  # the log keeps what happened, rollback included
    restored.train_seconds = progress.train_seconds
    _write_metric(out_dir, restored, {"event": "rollback", "epoch": progress.epoch, "step": failed_step,
                                      "reason": reason, "to_epoch": good.epoch, "to_step": good.step,
                                      "lr": restored.lr, "rollbacks": rollbacks})
    _warn(reporter, f"warning: training diverged at step {failed_step} ({reason}); rolled back to step "
                    f"{good.step} with the learning rate halved to {restored.lr:g} "
                    f"(rollback {rollbacks} of {MAX_ROLLBACKS})")
    return params, best, opt_state, hidden, restored, rng


# --------------------------------------------------------------------------------------------
# The loop


def _resume(config, out_dir, reporter):
    """The state of an interrupted run, from its checkpoint; everything is read and checked
    before anything in out_dir changes."""
    vocab = ckpt.load_vocab(out_dir / ckpt.VOCAB)
    source = out_dir / ckpt.CHECKPOINT
    params, best, opt_state, hidden, meta = ckpt.load_checkpoint(out_dir, config, len(vocab))
    progress = _progress_from_meta(meta, source)
    rng = _restore_rng(meta["rng"], source)
    vocab, streams = prepare_data(config, vocab)
    if progress.train_tokens and progress.train_tokens != len(streams["train"][0]):
        raise UserError(f"{config.data.train}: changed since the checkpoint in {out_dir} ("
                        f"{progress.train_tokens - 1} targets then, {len(streams['train'][0]) - 1} now); "
                        f"--resume needs the same training data")
    batches = data.batchify(streams["train"][0], config.train.batch_size, source=config.data.train)
    if progress.window > data.num_windows(batches, config.train.bptt):
        raise UserError(f"{source}: its data position (window {progress.window}) is past the end of "
                        f"{config.data.train}: the training data changed since the checkpoint")
    _truncate_metrics(out_dir, progress.metrics_bytes)
    reporter.info(f"resuming {out_dir} at epoch {progress.epoch}, step {progress.step}")
    return vocab, streams, params, best, opt_state, hidden, progress, rng


def _start(config, out_dir, init_dir):
    """A new run: initial (or --init) weights, a model directory and a first checkpoint, written
    only once the data and the config have passed their checks."""
    dtype = config.train.dtype
    init_vocab = init_params = None
    if init_dir is not None:
        _, init_vocab, init_params = ckpt.load_model(init_dir, dtype)
        ckpt.check_params(init_params, config, len(init_vocab), f"--init {init_dir}")
    vocab, streams = prepare_data(config, init_vocab)
    data.batchify(streams["train"][0], config.train.batch_size, source=config.data.train)  # fail before writing
    _check_memory(config, len(vocab))
    counts = np.bincount(streams["train"][0], minlength=len(vocab))  # bins a class output layer
    params = init_params or model.init_params(config.model, len(vocab), config.train.seed, dtype, counts)
    opt_state = optim.init_state(config.train.optimizer, params)
    hidden = model.init_state(config.model, config.train.batch_size, dtype)
    rng = np.random.default_rng(config.train.seed)
    best = None
    progress = Progress(lr=config.train.lr, train_tokens=len(streams["train"][0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.save_model(out_dir, config, vocab, params)
    ckpt.write_text(out_dir / ckpt.METRICS, "")
    ckpt.write_info(out_dir, status="training", vocab_size=len(vocab))
    _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng)  # --resume works from here on
    return vocab, streams, params, best, opt_state, hidden, progress, rng


def run(config, out_dir, *, init_dir=None, resume=False, reporter=None, should_stop=lambda: None):
    """Train into out_dir; returns a summary dict. `should_stop()` returns a signal number when
    the user asked to stop (the run then checkpoints and raises Interrupted)."""
    reporter = reporter or SilentReporter()
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    if resume:
        vocab, streams, params, best, opt_state, hidden, progress, rng = _resume(config, out_dir, reporter)
    else:
        vocab, streams, params, best, opt_state, hidden, progress, rng = _start(config, out_dir, init_dir)
    train_ids, train_stats = streams["train"]
    valid_ids, valid_stats = streams["valid"]
    for key in ("valid", "test"):
        other = getattr(config.data, key)
        if other and _same_file(config.data.train, other):
            _warn(reporter, f"warning: data.train and data.{key} are the same file ({other}): {key} perplexity "
                            f"will be optimistic")
    unigram = evaluate.unigram_perplexity(train_ids, valid_ids, len(vocab))
    reporter.info(f"vocabulary {len(vocab)} | train {train_stats['targets']} targets | valid "
                  f"{valid_stats['targets']} targets ({valid_stats['oov_rate']:.2%} OOV) | unigram valid ppl {unigram:.1f}")
    batches = data.batchify(train_ids, config.train.batch_size, source=config.data.train)
    n_windows = data.num_windows(batches, config.train.bptt)
    tc = config.train
    workspace = {}  # scratch arrays reused by every window
    snapshot = _Snapshot.take(params, best, opt_state, hidden, progress, rng)  # = the checkpoint on disk

    if progress.done and progress.stop_reason.startswith("reached"):
        progress.done = False  # resumed with a larger epochs or max_steps: carry on
    # NaN/inf are checked explicitly: no numpy warnings on stderr (errstate is per thread, hence
    # the filter too, for the worker threads of parallel.py)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        while not progress.done:
            if progress.epoch > tc.epochs:
                progress.done, progress.stop_reason = True, f"reached {tc.epochs} epochs"
                break
            if tc.max_steps is not None and progress.step >= tc.max_steps:
                progress.done, progress.stop_reason = True, f"reached max_steps {tc.max_steps}"
                best = None
                break
            reporter.epoch_start(progress.epoch, n_windows, progress.window)
            t0 = time.perf_counter()
            try:
                for inputs, targets in data.iter_windows(batches, tc.bptt, start=progress.window):
                    loss, hidden, norm = train_step(params, config.model, tc, opt_state, inputs, targets, hidden,
                                                    progress.lr, workspace, rng)
                    if not math.isfinite(loss) or not math.isfinite(norm):
                        progress.step += 1
                        raise _Diverging(f"loss {loss}, gradient norm {norm}")
                    progress.window += 1
                    progress.step += 1
                    progress.tokens += targets.size
                    progress.epoch_loss_sum += loss * targets.size
                    progress.epoch_targets += targets.size
                    reporter.step(targets.size, loss, progress.lr)
                    if progress.step % tc.log_every == 0:
                        elapsed = progress.train_seconds + time.perf_counter() - t0
                        _write_metric(out_dir, progress, {
                            "event": "train", "epoch": progress.epoch, "step": progress.step,
                            "tokens": progress.tokens, "loss": loss, "ppl": math.exp(min(loss, 700)),
                            "lr": progress.lr, "grad_norm": norm,
                            "tokens_per_sec": progress.tokens / elapsed if elapsed > 0 else None})
                    if tc.max_steps is not None and progress.step >= tc.max_steps:
                        progress.done, progress.stop_reason = True, f"reached max_steps {tc.max_steps}"
                        break
                    signum = should_stop()
                    if signum or (tc.checkpoint_every and progress.step % tc.checkpoint_every == 0):
                        _check_finite(params, "before a checkpoint")
                        progress.train_seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng)
                        snapshot = _Snapshot.take(params, best, opt_state, hidden, progress, rng)
                        if signum:
                            _interrupt(out_dir, params, best, progress, signum)
                progress.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                if progress.done:  # max_steps: keep the weights after the last step (SPEC)
                    _check_finite(params, "at the last step")
                    best = None
                    break
                params, best, hidden = _end_of_epoch(config, out_dir, params, best, progress, valid_ids, reporter)
            except _Diverging as e:
                progress.train_seconds += time.perf_counter() - t0
                params, best, opt_state, hidden, progress, rng = _roll_back(out_dir, snapshot, progress, str(e),
                                                                            reporter)
                continue
            _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng)
            snapshot = _Snapshot.take(params, best, opt_state, hidden, progress, rng)
            signum = should_stop()
            if signum:
                _interrupt(out_dir, params, best, progress, signum)

    return _finish(config, out_dir, vocab, params, best, progress, streams, opt_state, hidden, rng,
                   unigram, time.perf_counter() - t_start, reporter)


def _end_of_epoch(config, out_dir, params, best, progress, valid_ids, reporter):
    """Valid perplexity, the schedule, the kept model; returns (params, best, fresh hidden state)."""
    tc = config.train
    _check_finite(params, "at the end of the epoch")
    total, count = evaluate.evaluate_ids(params, config.model, valid_ids, tc.eval_batch_size, tc.bptt)
    ce = total / count
    if not math.isfinite(ce):  # checked before anything is written or changed
        raise _Diverging(f"valid cross-entropy {ce}")
    improved = progress.best_ce is None or ce < progress.best_ce
    record = {"event": "epoch", "epoch": progress.epoch, "step": progress.step, "tokens": progress.tokens,
              "train_loss": progress.epoch_loss_sum / max(1, progress.epoch_targets),
              "valid_ce": ce, "valid_ppl": _exp(ce), "lr": progress.lr,
              "tokens_per_sec": progress.tokens / progress.train_seconds if progress.train_seconds else None,
              "accepted": improved}
    if tc.schedule == "halving" and progress.best_ce is not None:
        if ce * tc.min_improvement > progress.best_ce:  # log-likelihood improved by less than the factor
            if progress.halving:
                progress.done, progress.stop_reason = True, "valid perplexity stopped improving"
            progress.halving = True
    if improved:
        progress.best_ce = ce
        best = {k: v.copy() for k, v in params.items()}
        ckpt.write_npz(out_dir / ckpt.WEIGHTS, best)
    elif tc.schedule == "halving":
        params = {k: v.copy() for k, v in best.items()}  # reject the epoch (Mikolov)
    if ((tc.schedule == "halving" and progress.halving) or (tc.schedule == "step" and progress.epoch >= tc.decay_start)
            or (tc.schedule == "plateau" and not improved)):
        progress.lr *= tc.lr_decay
    _write_metric(out_dir, progress, record)
    reporter.epoch_end(record)
    progress.history.append({"epoch": progress.epoch, "valid_ppl": _json_safe(_exp(ce))})
    progress.epoch += 1
    progress.window = 0
    progress.epoch_loss_sum, progress.epoch_targets = 0.0, 0
    return params, best, model.init_state(config.model, tc.batch_size, tc.dtype)


def _exp(x):
    return math.exp(x) if x < 709.0 else math.inf


def _interrupt(out_dir, params, best, progress, signum):
    if best is None:  # nothing validated yet: let eval/sample use the current weights
        ckpt.write_npz(out_dir / ckpt.WEIGHTS, params)
    _write_metric(out_dir, progress, {"event": "interrupted", "epoch": progress.epoch, "step": progress.step,
                                      "signal": signum})
    ckpt.write_info(out_dir, status="interrupted", step=progress.step, epoch=progress.epoch)
    raise Interrupted(signum)


def _finish(config, out_dir, vocab, params, best, progress, streams, opt_state, hidden, rng, unigram,
            seconds, reporter):
    kept = best if best is not None else params
    ckpt.write_npz(out_dir / ckpt.WEIGHTS, kept)
    _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng)
    bptt = config.train.bptt
    valid_ppl = evaluate.summarize(*evaluate.evaluate_ids(kept, config.model, streams["valid"][0], 1, bptt))["perplexity"]
    test_ids = streams["test"][0]
    test_ppl = (evaluate.summarize(*evaluate.evaluate_ids(kept, config.model, test_ids, 1, bptt))["perplexity"]
                if test_ids is not None and len(test_ids) > 1 else None)
    summary = {"event": "end", "stop_reason": progress.stop_reason, "epochs": len(progress.history),
               "steps": progress.step, "tokens": progress.tokens, "valid_ppl": valid_ppl, "test_ppl": test_ppl,
               "unigram_valid_ppl": unigram, "train_seconds": progress.train_seconds, "wall_seconds": seconds,
               "tokens_per_sec": progress.tokens / progress.train_seconds if progress.train_seconds else None}
    _write_metric(out_dir, progress, summary)
    ckpt.write_info(out_dir, status="complete", vocab_size=len(vocab), steps=progress.step,
                    tokens=progress.tokens, valid_ppl=valid_ppl, test_ppl=test_ppl, unigram_valid_ppl=unigram,
                    stop_reason=progress.stop_reason)
    return summary
