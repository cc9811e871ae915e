"""SIGTERM and SIGINT: the step finishes, a checkpoint is saved, one line says so, and the exit is not 0.

In-process tests send the signal to this process from a callback (so it arrives in the middle of a
step); subprocess tests check the real exit codes (143, 130) and the printed line. The 2-process
(DDP) case is in ``test_hardening_distributed.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from hardening_helpers import tiny_trainer
from transformers import TrainerCallback

from hf_lightning import TrainingInterrupted, checkpoint_folders, hf_format, run_lock
from hf_lightning.callbacks.signals import SignalActions, signal_actions, stop_message


class SendSignal(TrainerCallback):
    """Send ``signals`` to this process at the beginning of optimizer step ``step`` (mid-step, like a scheduler would)."""

    def __init__(self, step: int, *signals: int) -> None:
        self.step, self.signals = step, signals
        self.steps_done = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            for signum in self.signals:
                os.kill(os.getpid(), signum)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_done = state.global_step


@pytest.mark.parametrize(
    "signum, jit, strategy, expected",
    [
        (0, True, "steps", SignalActions(stop=False, save=False)),
        (signal.SIGTERM, False, "steps", SignalActions(stop=True, save=True)),
        (signal.SIGTERM, False, "no", SignalActions(stop=True, save=False)),
        (signal.SIGTERM, True, "no", SignalActions(stop=True, save=True)),
        (signal.SIGINT, False, "epoch", SignalActions(stop=True, save=True)),
        (signal.SIGINT, False, "best", SignalActions(stop=True, save=True)),
    ],
)
def test_signal_actions_table(signum, jit, strategy, expected):
    assert signal_actions(signum, enable_jit_checkpoint=jit, save_strategy=strategy) == expected


def test_stop_message():
    assert stop_message(signal.SIGTERM, 7, "out/checkpoint-7", "out") == (
        "hf_lightning: SIGTERM received, training stopped after step 7; newest complete checkpoint: out/checkpoint-7."
    )
    assert stop_message(signal.SIGINT, 2, None, "out").endswith("no complete checkpoint in out.")
    error = TrainingInterrupted(signal.SIGTERM, step=7, checkpoint="out/checkpoint-7")
    assert error.code == 143 and isinstance(error, SystemExit) and "SIGTERM after optimizer step 7" in str(error)
    assert TrainingInterrupted(signal.SIGINT, step=1).code == 130


def test_sigterm_saves_stops_and_raises_then_resume_matches(tmp_path, capfd):
    out = tmp_path / "out"
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    sender = SendSignal(3, signal.SIGTERM)
    trainer = tiny_trainer(out, callbacks=[sender], max_steps=8, save_steps=100)
    with pytest.raises(TrainingInterrupted) as raised:
        trainer.train()
    error = raised.value
    assert (error.code, error.signum, error.step, error.checkpoint) == (143, signal.SIGTERM, 3, str(out / "checkpoint-3"))
    assert sender.steps_done == 3  # the step during which it arrived finished; no other step ran
    assert sorted(os.listdir(out / "checkpoint-3")) == ["model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json", "training_args.bin"]
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("hf_lightning:")]
    assert lines == [f"hf_lightning: SIGTERM received, training stopped after step 3; newest complete checkpoint: {out / 'checkpoint-3'}."]
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    assert not (out / run_lock.LOCK_FILE).exists()

    resumed = tiny_trainer(out, max_steps=8, save_steps=100)
    resumed.train(resume_from_checkpoint=True)
    reference = tiny_trainer(tmp_path / "reference", max_steps=8, save_steps=100)
    reference.train()
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_sigint_without_saving(tmp_path, capfd):
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted) as raised:
        tiny_trainer(out, callbacks=[SendSignal(2, signal.SIGINT)], save_strategy="no").train()
    assert raised.value.code == 130 and raised.value.step == 2 and raised.value.checkpoint is None
    assert not [n for n in os.listdir(out) if n.startswith("checkpoint-")]
    assert f"hf_lightning: SIGINT received, training stopped after step 2; no complete checkpoint in {out}." in capfd.readouterr().err


def test_enable_jit_checkpoint_saves_without_a_save_strategy(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted) as raised:
        tiny_trainer(out, callbacks=[SendSignal(2, signal.SIGTERM)], save_strategy="no", enable_jit_checkpoint=True).train()
    assert raised.value.checkpoint == str(out / "checkpoint-2")
    assert hf_format.read_trainer_state(out / "checkpoint-2").global_step == 2


def test_no_evaluation_after_the_signal(tmp_path):
    """The step's evaluation is skipped: within a grace period only the save matters."""
    from tiny import RegressionDataset

    evaluated = []

    class Evals(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            evaluated.append(state.global_step)

    with pytest.raises(TrainingInterrupted):
        tiny_trainer(
            tmp_path / "out", callbacks=[SendSignal(4, signal.SIGTERM), Evals()], max_steps=8, eval_strategy="steps", eval_steps=2,
            lightning=dict(eval_dataset=RegressionDataset(8, seed=1)),
        ).train()
    assert evaluated == [2]
    assert checkpoint_folders.find_last_checkpoint(tmp_path / "out") == str(tmp_path / "out" / "checkpoint-4")


def test_signal_in_the_last_step_still_ends_non_zero(tmp_path):
    out = tmp_path / "out"
    trainer = tiny_trainer(out, callbacks=[SendSignal(4, signal.SIGTERM)])
    with pytest.raises(TrainingInterrupted) as raised:
        trainer.train()
    assert raised.value.step == 4 and raised.value.checkpoint == str(out / "checkpoint-4")
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]


