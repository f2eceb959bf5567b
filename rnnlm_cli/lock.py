"""One writer per model directory: `DIR/.lock`, an flock held for the whole run.

The kernel drops an flock when its process dies, even by kill -9, so a stale `.lock` file never
blocks a new run; the file holds the pid of the run that holds it, which refusals name. Where
fcntl is missing (not POSIX) a pid file stands in.
"""

import errno
import os
from pathlib import Path

from .errors import UserError

LOCK = ".lock"

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


def holder(out_dir):
    """The pid of a live run holding DIR's lock (0 when its pid is unknown), or None when no
    run holds it. Only looks: takes nothing and creates nothing."""
    path = Path(out_dir) / LOCK
    if str(path.resolve()) in _HELD:
        return None  # our own lock
    if fcntl is None:
        pid = _read_pid(path)
        return pid if pid and pid != os.getpid() and _alive(pid) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(path)
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return None


def held_here(out_dir):
    """Whether this process holds DIR's lock (a run in this process writes DIR)."""
    return str((Path(out_dir) / LOCK).resolve()) in _HELD


def refuse_if_held(out_dir):
    """Raise the "another run (pid N) is writing this folder" error if a live run holds DIR."""
    pid = holder(out_dir)
    if pid is not None:
        raise _busy(out_dir, pid)
