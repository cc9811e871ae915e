"""Saves that fail say which checkpoint, which file, why, and how much space is left (issue 13).

The previous checkpoint stays the newest complete one, and the failed save leaves nothing behind.
Disk-full and permission errors are simulated where they happen (``torch.save``, ``safetensors``);
one test hits a real limit: a forked run whose file-size limit (``RLIMIT_FSIZE``) drops mid-run.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import signal
import sys

import pytest
import safetensors.torch
import torch
from hardening_helpers import tiny_trainer
from transformers import TrainerCallback

from hf_lightning import checkpoint_folders, run_lock, save_errors
from hf_lightning.save_errors import CheckpointSaveError


def assert_previous_checkpoint_stays(out, newest: str = "checkpoint-2") -> None:
    assert checkpoint_folders.find_last_checkpoint(out) == str(out / newest)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-") or n.startswith(".old-")], os.listdir(out)
    assert not (out / run_lock.LOCK_FILE).exists()


def test_disk_full_while_writing_the_optimizer(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_save = torch.save

    def full(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path) and str(path).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointSaveError) as raised:
        tiny_trainer(out).train()
    error = raised.value
    message = str(error)
    assert message.startswith(f"Saving {out / 'checkpoint-4'} failed: writing ")
    assert error.file.endswith("optimizer.pt") and ".tmp-checkpoint-4." in error.file
    assert "ENOSPC: no space left on the device (the disk is full)" in message and "Free space there: " in message
    assert f"the newest complete checkpoint is still {out / 'checkpoint-2'}" in message
    assert error.errno == errno.ENOSPC and isinstance(error, OSError) and error.free_bytes is not None
    assert_previous_checkpoint_stays(out)


def test_torch_enforce_failure_on_a_full_disk(tmp_path, monkeypatch):
    """torch's own message on a full disk names neither file nor cause; ours does, and says the disk looks full."""
    out = tmp_path / "out"
    real_save = torch.save

    def full(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path) and str(path).endswith("scheduler.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(save_errors, "free_space", lambda path: 4096)
    with pytest.raises(CheckpointSaveError) as raised:
        tiny_trainer(out).train()
    message = str(raised.value)
    assert "scheduler.pt" in message and "inline_container.cc:672" in message
    assert "less than 1 MiB free: it is probably full" in message and "Free space there: 4.0 KiB" in message
    assert_previous_checkpoint_stays(out)


def test_permission_denied_writing_the_weights(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = safetensors.torch.save_file

    def denied(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):
            raise PermissionError(errno.EACCES, "Permission denied", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", denied)
    with pytest.raises(CheckpointSaveError) as raised:
        tiny_trainer(out).train()
    message = str(raised.value)
    assert "model.safetensors" in raised.value.file and "EACCES: permission denied" in message
    assert_previous_checkpoint_stays(out)


def test_rank_failure_messages_are_gathered_single_process():
    from hf_lightning.callbacks.checkpoint import _gather_errors

    assert _gather_errors(None, None) == []
    assert _gather_errors(None, ValueError("x")) == [(0, "x")]


class _ShrinkFileLimit(TrainerCallback):
    """Before step 4's save, allow files of at most 64 bytes (as if the disk had filled up)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _limited_run(out: str, report: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # pytest captures output into files, which the limit would hit too
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    try:
        tiny_trainer(__import__("pathlib").Path(out), callbacks=[_ShrinkFileLimit()]).train()
    except CheckpointSaveError as error:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with open(report, "w") as f:
            f.write(f"{error.file}\n{error}")
        os._exit(3)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with open(report, "w") as f:
            f.write(f"unexpected\n{type(error).__name__}: {error}")
        os._exit(4)
    os._exit(0)


def test_a_real_write_failure(tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.txt"
    process = multiprocessing.get_context("fork").Process(target=_limited_run, args=(str(out), str(report)))
    process.start()
    process.join(120)
    assert process.exitcode == 3, f"exit code {process.exitcode}: {report.read_text() if report.exists() else ''}"
    file, message = report.read_text().split("\n", 1)
    assert ".tmp-checkpoint-4." in file and file.endswith("model.safetensors"), file
    assert f"Saving {out / 'checkpoint-4'} failed" in message and "EFBIG" in message and "Free space there" in message
    assert f"still {out / 'checkpoint-2'}" in message
    assert checkpoint_folders.find_last_checkpoint(out) == str(out / "checkpoint-2")
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
