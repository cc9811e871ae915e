"""Why a checkpoint save failed, in words: ``CheckpointSaveError`` names the checkpoint, the file, the cause
(the OS error's name, with a hint for a full disk, a quota, permissions or a read-only file system) and the
free space left, and ``writing`` turns any failure while writing a file into one.

Pure Python; no torch or Lightning import.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CheckpointSaveError", "writing", "free_space", "cause_text", "human_bytes"]


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed: names the checkpoint, the file, the cause and the free space.

    An ``OSError`` (with the cause's ``errno`` when it had one), so ``except OSError`` still catches
    a full disk.

    Attributes: ``file`` (what was being written), ``cause`` (the original error), ``checkpoint``
    (the ``checkpoint-N`` folder the save was for, when known), ``free_bytes`` (free space on the
    file system of ``file``, None if unknown) and ``newest`` (the newest complete checkpoint, which
    the failed save left in place).
    """

    def __init__(self, file: str | os.PathLike, cause: BaseException, *, checkpoint: str | None = None, newest: str | None = None) -> None:
        self.file = str(file)
        self.cause = cause
        self.checkpoint = checkpoint
        self.newest = newest
        self.free_bytes = free_space(self.file)
        super().__init__(self._message())
        self.errno = _os_error(cause).errno if _os_error(cause) is not None else None

    def __reduce__(self) -> Any:
        return (_rebuild_save_error, (self.file, str(self.cause), self.checkpoint, self.newest, self.args))

    def for_checkpoint(self, checkpoint: str, newest: str | None) -> CheckpointSaveError:
        """The same failure, now naming the checkpoint and the newest complete one."""
        error = CheckpointSaveError(self.file, self.cause, checkpoint=checkpoint, newest=newest)
        error.free_bytes = self.free_bytes if self.free_bytes is not None else error.free_bytes
        error.args = (error._message(),)
        return error

    def _message(self) -> str:
        what = f"Saving {self.checkpoint} failed" if self.checkpoint else "Saving a checkpoint failed"
        free = "unknown" if self.free_bytes is None else human_bytes(self.free_bytes)
        text = f"{what}: writing {self.file}: {cause_text(self.cause, self.free_bytes)}. Free space there: {free}."
        if self.checkpoint is not None:
            text += (
                f" Nothing was published; the newest complete checkpoint is still {self.newest}."
                if self.newest
                else " Nothing was published; there is no complete checkpoint yet."
            )
        return text


def _rebuild_save_error(file: str, cause: str, checkpoint: str | None, newest: str | None, args: tuple) -> CheckpointSaveError:
    error = CheckpointSaveError(file, RuntimeError(cause), checkpoint=checkpoint, newest=newest)
    error.args = args
    return error


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error`` (itself, or in its chain of causes)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def free_space(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent); None if unknown."""
    current = Path(path)
    for candidate in (current, *current.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


_ERRNO_HINTS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for the file system or the process's file size limit",
}


def cause_text(error: BaseException, free_bytes: int | None) -> str:
    """The cause in words: the OS error's name and text, else the first line of the message."""
    err = _os_error(error)
    if isinstance(err, OSError) and err.errno is not None:
        name = errno.errorcode.get(err.errno, str(err.errno))
        hint = _ERRNO_HINTS.get(err.errno, err.strerror or "")
        return f"{name}: {hint}" + (f" ({err.strerror})" if err.strerror and err.strerror.lower() not in hint.lower() else "")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
    code = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(error))  # Rust's io::Error (safetensors), str(OSError)
    if code is not None:
        number = int(code.group(1) or code.group(2))
        if number in _ERRNO_HINTS:
            return f"{errno.errorcode.get(number, number)}: {_ERRNO_HINTS[number]} ({text})"
    if free_bytes is not None and free_bytes < 1 << 20:
        text += " (the file system has less than 1 MiB free: it is probably full)"
    return text


@contextlib.contextmanager
def writing(file: str | os.PathLike) -> Iterator[None]:
    """Turn any failure while writing ``file`` into a ``CheckpointSaveError`` naming it and the cause."""
    try:
        yield
    except CheckpointSaveError:
        raise
    except Exception as error:
        raise CheckpointSaveError(getattr(error, "filename", None) or file, error) from error
