"""Training: truncated BPTT over the batchified training stream, the learning-rate schedule,
the kept model, checkpoints and resume.

Schedule `halving` (Mikolov's RNNLM toolkit): after each epoch the valid cross-entropy is
compared with the best so far. An epoch that made it worse is rejected (the best weights come
back). When an epoch improves it by less than the factor `min_improvement` (on the log-
likelihood), the learning rate is halved after this and every later epoch; if that happens
again once halving has begun, training stops. `epochs` and `max_steps` bound it in any case.

The kept model (weights.npz) is the one with the best valid perplexity; a run that stops at
`max_steps` keeps the weights after its last step instead (SPEC).
"""

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import data, evaluate, model, optim
from .config import dump_config
from .errors import UserError
from .vocab import build_vocab


class Interrupted(Exception):
    """Training stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class SilentReporter:
    """The interface the CLI's progress display implements; this one shows nothing."""

    def info(self, text): pass
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


def train_step(params, model_cfg, train_cfg, opt_state, inputs, targets, state, lr):
    """One window: forward, one-pass backward, clip, update. -> (loss, new state, grad norm)."""
    loss, new_state, cache = model.forward(params, model_cfg, inputs, targets, state)
    grads = model.backward(cache)
    norm = optim.clip_grad_norm(grads, train_cfg.clip_norm)
    optim.update(train_cfg.optimizer, params, grads, opt_state, lr, train_cfg)
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


def _write_metric(out_dir, progress, record):
    line = json.dumps(record) + "\n"
    with open(Path(out_dir) / ckpt.METRICS, "ab") as f:
        f.write(line.encode("utf-8"))
    progress.metrics_bytes += len(line.encode("utf-8"))


def _truncate_metrics(out_dir, size):
    """Drop metrics written after the checkpoint we resume from (they will be written again)."""
    path = Path(out_dir) / ckpt.METRICS
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)


def _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng):
    meta = {"progress": progress.__dict__, "rng": rng.bit_generator.state}
    ckpt.save_checkpoint(out_dir, params, best, opt_state, hidden, meta)


# --------------------------------------------------------------------------------------------
# The loop


