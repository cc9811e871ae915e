"""The life of a ``checkpoint-N`` folder on disk: written under a hidden temporary name, published by one rename
once durable, found again (the newest complete one), rotated and deleted, and its leftovers cleaned up.

Each run has an owner id (``{host}-{pid}-{token}``) in its hidden folder names, so two runs never share a
temporary folder and a cleanup removes only what is provably abandoned. No Lightning import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from .hf_format import INCOMPLETE_MARKER, TRAINER_STATE_NAME, checkpoint_name, checkpoint_step
from .save_errors import writing

__all__ = [
    "new_owner_id",
    "parse_owner",
    "temporary_name",
    "pid_alive",
    "is_abandoned",
    "leftover_folders",
    "remove_leftovers",
    "is_complete",
    "find_last_checkpoint",
    "delete_checkpoint",
    "rotate_checkpoints",
    "publish_checkpoint",
    "flush_file",
]

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_LEFTOVER_RE = re.compile(rf"^(?P<kind>\.tmp-|\.old-){PREFIX_CHECKPOINT_DIR}-(?P<step>\d+)(?:\.(?P<owner>.+))?$")
_OWNER_RE = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")

logger = logging.getLogger(__name__)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname() or "localhost")


def new_owner_id() -> str:
    """A name for this run's hidden folders: ``{host}-{pid}-{8 hex digits}``, unique per run."""
    return f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


_PROCESS_OWNER: dict[int, str] = {}


def _process_owner() -> str:
    pid = os.getpid()
    if pid not in _PROCESS_OWNER:
        _PROCESS_OWNER[pid] = new_owner_id()
    return _PROCESS_OWNER[pid]


def parse_owner(owner: str | None) -> tuple[str, int] | None:
    """``(host, pid)`` of an owner id from :func:`new_owner_id`; None for anything else."""
    match = _OWNER_RE.match(owner or "")
    return (match.group("host"), int(match.group("pid"))) if match else None


def temporary_name(global_step: int, owner: str | None = None) -> str:
    """Where a checkpoint is written before it is renamed into place: ``.tmp-checkpoint-N.<owner>``.

    The leading dot keeps it out of ``checkpoint-*`` globs and ``get_last_checkpoint``, so resume
    can never pick up a half-written folder, in hf_lightning or in transformers. The owner (this
    run's id, see :func:`new_owner_id`) makes the name unique per run, so two runs never write into
    the same temporary folder and a cleanup can tell whose leftover a folder is.
    """
    return f"{_TMP_PREFIX}{checkpoint_name(global_step)}" + (f".{owner}" if owner else "")


def _old_name(name: str, owner: str | None) -> str:
    return f"{_OLD_PREFIX}{name}.{owner or _process_owner()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def is_abandoned(
    owner: str | None, *, current: str | None, host: str, is_alive: Callable[[int], bool], own_pid: int | None = None
) -> bool:
    """Whether a hidden leftover (``.tmp-``/``.old-``) may be deleted by the run ``current``, which holds the lock.

    - this run's own leftovers, and those of an earlier run in this process (``own_pid``; it ended,
      since this run holds the lock): yes;
    - a run on this host whose process is gone: yes; one whose process still lives: no (it may be
      writing, e.g. a run that did not take the lock);
    - a run on another host, or a folder without an owner (written before owners existed): yes,
      because the caller holds the output_dir lock, so no other hf_lightning run is writing there.
    """
    if owner is not None and owner == current:
        return True
    parsed = parse_owner(owner)
    if parsed is None:
        return True
    owner_host, pid = parsed
    if owner_host == host:
        return pid == own_pid or not is_alive(pid)
    return True


