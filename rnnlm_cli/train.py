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

import collections
import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, average, card, corpus, data, distributed, evaluate, files, history, lock, model, modeldir
from . import optim, regularize, schedule
from .config import changed_keys
from .checkpoint import KEEP_BEST, KEEP_LAST, STOP_EPOCHS, STOP_MAX_STEPS, STOP_SCHEDULE, TrainingState, read_progress
from .checkpoint import stop_reason
from .errors import Diverged, UserError, WriteError
from .vocab import load_vocab, load_word_list, make_vocab, vocab_from_tokens

MAX_ROLLBACKS = 3  # per run (kept across --resume): the next divergence stops training
RELEASE_EVERY = 200  # windows between releases of the train ids already read (corpus.release)
# --init-vocab: fine-tune with the --init model's vocabulary, or with one built from the new text
INIT_VOCAB_KEEP, INIT_VOCAB_NEW = "keep", "new"
# --init with the kept vocabulary warns when more than this share of the training targets are <unk>
POOR_COVERAGE = 0.05


class Interrupted(Exception):
    """Training stopped by a signal after saving a resumable checkpoint; or, with
    `final_evaluation`, a complete run whose final exact evaluation the signal skipped."""

    def __init__(self, signum, final_evaluation=False):
        super().__init__(signum)
        self.signum = signum
        self.final_evaluation = final_evaluation


class SilentReporter:
    """The interface the CLI's progress display implements; this one shows nothing."""

    def info(self, text): pass
    def warn(self, text): pass
    def epoch_start(self, epoch, windows, start): pass
    def step(self, tokens, loss, lr): pass
    def epoch_end(self, record): pass
    def close(self): pass  # training is over: no progress display may stay open


# --------------------------------------------------------------------------------------------
# One step: the gradient of a window, then the update


def window_gradient(params, model_cfg, inputs, targets, hidden, workspace=None, masks=None, reset_at=None,
                    scale=None, ar=0.0, tar=0.0, ready=None):
    """Forward and one-pass backward over one window -> (mean loss, grads, new hidden state).
    `workspace`: a dict kept across calls, holding the big scratch arrays; `masks`: the
    window's dropout and weight-drop masks (regularize.draw_masks); `reset_at` (the <eos> id,
    data.independent) resets the state at each sentence start; `scale` replaces the gradient's
    1/(N·T) (see model.forward); `ar`, `tar`: train.ar, train.tar (the loss returned is the
    cross-entropy alone); `ready`: model.backward's (a data-parallel run sums each gradient
    as soon as it is final)."""
    loss, new_hidden, cache = model.forward(params, model_cfg, inputs, targets, hidden, workspace=workspace,
                                            masks=masks, reset_at=reset_at, scale=scale, ar=ar, tar=tar)
    return loss, model.backward(cache, workspace, sparse_embedding=True, ready=ready), new_hidden


def window_masks(rng, config, inputs, vocab_size, workspace=None):
    """The masks of a window of inputs (N, T) for the whole batch, drawn from the run's generator
    (None when nothing is dropped: nothing is drawn); the big ones in `workspace`'s arrays."""
    return regularize.draw_masks(rng, config.model, inputs.shape[1], config.train.batch_size, vocab_size,
                                 config.train.dtype, workspace)


def apply_gradient(params, grads, opt_state, lr, train_cfg, workspace=None):
    """Add train.weight_decay's λθ, clip the global norm to train.clip_norm and update params
    in place -> the norm before clipping. The gradients are consumed (changed in place);
    `workspace`: the run's dict of arrays kept across windows (weight decay densifies sparse
    gradients there)."""
    if train_cfg.weight_decay:
        grads = regularize.add_weight_decay(grads, params, train_cfg.weight_decay, workspace)
    norm = optim.global_norm(grads)
    optim.update(train_cfg.optimizer, params, grads, opt_state, lr, train_cfg,
                 grad_scale=optim.clip_factor(norm, train_cfg.clip_norm))
    return norm


# --------------------------------------------------------------------------------------------
# Setting up a run