def run(config, out_dir, *, init_dir=None, resume=False, reporter=None, should_stop=lambda: None):
    """Train into out_dir; returns a summary dict. `should_stop()` returns a signal number when
    the user asked to stop (the run then checkpoints and raises Interrupted)."""
    reporter = reporter or SilentReporter()
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    dtype = config.train.dtype
    if resume:
        vocab = ckpt.load_vocab(out_dir / ckpt.VOCAB)
        params, best, opt_state, hidden, meta = ckpt.load_checkpoint(out_dir)
        ckpt.check_params(params, config, len(vocab), str(out_dir / ckpt.CHECKPOINT))
        progress = Progress(**meta["progress"])
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        _truncate_metrics(out_dir, progress.metrics_bytes)
        vocab, streams = prepare_data(config, vocab)
        reporter.info(f"resuming {out_dir} at epoch {progress.epoch}, step {progress.step}")
    else:
        init_vocab = init_params = None
        if init_dir is not None:
            _, init_vocab, init_params = ckpt.load_model(init_dir, dtype)
            ckpt.check_params(init_params, config, len(init_vocab), f"--init {init_dir}")
        vocab, streams = prepare_data(config, init_vocab)
        data.batchify(streams["train"][0], config.train.batch_size, source=config.data.train)  # fail before writing
        params = init_params or model.init_params(config.model, len(vocab), config.train.seed, dtype)
        opt_state = optim.init_state(config.train.optimizer, params)
        hidden = model.init_state(config.model, config.train.batch_size, dtype)
        rng = np.random.default_rng(config.train.seed)
        best = None
        progress = Progress(lr=config.train.lr)
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_model(out_dir, config, vocab, params)
        (out_dir / ckpt.METRICS).write_bytes(b"")
        ckpt.write_info(out_dir, status="training", vocab_size=len(vocab))

    train_ids, train_stats = streams["train"]
    valid_ids, valid_stats = streams["valid"]
    if Path(config.data.train).resolve() == Path(config.data.valid).resolve():
        reporter.info("warning: data.train and data.valid are the same file: valid perplexity will be optimistic")
    unigram = evaluate.unigram_perplexity(train_ids, valid_ids, len(vocab))
    reporter.info(f"vocabulary {len(vocab)} | train {train_stats['targets']} targets | valid "
                  f"{valid_stats['targets']} targets ({valid_stats['oov_rate']:.2%} OOV) | unigram valid ppl {unigram:.1f}")
    batches = data.batchify(train_ids, config.train.batch_size, source=config.data.train)
    n_windows = data.num_windows(batches, config.train.bptt)
    tc = config.train

    if progress.done and progress.stop_reason.startswith("reached"):
        progress.done = False  # resumed with a larger epochs or max_steps: carry on
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
        for inputs, targets in data.iter_windows(batches, tc.bptt, start=progress.window):
            loss, hidden, norm = train_step(params, config.model, tc, opt_state, inputs, targets, hidden, progress.lr)
            if not math.isfinite(loss) or not math.isfinite(norm):
                raise UserError(f"training diverged at step {progress.step + 1} (loss {loss}, gradient norm {norm}); "
                                f"try a smaller train.lr or set train.clip_norm")
            progress.window += 1
            progress.step += 1
            progress.tokens += targets.size
            progress.epoch_loss_sum += loss * targets.size
            progress.epoch_targets += targets.size
            reporter.step(targets.size, loss, progress.lr)
            if progress.step % tc.log_every == 0:
                elapsed = progress.train_seconds + time.perf_counter() - t0
                _write_metric(out_dir, progress, {
                    "event": "train", "epoch": progress.epoch, "step": progress.step, "tokens": progress.tokens,
                    "loss": loss, "ppl": math.exp(min(loss, 700)), "lr": progress.lr, "grad_norm": norm,
                    "tokens_per_sec": progress.tokens / elapsed if elapsed > 0 else None})
            if tc.max_steps is not None and progress.step >= tc.max_steps:
                progress.done, progress.stop_reason = True, f"reached max_steps {tc.max_steps}"
                break
            signum = should_stop()
            if signum or (tc.checkpoint_every and progress.step % tc.checkpoint_every == 0):
                progress.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng)
                if signum:
                    _interrupt(out_dir, params, best, progress, signum)
        progress.train_seconds += time.perf_counter() - t0
        if progress.done:  # max_steps: keep the weights after the last step (SPEC)
            best = None
            break
        params, best, hidden = _end_of_epoch(config, out_dir, params, best, progress, valid_ids, reporter)
        _save_checkpoint(out_dir, params, best, opt_state, hidden, progress, rng)
        signum = should_stop()
        if signum:
            _interrupt(out_dir, params, best, progress, signum)

    return _finish(config, out_dir, vocab, params, best, progress, streams, opt_state, hidden, rng,
                   unigram, time.perf_counter() - t_start, reporter)


def _end_of_epoch(config, out_dir, params, best, progress, valid_ids, reporter):
    """Valid perplexity, the schedule, the kept model; returns (params, best, fresh hidden state)."""
    tc = config.train
    total, count = evaluate.evaluate_ids(params, config.model, valid_ids, tc.eval_batch_size, tc.bptt)
    ce = total / count
    improved = progress.best_ce is None or ce < progress.best_ce
    record = {"event": "epoch", "epoch": progress.epoch, "step": progress.step, "tokens": progress.tokens,
              "train_loss": progress.epoch_loss_sum / max(1, progress.epoch_targets),
              "valid_ce": ce, "valid_ppl": math.exp(ce), "lr": progress.lr,
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
    if tc.schedule == "halving" and progress.halving:
        progress.lr /= 2.0
    _write_metric(out_dir, progress, record)
    reporter.epoch_end(record)
    progress.history.append({"epoch": progress.epoch, "valid_ppl": math.exp(ce)})
    progress.epoch += 1
    progress.window = 0
    progress.epoch_loss_sum, progress.epoch_targets = 0.0, 0
    return params, best, model.init_state(config.model, tc.batch_size, tc.dtype)


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
