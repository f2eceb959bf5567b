"""Training: truncated BPTT over the batchified training stream, epoch by epoch, into a model
directory, with checkpoints, resume and rollback.

A step is two seams: `window_gradient` (forward and one-pass backward over a window) and
`apply_gradient` (clip and update). Between them the gradient of one window is complete: that
is where a data-parallel run would sum it over its processes.

After each epoch the valid cross-entropy goes to the schedule (schedule.py), which says the
next learning rate, whether the epoch is accepted (its weights become the kept model) or
rejected (the best weights come back), and whether training stops. `epochs` and `max_steps`
bound it in any case. The kept model (weights.npz) is the best validated one; a run that stops
at `max_steps` keeps the weights after its last step instead (Progress.keep says which).

Divergence: a NaN or infinite loss, gradient norm, parameter or valid cross-entropy is caught
at once. The run then rolls back to the last good state (a snapshot of what the last
checkpoint holds, taken at the start of every epoch and at every checkpoint), halves the
learning rate and goes on. A `rollback` record in metrics.jsonl says so. After MAX_ROLLBACKS
rollbacks in one run, the next divergence stops training: weights.npz keeps the last good
model, info.json says `diverged`, and errors.Diverged (exit code 2: the config's
train.lr/clip_norm must change) is raised.
"""

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data, evaluate, files, lock, model, modeldir, optim, schedule
from .checkpoint import KEEP_BEST, KEEP_LAST, STOP_EPOCHS, STOP_MAX_STEPS, STOP_SCHEDULE, TrainingState, stop_reason
from .errors import Diverged, UserError, WriteError
from .vocab import build_vocab, load_vocab

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


# --------------------------------------------------------------------------------------------
# One step: the gradient of a window, then the update


def window_gradient(params, model_cfg, inputs, targets, hidden, workspace=None, rng=None):
    """Forward and one-pass backward over one window -> (mean loss, grads, new hidden state).
    `workspace`: a dict kept across calls, holding the big scratch arrays; `rng` draws the
    dropout masks."""
    dropout_rng = rng if model_cfg.dropout > 0 else None
    loss, new_hidden, cache = model.forward(params, model_cfg, inputs, targets, hidden, workspace=workspace,
                                            dropout_rng=dropout_rng)
    return loss, model.backward(cache, workspace, sparse_embedding=True), new_hidden


def apply_gradient(params, grads, opt_state, lr, train_cfg):
    """Clip the global norm to train.clip_norm and update params in place -> the norm before
    clipping."""
    norm = optim.global_norm(grads)
    optim.update(train_cfg.optimizer, params, grads, opt_state, lr, train_cfg,
                 grad_scale=optim.clip_factor(norm, train_cfg.clip_norm))
    return norm


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
    copies = 4 + (2 if tc.optimizer in ("adam", "lazy_adam") else 0)  # params, grads, best, rollback copy (+ moments)
    window = tc.batch_size * tc.bptt * (2 * vocab_size + 8 * config.model.hidden_dim * config.model.layers)
    need = (n * copies + window) * itemsize
    if need > total:
        m = config.model
        raise UserError(f"model too large: {n:,} parameters (vocabulary {vocab_size}, model.embedding_dim "
                        f"{m.embedding_dim}, model.hidden_dim {m.hidden_dim}, model.layers {m.layers}) need about "
                        f"{need / 2**30:.1f} GiB to train, more than this machine's {total / 2**30:.1f} GiB; "
                        f"use smaller sizes, vocab.max_size or train.batch_size")