def prepare_data(config, vocab=None):
    """Vocabulary (built from train unless given) and the train/valid/test streams, each mapped
    from the token cache (corpus.py: encoded on the first run, in bounded memory) ->
    (vocab, {"train": (ids, stats), "valid": ..., "test": ... or (None, None),
    "train_counts": the count of every id in train (V,)})."""
    d = config.data
    for key in ("train", "valid"):
        if getattr(d, key) is None:
            raise UserError(f"config: data.{key} is required (a path to a text file)")
    folder = corpus.cache_folder(d.cache_dir)
    train_files = corpus.files_of(d.train)
    if vocab is None:
        word_list = load_word_list(config.vocab.file) if config.vocab.file else None  # checked before the text
        vocab, train = corpus.train_corpus(train_files, d.tokenizer, folder, config.vocab.min_count,
                                           config.vocab.max_size, word_list)
    else:
        train = corpus.encoded(train_files, vocab, d.tokenizer, folder)
    valid = corpus.encoded([d.valid], vocab, d.tokenizer, folder)
    test = corpus.encoded([d.test], vocab, d.tokenizer, folder) if d.test else (None, None)
    return vocab, {"train": train[:2], "valid": valid[:2], "test": test[:2], "train_counts": train.id_counts}


def check_data(config, init_dir=None, init_vocab=INIT_VOCAB_KEEP):
    """What `train --dry-run` checks, writing nothing: each data file exists and is UTF-8 text
    with words (read through in bounded memory), the training text fills every stream, and an
    --init model loads and fits the config. -> (vocabulary size, one dict per file: key, file,
    words, lines, targets, oov, oov_rate)"""
    d = config.data
    for key in ("train", "valid"):
        if getattr(d, key) is None:
            raise UserError(f"config: data.{key} is required (a path to a text file)")
    found = {}
    for key in ("train", "valid", "test"):
        path = getattr(d, key)
        if path is None:
            continue
        counts, words, lines = _count_train(config) if key == "train" else data.count_words(path, d.tokenizer)
        name = _train_name(config) if key == "train" else path
        if words == 0:
            raise UserError(f"{name}: no tokens (the file is empty or only whitespace)")
        found[key] = (name, counts, words, lines)
    _, counts, words, lines = found["train"]
    if (words + lines + 1) // config.train.batch_size < 2:  # the error batchify gives, on a stand-in
        data.batchify(np.zeros(words + lines + 1, np.int32), config.train.batch_size, source=_train_name(config))
    if init_dir is not None:
        init_config, vocab, params = modeldir.load_model(init_dir, config.train.dtype)
        check_init_fits(config, init_config, init_dir, init_vocab)
        modeldir.check_params(params, config, len(vocab), f"--init {init_dir}")
    if init_dir is None or init_vocab == INIT_VOCAB_NEW:
        vocab = make_vocab(counts, config.vocab)
    rows = []
    for key, (path, file_counts, words, lines) in found.items():
        oov = sum(n for w, n in file_counts.items() if w not in vocab.index)
        rows.append({"key": key, "file": path, "words": words, "lines": lines, "targets": words + lines,
                     "oov": oov, "oov_rate": oov / (words + lines)})
    return len(vocab), rows


def _count_train(config):
    """(word counts, words, non-empty lines) of data.train, its files read in turn (bounded memory)."""
    counts, words, lines = collections.Counter(), 0, 0
    for one in corpus.files_of(config.data.train):
        c, w, n = data.count_words(one, config.data.tokenizer)
        counts.update(c)
        words, lines = words + w, lines + n
    return counts, words, lines


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


def _start(config, out_dir, init_dir, init_vocab, reporter, processes=1):
    """A new run of `processes` MPI processes: initial (or --init) weights, a model directory and
    a first checkpoint, written only once the data and the config have passed their checks.
    -> (vocab, streams, state)"""
    dtype = config.train.dtype
    if init_dir is None:
        (vocab, streams), init_params = prepare_data(config), None
    else:
        vocab, streams, init_params = _from_init(config, init_dir, init_vocab, reporter)
    data.batchify(streams["train"][0], config.train.batch_size, source=_train_name(config))  # fail before writing
    _check_memory(config, len(vocab))
    counts = streams["train_counts"]  # for output layers built from frequencies
    params = init_params or model.init_params(config.model, len(vocab), config.train.seed, dtype, counts)
    state = TrainingState.new(config, params)
    state.progress.train_tokens = len(streams["train"][0])
    state.progress.init_from = str(Path(init_dir).resolve()) if init_dir is not None else None
    state.progress.processes = processes
    out_dir.mkdir(parents=True, exist_ok=True)
    modeldir.save_model(out_dir, config, vocab, params)
    modeldir.start_metrics(out_dir)
    modeldir.write_info(out_dir, status="training", vocab_size=len(vocab))
    state.save(out_dir)  # --resume works from here on
    return vocab, streams, state


