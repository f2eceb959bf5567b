"""The model directory: its layout, reading and checking a model, info.json and metrics.jsonl.

    DIR/config.yaml      the effective config
    DIR/vocab.txt        one token per line, id = line number (0-based)
    DIR/weights.npz      the parameters (docs/model-directory.md): the model eval and sample use
    DIR/metrics.jsonl    one JSON object per event (train, epoch, rollback, interrupted, end, ...)
    DIR/info.json        format_version, status, sizes and the final figures
    DIR/checkpoint.npz   what --resume needs (checkpoint.py)
    DIR/README.md        the model card, written when training ends (card.py)
    DIR/.lock            held while a run writes DIR (lock.py)

Every file is written atomically (files.py). Reading a model checks everything against the
config before it is used: the format version, the vocabulary, and weights with exactly the
arrays, shapes, dtypes and finite values the config implies.
"""

import json
import os
from pathlib import Path

import numpy as np
import yaml

from . import __version__, files, lock, model, output
from .evaluate import json_safe
from .config import RELATIVE_PATHS, config_from_dict, dump_config, locate_data, relative_paths
from .errors import UserError
from .lock import LOCK
from .vocab import load_vocab, save_vocab

# The end record's and info.json's "final_evaluation" when a signal skipped the exact evaluation
FINAL_EVALUATION_SKIPPED = "skipped"

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS, METRICS, INFO, CHECKPOINT, CARD = (
    "config.yaml", "vocab.txt", "weights.npz", "metrics.jsonl", "info.json", "checkpoint.npz", "README.md")


# --------------------------------------------------------------------------------------------
# A run's folder


def default_out(config_path):
    """runs/<config name>, numbered -2, -3, ... when taken (relative to the working directory)."""
    stem = Path(config_path).stem if config_path else "default"
    out = Path("runs") / stem
    n = 2
    while out.exists():
        out = Path("runs") / f"{stem}-{n}"
        n += 1
    return out


def check_new_out(out, init_dir=None):
    """A new run may write `out` only if it is missing or holds nothing of a model (a lock or
    temporary files of a killed run at most), and is not the --init model itself."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose another --out")
    if out.exists() and any(p.name != LOCK and not files.is_temp_file(p.name) for p in out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; use --resume to continue it, "
                        f"or choose another --out")
    if init_dir and Path(init_dir).resolve() == out.resolve():
        raise UserError(f"--init {init_dir}: is the --out folder itself; choose another --out")


def create(out):
    """mkdir -p out -> whether it was created (and so may be removed again if left empty)."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    return created


def resume_command(out_dir, processes=1):
    """The command that continues the run in out_dir, trained by `processes` MPI processes."""
    return f"{f'mpiexec -n {processes} ' if processes > 1 else ''}rnnlm train --out {out_dir} --resume"


def remove_if_empty(out):
    """Leave no empty folder behind a run that failed before writing anything."""
    try:
        if not any(out.iterdir()):
            out.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# The model: config + vocabulary + weights


def save_model(out_dir, config, vocab, params):
    out_dir = Path(out_dir)
    relative = yaml.safe_dump({RELATIVE_PATHS: relative_paths(config, out_dir)}, sort_keys=False)
    files.write_text(out_dir / CONFIG, dump_config(config) + f"# {RELATIVE_PATHS}: the data files relative to "
                     f"this folder, used instead of data.* when they exist there (a copied model directory)\n"
                     + relative)
    save_vocab(vocab, out_dir / VOCAB)
    files.write_npz(out_dir / WEIGHTS, params)


def save_weights(out_dir, params):
    files.write_npz(Path(out_dir) / WEIGHTS, params)


def load_config_file(path):
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a model directory written by rnnlm train?)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: unreadable config ({reason})") from None
    relative = raw.pop(RELATIVE_PATHS, None) if isinstance(raw, dict) else None
    return locate_data(config_from_dict(raw, source=str(path)), relative, path.parent, str(path))


def check_arrays(arrays, expected, source, what="array", buffers=()):
    """`arrays` has exactly the keys of `expected` ({key: shape}), those shapes, and float dtypes
    with only finite values (but for the keys in `buffers`, which their owner checks)."""
    for key, shape in expected.items():
        if key not in arrays:
            raise UserError(f"{source}: missing {what} '{key}'")
        a = arrays[key]
        if a.shape != tuple(shape):
            raise UserError(f"{source}: {what} '{key}' has shape {a.shape}, the config and vocabulary "
                            f"imply {tuple(shape)}")
        if key in buffers:
            continue
        if not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"{source}: {what} '{key}' has dtype {a.dtype}, expected floats")
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise UserError(f"{source}: {what} '{key}' holds {bad} NaN or infinite value(s); the file is "
                            f"corrupted or was saved from a diverged run")


def check_params(params, config, vocab_size, source):
    """Every array the config implies is there, with its shape, floats only and all finite (the
    output layer checks its own buffers); a vocabulary of the wrong size is named as such."""
    emb = params.get("embedding")
    if emb is not None and emb.ndim == 2 and emb.shape[0] != vocab_size:
        raise UserError(f"{source}: the weights are for a vocabulary of {emb.shape[0]} tokens but the "
                        f"vocabulary has {vocab_size}: vocab.txt and the weights do not belong together")
    expected = model.param_shapes(config.model, vocab_size)
    check_arrays(params, expected, source, buffers=output.buffers(config.model))
    output.check_buffers(params, config.model, vocab_size, source)
    extra = sorted(set(params) - set(expected))
    if extra:
        raise UserError(f"{source}: unexpected arrays {', '.join(extra)} for this config")


