"""The exception types the CLI turns into one clean line on stderr (no traceback).

- UserError: a mistake the user can fix (bad file, key, value, usage): exit code 2.
- WriteError: the machine could not write the output (disk full, I/O error): exit code 1.
  The message says which file and that the previous good copy of it is left in place.
- Diverged: training blew up (NaN/inf) more often than it may roll back: exit code 2, since
  the fix is in the config (a smaller train.lr or a train.clip_norm).

Anything else is a bug or a fault of the machine and exits with code 1 (traceback under --debug).
"""

import os

# Characters str.splitlines() breaks on: a message must stay on one line of the terminal.
_LINE_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_LINE_BREAKS_TABLE = str.maketrans(_LINE_BREAKS)


class RnnlmError(Exception):
    """An expected failure with a message that says what, where and what to do."""

    exit_code = 1


class UserError(RnnlmError):
    """A problem with the user's input: the message names the file/line, key or value at fault."""

    exit_code = 2


class WriteError(RnnlmError):
    """Writing a file of the model directory failed; the previous version of it is intact."""

    exit_code = 1


class Diverged(UserError):
    """Training produced NaN/inf too many times; the last good model was saved."""


def open_failed(path, error, expected) -> UserError:
    """The UserError for an OSError (or the ValueError of a NUL in the name) raised while
    opening or reading `path`, where `expected` says what the file should be ("a text file")."""
    if isinstance(error, FileNotFoundError):
        return UserError(f"{path}: no such file (expected {expected})")
    if isinstance(error, IsADirectoryError):
        return UserError(f"{path}: is a directory, expected {expected}")
    if isinstance(error, PermissionError):
        return UserError(f"{path}: permission denied")
    if isinstance(error, OSError):
        return UserError(f"{path}: cannot read {expected} ({error.strerror or error})")
    return UserError(f"{str(path)!r}: not a valid file name (it contains a NUL character)")


def one_line(text) -> str:
    """`text` with every line break shown escaped (\\n, \\r, ...), so it prints as one line."""
    return str(text).translate(_LINE_BREAKS_TABLE)


def shown(path):
    """A path as text that any terminal encoding can print (undecodable bytes become U+FFFD)."""
    return os.fsencode(str(path)).decode("utf-8", "replace")
