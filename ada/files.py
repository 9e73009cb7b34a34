"""Crash-safe file handling: a reader never sees a half-written file, nothing blocks on a pipe,
and one process at a time trains in a run directory.

Whole files are written to a temporary name in the same folder, flushed to disk, then
renamed over the target (rename is atomic on POSIX). A failure leaves the previous version
in place and raises `UserError` saying which file could not be written and why.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ada.errors import UserError

# The lock file a training process holds in its run directory; it names the process.
LOCK_NAME = ".lock"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`, if any: writers such as torch.save re-raise a failed write as RuntimeError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, .NAME.RANDOM.tmp, open for writing: (descriptor, its path).

    It gets the mode a plain open(path, "w") would leave: an existing file's own, else 0o666 less
    the umask, which the kernel applies as it creates the file. (mkstemp's 0o600 would hide snapshots
    and grids from the user's group; widening it would need the umask, which can only be read by
    setting it, process-wide, under the feet of wandb's and TensorBoard's threads.)
    """
    try:
        existing = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # a new file: the kernel's mode stands
        existing = None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    if existing is not None:
        try:
            os.fchmod(fd, existing)
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
    return fd, tmp


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary file and move it to `path` only once it is complete on disk.

    A `UserError` from `write` (a bad input found while writing) passes through as it is.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = create_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except UserError:
        raise
    except Exception as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        raise UserError(
            f"could not write {path} ({cause.strerror or cause}); the previous version is untouched"
        ) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of writes that a killed process never finished; they are never complete."""
    for path in Path(folder).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk.

    A failed append (full disk) cuts the file back to its old length: a partial line left in the
    middle of the file would hide every line written after it from `read_jsonl`. (A crash can
    still tear the last line; `read_jsonl` drops it.)
    """
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"could not append to {path} ({exc.strerror or exc})") from None
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise UserError(f"could not append to {path} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


class TornLineWarning(UserWarning):
    """A JSON-lines file ends in part of a line: its writer was killed while appending it."""


def read_jsonl(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, one a line; blank lines are skipped.

    A last line that is not valid JSON is what a writer killed mid-append leaves: it is dropped
    (with `strict`, with a TornLineWarning naming it). Any other line that is not a JSON object
    is damage: with `strict`, for files a person asked to read, a UserError naming the line;
    without, reading stops before it (a run's own logs, which resuming cuts back to good lines).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        if not strict:
            raise
        raise UserError(f"cannot read {path}: {exc}") from None
    lines = [(number, line) for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    records: list[dict[str, Any]] = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            if index == len(lines) - 1:
                if strict:
                    warnings.warn(
                        f"{path}, line {number}: incomplete last line skipped (the run was probably killed "
                        "while writing it)", TornLineWarning, stacklevel=2,
                    )
                break
            if not strict:
                break
            raise UserError(
                f"{path}, line {number}: not valid JSON; the file is damaged, remove or repair that line"
            ) from None
        if not isinstance(record, dict):
            if not strict:
                break
            raise UserError(f"{path}, line {number}: expected a JSON object, found {type(record).__name__}")
        records.append(record)
    return records


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _json_record(line: bytes) -> dict[str, Any] | None:
    """One complete JSON-object line, or None if it is torn or damaged."""
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def trim_jsonl(path: Path, keep: int) -> tuple[int, int]:
    """Cut a JSON-lines log back to its first `keep` lines (those a snapshot counted).

    A damaged line among them (a flipped bit, an editor's slip) is moved to PATH.corrupt, appended
    to what is there, instead of taking every later line with it. Returns (lines kept, lines set aside).
    """
    *complete, torn = Path(path).read_bytes().split(b"\n")
    lines = [line + b"\n" for line in complete] + ([torn] if torn else [])  # torn: a crash mid-append
    kept, damaged = [], []
    for line in lines[:keep]:
        record = _json_record(line)
        if record is None:
            damaged.append(line if line.endswith(b"\n") else line + b"\n")
        else:
            kept.append(record)
    if damaged:
        corrupt = path.with_name(path.name + ".corrupt")
        before = corrupt.read_bytes() if corrupt.is_file() else b""
        atomic_write(corrupt, lambda f: f.write(before + b"".join(damaged)))
    rewrite_jsonl(path, kept)
    return len(kept), len(damaged)


def not_regular_file(shown: object) -> UserError:
    return UserError(f"{shown} is not a regular file (a pipe, socket or device); remove it")


def check_regular_file(path: Path, shown: object = None) -> None:
    """Refuse a FIFO, socket or device (a FIFO would block its reader forever); `shown` names it."""
    if not path.is_file():
        raise not_regular_file(path if shown is None else shown)


def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file. A FIFO, socket or device is refused without blocking on it."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_regular_file(path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory while training in it.

    An OS lock (flock) on RUN_DIR/.lock, which holds the PID of its owner: the OS releases it when
    the process ends, however it ends, so a killed run never leaves a stale lock. A second process
    gets a `UserError` naming the first. On a file system without locks the run goes on unlocked.
    """
    lock_path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot create its lock file ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"{run_dir} is in use: process {holder} is training in it; wait for it to end or stop it "
                "(two runs in one directory would mix their logs and snapshots)"
            ) from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: some network file systems
            print(f"warning: cannot lock {run_dir} ({exc.strerror}); run one process in it at a time",
                  file=sys.stderr)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