def check_format(model_dir):
    """info.json's fields ({} when there is none), refusing a format this version cannot read."""
    info_path = Path(model_dir) / INFO
    if not info_path.exists():
        return {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{info_path}: unreadable ({type(e).__name__}: {e})") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{info_path}: no valid format_version (found {str(version)[:40]!r}); "
                        f"not a model directory written by rnnlm?")
    if version > FORMAT_VERSION:
        raise UserError(f"{info_path}: format_version {version} is newer than this rnnlm "
                        f"({__version__}) reads ({FORMAT_VERSION}); upgrade rnnlm")
    return info


def load_model(model_dir, dtype=None):
    """(config, vocab, params) of a model directory, checked for consistency: format version,
    config, vocabulary, and weights with exactly the arrays and shapes they imply."""
    model_dir = check_dir(model_dir)
    check_format(model_dir)
    config = load_config_file(model_dir / CONFIG)
    if not (model_dir / VOCAB).exists():
        raise UserError(f"{model_dir / VOCAB}: missing (not a model directory written by rnnlm train?)")
    vocab = load_vocab(model_dir / VOCAB)
    shapes = model.param_shapes(config.model, len(vocab))
    params = files.read_npz(model_dir / WEIGHTS, max_bytes=files.npz_size_bound(shapes.values()))
    check_params(params, config, len(vocab), str(model_dir / WEIGHTS))
    dtype = np.dtype(dtype or config.train.dtype)
    params = {k: np.ascontiguousarray(v, dtype=dtype if np.issubdtype(v.dtype, np.floating) else np.int64)
              for k, v in params.items()}
    return config, vocab, params


def weights_note(model_dir):
    """None when the run of model_dir completed (or left no info.json); otherwise one line
    saying which weights weights.npz holds: the best validated so far, or, before any epoch
    was validated, the weights the run started from (or those of its last step)."""
    info = check_format(model_dir)
    status = info.get("status")
    if status in (None, "complete"):
        return None
    if status == "training":
        pid = os.getpid() if lock.held_here(model_dir) else lock.holder(model_dir)
        run = (f"is still training (pid {pid})" if pid else "is still training" if pid == 0
               else "has a run that stopped without finishing (killed?; --resume continues it)")
    else:
        run = f"has a run that {status} at step {info.get('step')}"
    best = last_accepted_epoch(model_dir)
    if best is not None:
        return (f"note: {model_dir} {run}: using its best weights so far, from epoch {best['epoch']} "
                f"(valid ppl {best['valid_ppl']:.2f} with train.eval_batch_size streams)")
    if status == "training":
        return (f"note: {model_dir} {run} and no epoch is validated yet: weights.npz holds the weights the "
                f"run started from (random or --init), not a trained model")
    return f"note: {model_dir} {run}, before any epoch was validated: using the weights of that step"


def last_accepted_epoch(model_dir):
    """The last `epoch` record of metrics.jsonl whose weights became the kept model, or None."""
    try:
        lines = (Path(model_dir) / METRICS).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (isinstance(record, dict) and record.get("event") == "epoch" and record.get("accepted")
                and isinstance(record.get("valid_ppl"), (int, float))):
            return record
    return None


def write_info(out_dir, **fields):
    info = {"format_version": FORMAT_VERSION, "rnnlm_version": __version__, **fields}
    files.write_text(Path(out_dir) / INFO, json.dumps(info, indent=2) + "\n")


def write_card(out_dir, text):
    """DIR/README.md, the model card (card.py writes its text)."""
    files.write_text(Path(out_dir) / CARD, text)


def check_dir(model_dir):
    """A model directory's path, refusing what is not a folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        what = "a file" if model_dir.exists() else "no such folder"
        raise UserError(f"{model_dir}: not a model directory ({what})")
    return model_dir


# --------------------------------------------------------------------------------------------
# metrics.jsonl


def start_metrics(out_dir):
    files.write_text(Path(out_dir) / METRICS, "")


def append_metric(out_dir, record):
    """Append one record as a JSON line -> the bytes written. The log is a separate file
    appended in one write, so a failure (disk full) cannot touch the model files."""
    line = (json.dumps({k: json_safe(v) for k, v in record.items()}) + "\n").encode("utf-8")
    return files.append_line(Path(out_dir) / METRICS, line)


def read_metrics(model_dir):
    """The records of DIR/metrics.jsonl, in order (record i is line i + 1). A last line without
    its line break is a record being written right now and is left out; any other line that is
    not a JSON object with an `event` is refused, naming the line."""
    path = Path(model_dir) / METRICS
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a model directory written by rnnlm train?)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = raw.split(b"\n")[:-1]  # the piece after the last line break is unfinished (or empty)
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise UserError(f"{path}, line {number}: not a JSON record ({type(e).__name__}: {e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            raise UserError(f"{path}, line {number}: not a metrics record (a JSON object with an 'event')")
        records.append(record)
    return records


def rewind_metrics(out_dir, size):
    """Drop the metrics written after the checkpoint a run resumes from (they are written again)."""
    files.truncate(Path(out_dir) / METRICS, size)