def leftover_folders(output_dir: str | os.PathLike) -> list[tuple[str, str | None]]:
    """Hidden ``.tmp-checkpoint-N[.owner]``/``.old-checkpoint-N[.owner]`` folders: ``(path, owner)``."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for entry in sorted(os.listdir(output_dir)):
        match = _LEFTOVER_RE.match(entry)
        if match:
            found.append((os.path.join(output_dir, entry), match.group("owner")))
    return found


def remove_leftovers(
    output_dir: str | os.PathLike,
    *,
    current: str | None,
    only_own: bool = False,
    is_alive: Callable[[int], bool] = pid_alive,
) -> tuple[list[str], list[str]]:
    """Delete the hidden folders of interrupted saves that :func:`is_abandoned` allows; ``(removed, kept)``.

    ``only_own=True`` deletes only the folders of the run ``current`` (at the end of a run, on error).
    """
    removed, kept = [], []
    host = _host()
    for path, owner in leftover_folders(output_dir):
        mine = owner is not None and owner == current
        if mine or (not only_own and is_abandoned(owner, current=current, host=host, is_alive=is_alive, own_pid=os.getpid())):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        else:
            kept.append(path)
    return removed, kept


def is_complete(checkpoint_dir: str | os.PathLike) -> bool:
    """A folder transformers or hf_lightning finished writing: ``trainer_state.json`` (written last) and no sentinel."""
    folder = str(checkpoint_dir)
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)) and not os.path.exists(os.path.join(folder, INCOMPLETE_MARKER))


def find_last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete ``checkpoint-N`` folder with the largest N in ``output_dir``, or None.

    transformers' rule (``get_last_checkpoint``: the name's N, never the mtime), except that a folder a
    killed transformers save left half-written (no ``trainer_state.json``, or its incomplete marker)
    is passed over with a warning instead of being resumed from.
    """
    output_dir = str(output_dir)
    if not os.path.isdir(output_dir):
        return None
    candidates = sorted(
        (step, name)
        for name in os.listdir(output_dir)
        if (step := checkpoint_step(name)) is not None and os.path.isdir(os.path.join(output_dir, name))
    )
    skipped = []
    for _, name in reversed(candidates):
        path = os.path.join(output_dir, name)
        if is_complete(path):
            if skipped:
                logger.warning("Skipped incomplete checkpoint folders (an interrupted save?): %s", skipped)
            return path
        skipped.append(path)
    if skipped:
        logger.warning("No complete checkpoint in %s; incomplete folders: %s", output_dir, skipped)
    return None


def delete_checkpoint(checkpoint_dir: str | os.PathLike, owner: str | None = None) -> None:
    """Delete a checkpoint folder so that a kill midway never leaves a partial ``checkpoint-N``.

    The folder is first renamed out of the ``checkpoint-*`` names (one atomic step), then removed;
    a kill during the removal leaves a hidden ``.old-checkpoint-N.<owner>`` that the next start
    cleans up (``owner``: the run's id, default one per process).
    """
    folder = Path(checkpoint_dir)
    if not folder.exists():
        return
    doomed = folder.with_name(_old_name(folder.name, owner))
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate_checkpoints(
    output_dir: str | os.PathLike,
    save_total_limit: int | None = None,
    best_model_checkpoint: str | None = None,
    use_mtime: bool = False,
    owner: str | None = None,
) -> list[str]:
    """transformers' ``rotate_checkpoints`` (§1.7), deleting with :func:`delete_checkpoint`; returns what it deleted.

    Same decisions: sort (by mtime, by step if the mtimes are within 1 s), protect the newest and the
    best, delete the oldest until ``max(limit, protected)`` remain. Re-written only so each deletion
    is atomic (transformers' ``shutil.rmtree`` killed midway leaves a half-deleted ``checkpoint-N``).
    """
    if save_total_limit is None or save_total_limit <= 0:
        return []
    checkpoints = sort_checkpoints(str(output_dir), PREFIX_CHECKPOINT_DIR, use_mtime)
    if len(checkpoints) <= save_total_limit:
        return []
    protected = {checkpoints[-1]}
    if best_model_checkpoint is not None:
        protected.add(str(Path(best_model_checkpoint)))
    keep = max(save_total_limit, len(protected))
    deleted: list[str] = []
    for checkpoint in checkpoints:
        if len(checkpoints) - len(deleted) <= keep:
            break
        if checkpoint not in protected:
            delete_checkpoint(checkpoint, owner)
            deleted.append(checkpoint)
    return deleted


def publish_checkpoint(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike, owner: str | None = None) -> None:
    """Move a complete checkpoint into place in one rename.

    A folder already at ``final_dir`` (a second save at the same step) is moved aside first and
    deleted after, so ``final_dir`` is never partial: the old complete folder, briefly nothing, then
    the new one. Files are fsynced before the rename so a crash of the machine cannot expose a
    renamed folder whose files were never written to disk.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    with writing(tmp_dir):
        _fsync_tree(tmp_dir)
    old = None
    with writing(final_dir):
        if final_dir.exists():
            old = final_dir.with_name(_old_name(final_dir.name, owner))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def flush_file(path: str | os.PathLike) -> None:
    """fsync one written file (``publish_checkpoint`` fsyncs the whole folder again: cheap once flushed)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            flush_file(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
