"""One writer per output_dir (issue 13): the lock, per-run temporary names, and what cleanup may delete.

Another live run is simulated by a separate Python process that takes the lock and waits; a dead
one by a process that took it and was killed with SIGKILL. The 2-process (DDP) case is in
``test_hardening_distributed.py``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from hardening_helpers import StepCounter, fit_path, tiny_trainer
from transformers import TrainerCallback

from hf_lightning import checkpoint_folders, hf_format, run_lock

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from hf_lightning import run_lock
lock, _ = run_lock.acquire({out!r}, "other-run")
print("locked", flush=True)
sys.stdin.read()
"""


def hold_lock(output_dir) -> subprocess.Popen:
    """A separate process holding output_dir's lock until its stdin closes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=root, out=str(output_dir))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_is_named_and_nothing_runs(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        counter = StepCounter()
        trainer = tiny_trainer(out, callbacks=[counter])
        with pytest.raises(run_lock.OutputDirLockedError) as raised:
            trainer.train()
        message = str(raised.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in message, message
        assert str(out) in message and "Lock file" in message
        assert raised.value.holder.pid == holder.pid
        assert counter.steps == 0 and not [n for n in os.listdir(out) if n.startswith("checkpoint-")]
        assert json.loads((out / run_lock.LOCK_FILE).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    holder = hold_lock(out)
    holder.kill()  # SIGKILL: its lock file stays, its flock is gone
    holder.wait()
    assert (out / run_lock.LOCK_FILE).exists()
    seen = {}

    class ReadLock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.update(json.loads((out / run_lock.LOCK_FILE).read_text()))

    trainer = tiny_trainer(out, callbacks=[ReadLock()])
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.state.global_step == 4
    taken = [r.getMessage() for r in caplog.records if "Took over the lock" in r.getMessage()]
    assert len(taken) == 1 and f"pid {holder.pid} " in taken[0], taken
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname() and seen["started"]
    assert not (out / run_lock.LOCK_FILE).exists()  # released at the end


def test_lock_is_released_after_an_error(tmp_path):
    out = tmp_path / "out"

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_trainer(out, callbacks=[Boom()]).train()
    assert not (out / run_lock.LOCK_FILE).exists()
    tiny_trainer(out).train()  # the folder is free again


def test_output_dir_that_cannot_be_created(tmp_path):
    """On the Lightning path (the facade, like transformers, already creates output_dir when it is built)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    counter = StepCounter()
    trainer_out = blocker / "out"
    with pytest.raises(run_lock.OutputDirNotWritableError) as raised:
        fit_path(trainer_out, None, callbacks=[counter])
    message = str(raised.value)
    assert f"`output_dir={str(trainer_out)!r}` is not writable" in message and "ENOTDIR" in message and "Free space" in message
    assert counter.steps == 0


def test_output_dir_without_write_permission(tmp_path, monkeypatch):
    """Permission denied on the lock file (we run as root here, so chmod would not stop us: simulated)."""
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(run_lock.LOCK_FILE):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_lock.os, "open", denied)
    counter = StepCounter()
    with pytest.raises(run_lock.OutputDirNotWritableError) as raised:
        tiny_trainer(tmp_path / "out", callbacks=[counter]).train()
    assert "EACCES: permission denied" in str(raised.value) and run_lock.LOCK_FILE in str(raised.value)
    assert counter.steps == 0


def test_file_systems_without_flock(tmp_path, monkeypatch, caplog):
    """No flock (some network file systems): the holder's pid decides on this host."""

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    out = tmp_path / "out"
    lock, stale = run_lock.acquire(out, "first")
    assert stale is None
    with pytest.raises(run_lock.OutputDirLockedError, match=f"pid {os.getpid()} "):
        run_lock.acquire(out, "second")  # alive (it is us)
    lock.release()
    assert not (out / run_lock.LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / run_lock.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    with caplog.at_level(logging.WARNING):
        lock, stale = run_lock.acquire(out, "third")
    assert stale.pid == dead.pid and any("Took over" in r.getMessage() for r in caplog.records)
    lock.release()
    (out / run_lock.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "earlier"}))
    with pytest.raises(run_lock.OutputDirLockedError, match="cannot be checked"):
        run_lock.acquire(out, "fourth")  # another host: never taken over


# ------------------------------------------------------------------------- temporary names, cleanup


def test_temporary_names_are_unique_per_run():
    a, b = checkpoint_folders.new_owner_id(), checkpoint_folders.new_owner_id()
    assert a != b
    assert checkpoint_folders.temporary_name(5, a) != checkpoint_folders.temporary_name(5, b)
    assert checkpoint_folders.temporary_name(5, a).startswith(".tmp-checkpoint-5.")
    assert checkpoint_folders.parse_owner(a) == (checkpoint_folders._host(), os.getpid())
    assert checkpoint_folders.parse_owner("no-owner") is None and checkpoint_folders.parse_owner(None) is None


HOST = "thishost"


@pytest.mark.parametrize(
    "owner, alive, expected",
    [
        ("thishost-100-aaaaaaaa", set(), True),  # this host, process gone: abandoned
        ("thishost-100-aaaaaaaa", {100}, False),  # this host, process alive: maybe writing, kept
        ("otherhost-100-aaaaaaaa", {100}, True),  # another host: the lock we hold proves it is not writing
        (None, set(), True),  # written before owners existed
        ("current-1-bbbbbbbb", {1}, True),  # our own
        ("thishost-7-cccccccc", {7}, True),  # an earlier run of this process (pid 7): it ended, we hold the lock
        ("garbage", set(), True),
    ],
)
def test_is_abandoned_table(owner, alive, expected):
    assert checkpoint_folders.is_abandoned(owner, current="current-1-bbbbbbbb", host=HOST, is_alive=alive.__contains__, own_pid=7) is expected


def test_start_removes_only_abandoned_leftovers(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    host = checkpoint_folders._host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = {
            "live": f".tmp-checkpoint-3.{host}-{live.pid}-0123abcd",
            "dead": f".tmp-checkpoint-4.{host}-{dead.pid}-0123abcd",
            "elsewhere": ".old-checkpoint-1.otherhost-7-0123abcd",
            "legacy": ".tmp-checkpoint-6",
        }
        for name in names.values():
            (out / name).mkdir()
            (out / name / "model.safetensors").write_text("partial")
        with caplog.at_level(logging.WARNING):
            tiny_trainer(out, save_strategy="no").train()
        left = sorted(n for n in os.listdir(out) if n.startswith("."))
        assert left == [names["live"]]
        assert any(names["live"] in r.getMessage() and "still running" in r.getMessage() for r in caplog.records)
    finally:
        live.kill()
        live.wait()


def test_two_runs_never_share_a_temporary_folder(tmp_path):
    """The temporary folder of a save is named after the run writing it."""
    seen = []

    original = hf_format.save_torch

    def spy(obj, path):
        seen.append(os.path.basename(os.path.dirname(str(path))))
        original(obj, path)

    hf_format.save_torch = spy
    try:
        tiny_trainer(tmp_path / "a", max_steps=2).train()
        tiny_trainer(tmp_path / "a", max_steps=2).train()
    finally:
        hf_format.save_torch = original
    owners = {name.split(".", 2)[2] for name in seen}
    assert all(name.startswith(".tmp-checkpoint-2.") for name in seen) and len(owners) == 2, seen