def _start(config, out_dir, init_dir):
    """A new run: initial (or --init) weights, a model directory and a first checkpoint, written
    only once the data and the config have passed their checks. -> (vocab, streams, state)"""
    dtype = config.train.dtype
    init_vocab = init_params = None
    if init_dir is not None:
        _, init_vocab, init_params = modeldir.load_model(init_dir, dtype)
        modeldir.check_params(init_params, config, len(init_vocab), f"--init {init_dir}")
    vocab, streams = prepare_data(config, init_vocab)
    data.batchify(streams["train"][0], config.train.batch_size, source=config.data.train)  # fail before writing
    _check_memory(config, len(vocab))
    counts = np.bincount(streams["train"][0], minlength=len(vocab))  # for output layers built from frequencies
    params = init_params or model.init_params(config.model, len(vocab), config.train.seed, dtype, counts)
    state = TrainingState.new(config, params)
    state.progress.train_tokens = len(streams["train"][0])
    out_dir.mkdir(parents=True, exist_ok=True)
    modeldir.save_model(out_dir, config, vocab, params)
    modeldir.start_metrics(out_dir)
    modeldir.write_info(out_dir, status="training", vocab_size=len(vocab))
    state.save(out_dir)  # --resume works from here on
    return vocab, streams, state


def _resume(config, out_dir, reporter):
    """The state of an interrupted run, from its checkpoint; everything is read and checked
    before anything in out_dir changes. -> (vocab, streams, state)"""
    vocab = load_vocab(out_dir / modeldir.VOCAB)
    source = out_dir / modeldir.CHECKPOINT
    state = TrainingState.load(out_dir, config, len(vocab))
    progress = state.progress
    vocab, streams = prepare_data(config, vocab)
    if progress.train_tokens and progress.train_tokens != len(streams["train"][0]):
        raise UserError(f"{config.data.train}: changed since the checkpoint in {out_dir} ("
                        f"{progress.train_tokens - 1} targets then, {len(streams['train'][0]) - 1} now); "
                        f"--resume needs the same training data")
    batches = data.batchify(streams["train"][0], config.train.batch_size, source=config.data.train)
    if progress.window > data.num_windows(batches, config.train.bptt):
        raise UserError(f"{source}: its data position (window {progress.window}) is past the end of "
                        f"{config.data.train}: the training data changed since the checkpoint")
    modeldir.rewind_metrics(out_dir, progress.metrics_bytes)
    reporter.info(f"resuming {out_dir} at epoch {progress.epoch}, step {progress.step}")
    if progress.stop in (STOP_EPOCHS, STOP_MAX_STEPS):
        progress.stop = None  # resumed with a larger epochs or max_steps: carry on
    return vocab, streams, state


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError, TypeError):
        return False


def _announce(config, vocab, streams, reporter):
    """Warn of a train file reused for valid or test; say the sizes -> the unigram valid ppl."""
    for key in ("valid", "test"):
        other = getattr(config.data, key)
        if other and _same_file(config.data.train, other):
            reporter.warn(f"warning: data.train and data.{key} are the same file ({other}): {key} perplexity "
                          f"will be optimistic")
    (train_ids, train_stats), (valid_ids, valid_stats) = streams["train"], streams["valid"]
    unigram = evaluate.unigram_perplexity(train_ids, valid_ids, len(vocab))
    reporter.info(f"vocabulary {len(vocab)} | train {train_stats['targets']} targets | valid "
                  f"{valid_stats['targets']} targets ({valid_stats['oov_rate']:.2%} OOV) | unigram valid ppl {unigram:.1f}")
    return unigram


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Run:
    """What stays fixed through a run, and the snapshot it rolls back to."""
    config: object
    out_dir: Path
    reporter: object
    should_stop: object
    streams: dict
    batches: np.ndarray
    snapshot: TrainingState
    workspace: dict  # scratch arrays reused by every window
    started: float = 0.0  # time.perf_counter() when this process started the run


class _Diverging(Exception):
    """A NaN/inf appeared; the message says where (caught in run, which rolls back)."""


