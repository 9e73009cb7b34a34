"""Crash-safe file writing: a reader never sees a half-written file.

Whole files are written to a temporary name in the same folder, flushed to disk, then
renamed over the target (rename is atomic on POSIX). A failure leaves the previous version
in place and raises `UserError` saying which file could not be written and why.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ada.errors import UserError


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


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary file and move it to `path` only once it is complete on disk."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file; a torn last line (from a crash) is dropped."""
    records = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                records.append(json.loads(raw))
            except ValueError:
                break
    return records


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
