"""Files written atomically and the hardened `.npz` reader: the two ways rnnlm touches its
own files on disk. Depends on nothing of the package but errors.

Every file is written to a temporary file in the same folder (`.NAME.PID.tmp`), flushed,
fsynced and renamed over the old one, so a crash or a full disk never leaves a half-written file
in place of a good one. Append-only logs (`metrics.jsonl`) are appended in one write and cut back
on failure (`append_line`).

`.npz` files are parsed here without numpy's loader: pickled objects are refused (never
unpickled; allow_pickle is never on), and so are zip bombs and inconsistent headers.
"""

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError, WriteError, open_failed

TMP_SUFFIX = ".tmp"
_writing = True  # False in the ranks but rank 0 of a data-parallel run (distributed.py): they write nothing


def stop_writing():
    """From now on this process writes no file (atomic_write, append_line and truncate do nothing)."""
    global _writing
    _writing = False


def atomic_write(path, write):
    """Call write(binary file) on a temporary file beside `path`, flush and fsync it, then rename
    it over `path`. On any failure the temporary file is removed and `path` is untouched:
    an OSError becomes a UserError (the folder is missing or not writable: the user's to fix)
    or a WriteError (disk full, I/O error) that says the previous file is left as it was."""
    if not _writing:
        return
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


def remove(path):
    """Delete `path` if it exists (the rename of that is made durable like a write's)."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as e:
        raise write_failure(path, e) from None
    _fsync_dir(path.parent)


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


def read_npz(path, what="weights", max_bytes=None, only=None):
    """All arrays of an .npz (or those named in `only`), refusing pickled objects (never
    unpickled: allow_pickle is never on), zip bombs and any inconsistency; every problem is a
    UserError naming the file. `max_bytes` bounds the uncompressed size (default:
    MAX_EXPANSION × the file's size)."""
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
            arrays, seen = {}, set()
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if key in seen:
                    raise _Refused(f"array '{key}' appears twice")
                seen.add(key)
                if only is None or key in only:
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


def npz_size_bound(shapes, itemsize=8):
    """An upper bound on the bytes an .npz of arrays of these shapes holds (8-byte items)."""
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n * itemsize + 4096  # the .npy header and zip entry
    return total


def append_line(path, line):
    """Append one line (bytes) to `path` in one write, creating it if needed. A failure (disk
    full) cuts the file back to its old size, so no half line is left behind, and raises a
    WriteError saying that the other files are untouched. -> the number of bytes appended."""
    if not _writing:
        return len(line)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_failure(path, e) from None
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
    return len(line)


def truncate(path, size):
    """Cut `path` back to `size` bytes if it is longer (a log rewound to a checkpoint)."""
    if not _writing:
        return
    path = Path(path)
    try:
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
    except OSError as e:
        raise write_failure(path, e) from None
