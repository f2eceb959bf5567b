"""The `rnnlm` command line: parses, dispatches, prints. The work is done in the other modules.

Errors: a UserError (bad file, key or value) prints one line and exits 2; click's usage errors
exit 2 too; anything else exits 1 with a one-line message (the traceback under --debug).
numpy is imported inside the commands so that `rnnlm --help` stays fast.
"""

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import RnnlmError, UserError, one_line, shown as _shown
from .units import count as _fmt_count, ppl as _ppl, seconds as _fmt_seconds

SET_HELP = "Override a config key, e.g. --set model.hidden_dim=256 (value parsed as YAML). Repeatable."


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rnnlm")
@click.option("--debug", is_flag=True, help="Show the full traceback of an unexpected error.")
@click.pass_context
def cli(ctx, debug):
    """Train word-level recurrent language models with plain numpy and hand-derived BPTT.

    \b
    Example:
      rnnlm train                      # the built-in config on the shipped corpus
      rnnlm eval runs/default          # perplexity on the test file
      rnnlm sample runs/default --prompt "in the beginning"
    """
    ctx.obj = {"debug": debug}


# --------------------------------------------------------------------------------------------
# config


def _load(config_path, overrides):
    from .config import load_config
    return load_config(config_path, overrides)


@cli.command("config")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--keys", is_flag=True, help="List every config key with its default and meaning.")
def config_cmd(config_path, overrides, keys):
    """Print the effective config (defaults < CONFIG < --set) as YAML.

    \b
    Example:
      rnnlm config configs/ptb-elman.yaml --set train.lr=0.5
    """
    from .config import describe_keys, dump_config
    if keys:
        click.echo(describe_keys())
        return
    click.echo(dump_config(_load(config_path, overrides)), nl=False)


# --------------------------------------------------------------------------------------------
# vocab


@cli.command("vocab")
@click.argument("train_file", type=click.Path(dir_okay=False))
@click.argument("other_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--min-count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Drop words seen fewer times in TRAIN_FILE.")
@click.option("--max-size", default=None, type=click.IntRange(min=3), help="Cap the vocabulary size (specials included).")
@click.option("--tokenizer", default="whitespace", show_default=True, type=click.Choice(["whitespace", "simple"]))
@click.option("--save", "save_path", type=click.Path(dir_okay=False), help="Write the vocabulary here (vocab.txt format).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def vocab_cmd(train_file, other_files, min_count, max_size, tokenizer, save_path, as_json):
    """Build a vocabulary from TRAIN_FILE and report coverage of every file given.

    \b
    Example:
      rnnlm vocab data/train.txt data/valid.txt --min-count 2 --save vocab.txt
    """
    from . import vocab as vocab_mod
    vocab, counts, rows = vocab_mod.coverage(train_file, other_files, min_count, max_size, tokenizer)
    if save_path:
        vocab_mod.save_vocab(vocab, save_path)
    if as_json:
        click.echo(json.dumps({"vocab_size": len(vocab), "types_in_train": len(counts)}))
        for row in rows:
            click.echo(json.dumps(row))
        return
    click.echo(f"vocabulary: {len(vocab)} tokens ({len(counts)} word types in {train_file}, "
               f"min_count {min_count}, max_size {max_size})")
    for r in rows:
        click.echo(f"{r['file']}: {r['words']} words, {r['lines']} lines, {r['targets']} targets, "
                   f"{r['oov']} OOV ({r['oov_rate']:.2%})")
    if save_path:
        click.echo(f"saved to {save_path}")


# --------------------------------------------------------------------------------------------
# train


class BarReporter:
    """Progress for a terminal: a tqdm bar per epoch (tokens/s, loss, ppl, lr) and a summary line
    per epoch, all on stderr. `bar=False` keeps the summary lines only; `quiet` shows nothing."""

    def __init__(self, batch_size, bptt, bar, quiet):
        from .evaluate import perplexity
        self.perplexity = perplexity
        self.batch_size, self.bptt, self.bar_on, self.quiet = batch_size, bptt, bar, quiet
        self.bar = None
        self.loss = None
        self.started = time.perf_counter()

    def info(self, text):
        if not self.quiet:
            self._close_bar()  # a line printed under an open bar would be glued to it
            click.echo(text, err=True)

    def warn(self, text):
        """Warnings show even under --quiet."""
        self._close_bar()
        click.echo(text, err=True)

    def close(self):
        """Training is over (or stopped within an epoch, at max_steps): the bar goes."""
        self._close_bar()

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_start(self, epoch, windows, start):
        self._close_bar()  # after a rollback the epoch starts again
        if not self.bar_on or self.quiet:
            return
        from tqdm import tqdm
        total = windows * self.batch_size * self.bptt
        self.bar = tqdm(total=total, initial=start * self.batch_size * self.bptt, unit="tok", unit_scale=True,
                        desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, mininterval=0.5)

    def step(self, tokens, loss, lr):
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        if self.bar is not None:
            self.bar.update(tokens)
            if self.bar.n % (50 * tokens) < tokens:
                self.bar.set_postfix_str(f"loss {self.loss:.3f} ppl {_ppl(self.perplexity(self.loss))} lr {lr:g}",
                                         refresh=False)

    def epoch_end(self, r):
        self._close_bar()
        speed = f"{r['tokens_per_sec'] / 1e3:.1f}k tok/s" if r.get("tokens_per_sec") else ""
        self.info(f"| epoch {r['epoch']:3d} | {_fmt_seconds(time.perf_counter() - self.started)} | train loss "
                  f"{r['train_loss']:.3f} | valid ppl {r['valid_ppl']:8.2f} | lr {r['lr']:g} | {speed} | "
                  f"{'kept' if r['accepted'] else 'rejected'}")


class _Signals:
    """SIGINT/SIGTERM ask training to checkpoint and stop; a second SIGINT stops at once."""

    def __init__(self, announce=True):
        self.received = None
        self.announce = announce

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            click.echo("\nstopping (Ctrl-C again to abort at once)", err=True)

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)

    def __call__(self):
        return self.received