@contextlib.contextmanager
def _quiet_numerics():
    """NaN/inf are checked explicitly: no numpy warnings on stderr (errstate is per thread, hence
    the filter too, for the worker threads of parallel.py)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def run(config, out_dir, *, init_dir=None, resume=False, reporter=None, should_stop=lambda: None):
    """Train into out_dir; returns a summary dict. `should_stop()` returns a signal number when
    the user asked to stop (the run then checkpoints and raises Interrupted)."""
    reporter = reporter or SilentReporter()
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    vocab, streams, state = _resume(config, out_dir, reporter) if resume else _start(config, out_dir, init_dir)
    unigram = _announce(config, vocab, streams, reporter)
    batches = data.batchify(streams["train"][0], config.train.batch_size, source=config.data.train)
    r = _Run(config, out_dir, reporter, should_stop, streams, batches, state.snapshot(), {}, t_start)
    with _quiet_numerics():
        while state.progress.stop is None:
            if _reached_a_limit(r, state):
                break
            try:
                _train_epoch(r, state)
                if state.progress.stop is None:
                    _end_of_epoch(r, state)
            except _Diverging as e:
                state = _roll_back(r, state, str(e))
                continue
            state.save(out_dir)
            r.snapshot = state.snapshot()
            signum = should_stop()
            if signum:
                _interrupt(r, state, signum)
    return _finish(r, state, vocab, unigram, time.perf_counter() - t_start)


def _reached_a_limit(r, state):
    """Whether train.epochs or train.max_steps is reached before an epoch (or its rest) starts."""
    p, tc = state.progress, r.config.train
    if p.epoch > tc.epochs:
        p.stop = STOP_EPOCHS
    elif tc.max_steps is not None and p.step >= tc.max_steps:
        p.stop, p.keep = STOP_MAX_STEPS, KEEP_LAST
    return p.stop is not None


def _train_epoch(r, state):
    """The windows of the current epoch from progress.window on, to its end or to max_steps
    (then progress.stop says so). Checkpoints every checkpoint_every steps and on a signal."""
    p, tc, m = state.progress, r.config.train, r.config.model
    r.reporter.epoch_start(p.epoch, data.num_windows(r.batches, tc.bptt), p.window)
    t0 = time.perf_counter()
    try:
        for inputs, targets in data.iter_windows(r.batches, tc.bptt, start=p.window):
            loss, grads, state.hidden = window_gradient(state.params, m, inputs, targets, state.hidden,
                                                        r.workspace, state.rng)
            # here the window's gradient is complete: where a data-parallel run would sum it
            norm = apply_gradient(state.params, grads, state.opt_state, p.lr, tc)
            if not math.isfinite(loss) or not math.isfinite(norm):
                p.step += 1
                raise _Diverging(f"loss {loss}, gradient norm {norm}")
            _count_step(r, state, targets.size, loss, norm, p.train_seconds + time.perf_counter() - t0)
            if tc.max_steps is not None and p.step >= tc.max_steps:
                p.stop, p.keep = STOP_MAX_STEPS, KEEP_LAST
                _check_finite(r, state, "at the last step")
                if p.step % tc.log_every:  # a short run logs its last step too
                    _log_step(r, state, loss, norm, p.train_seconds + time.perf_counter() - t0)
                return
            signum = r.should_stop()
            if signum or (tc.checkpoint_every and p.step % tc.checkpoint_every == 0):
                _check_finite(r, state, "before a checkpoint")
                p.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                state.save(r.out_dir)
                r.snapshot = state.snapshot()
                if signum:
                    _interrupt(r, state, signum)
    finally:
        p.train_seconds += time.perf_counter() - t0


def _count_step(r, state, n_targets, loss, norm, elapsed):
    p = state.progress
    p.window += 1
    p.step += 1
    p.tokens += n_targets
    p.epoch_loss_sum += loss * n_targets
    p.epoch_targets += n_targets
    p.last_loss = loss
    r.reporter.step(n_targets, loss, p.lr)
    if p.step % r.config.train.log_every == 0:
        _log_step(r, state, loss, norm, elapsed)


def _log_step(r, state, loss, norm, elapsed):
    p = state.progress
    _append_metric(r, state, {
        "event": "train", "epoch": p.epoch, "step": p.step, "tokens": p.tokens, "loss": loss,
        "ppl": evaluate.perplexity(loss), "lr": p.lr, "grad_norm": norm,
        "tokens_per_sec": p.tokens / elapsed if elapsed > 0 else None})


def _append_metric(r, state, record):
    state.progress.metrics_bytes += modeldir.append_metric(r.out_dir, record)


def _check_finite(r, state, where):
    for key in model.trainable(state.params, r.config.model):
        if not np.isfinite(state.params[key]).all():
            raise _Diverging(f"{where}: parameter {key} is not finite")


def _end_of_epoch(r, state):
    """Valid perplexity, the schedule's decision, the kept model, a fresh hidden state."""
    p, tc = state.progress, r.config.train
    _check_finite(r, state, "at the end of the epoch")
    total, count = evaluate.evaluate_ids(state.params, r.config.model, r.streams["valid"][0], tc.eval_batch_size,
                                         tc.bptt)
    ce = total / count
    if not math.isfinite(ce):  # checked before anything is written or changed
        raise _Diverging(f"valid cross-entropy {ce}")
    decision = schedule.after_epoch(tc, p.lr, p.halving, p.best_ce, p.epoch, ce)
    train_loss = p.epoch_loss_sum / max(1, p.epoch_targets)
    record = {"event": "epoch", "epoch": p.epoch, "step": p.step, "tokens": p.tokens, "train_loss": train_loss,
              "valid_ce": ce, "valid_ppl": evaluate.perplexity(ce), "lr": p.lr,
              "tokens_per_sec": p.tokens / p.train_seconds if p.train_seconds else None,
              "accepted": decision.accept, "wall_seconds": time.perf_counter() - r.started}
    p.halving = decision.halving
    if decision.stop:
        p.stop = STOP_SCHEDULE
    if decision.accept:
        p.best_ce, p.keep = ce, KEEP_BEST
        state.best = {k: v.copy() for k, v in state.params.items()}
        modeldir.save_weights(r.out_dir, state.best)
    elif decision.reject:
        state.params = {k: v.copy() for k, v in state.best.items()}  # reject the epoch (Mikolov)
    p.lr = decision.lr
    _append_metric(r, state, record)
    r.reporter.epoch_end(record)
    p.history.append({"epoch": p.epoch, "valid_ppl": evaluate.json_safe(evaluate.perplexity(ce)),
                      "train_loss": train_loss})
    p.epoch += 1
    p.window = 0
    p.epoch_loss_sum, p.epoch_targets = 0.0, 0
    state.hidden = model.init_state(r.config.model, tc.batch_size, tc.dtype)


