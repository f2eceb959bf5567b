"""The model directory: atomic writes, saving and loading models and resumable checkpoints.

    DIR/config.yaml      the effective config
    DIR/vocab.txt        one token per line, id = line number (0-based)
    DIR/weights.npz      the parameters under SPEC's names: the model eval and sample use
    DIR/metrics.jsonl    one JSON object per event (train, epoch, end, interrupted)
    DIR/info.json        format_version, status, sizes and the final figures
    DIR/checkpoint.npz   everything --resume needs: current and best parameters, optimizer
                         state, carried hidden state, data position, schedule and RNG state

Every file is written to a temporary file in the same folder, flushed, fsynced and renamed over
the old one, so a crash or a full disk never leaves a half-written file in place of a good one.
"""

import errno
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .config import config_from_dict, dump_config
from .errors import UserError
from .model import param_shapes
from .vocab import load_vocab, save_vocab

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS, METRICS, INFO, CHECKPOINT, LOCK = (
    "config.yaml", "vocab.txt", "weights.npz", "metrics.jsonl", "info.json", "checkpoint.npz", ".lock")


# --------------------------------------------------------------------------------------------
# Atomic files


def atomic_write(path, write):
    """Call write(binary file) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        kept = " (the previous file is left as it was)" if path.exists() else ""
        raise UserError(f"{path}: could not write: {e.strerror or e}{kept}") from None


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_npz(path, arrays):
    def write(f):
        buffer = io.BytesIO()  # np.savez seeks; build in memory, then one write
        np.savez(buffer, **arrays)
        f.write(buffer.getbuffer())
    atomic_write(path, write)


def read_npz(path, what="weights"):
    """All arrays of an .npz, refusing pickled objects; errors name the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"{path}: holds pickled Python objects; refused (never loaded with pickle)") from None
        raise UserError(f"{path}: not a valid .npz {what} file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: truncated or corrupted {what} file ({e})") from None


# --------------------------------------------------------------------------------------------
# The model: config + vocabulary + weights


def save_model(out_dir, config, vocab, params):
    out_dir = Path(out_dir)
    write_text(out_dir / CONFIG, dump_config(config))
    save_vocab(vocab, out_dir / VOCAB)
    write_npz(out_dir / WEIGHTS, params)


def load_config_file(path):
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a model directory written by rnnlm train?)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: unreadable config ({str(e).splitlines()[0]})") from None
    return config_from_dict(raw, source=str(path))


def check_params(params, config, vocab_size, source):
    """Every array SPEC's names require is there, with the shape the config implies."""
    expected = param_shapes(config.model, vocab_size)
    for key, shape in expected.items():
        if key not in params:
            raise UserError(f"{source}: missing array '{key}'")
        if params[key].shape != shape:
            raise UserError(f"{source}: array '{key}' has shape {params[key].shape}, the config and "
                            f"vocabulary imply {shape}")
        if not np.issubdtype(params[key].dtype, np.floating):
            raise UserError(f"{source}: array '{key}' has dtype {params[key].dtype}, expected floats")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise UserError(f"{source}: unexpected arrays {', '.join(extra)} for this config")


def check_format(model_dir):
    info_path = Path(model_dir) / INFO
    if not info_path.exists():
        return {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{info_path}: unreadable ({e})") from None
    version = info.get("format_version") if isinstance(info, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{info_path}: format_version {version!r} is newer than this rnnlm "
                        f"({__version__}) reads ({FORMAT_VERSION}); upgrade rnnlm")
    return info


def load_model(model_dir, dtype=None):
    """(config, vocab, params) of a model directory, checked for consistency."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a model directory (no such folder)")
    check_format(model_dir)
    config = load_config_file(model_dir / CONFIG)
    vocab = load_vocab(model_dir / VOCAB) if (model_dir / VOCAB).exists() else None
    if vocab is None:
        raise UserError(f"{model_dir / VOCAB}: missing (not a model directory written by rnnlm train?)")
    params = read_npz(model_dir / WEIGHTS)
    check_params(params, config, len(vocab), str(model_dir / WEIGHTS))
    dtype = np.dtype(dtype or config.train.dtype)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    return config, vocab, params


def write_info(out_dir, **fields):
    info = {"format_version": FORMAT_VERSION, "rnnlm_version": __version__, **fields}
    write_text(Path(out_dir) / INFO, json.dumps(info, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Checkpoints for --resume: arrays under prefixes, the rest as one JSON string (no pickle)


def save_checkpoint(out_dir, params, best, opt_state, hidden, meta):
    arrays = {f"param.{k}": v for k, v in params.items()}
    arrays.update({f"best.{k}": v for k, v in (best or {}).items()})
    arrays.update({f"opt.{k}": v for k, v in opt_state.items()})
    arrays["hidden"] = hidden
    arrays["meta"] = np.array(json.dumps({"format_version": FORMAT_VERSION, **meta}))
    write_npz(Path(out_dir) / CHECKPOINT, arrays)


def load_checkpoint(out_dir):
    """(params, best or None, opt_state, hidden, meta)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise UserError(f"{path}: no checkpoint to resume from (was this folder written by rnnlm train?)")
    arrays = read_npz(path, "checkpoint")
    try:
        meta = json.loads(str(arrays.pop("meta")))
        hidden = arrays.pop("hidden")
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: corrupted checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format is newer than this rnnlm reads; upgrade rnnlm")

    def part(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return part("param."), part("best.") or None, part("opt."), hidden, meta


# --------------------------------------------------------------------------------------------
# One writer per directory


def acquire_lock(out_dir):
    """Create DIR/.lock holding our pid; refuse if a live process holds it."""
    path = Path(out_dir) / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise UserError(f"{out_dir}: another rnnlm run (pid {pid}) is writing this folder; "
                                f"wait for it or choose another --out") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    raise UserError(f"{path}: could not take the lock")


def release_lock(out_dir):
    try:
        (Path(out_dir) / LOCK).unlink()
    except OSError:
        pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True