@cli.command("train")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Model directory to write (default: runs/<config name> in the current directory, "
                   "numbered if it exists).")
@click.option("--init", "init_dir", type=click.Path(file_okay=False), help="Start from this model's weights and vocabulary.")
@click.option("--init-vocab", type=click.Choice(["keep", "new"]), default=None,
              help="With --init: keep its vocabulary (the default), or build one from the new training text "
                   "(new: the shared words' embedding and output rows are copied, the rest initialized).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the effective config and exit.")
@click.option("--quiet", "-q", is_flag=True, help="No progress, only the final line.")
def train_cmd(config_path, overrides, out_dir, init_dir, init_vocab, resume, dry_run, quiet):
    """Train a model on the config's train file; keep the best by valid perplexity.

    With no CONFIG, the built-in config trains on the corpus shipped with rnnlm.

    Where things are: the model goes to --out, by default runs/<config name> under the current
    directory (wherever CONFIG is); relative data paths in CONFIG resolve against CONFIG's own
    folder (wherever you run rnnlm from).

    \b
    Examples:
      rnnlm train
      rnnlm train configs/ptb-elman.yaml --set train.epochs=5 --out runs/ptb
      rnnlm train --out runs/ptb --resume          # after Ctrl-C or a crash
      rnnlm train my.yaml --init runs/ptb          # continue from another model
      mpiexec -n 2 rnnlm train my.yaml             # data-parallel on 2 processes (docs/large-corpora.md)
      rnnlm train my.yaml --init runs/ptb --init-vocab new   # fine-tune on text with other words
    """
    from . import distributed
    w = distributed.world()
    try:
        _train(w, config_path, overrides, out_dir, init_dir, init_vocab, resume, dry_run, quiet)
    except BaseException as e:
        if w.size == 1:
            raise
        _end_rank(w, e)


def _train(w, config_path, overrides, out_dir, init_dir, init_vocab, resume, dry_run, quiet):
    """The train command in one process of `w` (rank 0 alone prints)."""
    from . import distributed, lock
    from . import train as train_mod
    from .config import dump_config

    def setup():
        if out_dir and Path(out_dir).is_dir():
            lock.refuse_if_held(out_dir)  # a live run's folder: say so first, whatever else is wrong
        if init_vocab and not init_dir:
            raise UserError("--init-vocab: needs --init MODEL_DIR (the model to fine-tune)")
        return _resume_config(config_path, overrides, out_dir) if resume else _load(config_path, overrides)
    config = distributed.agree(w, setup)
    if resume and not dry_run:
        idle = distributed.agree(w, lambda: train_mod.before_resume(config, out_dir, w.size))
        if idle:  # a complete run that this config would not train further: leave it as it is
            if w.rank == 0:
                click.echo(idle, err=True)
            return
    if dry_run:
        if w.rank == 0:
            click.echo(dump_config(config), nl=False)
            _dry_run_report(config, None if resume else init_dir, init_vocab)
        return
    from .modeldir import default_out, resume_command
    out = Path(out_dir) if out_dir else default_out(config_path)
    reporter = (BarReporter(config.train.batch_size, config.train.bptt, sys.stderr.isatty(), quiet) if w.rank == 0
                else train_mod.SilentReporter())
    try:
        with _Signals(announce=w.rank == 0) as signals:
            s = train_mod.run_in_folder(config, out, init_dir=init_dir, init_vocab=init_vocab or "keep",
                                        resume=resume, reporter=reporter, should_stop=signals,
                                        world=w if w.size > 1 else None)
    except train_mod.Interrupted as e:
        if w.rank == 0 and e.final_evaluation:
            click.echo(f"interrupted: final evaluation skipped; training is complete and the model is saved in "
                       f"{out}; evaluate it later with: rnnlm eval {out}", err=True)
        elif w.rank == 0:
            click.echo(f"interrupted: checkpoint saved; continue with: {resume_command(out, w.size)}",
                       err=True)
        sys.exit(128 + e.signum)
    if w.rank != 0:
        return
    wall = _fmt_seconds(s["total_wall_seconds"])
    if resume:
        wall += f" in all, {_fmt_seconds(s['wall_seconds'])} since --resume"
    click.echo(f"| end | valid ppl {_ppl(s['valid_ppl'])} (unigram {_ppl(s['unigram_valid_ppl'])}) | test ppl "
               f"{_ppl(s['test_ppl'])} | {_fmt_count(s['tokens'])} tokens in {_fmt_epochs(s['epochs_trained'])} | "
               f"{wall} | {s['stop_reason']} | model in {out}")