def _roll_back(r, state, reason):
    """-> the last good state with the learning rate halved; or, past MAX_ROLLBACKS, save the
    last good model and raise Diverged."""
    p = state.progress
    rollbacks = p.rollbacks + 1
    good = r.snapshot
    if rollbacks > MAX_ROLLBACKS:
        _give_up(r, state, reason)
    restored = good.snapshot()
    restored.progress.lr = p.lr / 2.0  # halved once more at every rollback
    restored.progress.rollbacks = rollbacks
    restored.progress.metrics_bytes = p.metrics_bytes  # the log keeps what happened, rollback included
    restored.progress.train_seconds = p.train_seconds
    _append_metric(r, restored, {"event": "rollback", "epoch": p.epoch, "step": p.step, "reason": reason,
                                 "to_epoch": good.progress.epoch, "to_step": good.progress.step,
                                 "lr": restored.progress.lr, "rollbacks": rollbacks})
    r.reporter.warn(f"warning: training diverged at step {p.step} ({reason}); rolled back to step "
                    f"{good.progress.step} with the learning rate halved to {restored.progress.lr:g} "
                    f"(rollback {rollbacks} of {MAX_ROLLBACKS})")
    return restored


def _give_up(r, state, reason):
    p, good = state.progress, r.snapshot
    modeldir.save_weights(r.out_dir, good.kept())
    _append_metric(r, state, {"event": "diverged", "epoch": p.epoch, "step": p.step, "reason": reason,
                              "rollbacks": p.rollbacks, "lr": p.lr})
    modeldir.write_info(r.out_dir, status="diverged", step=good.progress.step, epoch=good.progress.epoch,
                        reason=reason)
    which = ("best validated" if good.progress.keep == KEEP_BEST and good.best is not None
             else f"last good (step {good.progress.step})")
    weights = r.out_dir / modeldir.WEIGHTS
    raise Diverged(f"training diverged at step {p.step} ({reason}) after {MAX_ROLLBACKS} rollbacks, each "
                   f"halving the learning rate (now {p.lr:g}); {weights} holds the {which} model. Use a "
                   f"smaller train.lr or set train.clip_norm and train again (--init {r.out_dir} starts from "
                   f"that model)")


