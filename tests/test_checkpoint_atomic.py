"""Atomic saves: ``kill -9`` at any moment of a save leaves only complete ``checkpoint-N`` folders.

A training run that saves at every step runs in a child process (forked, so it starts in
milliseconds) and is killed with SIGKILL at a chosen moment: while the model files are written,
while the RNG file is written, just before and just after the rename into place, in the middle of
deleting a rotated checkpoint, during an asynchronous save's background write, and from outside
while a save is blocked. Then every ``checkpoint-N`` left must hold all its files, and
``train(resume_from_checkpoint=True)`` must finish the run bitwise where the uninterrupted run ends,
leaving no hidden leftovers.

``test_external_kill_loop`` (slow) does the same with a separate Python process killed at random
times, several times over.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import build
from tiny import RegressionDataset, TinyReg

from hf_lightning import checkpoint_folders, hf_format, run_lock
from hf_lightning.checkpoint_io import HFCheckpointIO

ARGS = dict(per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=3, save_strategy="steps",
            save_steps=1, save_total_limit=3, logging_steps=1, learning_rate=1e-2)
COMPLETE = {"model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json", "training_args.bin"}
KILL_STEP = 5


def model_fn() -> TinyReg:
    return TinyReg(dropout=0.2)


def make_trainer(output_dir, **extra):
    return build("hl", model_fn, output_dir, trainer_kwargs=dict(train_dataset=RegressionDataset(64), **extra), **ARGS)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    trainer = make_trainer(out)
    trainer.train()
    return trainer, sorted(os.listdir(out))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _step_of(path) -> int:
    return int(str(path).rstrip("/").rsplit("-", 1)[1])


def install_kill(phase: str, marker: str) -> dict:
    """Patch the save path so that the process SIGKILLs itself at ``phase`` of the save at KILL_STEP."""
    extra: dict = {}
    if phase == "model-written":  # model.safetensors is there, optimizer.pt is being written
        original = hf_format.save_torch

        def save_torch(obj, path):
            if str(path).endswith("optimizer.pt") and f"checkpoint-{KILL_STEP}" in str(path):
                with open(path, "wb") as f:
                    f.write(b"partial")
                die()
            original(obj, path)

        hf_format.save_torch = save_torch
    elif phase == "rng":
        original_rng = hf_format.capture_rng_state
        calls = {"n": 0}

        def capture_rng_state(distributed=False):
            calls["n"] += 1
            if calls["n"] == KILL_STEP:
                die()
            return original_rng(distributed)

        hf_format.capture_rng_state = capture_rng_state
    elif phase in ("before-rename", "after-rename"):
        original_publish = checkpoint_folders.publish_checkpoint

        def publish_checkpoint(tmp_dir, final_dir, *args, **kwargs):
            if _step_of(final_dir) == KILL_STEP and phase == "before-rename":
                die()
            original_publish(tmp_dir, final_dir, *args, **kwargs)
            if _step_of(final_dir) == KILL_STEP:
                die()

        checkpoint_folders.publish_checkpoint = publish_checkpoint
    elif phase == "mid-rotation":  # deleting checkpoint-2 when checkpoint-5 is published
        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if ".old-checkpoint-2" in str(path) and os.path.isdir(path):
                os.remove(os.path.join(path, "model.safetensors"))
                die()
            original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif phase == "async-write":  # the background thread dies writing; training had gone on meanwhile
        original_io = HFCheckpointIO.save_checkpoint

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if f"checkpoint-{KILL_STEP}" in str(path):
                original_io(self, checkpoint, path, storage_options)
                os.remove(os.path.join(path, "scheduler.pt"))
                die()
            original_io(self, checkpoint, path, storage_options)

        HFCheckpointIO.save_checkpoint = save_checkpoint
        extra["async_save"] = True
    elif phase == "external":  # tell the parent, then wait inside the save to be killed from outside
        original = hf_format.save_torch

        def save_torch(obj, path):
            if str(path).endswith("optimizer.pt") and f"checkpoint-{KILL_STEP}" in str(path):
                original(obj, path)
                with open(marker, "w") as f:
                    f.write("saving")
                time.sleep(60)
            original(obj, path)

        hf_format.save_torch = save_torch
    else:
        raise KeyError(phase)
    return extra


def _child(output_dir: str, phase: str, marker: str) -> None:
    try:
        torch.set_num_threads(1)
        extra = install_kill(phase, marker)
        make_trainer(output_dir, **extra).train()
    finally:
        os._exit(0)  # never run the parent's pytest machinery in the child


def run_and_kill(output_dir, phase: str) -> None:
    marker = str(output_dir) + ".marker"
    process = multiprocessing.get_context("fork").Process(target=_child, args=(str(output_dir), phase, marker))
    process.start()
    if phase == "external":
        deadline = time.time() + 120
        while not os.path.exists(marker) and time.time() < deadline and process.is_alive():
            time.sleep(0.02)
        assert os.path.exists(marker), "the child never reached the save"
        os.kill(process.pid, signal.SIGKILL)
    process.join(120)
    assert process.exitcode == -signal.SIGKILL, f"the child was not killed (exit code {process.exitcode})"


def assert_only_complete_checkpoints(output_dir) -> list[str]:
    names = [n for n in os.listdir(output_dir) if n.startswith("checkpoint-")]
    for name in names:
        assert set(os.listdir(os.path.join(output_dir, name))) == COMPLETE, f"{name} is incomplete"
        hf_format.read_trainer_state(os.path.join(output_dir, name))
    return names


@pytest.mark.parametrize("phase", ["model-written", "rng", "before-rename", "after-rename", "mid-rotation", "async-write", "external"])
def test_kill_during_save_leaves_complete_checkpoints_and_resume_finishes(uninterrupted, tmp_path, phase):
    reference, final_folders = uninterrupted
    output_dir = tmp_path / "run"
    run_and_kill(output_dir, phase)
    names = assert_only_complete_checkpoints(output_dir)
    steps = sorted(_step_of(n) for n in names)
    published = KILL_STEP if phase in ("after-rename", "mid-rotation", "async-write") else KILL_STEP - 1
    if phase == "async-write":
        published = KILL_STEP - 1  # the background write of checkpoint-5 died before its rename
    assert steps[-1] == published, steps
    assert run_lock.LOCK_FILE in os.listdir(output_dir)  # the killed run never released its lock: the resume takes it over
    hidden = sorted(n for n in os.listdir(output_dir) if n.startswith("."))
    if phase in ("model-written", "rng", "before-rename", "async-write", "external"):
        # a half-written save, named after the killed run, ignored by resume
        assert len(hidden) == 1 and hidden[0].startswith(f".tmp-checkpoint-{KILL_STEP}."), hidden
    if phase == "mid-rotation":
        # renamed away before the deletion: never a partial checkpoint-2
        assert len(hidden) == 1 and hidden[0].startswith(".old-checkpoint-2."), hidden
    assert checkpoint_folders.find_last_checkpoint(output_dir) == str(output_dir / f"checkpoint-{published}")

    resumed = make_trainer(output_dir)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 12
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert sorted(os.listdir(output_dir)) == final_folders  # leftovers cleaned, rotation as uninterrupted
    assert_only_complete_checkpoints(output_dir)


def test_async_saves_write_the_same_checkpoints(tmp_path):
    """With async_save, each checkpoint is the state at its step, although training runs on during the write."""
    slow_io = HFCheckpointIO.save_checkpoint

    def slow_save(self, checkpoint, path, storage_options=None):
        time.sleep(0.05)  # training moves on meanwhile: the copy must not follow it
        slow_io(self, checkpoint, path, storage_options)

    sync = make_trainer(tmp_path / "sync")
    sync.train()
    HFCheckpointIO.save_checkpoint = slow_save
    try:
        background = make_trainer(tmp_path / "async", async_save=True)
        background.train()
    finally:
        HFCheckpointIO.save_checkpoint = slow_io
    assert sorted(os.listdir(tmp_path / "async")) == sorted(os.listdir(tmp_path / "sync"))
    for name in sorted(os.listdir(tmp_path / "sync")):
        a, b = tmp_path / "sync" / name, tmp_path / "async" / name
        assert set(os.listdir(a)) == set(os.listdir(b)) == COMPLETE
        for tensor_file in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            assert _same(hf_format.load_torch(a / tensor_file), hf_format.load_torch(b / tensor_file)), (name, tensor_file)
        assert _same(hf_format.load_model_state_dict(a), hf_format.load_model_state_dict(b))
        state_a, state_b = hf_format.read_trainer_state(a), hf_format.read_trainer_state(b)
        assert state_a.global_step == state_b.global_step and state_a.stateful_callbacks == state_b.stateful_callbacks
        assert [_no_times(e) for e in state_a.log_history] == [_no_times(e) for e in state_b.log_history]


def test_async_save_keeps_tied_weights_tied(tmp_path, tokenizer):
    """The copy keeps shared storage shared, so save_pretrained drops the tied duplicate as in a synchronous save."""
    from checkpoint_helpers import TokenDataset
    from tiny import tiny_llama_config
    from transformers import DataCollatorForSeq2Seq, LlamaForCausalLM

    files = {}
    for mode in (False, True):
        trainer = build("hl", lambda: LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=True)), tmp_path / str(mode),
                        trainer_kwargs=dict(train_dataset=TokenDataset(16, causal=True),
                                            data_collator=DataCollatorForSeq2Seq(tokenizer), async_save=mode),
                        per_device_train_batch_size=8, max_steps=2, save_strategy="steps", save_steps=1)
        trainer.train()
        files[mode] = hf_format.load_model_state_dict(tmp_path / str(mode) / "checkpoint-2")
    assert files[True].keys() == files[False].keys()
    assert "lm_head.weight" not in files[True]


def test_async_save_error_surfaces(tmp_path):
    original = HFCheckpointIO.save_checkpoint

    def broken(self, checkpoint, path, storage_options=None):
        raise OSError("disk full")

    HFCheckpointIO.save_checkpoint = broken
    try:
        trainer = make_trainer(tmp_path, async_save=True)
        with pytest.raises(hf_format.CheckpointSaveError, match="disk full") as raised:  # an OSError
            trainer.train()
        assert str(tmp_path / "checkpoint-1") in str(raised.value) and "Free space" in str(raised.value)
    finally:
        HFCheckpointIO.save_checkpoint = original
    assert not [n for n in os.listdir(tmp_path) if n.startswith("checkpoint-")]


def test_async_save_with_best_model_and_limit_one(tmp_path):
    accs = iter([0.5, 0.9, 0.6, 0.7])
    kwargs = dict(per_device_train_batch_size=8, num_train_epochs=4, eval_strategy="epoch", save_strategy="epoch",
                  metric_for_best_model="acc", load_best_model_at_end=True, save_total_limit=1)
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs=dict(
        train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1),
        compute_metrics=lambda p: {"acc": next(accs)}, async_save=True), **kwargs)
    trainer.train()
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("checkpoint")) == ["checkpoint-4"]
    best = hf_format.load_model_state_dict(tmp_path / "checkpoint-4")
    assert _same(best, dict(trainer.model.state_dict()))


def test_async_save_refuses_strategies_that_write_themselves(tmp_path):
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class OwnWriter(SingleDeviceStrategy):  # like FSDP/DeepSpeed: every rank writes its own files
        def save_checkpoint(self, checkpoint, filepath, storage_options=None):
            raise AssertionError("not reached")

    trainer = make_trainer(tmp_path, async_save=True, strategy=OwnWriter(device="cpu"))
    with pytest.raises(ValueError, match=r"`async_save=True` needs a strategy .* OwnWriter writes its own"):
        trainer.train()


def _no_times(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy arrays in rng states
        import numpy as np

        return np.array_equal(a, b)
    return a == b


# --------------------------------------------------------------------------- a real process, slow

SCRIPT = os.path.join(os.path.dirname(__file__), "kill_target.py")


@pytest.mark.slow
def test_external_kill_loop(tmp_path):
    """A separate interpreter trains (saving each step, a few MB per save), killed -9 at random times until done."""
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.path.dirname(__file__)])}
    output_dir = tmp_path / "run"
    for attempt in range(4):
        process = subprocess.Popen([sys.executable, SCRIPT, str(output_dir)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for the first save of this attempt, then kill somewhere in the saves that follow.
        before = set(os.listdir(output_dir)) if output_dir.exists() else set()
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            now = set(os.listdir(output_dir)) if output_dir.exists() else set()
            if now - before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_only_complete_checkpoints_any(output_dir)
    final = subprocess.run([sys.executable, SCRIPT, str(output_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    state = hf_format.read_trainer_state(checkpoint_folders.find_last_checkpoint(output_dir))
    assert state.global_step == state.max_steps
    assert not [n for n in os.listdir(output_dir) if n.startswith(".") or n == run_lock.LOCK_FILE]  # no leftovers, lock released
    assert_only_complete_checkpoints_any(output_dir)


def assert_only_complete_checkpoints_any(output_dir) -> None:
    expected = {"config.json", "model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json",
                "training_args.bin"}
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-"):
            assert set(os.listdir(output_dir / name)) == expected, name