def _fmt_epochs(n):
    """12 epochs, 1 epoch, 0.37 epochs (a run stopped by max_steps within an epoch)."""
    if n == int(n):
        return f"{int(n)} epoch{'' if n == 1 else 's'}"
    return f"{n:.2f} epochs" if n >= 0.01 else f"{n:.2g} epochs"


def _dry_run_report(config, init_dir, init_vocab):
    """The data files read through and the vocabulary they give, on stderr (stdout holds the config)."""
    from . import train as train_mod
    vocab_size, rows = train_mod.check_data(config, init_dir, init_vocab or "keep")
    for r in rows:
        click.echo(f"dry run: data.{r['key']} {_shown(r['file'])}: {r['words']} words on {r['lines']} lines, "
                   f"{r['targets']} targets, {r['oov']} OOV ({r['oov_rate']:.2%})", err=True)
    source = f"the vocabulary of --init {init_dir}" if init_dir and init_vocab != "new" else "vocabulary"
    click.echo(f"dry run: {source}: {vocab_size} tokens; the data is readable; nothing was written", err=True)


def _end_rank(w, e):
    """How one process of a data-parallel run ends on `e`: errors that every process raises
    together (a QuietError, Diverged, an exit) end each quietly but for rank 0's message; any
    other error, which the other processes would wait for forever, prints its message and ends
    the whole job (MPI Abort, with its exit code)."""
    from .distributed import QuietError
    from .errors import Diverged
    if isinstance(e, SystemExit):
        raise e
    if isinstance(e, (QuietError, Diverged)):
        if w.rank == 0:
            raise e
        sys.exit(e.exit_code)
    if isinstance(e, RnnlmError):
        text, code = one_line(e), e.exit_code
    elif isinstance(e, KeyboardInterrupt):
        text, code = "aborted", 130
    else:
        text, code = f"unexpected {type(e).__name__}: {one_line(e)}", 1
    click.echo(f"error: {'' if w.rank == 0 else f'rank {w.rank}: '}{text}; stopping all {w.size} processes",
               err=True)
    sys.stderr.flush()
    w.comm.Abort(code)


def _resume_config(config_path, overrides, out_dir):
    """The saved config of the run in out_dir; a CONFIG given again must equal it but for the
    keys --resume may change (config.RESUME_KEYS)."""
    from .config import resume_config
    from .modeldir import CONFIG, load_config_file
    if not out_dir:
        raise UserError("--resume needs --out DIR: the folder of the run to continue")
    saved = load_config_file(Path(out_dir) / CONFIG)
    given = _load(config_path, overrides) if config_path else None
    return resume_config(saved, given, overrides, given_source=str(config_path),
                         saved_source=f"{out_dir}/config.yaml")


# --------------------------------------------------------------------------------------------
# eval


def _cache_options(command):
    """--cache W, --cache-theta θ, --cache-lambda λ: the neural cache of eval and score --carry."""
    for option in reversed([
        click.option("--cache", "cache_window", default=0, show_default=True, type=int, metavar="W",
                     help="Neural cache (Grave et al. 2017): attend over the last W states of the stream read so "
                          "far and the words that followed them; 0 is off."),
        click.option("--cache-theta", default=1.0, show_default=True, type=float, metavar="THETA",
                     help="The cache's attention sharpness: softmax over i of THETA * h_t.h_i (0 is uniform)."),
        click.option("--cache-lambda", default=0.1, show_default=True, type=float, metavar="LAMBDA",
                     help="The cache's share: p = (1 - LAMBDA) p_model + LAMBDA p_cache."),
    ]):
        command = option(command)
    return command