def _interrupt(r, state, signum):
    p = state.progress
    if p.keep == KEEP_LAST:  # nothing validated yet: let eval/sample use the current weights
        modeldir.save_weights(r.out_dir, state.params)
    _append_metric(r, state, {"event": "interrupted", "epoch": p.epoch, "step": p.step, "signal": signum})
    modeldir.write_info(r.out_dir, status="interrupted", step=p.step, epoch=p.epoch)
    raise Interrupted(signum)


def _finish(r, state, vocab, unigram, seconds):
    """Save the kept model and the final checkpoint; exact valid and test perplexity; the end
    record -> the summary."""
    p, config = state.progress, r.config
    kept = state.kept()
    modeldir.save_weights(r.out_dir, kept)
    state.save(r.out_dir)
    valid_ppl = _exact_perplexity(kept, config, r.streams["valid"][0])
    test_ids = r.streams["test"][0]
    test_ppl = _exact_perplexity(kept, config, test_ids) if test_ids is not None and len(test_ids) > 1 else None
    train_loss = (p.epoch_loss_sum / p.epoch_targets if p.epoch_targets
                  else p.history[-1].get("train_loss") if p.history else None)
    summary = {"event": "end", "stop_reason": stop_reason(p.stop, config.train), "epochs": len(p.history),
               "steps": p.step, "tokens": p.tokens, "train_loss": train_loss, "lr": p.lr, "valid_ppl": valid_ppl,
               "test_ppl": test_ppl, "unigram_valid_ppl": unigram, "train_seconds": p.train_seconds,
               "wall_seconds": seconds, "tokens_per_sec": p.tokens / p.train_seconds if p.train_seconds else None}
    _append_metric(r, state, summary)
    modeldir.write_info(r.out_dir, status="complete", vocab_size=len(vocab), steps=p.step, tokens=p.tokens,
                        valid_ppl=valid_ppl, test_ppl=test_ppl, unigram_valid_ppl=unigram,
                        stop_reason=summary["stop_reason"])
    return summary


def _exact_perplexity(params, config, ids):
    total, count = evaluate.evaluate_ids(params, config.model, ids, 1, config.train.bptt)
    return evaluate.summarize(total, count)["perplexity"]


# --------------------------------------------------------------------------------------------
# A run in its folder


def run_in_folder(config, out, *, init_dir=None, resume=False, reporter=None, should_stop=lambda: None):
    """`run` into the model directory `out`, which a new run creates (refusing a folder that
    holds a model) and --resume finds: the lock is held throughout, a killed run's temporary
    files are cleared, and a folder created for a run that failed before writing is removed."""
    out = Path(out)
    lock.refuse_if_held(out)
    if resume and not out.exists():
        raise UserError(f"--out {out}: no such folder to resume")
    if not resume:
        modeldir.check_new_out(out, init_dir)
    created = modeldir.create(out)
    lock.acquire_lock(out)
    try:
        files.remove_stale_temp_files(out)  # left by a run that was killed while writing
        return run(config, out, init_dir=init_dir, resume=resume, reporter=reporter, should_stop=should_stop)
    except WriteError as e:
        if (out / modeldir.CHECKPOINT).exists():
            raise WriteError(f"{e}; fix the cause and continue with: rnnlm train --out {out} --resume") from None
        raise
    finally:
        lock.release_lock(out)
        if created:
            modeldir.remove_if_empty(out)
