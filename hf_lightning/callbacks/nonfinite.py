"""``NonFiniteGuard``: a training loss or gradient norm that turns NaN/Inf is said, at the logging step.

The check reads only what the training log already holds (``loss``, ``grad_norm``), so it adds no
host synchronisation: the values were brought to the host for the log. transformers' default
``logging_nan_inf_filter=True`` replaces a non-finite step loss by the running mean, which reads
``0.0`` once the weights are NaN; the guard then says so, because the gradient norm is NaN too.

With ``action="stop"`` the run stops at that logging step, before a checkpoint with non-finite
weights is written: the step's save and evaluation (and the epoch-end ones) are cancelled. It
works on every path (facade, ``build_trainer``, CLI) because hf_lightning fires transformers'
callback events in transformers' order (log, then evaluate, then save). The logged values are
the same on every rank, so every rank decides the same.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["NonFiniteGuard", "nonfinite_values", "nonfinite_message", "NONFINITE_ACTIONS"]

log = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("warn", "stop")
_WATCHED = ("loss", "grad_norm")


def nonfinite_values(logs: Mapping[str, Any]) -> dict[str, float]:
    """The training-log values that are NaN or infinite (``loss``, ``grad_norm``), in log order."""
    found = {}
    for key in _WATCHED:
        value = logs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            found[key] = float(value)
    return found


def nonfinite_message(step: int, logs: Mapping[str, Any], found: Mapping[str, float], *, nan_inf_filter: bool, stopping: bool) -> str:
    """The warning for a logging step with non-finite values."""
    listed = ", ".join(f"{key}={value}" for key, value in found.items())
    text = f"Training went non-finite at step {step}: {listed}."
    loss = logs.get("loss")
    if "loss" not in found and isinstance(loss, (int, float)) and nan_inf_filter:
        text += (
            f" The logged loss ({loss}) leaves out the non-finite step losses (`logging_nan_inf_filter=True` replaces "
            "them by the running mean), so it is not the model's loss: the weights are probably non-finite too."
        )
    if stopping:
        text += " Stopping here (`on_nonfinite='stop'`): this step's evaluation and checkpoint are skipped."
    else:
        text += (
            " Checkpoints written from now on may hold non-finite weights; lower the learning rate, check the data, or "
            "pass `on_nonfinite='stop'` to stop at the first such logging step."
        )
    return text


class NonFiniteGuard(TrainerCallback):
    """Warn (or stop) when the training log has a non-finite ``loss`` or ``grad_norm``.

    Args:
        action: ``"warn"`` (default) logs a warning naming the step; ``"stop"`` also ends training
            there, cancelling that step's (and the epoch end's) evaluation and save.
    """

    def __init__(self, action: Literal["warn", "stop"] = "warn") -> None:
        if action not in NONFINITE_ACTIONS:
            raise ValueError(f"`on_nonfinite={action!r}` is not valid; use one of {list(NONFINITE_ACTIONS)}.")
        self.action = action
        self.tripped_at: int | None = None
        """The first logging step with non-finite values (None: none yet)."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.tripped_at = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, Any] | None = None, **kwargs: Any) -> TrainerControl:
        found = nonfinite_values(logs or {})
        if not found or "train_loss" in (logs or {}):  # the train summary repeats what was already said
            return control
        stopping = self.action == "stop"
        if state.is_world_process_zero:
            log.warning(nonfinite_message(state.global_step, logs or {}, found, nan_inf_filter=bool(args.logging_nan_inf_filter), stopping=stopping))
        if self.tripped_at is None:
            self.tripped_at = state.global_step
        if stopping:
            self._cancel(control)
        return control

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        if self.action == "stop" and self.tripped_at is not None:
            self._cancel(control)
        return control

    @staticmethod
    def _cancel(control: TrainerControl) -> None:
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