def _from_init(config, init_dir, init_vocab, reporter):
    """--init: the vocabulary, streams and starting parameters of a run from another model.
    INIT_VOCAB_KEEP: that model's vocabulary and weights as they are (a warning when the
    vocabulary covers the training text poorly); INIT_VOCAB_NEW: a vocabulary built from the
    training text, the shared words' rows copied (model.transfer_vocab)."""
    dtype = config.train.dtype
    init_config, old_vocab, old_params = modeldir.load_model(init_dir, dtype)
    check_init_fits(config, init_config, init_dir, init_vocab)
    modeldir.check_params(old_params, config, len(old_vocab), f"--init {init_dir}")
    if init_vocab != INIT_VOCAB_NEW:
        vocab, streams = prepare_data(config, old_vocab)
        _warn_coverage(config, init_dir, streams["train"][1], reporter)
        return vocab, streams, old_params
    vocab, streams = prepare_data(config)
    counts = np.bincount(streams["train"][0], minlength=len(vocab))
    fresh = model.init_params(config.model, len(vocab), config.train.seed, dtype, counts)
    new_ids = [i for i, w in enumerate(vocab.tokens) if w in old_vocab.index]
    old_ids = [old_vocab.index[vocab.tokens[i]] for i in new_ids]
    source = f"vocab.file {config.vocab.file}" if config.vocab.file else _train_name(config)
    reporter.info(f"--init {init_dir} --init-vocab new: vocabulary {len(vocab)} from {source}, "
                  f"{len(new_ids)} of them in the init model's {len(old_vocab)}: their rows copied, the other "
                  f"{len(vocab) - len(new_ids)} initialized as usual")
    return vocab, streams, model.transfer_vocab(old_params, fresh, config.model, old_ids, new_ids)


# The model keys that fix the arrays an --init model must have, and what its weights compute
INIT_KEYS = ("cell", "activation", "layers", "embedding_dim", "hidden_dim", "output", "classes", "tie_weights")


def check_init_fits(config, init_config, init_dir, init_vocab=INIT_VOCAB_KEEP):
    """--init: the config must describe the --init model's network (INIT_KEYS: cell, sizes,
    output, ...; the activation of an Elman cell; the classes only when its vocabulary is kept)
    and, keeping its vocabulary, read text with its tokenizer. Else one UserError naming every
    key that differs, with both values."""
    keys = [k for k in INIT_KEYS if not (k == "activation" and config.model.cell != "elman")
            and not (k == "classes" and init_vocab == INIT_VOCAB_NEW)]
    differ = [(f"model.{k}", getattr(init_config.model, k), getattr(config.model, k)) for k in keys
              if getattr(init_config.model, k) != getattr(config.model, k)]
    if init_vocab != INIT_VOCAB_NEW and init_config.data.tokenizer != config.data.tokenizer:
        differ.append(("data.tokenizer", init_config.data.tokenizer, config.data.tokenizer))
    if init_vocab != INIT_VOCAB_NEW and config.vocab.file:
        raise UserError(f"--init {init_dir}: keeps that model's vocabulary, and vocab.file {config.vocab.file} gives "
                        f"another; to fine-tune with the word list's vocabulary, add --init-vocab new")
    if not differ:
        return
    shown = "; ".join(f"{key}: {_yaml_value(there)} there, {_yaml_value(here)} here" for key, there, here in differ)
    fix = " ".join(f"--set {key}={_yaml_value(there)}" for key, there, _ in differ)
    vocab = (" (or --init-vocab new: a vocabulary built from this text, read with this tokenizer)"
             if any(key == "data.tokenizer" for key, _, _ in differ) else "")
    raise UserError(f"--init {init_dir}: its model does not fit this config: {shown}; fine-tune it with its "
                    f"settings ({fix}){vocab}, or train a new model without --init")


