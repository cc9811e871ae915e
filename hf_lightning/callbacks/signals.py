"""``HFSignalHandler``: SIGTERM and SIGINT stop training cleanly, save, say so, and never exit 0.

When either signal arrives during ``fit``, the current optimizer step finishes; the run then
stops (no further evaluation), saves a checkpoint when ``enable_jit_checkpoint`` is set
(transformers' save-on-SIGTERM) or ``save_strategy`` is not ``"no"``, prints one line naming the
signal and the newest complete checkpoint, and raises :class:`TrainingInterrupted`: a
``SystemExit`` whose code is ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), the code a shell
reports for a process the signal ended. A second SIGINT stops at once, without a save.

Under several processes every rank must stop after the same step, and a signal may reach only
some ranks. Each rank's flag goes into an asynchronous all-reduce (over a CPU/gloo group, so no
device synchronisation) started after step ``k`` and read after step ``k + 1``, when it has long
completed: every rank reads the same value after the same step. No blocking synchronisation is
added per step. At the end of training one last (blocking) all-reduce covers a signal that came
after the last read.

Lightning's own SIGTERM handling (its ``SIGTERMException`` is a ``SystemExit`` with no code, so
the process exits 0, and its handler broadcasts inside the signal handler) is replaced during
training; its handlers come back when training ends.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from typing_extensions import override

from .. import checkpoint_folders, distributed
from ..state import strategy_name

__all__ = ["HFSignalHandler", "TrainingInterrupted", "SignalActions", "signal_actions", "stop_message", "HANDLED_SIGNALS"]

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):
    """Training stopped because of a signal. Unhandled, the process exits with ``code`` = 128 + signal.

    Attributes: ``signum``, ``step`` (the last optimizer step done), ``checkpoint`` (the newest
    complete checkpoint, or None) and ``immediate`` (a second SIGINT: stopped without a save).
    """

    def __init__(self, signum: int, *, step: int | None = None, checkpoint: str | None = None, immediate: bool = False) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint
        self.immediate = immediate

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.immediate:
            return f"Training stopped at once by a second {name} (exit code {self.code}); no checkpoint was saved for it."
        where = f"the newest complete checkpoint is {self.checkpoint}" if self.checkpoint else "there is no complete checkpoint"
        return (
            f"Training stopped by {name} after optimizer step {self.step}; {where} (exit code {self.code}). "
            "Resume with `train(resume_from_checkpoint=True)` or `fit(ckpt_path=\"last\")`."
        )

    def __reduce__(self) -> Any:
        return (_rebuild_interrupted, (self.signum, self.step, self.checkpoint, self.immediate))


def _rebuild_interrupted(signum: int, step: int | None, checkpoint: str | None, immediate: bool) -> TrainingInterrupted:
    return TrainingInterrupted(signum, step=step, checkpoint=checkpoint, immediate=immediate)


@dataclasses.dataclass(frozen=True)
class SignalActions:
    """What to do after the optimizer step during which a signal arrived."""

    stop: bool
    save: bool


def signal_actions(signum: int | None, *, enable_jit_checkpoint: bool, save_strategy: str) -> SignalActions:
    """Pure decision: a signal stops the run; it saves when ``enable_jit_checkpoint`` or ``save_strategy != "no"``."""
    if not signum:
        return SignalActions(stop=False, save=False)
    return SignalActions(stop=True, save=bool(enable_jit_checkpoint) or strategy_name(save_strategy) != "no")


def stop_message(signum: int, step: int, checkpoint: str | None, output_dir: str) -> str:
    """The one line printed when a signal stopped training."""
    name = signal.Signals(signum).name
    newest = f"newest complete checkpoint: {checkpoint}" if checkpoint else f"no complete checkpoint in {output_dir}"
    return f"hf_lightning: {name} received, training stopped after step {step}; {newest}."


class _Agreement:
    """Every rank's latest signal, max-reduced asynchronously one step behind (see the module docstring)."""

    def __init__(self) -> None:
        self.group: Any = None
        self._work: Any = None
        self._buffer: torch.Tensor | None = None

    def start(self, strategy: Any) -> None:
        if distributed.is_distributed(strategy):
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo")  # host tensors: reading the result never waits on a device

    def poll(self, local: int) -> int:
        """The largest signal any rank had at the previous poll (0: none); shares ``local`` for the next one."""
        if self.group is None:
            return local
        import torch.distributed as dist

        agreed = self._collect()
        self._buffer = torch.tensor([local], dtype=torch.int32)
        self._work = dist.all_reduce(self._buffer, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def final(self, local: int) -> int:
        """A blocking agreement at the end of training, also over signals that came after the last poll."""
        if self.group is None:
            return local
        import torch.distributed as dist

        agreed = self._collect()
        buffer = torch.tensor([max(local, agreed)], dtype=torch.int32)
        dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=self.group)
        return int(buffer[0])

    def _collect(self) -> int:
        work, self._work = self._work, None
        if work is None or self._buffer is None:
            return 0
        work.wait()  # started one step ago: already complete
        return int(self._buffer[0])

    def close(self) -> None:
        if self.group is None:
            return
        try:
            self._collect()
        finally:
            import torch.distributed as dist

            group, self.group = self.group, None
            try:
                dist.destroy_process_group(group)
            except Exception:  # noqa: BLE001 - the job is ending; nothing depends on this group any more
                pass