def test_second_sigint_stops_at_once(tmp_path):
    out = tmp_path / "out"
    sender = SendSignal(3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as raised:
        tiny_trainer(out, callbacks=[sender]).train()
    assert raised.value.immediate and raised.value.code == 130
    assert sender.steps_done == 2  # step 3 never finished
    assert checkpoint_folders.find_last_checkpoint(out) == str(out / "checkpoint-2")
    assert not [n for n in os.listdir(out) if n.startswith(".") or n == run_lock.LOCK_FILE]  # no leftovers, lock released


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from hardening_helpers import tiny_trainer
    from transformers import TrainerCallback
    from pathlib import Path

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.{name})

    tiny_trainer(Path({out!r}), callbacks=[Kill()], max_steps=50).train()
    print("train() returned", flush=True)
    """
)


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_exit_codes_of_a_real_process(tmp_path, name, code):
    out = tmp_path / "out"
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests, out=str(out), name=name)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "train() returned" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hf_lightning:")]
    assert lines == [f"hf_lightning: {name} received, training stopped after step 2; newest complete checkpoint: {out / 'checkpoint-2'}."], proc.stderr[-3000:]


def test_plain_lightning_trainer_handles_signals_too(tmp_path):
    """HFModule in a lightning.Trainer the user built gets the same handling (HFModule.configure_callbacks)."""
    import lightning.pytorch as pl
    from helpers import make_args
    from lightning.pytorch.callbacks import Callback
    from tiny import RegressionDataset, TinyReg

    import hf_lightning

    class Kill(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    args = make_args(tmp_path / "out", per_device_train_batch_size=8, max_steps=6, save_strategy="no", enable_jit_checkpoint=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, logger=False, callbacks=[Kill()])
    with pytest.raises(TrainingInterrupted) as raised:
        trainer.fit(hf_lightning.HFModule(TinyReg(), args), datamodule=hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(32)))
    assert raised.value.code == 143 and raised.value.checkpoint == str(tmp_path / "out" / "checkpoint-2")


def test_train_twice_keeps_one_signal_decider(tmp_path):
    from hf_lightning.callbacks.signals import _SignalDecisions

    trainer = tiny_trainer(tmp_path / "out", max_steps=2)
    trainer.train()
    trainer.train()
    assert sum(isinstance(cb, _SignalDecisions) for cb in trainer.callback_handler.callbacks) == 1
    assert isinstance(trainer.callback_handler.callbacks[-1], _SignalDecisions)