def _yaml_value(value):
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _warn_coverage(config, init_dir, train_stats, reporter):
    """Warn when the --init model's vocabulary leaves more than POOR_COVERAGE of the training
    targets as <unk>, and one built from the training text would leave fewer."""
    rate = train_stats["oov_rate"]
    if rate <= POOR_COVERAGE:
        return
    counts, words, lines = _count_train(config)
    own = make_vocab(counts, config.vocab)
    own_rate = sum(c for w, c in counts.items() if w not in own.index) / max(1, words + lines)
    if own_rate < rate:
        reporter.warn(f"warning: --init {init_dir}: its vocabulary leaves {rate:.2%} of the targets of "
                      f"{_train_name(config)} as <unk> (a vocabulary built from that file: {own_rate:.2%}), so this "
                      f"run's perplexities are not comparable with other vocabularies'; --init-vocab new "
                      f"fine-tunes with the new text's vocabulary")


def _resume(config, out_dir, reporter, processes=1):
    """The state of an interrupted run, from its checkpoint, continued by `processes` MPI
    processes (as many as it had: another number would sum its gradients in another order);
    everything is read and checked before anything in out_dir changes. -> (vocab, streams, state)"""
    vocab = load_vocab(out_dir / modeldir.VOCAB)
    source = out_dir / modeldir.CHECKPOINT
    if not source.exists() and modeldir.check_format(out_dir).get("status") == "complete":
        raise UserError(f"--resume {out_dir}: nothing to resume: the run is complete and has no checkpoint "
                        f"(checkpoint.npz was not kept: train.keep_checkpoint false, or deleted); to train on from "
                        f"its weights, start a new run: rnnlm train CONFIG --init {out_dir} --out NEW_DIR")
    state = TrainingState.load(out_dir, config, len(vocab))
    progress = state.progress
    _check_processes(out_dir, progress, processes)
    vocab, streams = prepare_data(config, vocab)
    if progress.train_tokens and progress.train_tokens != len(streams["train"][0]):
        raise UserError(f"{_train_name(config)}: changed since the checkpoint in {out_dir} ("
                        f"{progress.train_tokens - 1} targets then, {len(streams['train'][0]) - 1} now); "
                        f"--resume needs the same training data")
    batches = data.batchify(streams["train"][0], config.train.batch_size, source=_train_name(config))
    if progress.window > data.num_windows(batches, config.train.bptt):
        raise UserError(f"{source}: its data position (window {progress.window}) is past the end of "
                        f"{_train_name(config)}: the training data changed since the checkpoint")
    modeldir.rewind_metrics(out_dir, progress.metrics_bytes)
    reporter.info(f"resuming {out_dir} at epoch {progress.epoch}, step {progress.step}")
    if progress.stop in (STOP_EPOCHS, STOP_MAX_STEPS):
        progress.stop = None  # resumed with a larger epochs or max_steps: carry on
    return vocab, streams, state


def _train_name(config):
    """data.train as messages name it (a list by its first file)."""
    return corpus.describe(corpus.files_of(config.data.train))