def _dynamic_options(command):
    """The --dynamic-* options of eval and score (dynamic evaluation's rule and its settings);
    the command receives them as **dynamic_options (None where not given)."""
    options = [
        click.option("--dynamic-rule", type=click.Choice(["sgd", "rms"]), default=None,
                     help="With --dynamic: sgd (the default: LR times the clipped gradient) or rms (Krause et al.: "
                          "the gradient divided by its root mean square over training text)."),
        click.option("--dynamic-segment", type=click.IntRange(min=1), default=None, metavar="K",
                     help="With --dynamic: tokens scored between two updates (default: the model's train.bptt)."),
        click.option("--dynamic-decay", type=click.FloatRange(0, 1), default=None, metavar="LAMBDA",
                     help="With --dynamic: pull the weights back toward the trained ones by this much at each "
                          "update (default 0: none)."),
        click.option("--dynamic-epsilon", type=click.FloatRange(min=0, min_open=True), default=None, metavar="EPS",
                     help="With --dynamic-rule rms: added to the root mean square (default 2e-5)."),
        click.option("--dynamic-stats", type=click.IntRange(min=1), default=None, metavar="N",
                     help="With --dynamic-rule rms: training tokens the root mean squares are computed on "
                          "(default 100000)."),
        click.option("--dynamic-stats-from", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="With --dynamic-rule rms: the text to compute them on (default: the model's training text)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cache_settings(window, theta, lam):
    from .cache import settings
    return settings(window, theta, lam)


def _dynamic_settings(lr, options):
    """dynamic.Settings from --dynamic LR and the --dynamic-* options (None without --dynamic)."""
    from .dynamic import Settings, check
    given = {key[len("dynamic_"):]: value for key, value in options.items() if value is not None}
    if lr is None:
        if given:
            name = next(iter(given)).replace("_", "-")
            raise UserError(f"--dynamic-{name}: needs --dynamic LR (the learning rate of dynamic evaluation)")
        return None
    _check_dynamic(lr)
    return check(Settings(lr, **given))


@cli.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Streams evaluated at once; 1 is exact (one stream, carried state throughout).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, one per line.")
@click.option("--dynamic", "dynamic", default=None, type=float, metavar="LR",
              help="Dynamic evaluation: after scoring each segment, one step at rate LR on it (--dynamic-rule; the "
                   "model directory is not changed); 0 is the static figure.")
@click.option("--mix", "mix_dirs", multiple=True, type=click.Path(file_okay=False), metavar="MODEL_DIR",
              help="Interpolate with this model (same vocabulary). Repeatable.")
@click.option("--weights", default=None, metavar="W0,W1,...",
              help="Interpolation weights: the model, each --mix model, then --mix-probs; sum 1 (default: equal).")
@click.option("--mix-probs", "mix_probs", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Interpolate with another LM's per-target probabilities (SRILM -debug 2 output, or one per line).")
@_cache_options
@_dynamic_options
def eval_cmd(model_dir, files, batch_size, as_json, dynamic, mix_dirs, weights, mix_probs, cache_window, cache_theta,
             cache_lambda, **dynamic_options):
    """Cross-entropy, bits per token and perplexity of each FILE (default: the test file).

    \b
    Example:
      rnnlm eval runs/default
      rnnlm eval runs/ptb ptb.valid.txt ptb.test.txt --json
      rnnlm eval runs/ptb-lstm ptb.test.txt --dynamic 0.05
      rnnlm eval runs/ptb-lstm ptb.test.txt --dynamic 0.002 --dynamic-rule rms --dynamic-segment 5
      rnnlm eval runs/ptb-lstm ptb.test.txt --mix runs/ptb-elman --weights 0.7,0.3
      rnnlm eval runs/ptb-lstm ptb.test.txt --cache 500 --cache-theta 0.7 --cache-lambda 0.12
    """
    from . import evaluate, mix
    from .modeldir import weights_note
    settings = _dynamic_settings(dynamic, dynamic_options)
    cache = _cache_settings(cache_window, cache_theta, cache_lambda)
    models, mix_weights = mix.load_mixture(model_dir, mix_dirs, weights, mix_probs)
    config, vocab, params = models[0]
    note = weights_note(model_dir)
    if note:
        click.echo(note, err=True)
    if dynamic and batch_size > 1 and any(c.data.independent for c, _, _ in models):
        raise UserError("--dynamic with --batch-size > 1: a model trained with data.independent reads whole "
                        "sentences per stream, which dynamic evaluation does not support; use --batch-size 1")
    plain = not dynamic and not mix_dirs and mix_probs is None and cache is None
    if not files:
        default = config.data.test or config.data.valid
        if not default:
            raise UserError(f"{model_dir}: its config names no test or valid file; give FILE arguments")
        if not os.path.exists(default):
            which = "test" if config.data.test else "valid"
            raise UserError(f"{model_dir}: its config's {which} file {_shown(default)} is gone (not there, nor where "
                            f"config.yaml's data_from_model_dir points); name the file to evaluate: "
                            f"rnnlm eval {_shown(model_dir)} FILE")
        files = (default,)
    dynamic = mix.dynamic_plans(models, settings)  # once for all the files (the rms statistics)
    for path in files:
        if plain:
            result = evaluate.evaluate_file(params, config, vocab, path, batch_size, model_dir)
        else:
            result = mix.evaluate_file(models, mix_weights, path, batch_size, dynamic, mix_probs, model_dir, cache)
        if as_json:
            click.echo(json.dumps({k: evaluate.json_safe(v) for k, v in result.items()}))
        elif result["targets"] == 0:  # not an error: its figures are undefined, the other files still count
            click.echo(f"{_shown(path)}: no tokens (the file is empty or only whitespace): nothing to evaluate")
        else:
            click.echo(f"{_shown(path)}: {result['targets']} targets, {result['oov']} OOV ({result['oov_rate']:.2%}) | "
                       f"cross-entropy {result['cross_entropy']:.4f} nats | {result['bits_per_token']:.3f} bits/token | "
                       f"perplexity {_ppl(result['perplexity'])}")


def _check_dynamic(dynamic):
    if dynamic is not None and not (math.isfinite(dynamic) and dynamic >= 0):
        raise UserError(f"--dynamic {dynamic}: the learning rate must be a finite number >= 0")


# --------------------------------------------------------------------------------------------
# score


@cli.command("score")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", default="plain", show_default=True,
              type=click.Choice(["plain", "json", "srilm", "kaldi"]),
              help="plain: one log10 P per line; json: one object per line; srilm: ngram -ppl -debug 1 "
                   "layout; kaldi: 'ID cost', cost = -ln P (implies --nbest).")
@click.option("--words", is_flag=True, help="Per-word log-probs too (json: tokens and oov_positions; srilm: -debug 2 "
                                            "lines, OOVs shown as <unk>).")
@click.option("--log-base", default="10", show_default=True, type=click.Choice(["10", "e"]),
              help="Base of the plain format's numbers.")
@click.option("--nbest", is_flag=True, help="The first field of each line is an id: not scored, printed first.")
@click.option("--keep-sentence-markers", "keep_markers", is_flag=True,
              help="Score a leading <s> and a trailing </s> as words (by default they are the sentence boundary "
                   "the model scores anyway, and are dropped).")
@click.option("--carry", is_flag=True, help="Read each file as one stream with carried state (sums to eval's total).")
@click.option("--independent", is_flag=True, help="Each line a sentence from the zero state (the default).")
@click.option("--dynamic", "dynamic", default=None, type=float, metavar="LR",
              help="With --carry: dynamic evaluation (one step at rate LR after each segment; --dynamic-rule).")
@click.option("--mix", "mix_dirs", multiple=True, type=click.Path(file_okay=False), metavar="MODEL_DIR",
              help="Interpolate with this model (same vocabulary). Repeatable.")
@click.option("--weights", default=None, metavar="W0,W1,...",
              help="Interpolation weights: the model, each --mix model, then --mix-probs; sum 1 (default: equal).")
@click.option("--mix-probs", "mix_probs", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Interpolate with another LM's per-target probabilities (SRILM -debug 2 output, or one per line).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Independent mode: streams of sentences scored at once (the scores do not depend on it).")
@_cache_options
@_dynamic_options
def score_cmd(model_dir, files, fmt, words, log_base, nbest, keep_markers, carry, independent, dynamic, mix_dirs,
              weights, mix_probs, batch_size, cache_window, cache_theta, cache_lambda, **dynamic_options):
    """Score text line by line: one record per input line, in order (empty lines too).

    Each FILE (or standard input: no FILE, or -) is read line by line. By default every line is
    a sentence scored on its own, from the zero state: <eos>, its words, a final <eos> (W + 1
    targets). Out-of-vocabulary words are scored as <unk> and counted (--words marks them). A
    leading <s> and a trailing </s> (SRILM, Kaldi) are that sentence boundary, not words.

    \b
    Examples:
      rnnlm score runs/ptb sentences.txt                    # log10 P of each line
      rnnlm score runs/ptb nbest.txt --nbest --format kaldi # ID cost (cost = -ln P)
      rnnlm score runs/ptb test.txt --format json --words
      rnnlm score runs/ptb test.txt --carry --dynamic 0.05  # the file as one stream
      rnnlm score runs/ptb test.txt --carry --cache 500     # with the neural cache
    """
    from . import mix, score
    settings = _dynamic_settings(dynamic, dynamic_options)
    cache = _cache_settings(cache_window, cache_theta, cache_lambda)
    if carry and independent:
        raise UserError("--carry and --independent: choose one reading of the file")
    if dynamic is not None and not carry:
        raise UserError("--dynamic needs --carry: dynamic evaluation reads the file as one stream")
    if cache is not None and not carry:
        raise UserError(f"--cache {cache_window} needs --carry: the cache remembers the stream read so far, and "
                        f"independent sentences have no stream before them")
    nbest = nbest or fmt == "kaldi"
    models, mix_weights = mix.load_mixture(model_dir, mix_dirs, weights, mix_probs)
    tokenizer = models[0][0].data.tokenizer
    probs = mix.read_probs(mix_probs) if mix_probs is not None else None
    dynamic = mix.dynamic_plans(models, settings)
    for path in files or ("-",):
        lines = score.read_lines(path, tokenizer, nbest, keep_markers)
        records = (score.score_carried(models, mix_weights, lines, dynamic, probs, cache) if carry
                   else score.score_independent(models, mix_weights, lines, batch_size, probs))
        _print_records(records, fmt, words, log_base, path)


def _print_records(records, fmt, words, log_base, path):
    from . import score
    kept = score.SrilmTotals()  # not the records: an n-best file may have millions of lines
    for rec in records:
        if fmt == "plain":
            click.echo(score.format_plain(rec, log_base))
        elif fmt == "json":
            click.echo(score.format_json(rec, words))
        elif fmt == "kaldi":
            click.echo(score.format_kaldi(rec))
        else:
            click.echo(score.format_srilm(rec, words))
            kept.append(rec)
    if fmt == "srilm":
        click.echo(score.srilm_summary(_shown(path), kept))


# --------------------------------------------------------------------------------------------
# tune


@cli.command("tune")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--valid", "valid", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="The text to tune on (default: the model's valid file; never its test file).")
@click.option("--cache", "cache_window", default=None, type=int, is_flag=False, flag_value=500, metavar="[W]",
              help="Tune the neural cache's --cache-theta and --cache-lambda at window W (500 if no W is given).")
@click.option("--dynamic", "dynamic_rule", default=None, type=click.Choice(["sgd", "rms"]),
              help="Tune dynamic evaluation with this rule: its learning rate, decay (and epsilon for rms).")
@click.option("--dynamic-lr", type=click.FloatRange(min=0, min_open=True), default=None, metavar="LR",
              help="With --dynamic: where the learning rate's search starts, on the ladder 1, 1.5, 2, 3, 5, 7 "
                   "x 10^k (default 2 for sgd, 1e-4 for rms).")
@click.option("--dynamic-segment", type=click.IntRange(min=1), default=None, metavar="K",
              help="With --dynamic: tokens scored between two updates (default: the model's train.bptt); not tuned.")
@click.option("--dynamic-stats", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --dynamic rms: training tokens the root mean squares are computed on (default 100000).")
@click.option("--dynamic-stats-from", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="With --dynamic rms: the text to compute them on (default: the model's training text).")
@click.option("--mix", "mix_dirs", multiple=True, type=click.Path(file_okay=False), metavar="MODEL_DIR",
              help="Tune the interpolation weights with this model (same vocabulary), by EM. Repeatable.")
@click.option("--mix-probs", "mix_probs", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Tune the weight of another LM's per-target probabilities of the valid file (SRILM -debug 2 "
                   "output, or one per line).")
@click.option("--json", "as_json", is_flag=True, help="Print the table and the best flags as one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table: the best setting and its flags.")
def tune_cmd(model_dir, valid, cache_window, dynamic_rule, dynamic_lr, dynamic_segment, dynamic_stats,
             dynamic_stats_from, mix_dirs, mix_probs, as_json, quiet):
    """Choose the test-time settings on a validation file: the cache's theta and lambda, dynamic
    evaluation's learning rate and decay (and epsilon), the interpolation weights.

    Prints one row per setting tried (perplexity, seconds), then the best one as the flags to
    give eval and score. The stages run in the order weights, dynamic, cache, each from the best
    setting of the one before; the grids are in docs/test-time.md. Nothing is written.

    \b
    Examples:
      rnnlm tune runs/ptb --cache                 # theta x lambda at window 500
      rnnlm tune runs/ptb --dynamic rms --cache 2000
      rnnlm tune runs/ptb --mix runs/elman --json
    """
    from . import mix, tune
    from .modeldir import weights_note
    dynamic = tune.request(cache_window, dynamic_rule, bool(mix_dirs) or mix_probs is not None, lr=dynamic_lr,
                           segment=dynamic_segment, stats=dynamic_stats, stats_from=dynamic_stats_from)
    models, _ = mix.load_mixture(model_dir, mix_dirs, None, mix_probs)
    note = weights_note(model_dir)
    if note:
        click.echo(note, err=True)
    path = tune.validation_file(models[0][0], valid, model_dir)
    table = _TuneTable(quiet or as_json, sys.stderr.isatty() and not quiet)
    try:
        search = tune.Search(models, path, mix_probs, mix_dirs, table.start, table.rows)
        if not quiet and not as_json:
            click.echo(f"tune {_shown(model_dir)} on {_shown(path)}: {search.stats['targets']} targets, "
                       f"{search.stats['oov']} OOV (batch 1: the exact figures)")
        result = search.run(cache_window, dynamic, dynamic_lr)
    finally:
        table.close()
    if as_json:
        click.echo(json.dumps(_json_safe_tree(result)))
        return
    _print_best(result, model_dir)


class _TuneTable:
    """tune's progress: a tqdm bar of passes over the file on stderr (terminal only), and the
    rows on stdout as they come (not when `silent`); the cache's rows one line per theta."""

    def __init__(self, silent, bar):
        self.silent, self.bar = silent, None
        if bar:
            from tqdm import tqdm
            self.bar = tqdm(unit="pass", desc="tune", leave=False, dynamic_ncols=True, file=sys.stderr)

    def start(self, label):
        if self.bar is not None:
            self.bar.set_description_str(label)

    def rows(self, rows):
        if self.bar is not None:
            self.bar.update(1)
        if self.silent:
            return
        from .tune import best_row, describe
        lines = []
        cached = [r for r in rows if r["method"] == "cache"]
        for r in rows:
            if r["method"] != "cache":
                lines.append(self._line(describe(r), r["perplexity"], _fmt_seconds(r["seconds"])))
        if cached:  # one line per theta, with its best lambda (every row is in --json)
            first = cached[0]
            base = describe(dict(first, settings=dict(first["settings"], cache=None)))
            window = first["settings"]["cache"]["window"]
            thetas = sorted({r["settings"]["cache"]["theta"] for r in cached})
            lines.append(f"| cache {window}: {len(thetas)} theta x {len(cached) // len(thetas)} lambda, one pass"
                         f"{'' if base == 'static' else ' with ' + base} ({_fmt_seconds(first['seconds'])})")
        for theta in thetas if cached else ():
            best = best_row([r for r in cached if r["settings"]["cache"]["theta"] == theta])
            text = f"  cache {window} theta {theta:g}, best lambda {best['settings']['cache']['lambda']:g}"
            lines.append(self._line(text, best["perplexity"], ""))
        if self.bar is not None:
            self.bar.clear()
        for line in lines:
            click.echo(line)
        if self.bar is not None:
            self.bar.refresh()

    @staticmethod
    def _line(text, perplexity, seconds):
        return f"| {text:<60} | ppl {_ppl(perplexity):>8} | {seconds:>10} |"

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _json_safe_tree(value):
    """NaN and infinities as null, anywhere in a result."""
    from .evaluate import json_safe
    if isinstance(value, dict):
        return {k: _json_safe_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe_tree(v) for v in value]
    return json_safe(value)


def _print_best(result, model_dir):
    """The best setting, its gain over the static figure, and the flags for eval and score."""
    best, static = result["best"], result["static"]["perplexity"]
    for note in result["notes"]:
        click.echo(f"note: {note}")
    gain = f", {100 * (best['perplexity'] / static - 1):+.1f}%" if static and math.isfinite(static) else ""
    click.echo(f"best: ppl {_ppl(best['perplexity'])} (static {_ppl(static)}{gain}) in "
               f"{_fmt_seconds(result['seconds'])}")
    if not best["flags"]:
        click.echo("flags: (none: the static reading was best)")
        return
    carry = " --carry" if best["settings"]["dynamic"] or best["settings"]["cache"] else ""
    click.echo(f"  rnnlm eval {_shown(model_dir)} FILE {best['flags']}")
    click.echo(f"  rnnlm score {_shown(model_dir)} FILE{carry} {best['flags']}")
    click.echo(f"flags: {best['flags']}")


# --------------------------------------------------------------------------------------------
# sample


@cli.command("sample")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--prompt", default="", help="Text to start from (tokenized like the training data).")
@click.option("--words", default=50, show_default=True, type=click.IntRange(min=1), help="Words to generate.")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Divide the logits by this; 0 is greedy (else at least 1e-6).")
@click.option("--top-k", default=None, type=click.IntRange(min=1), help="Sample only among the k most likely words.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="The same seed gives the same text.")
@click.option("--stop-at-eos", is_flag=True, help="Stop at the first end of sentence.")
@click.option("--top-p", default=None, type=click.FloatRange(min=0, max=1, min_open=True),
              help="Nucleus sampling: only among the most likely words whose probabilities sum to P.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Independent samples, one per line, each a sentence (sample k uses seed + k).")
@click.option("--no-unk", is_flag=True, help="Never draw <unk> (its probability is set to 0, the rest renormalized).")
def sample_cmd(model_dir, prompt, words, temperature, top_k, seed, stop_at_eos, top_p, count, no_unk):
    """Generate text from a trained model. <eos> prints as a line break.

    \b
    Example:
      rnnlm sample runs/default --prompt "and god said" --words 30 --temperature 0.8 --seed 1
    """
    from .modeldir import load_model, weights_note
    from .sample import sample_texts
    config, vocab, params = load_model(model_dir)
    note = weights_note(model_dir)
    if note:
        click.echo(note, err=True)
    texts, unknown = sample_texts(params, config, vocab, prompt, words, temperature, top_k, seed, stop_at_eos,
                                  model_dir, top_p, count, no_unk)
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        click.echo(f"warning: not in the vocabulary, read as <unk>: "
                   f"{', '.join(repr(w) for w in unknown[:10])}{more}", err=True)
    for text in texts:
        click.echo(text)


# --------------------------------------------------------------------------------------------
# info and plot: seeing a run


@cli.command("info")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def info_cmd(model_dir, as_json):
    """What a model directory is and how its run went: status, config, vocabulary, parameters,
    progress, perplexities, speed.

    \b
    Example:
      rnnlm info runs/default
      rnnlm info runs/ptb --json
    """
    from . import info
    summary = info.summarize(model_dir)
    if as_json:
        click.echo(json.dumps(summary))
        return
    for line in info.describe(summary):
        click.echo(line)


@cli.command("plot")
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The figure to write: .png, .svg or .pdf.")
@click.option("--x", "x_axis", default="tokens", show_default=True, type=click.Choice(["tokens", "time", "epoch"]),
              help="Training tokens, training time (validation excluded) or epochs.")
@click.option("--log-y", is_flag=True, help="Perplexity on a log scale.")
@click.option("--label", "labels", multiple=True, help="The legend's name of each run, in order (default: its folder name).")
def plot_cmd(model_dirs, out_path, x_axis, log_y, labels):
    """Learning curves of one or more runs (finished, interrupted or still training): train and
    valid perplexity, learning-rate cuts, rejected epochs, rollbacks. Needs matplotlib.

    \b
    Example:
      rnnlm plot runs/default -o curves.png
      rnnlm plot runs/sgd runs/adam -o compare.png --x time --log-y
    """
    from . import plot
    click.echo(f"wrote {plot.plot_runs(model_dirs, out_path, x_axis, log_y, labels)}")


# --------------------------------------------------------------------------------------------
# gradcheck


@cli.command("gradcheck")
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--vocab-size", default=13, show_default=True, type=click.IntRange(min=2),
              help="V of the random model checked (not the config's corpus: no data is read).")
@click.option("--embedding-dim", default=5, show_default=True, type=click.IntRange(min=1),
              help="E of the model checked (replaces model.embedding_dim).")
@click.option("--hidden-dim", default=7, show_default=True, type=click.IntRange(min=1),
              help="H of the model checked (replaces model.hidden_dim).")
@click.option("--batch-size", default=3, show_default=True, type=click.IntRange(min=1),
              help="N: streams in the random window.")
@click.option("--bptt", default=5, show_default=True, type=click.IntRange(min=1),
              help="T: time steps in the random window (the gradient is checked through all of them).")
@click.option("--samples", default=40, show_default=True, type=click.IntRange(min=1),
              help="Entries checked per parameter array (all of a smaller one).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the random model, window, carried state and the entries picked.")
@click.option("--tolerance", default=None, type=float,
              help="Fail (exit 1) above this normwise relative error (default 1e-6).")
def gradcheck_cmd(config_path, overrides, vocab_size, embedding_dim, hidden_dim, batch_size, bptt, samples, seed,
                  tolerance):
    """Check every parameter's gradient against central differences in float64.

    The model's cell, activation, loss, output and layers come from the config; the sizes are
    small (options) so that the check takes a second. Exits 1 if any error is above tolerance.

    \b
    Example:
      rnnlm gradcheck --set model.activation=sigmoid --set model.layers=3
    """
    import dataclasses
    from . import gradcheck
    config = _load(config_path, overrides)
    model_cfg = dataclasses.replace(config.model, embedding_dim=embedding_dim, hidden_dim=hidden_dim)
    tolerance = gradcheck.TOLERANCE if tolerance is None else tolerance
    if not tolerance >= 0:  # also NaN
        raise UserError(f"--tolerance {tolerance}: must be a number >= 0")
    tc = config.train
    results = gradcheck.check_model(model_cfg, vocab_size, batch_size, bptt, seed, samples,
                                    resets=config.data.independent, ar=tc.ar, tar=tc.tar,
                                    weight_decay=tc.weight_decay)
    click.echo(f"cell {model_cfg.cell}, activation {model_cfg.activation}, loss {model_cfg.loss}, "
               f"layers {model_cfg.layers}, V={vocab_size} E={embedding_dim} H={hidden_dim} N={batch_size} "
               f"T={bptt}, float64, ε={gradcheck.EPS:g}, non-zero carried state"
               f"{', sentence resets at <eos>' if config.data.independent else ''}")
    regularizers = _regularizers(model_cfg, tc)
    if regularizers:
        click.echo(f"regularizers (masks held fixed): {regularizers}")
    width = max(len(k) for k, _, _ in results)
    failed = False
    for key, err, checked in results:
        ok = err <= tolerance
        failed |= not ok
        click.echo(f"{key:<{width}}  {checked:4d} entries  rel error {err:.2e}  {'ok' if ok else 'FAIL'}")
    worst = max(err for _, err, _ in results)
    click.echo(f"worst {worst:.2e}, tolerance {tolerance:.0e}: {'FAILED' if failed else 'passed'}")
    if failed:
        sys.exit(1)


def _regularizers(m, tc):
    """The regularizers a gradcheck includes, in words (empty when none)."""
    from .regularize import dropout_probs
    parts = [f"dropout {name} {p:g}" for name, p in dropout_probs(m).items() if p > 0]
    parts += ["locked"] if m.dropout_locked and parts else []
    parts += [f"{name} {value:g}" for name, value in (("dropout_embedding", m.dropout_embedding),
                                                      ("weight_drop", m.weight_drop), ("ar", tc.ar), ("tar", tc.tar),
                                                      ("weight_decay", tc.weight_decay)) if value]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------


def _one_blas_thread():
    """Before numpy loads: BLAS on one thread, rnnlm spreads the big products over the cores
    itself (see parallel.py). A user's own setting of these variables wins."""
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def main(argv=None):
    """Entry point: map errors to exit codes and one line on stderr (docs/commands.md, exit codes: 2 bad usage or bad
    input, 1 anything else; the traceback of an unexpected error only under --debug)."""
    _one_blas_thread()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="rnnlm", standalone_mode=False)
    except RnnlmError as e:  # UserError (2), WriteError (1), Diverged (2): the message says it all
        if getattr(e, "rank", 0):  # an error all MPI processes share (distributed.QuietError): rank 0 says it
            sys.exit(e.exit_code)
        click.echo(f"error: {one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # plain `rnnlm`: the help text, exit 2
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:  # click's own checks (options, ranges): one line too
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        click.echo(f"error: {one_line(e.format_message())}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("aborted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `rnnlm sample ... | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(1)
    except MemoryError as e:
        if debug:
            raise
        click.echo(f"error: out of memory ({one_line(e) or 'MemoryError'}); use a smaller model "
                   f"(model.hidden_dim, vocab.max_size) or train.batch_size", err=True)
        sys.exit(1)
    except Exception as e:  # a bug or a fault of the machine, not of the input
        if debug:
            raise
        click.echo(f"error: unexpected {type(e).__name__}: {one_line(e)} (run with --debug for the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
