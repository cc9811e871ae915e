"""One writer per ``output_dir``: an advisory lock taken when training starts.

The lock is the file ``<output_dir>/_hf_lightning.lock``, held with ``flock`` (released by the
kernel when its process dies, even by ``kill -9``) and describing its holder in JSON: pid, host,
start time, command line and run id. A second run on the same folder fails at once with an
error naming the holder; a lock left by a dead process (its file still names it, nobody holds
it) is taken over with a warning. Where the file system has no ``flock`` (some network file
systems), the holder's pid is checked instead when it is on this host, and a lock held from
another host is never taken over.

Under several processes only global rank 0 takes the lock, for the whole job
(``callbacks.checkpoint.HFCheckpoint`` broadcasts the outcome so that every rank stops together).
No Lightning import.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "LockHolder", "OutputDirLock", "OutputDirLockedError", "OutputDirNotWritableError", "acquire"]

LOCK_FILE = "_hf_lightning.lock"  # "_*" files are what transformers' Hub pushes of output_dir leave out

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class OutputDirLockedError(RuntimeError):
    """Another live training run holds the ``output_dir`` lock. ``holder`` describes it."""

    def __init__(self, message: str, holder: LockHolder | None) -> None:
        super().__init__(message)
        self.holder = holder


class OutputDirNotWritableError(RuntimeError):
    """``output_dir`` cannot be created or written to (found before the first training step)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) an ``output_dir`` lock."""

    pid: int
    host: str
    started: str
    run_id: str = ""
    command: str = ""

    def describe(self) -> str:
        text = f"pid {self.pid} on host {self.host}, started {self.started}"
        return text + (f" ({self.command})" if self.command else "")

    @classmethod
    def current(cls, run_id: str) -> LockHolder:
        command = " ".join(sys.argv)[:300]
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(pid=os.getpid(), host=socket.gethostname(), started=started, run_id=run_id, command=command)

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        try:
            data = json.loads(text)
            return cls(
                pid=int(data["pid"]), host=str(data["host"]), started=str(data.get("started", "?")),
                run_id=str(data.get("run_id", "")), command=str(data.get("command", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _alive(pid: int) -> bool:
    from .checkpoint_folders import pid_alive

    return pid_alive(pid)


class OutputDirLock:
    """A held ``output_dir`` lock; :meth:`release` it when the run ends (also on errors)."""

    def __init__(self, path: Path, fd: int | None, holder: LockHolder, *, flocked: bool) -> None:
        self.path = path
        self._fd = fd
        self.holder = holder
        self.flocked = flocked

    @property
    def held(self) -> bool:
        return self._fd is not None or (not self.flocked and self.path.exists())

    def release(self) -> None:
        """Delete the lock file and let go; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None and self.flocked:
            return
        # Unlink while still holding the flock: a run waiting on the old file then finds it replaced.
        with contextlib.suppress(OSError):
            if _read_holder(self.path) == self.holder:
                os.unlink(self.path)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.flocked = True  # nothing more to release

    def __enter__(self) -> OutputDirLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(path: Path) -> LockHolder | None:
    try:
        return LockHolder.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _locked_message(output_dir: Path, holder: LockHolder | None, path: Path) -> str:
    who = holder.describe() if holder is not None else "a process that did not record itself"
    return (
        f"output_dir {output_dir} is in use by another training run: {who}. Two runs writing one output_dir "
        f"overwrite each other's checkpoints. Wait for that run to end or stop it, or give this run another "
        f"`output_dir`. (Lock file: {path}.)"
    )


def _not_writable(output_dir: Path, error: OSError) -> OutputDirNotWritableError:
    from .save_errors import cause_text, free_space, human_bytes

    free = free_space(output_dir)
    return OutputDirNotWritableError(
        f"`output_dir={str(output_dir)!r}` is not writable: {cause_text(error, free)}"
        f"{'' if error.filename is None else f' ({error.filename})'}. Free space there: "
        f"{'unknown' if free is None else human_bytes(free)}. Checkpoints are written there; choose a folder this "
        "process can write to."
    )


def _write_holder(fd: int, holder: LockHolder) -> None:
    data = json.dumps(asdict(holder)).encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.fsync(fd)


def acquire(output_dir: str | os.PathLike, run_id: str) -> tuple[OutputDirLock, LockHolder | None]:
    """Take the lock of ``output_dir`` (created if needed); return it and the stale holder taken over, if any.

    Raises ``OutputDirLockedError`` (naming the holder) when another live run holds it, and
    ``OutputDirNotWritableError`` when the folder or the lock file cannot be written.
    """
    output_dir = Path(output_dir)
    path = output_dir / LOCK_FILE
    me = LockHolder.current(run_id)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _not_writable(output_dir, error) from error
    for _ in range(10):  # retried only if the file is replaced between open and flock
        created = False
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # released and deleted between the two opens
            continue
        except OSError as error:
            raise _not_writable(output_dir, error) from error
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            os.close(fd)
            raise OutputDirLockedError(_locked_message(output_dir, holder, path), holder) from None
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                if created:  # our empty file would look like a holder that never wrote itself
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                return _acquire_without_flock(output_dir, path, me)
            raise _not_writable(output_dir, error) from error
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the previous holder deleted it while we waited: take the new one
            os.close(fd)
            continue
        stale = _read_holder(path)
        try:
            _write_holder(fd, me)
        except OSError as error:
            os.close(fd)
            raise _not_writable(output_dir, error) from error
        if stale is not None:
            log.warning(
                "Took over the lock of output_dir %s from a run that is no longer running (%s); it ended without "
                "releasing it (killed?). Its unfinished saves are cleaned up.", output_dir, stale.describe(),
            )
        return OutputDirLock(path, fd, me, flocked=True), stale
    raise OutputDirLockedError(_locked_message(output_dir, _read_holder(path), path), _read_holder(path))


def _acquire_without_flock(output_dir: Path, path: Path, me: LockHolder) -> tuple[OutputDirLock, LockHolder | None]:
    """Lock files without ``flock``: create exclusively; a holder on this host whose pid is gone is stale."""
    stale = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if holder is not None and holder.host == socket.gethostname() and not _alive(holder.pid):
                stale = holder
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            message = _locked_message(output_dir, holder, path)
            if holder is not None and holder.host != socket.gethostname():
                message += " This file system has no flock, so a holder on another host cannot be checked; delete the lock file if that run is gone."
            raise OutputDirLockedError(message, holder) from None
        except OSError as error:
            raise _not_writable(output_dir, error) from error
        try:
            _write_holder(fd, me)
        finally:
            os.close(fd)
        if stale is not None:
            log.warning("Took over the lock of output_dir %s from a run that is no longer running (%s).", output_dir, stale.describe())
        return OutputDirLock(path, None, me, flocked=False), stale
    raise OutputDirLockedError(_locked_message(output_dir, _read_holder(path), path), _read_holder(path))