def _setup(config, out_dir, init_dir, init_vocab, resume, reporter, w):
    """-> (vocab, streams, state). Rank 0 starts or resumes the run in out_dir; the other
    processes take its vocabulary and state, and map the data themselves (from the token cache
    when they share its folder). Any process's failure stops them all (distributed.agree)."""
    def begin():
        return (_resume(config, out_dir, reporter, w.size) if resume
                else _start(config, out_dir, init_dir, init_vocab, reporter, w.size))
    if w.size == 1:
        return begin()
    first = distributed.agree(w, begin if w.rank == 0 else lambda: None)
    tokens, state = distributed.bcast(w, (first[0].tokens, first[2]) if w.rank == 0 else None)
    vocab = first[0] if w.rank == 0 else vocab_from_tokens(tokens)
    streams = distributed.agree(w, lambda: first[1] if w.rank == 0 else prepare_data(config, vocab)[1])
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
        if other and any(_same_file(f, other) for f in corpus.files_of(config.data.train)):
            reporter.warn(f"warning: data.train and data.{key} are the same file ({other}): {key} perplexity "
                          f"will be optimistic")
    (train_ids, train_stats), (valid_ids, valid_stats) = streams["train"], streams["valid"]
    unigram = evaluate.unigram_from_counts(streams["train_counts"], train_ids[0], valid_ids)
    fixed = f" (vocab.file {config.vocab.file})" if config.vocab.file else ""
    reporter.info(f"vocabulary {len(vocab)}{fixed} | train {train_stats['targets']} targets | valid "
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
    reset_at: int | None  # the <eos> id when sentences are independent (data.independent)
    vocab_size: int
    world: distributed.World = None  # the processes of a data-parallel run (one by default)
    block: tuple = None  # (start, stop): the streams this process computes
    t_start: float = 0.0  # perf_counter() when this process started the run (or its resume)
    wall_before: float = 0.0  # wall seconds of the parts of the run before this --resume


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


def run(config, out_dir, *, init_dir=None, init_vocab=INIT_VOCAB_KEEP, resume=False, reporter=None,
        should_stop=lambda: None, world=None):
    """Train into out_dir; returns a summary dict. `init_vocab` (with `init_dir`): INIT_VOCAB_KEEP
    or INIT_VOCAB_NEW. `should_stop()` returns a signal number when the user asked to stop (the
    run then checkpoints and raises Interrupted). `world`: the processes of a data-parallel run
    (distributed.py); one process by default."""
    reporter = reporter or SilentReporter()
    out_dir = Path(out_dir)
    w = world or distributed.World()
    t_start = time.perf_counter()
    block = distributed.streams_of(w, config.train.batch_size)
    vocab, streams, state = _setup(config, out_dir, init_dir, init_vocab, resume, reporter, w)
    unigram = _announce(config, vocab, streams, reporter)
    batches = data.batchify(streams["train"][0], config.train.batch_size, source=_train_name(config))
    reset_at = vocab.eos_id if config.data.independent else None
    if w.size > 1:
        should_stop = (lambda asked: lambda: distributed.agreed_signal(w, asked))(should_stop)
    r = _Run(config, out_dir, reporter, should_stop, streams, batches[block[0]:block[1]], state.snapshot(), {},
             reset_at, len(vocab), w, block, t_start, state.progress.wall_seconds)
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
            _save(r, state)
            r.snapshot = state.snapshot()
            signum = r.should_stop()
            if signum:
                _interrupt(r, state, signum)
    return _finish(r, state, vocab, unigram, time.perf_counter() - t_start)


def _reached_a_limit(r, state):
    """Whether train.epochs or train.max_steps is reached before an epoch (or its rest) starts."""
    p = state.progress
    p.stop = _limit(p, r.config.train)
    if p.stop == STOP_MAX_STEPS:
        p.keep = KEEP_LAST
    return p.stop is not None


def _limit(progress, train_cfg):
    """STOP_EPOCHS or STOP_MAX_STEPS when that limit leaves no step to take from `progress`, else None."""
    if progress.epoch > train_cfg.epochs:
        return STOP_EPOCHS
    if train_cfg.max_steps is not None and progress.step >= train_cfg.max_steps:
        return STOP_MAX_STEPS
    return None


def _check_processes(out_dir, progress, processes):
    """A run resumes on as many MPI processes as it ran on (others sum the gradients in another
    order: not the run it continues); else a UserError naming both numbers."""
    if progress.processes == processes:
        return

    def run_by(k):
        return f"{k} MPI processes (mpiexec -n {k})" if k > 1 else "1 process (no mpiexec)"
    raise UserError(f"--resume {out_dir}: the run was trained by {run_by(progress.processes)} and this is "
                    f"{run_by(processes)}; resume it as it ran, bit for bit: "
                    f"{modeldir.resume_command(out_dir, progress.processes)}")


def before_resume(config, out_dir, processes=1):
    """What the CLI checks before a --resume touches out_dir (its lock included), from info.json
    and the checkpoint's progress only: a UserError when `processes` differs from the run's;
    one line saying why there is nothing to do when the run is complete and `config` (its
    train.epochs and train.max_steps) would train no further; else None."""
    out_dir = Path(out_dir)
    if not (out_dir / modeldir.CHECKPOINT).exists():
        return None  # _resume says what is wrong
    info = modeldir.check_format(out_dir)
    p = read_progress(out_dir)
    idle = _nothing_to_do(config, out_dir, info, p)
    if idle is None:
        _check_processes(out_dir, p, processes)
    return idle


def _nothing_to_do(config, out_dir, info, p):
    tc = config.train
    if info.get("status") != "complete" or p.stop is None or (p.stop != STOP_SCHEDULE and _limit(p, tc) is None):
        return None
    if p.stop == STOP_SCHEDULE:
        why = "its learning-rate schedule ended it (valid perplexity stopped improving)"
    elif _limit(p, tc) == STOP_EPOCHS:
        why = (f"it trained {len(p.history)} epoch{'' if len(p.history) == 1 else 's'} and train.epochs is "
               f"{tc.epochs} (--set train.epochs=N trains on to epoch N)")
    else:
        why = (f"it took {p.step} steps and train.max_steps is {tc.max_steps} (--set train.max_steps=N or "
               f"=null trains on)")
    skipped = info.get("final_evaluation") == modeldir.FINAL_EVALUATION_SKIPPED
    return (f"nothing to do: {out_dir} is complete: {why}; nothing was changed"
            + (f"; its final evaluation was skipped: rnnlm eval {out_dir} runs it" if skipped else ""))


def _train_epoch(r, state):
    """The windows of the current epoch from progress.window on, to its end or to max_steps
    (then progress.stop says so). Checkpoints every checkpoint_every steps and on a signal."""
    p, tc, m = state.progress, r.config.train, r.config.model
    if average.begin_epoch(state, tc):
        _append_metric(r, state, {"event": "average", "epoch": p.epoch, "step": p.step, "tokens": p.tokens})
        r.reporter.info(f"weight averaging from epoch {p.epoch} (step {p.step}) on")
    trained = model.trainable(state.params, m)
    r.reporter.epoch_start(p.epoch, data.num_windows(r.batches, tc.bptt), p.window)
    t0 = time.perf_counter()
    try:
        for inputs, targets in data.iter_windows(r.batches, tc.bptt, start=p.window):
            masks = window_masks(state.rng, r.config, inputs, r.vocab_size, r.workspace)
            if r.world.size == 1:
                loss, grads, state.hidden = window_gradient(state.params, m, inputs, targets, state.hidden,
                                                            r.workspace, masks, r.reset_at, ar=tc.ar, tar=tc.tar)
            else:  # this process's streams, then the gradient summed over the processes
                loss, grads = _distributed_gradient(r, state, inputs, targets, masks)
            norm = apply_gradient(state.params, grads, state.opt_state, p.lr, tc, r.workspace)
            average.update(state, trained)
            if not math.isfinite(loss) or not math.isfinite(norm):
                p.step += 1
                raise _Diverging(f"loss {loss}, gradient norm {norm}")
            _count_step(r, state, targets.shape[1] * tc.batch_size, loss, norm,
                        p.train_seconds + time.perf_counter() - t0)
            if p.window % RELEASE_EVERY == 0:  # memory does not grow with the part of the corpus read
                corpus.release(r.batches, p.window * tc.bptt)
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
                _save(r, state)
                r.snapshot = state.snapshot()
                if signum:
                    _interrupt(r, state, signum)
    finally:
        p.train_seconds += time.perf_counter() - t0


def _distributed_gradient(r, state, inputs, targets, masks):
    """This process's block of streams through window_gradient, its gradient scaled by the whole
    window's target count, then the sum over the processes -> (the window's mean loss, grads);
    the block's new carried state goes into its part of state.hidden. `masks` are the whole
    batch's (every process draws them alike): the block takes its part. The gradients are
    summed as the backward pass makes them (distributed.Reducer: overlapped with it)."""
    (a, b), N, tc = r.block, r.config.train.batch_size, r.config.train
    n_total = targets.shape[1] * N
    reducer = r.workspace.get("reducer") or r.workspace.setdefault("reducer", distributed.Reducer(r.world, r.workspace))
    loss, grads, new_hidden = window_gradient(state.params, r.config.model, inputs, targets,
                                              np.ascontiguousarray(state.hidden[..., a:b, :]), r.workspace,
                                              regularize.stream_block(masks, a, b), r.reset_at,
                                              scale=1.0 / n_total, ar=tc.ar, tar=tc.tar, ready=reducer.ready)
    state.hidden[..., a:b, :] = new_hidden
    loss_sum, grads = reducer.finish(loss * targets.size, grads)  # the sums begun during the backward pass
    return loss_sum / n_total, grads


def _save(r, state):
    """The checkpoint (written by rank 0), the processes' parts of the carried state gathered first,
    with the run's wall time so far (all its parts) in its progress."""
    state.progress.wall_seconds = r.wall_before + time.perf_counter() - r.t_start
    distributed.gather_hidden(r.world, state.hidden, *r.block)
    for arrays in (state.params, state.opt_state):
        distributed.align(r.world, arrays)
    state.save(r.out_dir)


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
    ids, streams = distributed.valid_share(r.world, r.streams["valid"][0], tc.eval_batch_size, r.reset_at)
    total, count = evaluate.evaluate_ids(average.weights(state), r.config.model, ids, streams, tc.bptt, r.reset_at)
    total, count = distributed.sum_over(r.world, total, count)  # K processes: each read its share of the streams
    ce = total / count
    if not math.isfinite(ce):  # checked before anything is written or changed
        raise _Diverging(f"valid cross-entropy {ce}")
    decision = schedule.after_epoch(tc, p.lr, p.halving, p.best_ce, p.epoch, ce)
    train_loss = p.epoch_loss_sum / max(1, p.epoch_targets)
    record = {"event": "epoch", "epoch": p.epoch, "step": p.step, "tokens": p.tokens, "train_loss": train_loss,
              "valid_ce": ce, "valid_ppl": evaluate.perplexity(ce), "lr": p.lr,
              "tokens_per_sec": p.tokens / p.train_seconds if p.train_seconds else None,
              "accepted": decision.accept, "wall_seconds": time.perf_counter() - r.t_start}
    if state.average is not None:
        record["averaged"] = p.average_count
    p.halving = decision.halving
    if decision.stop:
        p.stop = STOP_SCHEDULE
    if decision.accept:
        p.best_ce, p.keep = ce, KEEP_BEST
        state.best = {k: v.copy() for k, v in average.weights(state).items()}
        modeldir.save_weights(r.out_dir, state.best)
    elif decision.reject and state.average is not None:
        average.restart_at(state, state.best)  # the best is an average: both go on from it
    elif decision.reject:
        state.params = {k: v.copy() for k, v in state.best.items()}  # reject the epoch (Mikolov)
    if average.auto_trigger(tc, p, evaluate.perplexity(ce)):
        p.average_from = p.epoch + 1
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
    _write_card(r, good, good.kept(), diverged={"step": p.step, "reason": reason, "kept_step": good.progress.step})
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
        modeldir.save_weights(r.out_dir, state.kept())
    _append_metric(r, state, {"event": "interrupted", "epoch": p.epoch, "step": p.step, "signal": signum})
    modeldir.write_info(r.out_dir, status="interrupted", step=p.step, epoch=p.epoch)
    r.reporter.close()  # the display ends here, as at the end of a run
    raise Interrupted(signum)


def _finish(r, state, vocab, unigram, seconds):
    """Save the kept model and the final checkpoint (removed at the end unless
    train.keep_checkpoint); exact valid and test perplexity; the end record -> the summary.
    `seconds`: the wall time of this process's part of the run. A signal during the exact
    evaluation stops it at once: the run is recorded complete with its figures missing
    ("final_evaluation": "skipped" in the end record and info.json), then Interrupted."""
    p, config = state.progress, r.config
    r.reporter.close()
    kept = state.kept()
    modeldir.save_weights(r.out_dir, kept)
    if config.train.keep_checkpoint:
        _save(r, state)
    valid_ppl = test_ppl = skipped = None
    test_ids = r.streams["test"][0]
    try:
        valid_ppl = _exact_perplexity(kept, config, r.streams["valid"][0], r.reset_at, r.should_stop)
        if test_ids is not None and len(test_ids) > 1:
            test_ppl = _exact_perplexity(kept, config, test_ids, r.reset_at, r.should_stop)
    except evaluate.Stopped as e:
        skipped = e.args[0]
    train_loss = (p.epoch_loss_sum / p.epoch_targets if p.epoch_targets
                  else p.history[-1].get("train_loss") if p.history else None)
    epochs_trained = len(p.history) + p.window / max(1, data.num_windows(r.batches, config.train.bptt))
    summary = {"event": "end", "stop_reason": stop_reason(p.stop, config.train), "epochs": len(p.history),
               "epochs_trained": round(epochs_trained, 4),
               "steps": p.step, "tokens": p.tokens, "train_loss": train_loss, "lr": p.lr, "valid_ppl": valid_ppl,
               "test_ppl": test_ppl, "unigram_valid_ppl": unigram, "train_seconds": p.train_seconds,
               "wall_seconds": seconds, "total_wall_seconds": r.wall_before + seconds,
               "tokens_per_sec": p.tokens / p.train_seconds if p.train_seconds else None}
    skip = {"final_evaluation": modeldir.FINAL_EVALUATION_SKIPPED} if skipped else {}
    summary.update(skip)
    _write_card(r, state, kept, summary=summary)  # first: if it fails, --resume finishes the run again
    _append_metric(r, state, summary)
    modeldir.write_info(r.out_dir, status="complete", vocab_size=len(vocab), steps=p.step, tokens=p.tokens,
                        valid_ppl=valid_ppl, test_ppl=test_ppl, unigram_valid_ppl=unigram,
                        stop_reason=summary["stop_reason"], **skip)
    if not config.train.keep_checkpoint:  # last: a crash before this leaves a resumable folder
        files.remove(r.out_dir / modeldir.CHECKPOINT)
    if skipped:
        raise Interrupted(skipped, final_evaluation=True)
    return summary


def _write_card(r, state, kept, summary=None, diverged=None):
    """DIR/README.md, the model card: the end summary (or the divergence), the run's history as
    its log tells it, and the keys a --resume changed from config.yaml."""
    config, out = r.config, r.out_dir
    per_step = config.train.batch_size * config.train.bptt
    h = history.from_events(modeldir.read_metrics(out), str(out / modeldir.METRICS), per_step)
    text = card.model_card(out.name, config, {
        "version": __version__, "out_dir": str(out.resolve()), "vocab_size": r.vocab_size,
        "counts": model.parameter_counts(kept, config.model),
        "stats": {key: r.streams[key][1] for key in ("train", "valid", "test")}, "history": h,
        "summary": summary, "diverged": diverged, "init_from": state.progress.init_from,
        "changed": changed_keys(modeldir.load_config_file(out / modeldir.CONFIG), config),
        "processes": r.world.size})
    modeldir.write_card(out, text)


def _exact_perplexity(params, config, ids, reset_at, stop=None):
    total, count = evaluate.evaluate_ids(params, config.model, ids, 1, config.train.bptt, reset_at, stop)
    return evaluate.summarize(total, count)["perplexity"]


# --------------------------------------------------------------------------------------------
# A run in its folder


def run_in_folder(config, out, *, init_dir=None, init_vocab=INIT_VOCAB_KEEP, resume=False, reporter=None,
                  should_stop=lambda: None, world=None):
    """`run` into the model directory `out`, which a new run creates (refusing a folder that
    holds a model) and --resume finds: the lock is held throughout, a killed run's temporary
    files are cleared, and a folder created for a run that failed before writing is removed.
    In a data-parallel run (`world`) rank 0 alone does all of that."""
    out = Path(out)
    w = world or distributed.World()
    distributed.streams_of(w, config.train.batch_size)  # every process refuses a batch it cannot divide
    created = distributed.agree(w, lambda: _open_folder(out, init_dir, resume) if w.rank == 0 else False)
    try:
        return run(config, out, init_dir=init_dir, init_vocab=init_vocab, resume=resume, reporter=reporter,
                   should_stop=should_stop, world=world)
    except WriteError as e:
        if (out / modeldir.CHECKPOINT).exists():
            raise WriteError(f"{e}; fix the cause and continue with: {modeldir.resume_command(out, w.size)}") from None
        raise
    finally:
        if w.rank == 0:
            lock.release_lock(out)
            if created:
                modeldir.remove_if_empty(out)


def _open_folder(out, init_dir, resume):
    """Check, create and lock the model directory -> whether it was created."""
    lock.refuse_if_held(out)
    if resume and not out.exists():
        raise UserError(f"--out {out}: no such folder to resume")
    if not resume:
        modeldir.check_new_out(out, init_dir)
    created = modeldir.create(out)
    lock.acquire_lock(out)
    files.remove_stale_temp_files(out)  # left by a run that was killed while writing
    return created