class _SignalDecisions(TrainerCallback):
    """The transformers side: after each optimizer step, turn an agreed signal into stop/save decisions.

    It sits last in the flow's callback list, so its decisions are final for the step.
    """

    def __init__(self, handler: HFSignalHandler) -> None:
        self.handler = handler
        self.last_saved_step: int | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if self.handler.poll():
            actions = self.handler.actions
            control.should_training_stop = True
            control.should_evaluate = False  # stop within the grace period: no evaluation after the signal
            control.should_save = control.should_save or actions.save
        return control

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if self.handler.stopping:
            control.should_evaluate = False
            if self.last_saved_step == state.global_step:
                control.should_save = False  # saved at this step already
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        self.last_saved_step = state.global_step
        return control


class HFSignalHandler(Callback):
    """Handle SIGTERM and SIGINT during ``fit`` (see the module docstring).

    Args:
        args: the run's TrainingArguments (``enable_jit_checkpoint``, ``save_strategy``, ``output_dir``).
    """

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self.decisions = _SignalDecisions(self)
        self.received = 0
        """The first signal this process received during the current fit (0: none)."""
        self.agreed = 0
        """The signal every rank agreed to stop on (0: none)."""
        self._agreement = _Agreement()
        self._previous: dict[int, Any] = {}
        self._flow: Any = None

    @property
    def state_key(self) -> str:
        return "HFSignalHandler"

    @property
    def stopping(self) -> bool:
        return bool(self.agreed)

    @property
    def actions(self) -> SignalActions:
        return signal_actions(self.agreed, enable_jit_checkpoint=bool(getattr(self.args, "enable_jit_checkpoint", False)), save_strategy=self.args.save_strategy)

    def poll(self) -> bool:
        """Called after every optimizer step on every rank: has a signal been agreed on?"""
        if not self.agreed:
            self.agreed = self._agreement.poll(self.received)
        return bool(self.agreed)

    # ----------------------------------------------------------------------------- lifecycle

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from .flow import HFFlowCallback

        if stage != "fit":
            return
        self._flow = next((cb for cb in trainer.callbacks if isinstance(cb, HFFlowCallback)), None)
        if self._flow is not None:
            # last in the list, so its decisions are final; a facade's handler outlives its lightning.Trainer: no stale ones
            callbacks = self._flow.handler.callbacks
            callbacks[:] = [cb for cb in callbacks if not isinstance(cb, _SignalDecisions)] + [self.decisions]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = self.agreed = 0
        self.decisions.last_saved_step = None
        self._agreement.start(trainer.strategy)
        self._install()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.agreed:  # the flow stopped the loop after this step's log and save: end the run here
            self._stop(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training ran to its end; a signal that came meanwhile still makes the run end non-zero.
        self.agreed = self.agreed or self._agreement.final(self.received)
        self._agreement.close()
        self._restore()
        if self.agreed:
            self._stop(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._agreement.close()
        self._restore()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    # --------------------------------------------------------------------------- internals

    def _stop(self, trainer: pl.Trainer) -> None:
        checkpointer = getattr(self._flow, "checkpointer", None)
        if checkpointer is not None:
            checkpointer.wait()  # an asynchronous save is published before we name the newest checkpoint
        newest = checkpoint_folders.find_last_checkpoint(self.args.output_dir)
        step = trainer.global_step
        if trainer.is_global_zero:
            print(stop_message(self.agreed, step, newest, str(self.args.output_dir)), file=sys.stderr, flush=True)
        self._agreement.close()
        self._restore()
        raise TrainingInterrupted(self.agreed, step=step, checkpoint=newest)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            self._restore()
            raise TrainingInterrupted(signum, immediate=True)
        if not self.received:
            self.received = int(signum)
            log.info("%s received: training stops after the current optimizer step.", signal.Signals(signum).name)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("Training runs outside the main thread: SIGTERM/SIGINT are not handled (a checkpoint is not saved on them).")
            return
        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
