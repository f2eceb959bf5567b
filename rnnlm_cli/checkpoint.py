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
import re
import zipfile
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .config import config_from_dict, dump_config
from .errors import UserError, WriteError, open_failed
from .model import param_shapes
from .vocab import load_vocab, save_vocab

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS, METRICS, INFO, CHECKPOINT, LOCK = (
    "config.yaml", "vocab.txt", "weights.npz", "metrics.jsonl", "info.json", "checkpoint.npz", ".lock")
TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------------------------
# Atomic files


def atomic_write(path, write):
    """Call write(binary file) on a temporary file beside `path`, flush and fsync it, then rename
    it over `path`. On any failure the temporary file is removed and `path` is untouched:
    an OSError becomes a UserError (the folder is missing or not writable: the user's to fix)
    or a WriteError (disk full, I/O error) that says the previous file is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_failure(path, e) from None
        raise
    _fsync_dir(path.parent)


def write_failure(path, e):
    """The error to raise when writing `path` failed with the OSError `e`."""
    reason = e.strerror or str(e)
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return UserError(f"{path}: cannot write here ({reason}); choose another path")
    kept = ("; the previous version of the file is left as it was" if Path(path).exists()
            else "; nothing was written")
    return WriteError(f"{path}: could not write ({reason}){kept}")


def _fsync_dir(folder):
    """Make a rename durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_file(name):
    """Whether `name` is one of atomic_write's temporary files (.NAME.PID.tmp)."""
    return re.fullmatch(r"\..+\.[0-9]+" + re.escape(TMP_SUFFIX), name) is not None


def remove_stale_temp_files(out_dir):
    """Delete the temporary files a killed run left in out_dir (call while holding the lock)."""
    for tmp in Path(out_dir).iterdir():
        if is_temp_file(tmp.name):
            try:
                tmp.unlink()
            except OSError:
                pass


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_npz(path, arrays):
    def write(f):
        buffer = io.BytesIO()  # np.savez seeks; build in memory, then one write
        np.savez(buffer, **arrays)
        f.write(buffer.getbuffer())
    atomic_write(path, write)


# An .npz whose expected size is unknown may expand to at most this many times its file size
# (np.savez stores arrays uncompressed); more would be a zip bomb.
MAX_EXPANSION = 16


class _Refused(Exception):
    pass


def _read_member(zf, info, what):
    """One array of an .npz: header checked (no objects, sizes consistent) before the data."""
    raw = zf.read(info)  # reads the whole member, so its CRC-32 is verified
    buf = io.BytesIO(raw)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        raise _Refused(f"array '{info.filename}' uses .npy format {version}, which rnnlm does not read")
    if dtype.hasobject:
        raise _Refused(f"array '{info.filename}' holds pickled Python objects (dtype {dtype}); refused: "
                       f"rnnlm never unpickles (a {what} file written by rnnlm holds plain numbers)")
    count = 1
    for n in shape:
        count *= n
    offset = buf.tell()
    if len(raw) - offset != count * dtype.itemsize:
        raise _Refused(f"array '{info.filename}' should hold {count * dtype.itemsize} bytes of data but has "
                       f"{len(raw) - offset}: the file is truncated or corrupted")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(path, what="weights", max_bytes=None):
    """All arrays of an .npz, refusing pickled objects (never unpickled: allow_pickle is never
    on), zip bombs and any inconsistency; every problem is a UserError naming the file.
    `max_bytes` bounds the uncompressed size (default: MAX_EXPANSION × the file's size)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
        raise open_failed(path, e, f"a {what} .npz file") from None
    try:
        with f, zipfile.ZipFile(f) as zf:
            size = os.fstat(f.fileno()).st_size
            infos = zf.infolist()
            limit = max_bytes if max_bytes is not None else MAX_EXPANSION * size + (1 << 20)
            claimed = sum(info.file_size for info in infos)
            if claimed > limit:
                raise _Refused(f"its arrays claim {claimed} bytes, far more than a {what} file of this model "
                               f"can hold ({limit}); refused")
            arrays = {}
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if key in arrays:
                    raise _Refused(f"array '{key}' appears twice")
                arrays[key] = _read_member(zf, info, what)
            return arrays
    except OSError as e:
        raise open_failed(path, e, f"a {what} .npz file") from None
    except _Refused as e:
        raise UserError(f"{path}: {e}") from None
    except zipfile.BadZipFile as e:
        raise UserError(f"{path}: truncated or corrupted {what} file ({e})") from None
    except MemoryError:
        raise UserError(f"{path}: its arrays are too large to load; a corrupted {what} file?") from None
    except Exception as e:  # whatever a hostile or damaged file makes the parsers raise
        raise UserError(f"{path}: truncated or corrupted {what} file ({type(e).__name__}: {e})") from None


def _nbytes(shapes, itemsize=8):
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n * itemsize + 4096  # the .npy header and zip entry
    return total


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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: unreadable config ({reason})") from None
    return config_from_dict(raw, source=str(path))


def check_arrays(arrays, expected, source, what="array"):
    """`arrays` has exactly the keys of `expected` ({key: shape}), those shapes, float dtypes
    and only finite values."""
    for key, shape in expected.items():
        if key not in arrays:
            raise UserError(f"{source}: missing {what} '{key}'")
        a = arrays[key]
        if a.shape != tuple(shape):
            raise UserError(f"{source}: {what} '{key}' has shape {a.shape}, the config and vocabulary "
                            f"imply {tuple(shape)}")
        if key == "output.class_bounds":  # the one integer array: class c = ids [bounds[c], bounds[c+1])
            if not np.issubdtype(a.dtype, np.integer) or a[0] != 0 or np.any(np.diff(a) <= 0):
                raise UserError(f"{source}: {what} '{key}' must be strictly increasing integers from 0")
            continue
        if not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"{source}: {what} '{key}' has dtype {a.dtype}, expected floats")
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise UserError(f"{source}: {what} '{key}' holds {bad} NaN or infinite value(s); the file is "
                            f"corrupted or was saved from a diverged run")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise UserError(f"{source}: unexpected {what}s {', '.join(extra)} for this config")


def check_params(params, config, vocab_size, source):
    """Every array SPEC's names require is there, with the shape the config implies, floats
    only, all finite; a vocabulary of the wrong size is named as such."""
    emb = params.get("embedding")
    if emb is not None and emb.ndim == 2 and emb.shape[0] != vocab_size:
        raise UserError(f"{source}: the weights are for a vocabulary of {emb.shape[0]} tokens but the "
                        f"vocabulary has {vocab_size}: vocab.txt and the weights do not belong together")
    check_arrays(params, param_shapes(config.model, vocab_size), source)


def check_format(model_dir):
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
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        what = "a file" if model_dir.exists() else "no such folder"
        raise UserError(f"{model_dir}: not a model directory ({what})")
    check_format(model_dir)
    config = load_config_file(model_dir / CONFIG)
    if not (model_dir / VOCAB).exists():
        raise UserError(f"{model_dir / VOCAB}: missing (not a model directory written by rnnlm train?)")
    vocab = load_vocab(model_dir / VOCAB)
    shapes = param_shapes(config.model, len(vocab))
    params = read_npz(model_dir / WEIGHTS, max_bytes=_nbytes(shapes.values()))
    check_params(params, config, len(vocab), str(model_dir / WEIGHTS))
    dtype = np.dtype(dtype or config.train.dtype)
    params = {k: np.ascontiguousarray(v, dtype=dtype if np.issubdtype(v.dtype, np.floating) else np.int64)
              for k, v in params.items()}
    if "output.class_bounds" in params and params["output.class_bounds"][-1] != len(vocab):
        raise UserError(f"{model_dir / WEIGHTS}: output.class_bounds does not end at the vocabulary size {len(vocab)}")
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


def load_checkpoint(out_dir, config=None, vocab_size=None):
    """(params, best or None, opt_state, hidden, meta) of DIR/checkpoint.npz.

    With `config` and `vocab_size`, everything is checked against them: parameter and best
    arrays, the optimizer state the config's optimizer keeps, the carried hidden state, all
    finite; meta must be a JSON object of a format this version reads."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise UserError(f"{path}: no checkpoint to resume from (was this folder written by rnnlm train?)")
    max_bytes = None
    if config is not None:
        shapes = list(param_shapes(config.model, vocab_size).values())
        max_bytes = _nbytes(shapes * 4) + (1 << 20)  # params, best, two optimizer moments, + state
    arrays = read_npz(path, "checkpoint", max_bytes=max_bytes)
    meta_array = arrays.pop("meta", None)
    hidden = arrays.pop("hidden", None)
    if meta_array is None or hidden is None:
        raise UserError(f"{path}: corrupted checkpoint (no '{'meta' if meta_array is None else 'hidden'}' array)")
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise UserError(f"{path}: corrupted checkpoint ('meta' is not a JSON string)")
    try:
        meta = json.loads(str(meta_array))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: corrupted checkpoint (meta: {e})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{path}: corrupted checkpoint (meta has no format_version)")
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version} is newer than this rnnlm ({__version__}) reads "
                        f"({FORMAT_VERSION}); upgrade rnnlm")
    for key in ("progress", "rng"):
        if not isinstance(meta.get(key), dict):
            raise UserError(f"{path}: corrupted checkpoint (meta has no '{key}')")

    def part(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    params, best, opt_state = part("param."), part("best.") or None, part("opt.")
    unknown = sorted(k for k in arrays if not k.startswith(("param.", "best.", "opt.")))
    if unknown:
        raise UserError(f"{path}: unexpected arrays {', '.join(unknown)} in a checkpoint")
    if config is not None:
        check_params(params, config, vocab_size, f"{path} (current parameters)")
        if best is not None:
            check_params(best, config, vocab_size, f"{path} (best parameters)")
        from . import model, optim
        expected_opt = optim.init_state(config.train.optimizer, params)
        missing, extra = sorted(set(expected_opt) - set(opt_state)), sorted(set(opt_state) - set(expected_opt))
        if missing or extra:
            raise UserError(f"{path}: the optimizer state does not match train.optimizer "
                            f"{config.train.optimizer} (missing {missing}, unexpected {extra})")
        floats = {k: v.shape for k, v in expected_opt.items() if np.issubdtype(v.dtype, np.floating)}
        check_arrays({k: opt_state[k] for k in floats}, floats, f"{path} (optimizer state)")
        for k, want in expected_opt.items():  # counters such as adam.t
            v = opt_state[k]
            if k not in floats and (v.shape != want.shape or not np.issubdtype(v.dtype, np.integer)
                                    or (v < 0).any()):
                raise UserError(f"{path}: optimizer state '{k}' is not a count (shape {v.shape}, dtype {v.dtype})")
        want = model.init_state(config.model, config.train.batch_size).shape
        check_arrays({"hidden": hidden}, {"hidden": want}, path, "array")
    return params, best, opt_state, hidden, meta


# --------------------------------------------------------------------------------------------
# One writer per directory

try:
    import fcntl
except ImportError:  # not POSIX: fall back to a pid file
    fcntl = None

_HELD = {}  # lock path -> the open file descriptor whose flock we hold


def _read_pid(path):
    try:
        return int(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _busy(out_dir, pid):
    who = f" (pid {pid})" if pid else ""
    return UserError(f"{out_dir}: another rnnlm run{who} is writing this folder; wait for it to finish "
                     f"(or stop it), or choose another --out")


def acquire_lock(out_dir):
    """Take DIR/.lock so that only one run writes DIR; refuse, naming the other run's pid, if a
    live process holds it. The lock is an flock on the file, so the kernel drops it when its
    process dies, even by kill -9: a stale .lock file never blocks a new run."""
    path = Path(out_dir) / LOCK
    if fcntl is None:
        return _acquire_pid_lock(out_dir, path)
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{path}: cannot create the lock file ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _busy(out_dir, _read_pid(path)) from None
        try:  # the file we locked must still be the one at `path` (a finishing run removes it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[str(path.resolve())] = fd
        return path
    raise UserError(f"{path}: could not take the lock")


def _acquire_pid_lock(out_dir, path):
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _read_pid(path)
            if pid and pid != os.getpid() and _alive(pid):
                raise _busy(out_dir, pid) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    raise UserError(f"{path}: could not take the lock")


def release_lock(out_dir):
    path = Path(out_dir) / LOCK
    fd = _HELD.pop(str(path.resolve()), None)
    if fd is None and fcntl is not None:
        return  # not ours
    try:
        path.unlink()  # while still holding it, so nobody locks a file that is going away
    except OSError:
        pass
    if fd is not None:
        os.close(fd)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True
