"""transformers' ``TrainerState`` bookkeeping: log entries, metric names, best-metric tracking.

Pure functions over ``transformers.TrainerState`` and plain dicts; no Lightning import.
The key order of every log entry follows transformers (§3), because ``log_history`` is compared
entry by entry against transformers.Trainer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from transformers import TrainerState
from transformers.trainer_utils import TrainerMemoryTracker, speed_metrics

__all__ = [
    "TrainerState",
    "strategy_name",
    "metric_name_for_best",
    "greater_is_better",
    "prefix_metrics",
    "train_log_entry",
    "train_summary",
    "append_log",
    "update_best_metric",
    "eval_speed_metrics",
    "MemoryTracker",
    "start_memory_tracker",
    "stop_memory_tracker",
]


def strategy_name(value: Any) -> str:
    """The plain string of a transformers strategy enum (``IntervalStrategy.STEPS`` -> ``"steps"``)."""
    return str(getattr(value, "value", value))


def metric_name_for_best(metric_for_best_model: str) -> str:
    """``"accuracy"`` -> ``"eval_accuracy"``; names already starting with ``eval_`` are kept (§7)."""
    return metric_for_best_model if metric_for_best_model.startswith("eval_") else f"eval_{metric_for_best_model}"


def greater_is_better(metric_for_best_model: str, greater_is_better: bool | None) -> bool:
    """transformers' default: a metric ending in ``loss`` is minimised, anything else maximised (§7)."""
    if greater_is_better is not None:
        return greater_is_better
    return not metric_for_best_model.endswith("loss")


def prefix_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Rename every key not starting with ``f"{prefix}_"`` to ``f"{prefix}_{key}"``, keeping order (§5.1).

    transformers renames by popping and re-inserting, so renamed keys move to the end; we do the same.
    """
    out = dict(metrics)
    for key in list(out.keys()):
        if not key.startswith(f"{prefix}_"):
            out[f"{prefix}_{key}"] = out.pop(key)
    return out


def train_log_entry(*, loss: float, grad_norm: float | None, learning_rate: float) -> dict[str, float]:
    """The training log dict before ``epoch``/``step`` are added: ``loss, grad_norm, learning_rate`` (§3.1)."""
    logs: dict[str, float] = {"loss": loss}
    if grad_norm is not None:
        logs["grad_norm"] = grad_norm
    logs["learning_rate"] = learning_rate
    return logs


def append_log(
    state: TrainerState,
    logs: dict[str, Any],
    *,
    num_input_tokens_seen: bool,
    start_time: float | None = None,
    initial_num_input_tokens_seen: int = 0,
) -> dict[str, Any]:
    """``Trainer.log``: add ``epoch`` (and token counts), append ``{**logs, "step"}`` to ``log_history``.

    Mutates and returns ``logs`` like transformers does (its callers rely on the added ``epoch``).
    """
    if state.epoch is not None:
        logs["epoch"] = state.epoch
    if num_input_tokens_seen:
        logs["num_input_tokens_seen"] = state.num_input_tokens_seen
        if start_time is not None:
            seen = state.num_input_tokens_seen - initial_num_input_tokens_seen
            logs.update(speed_metrics("train", start_time, num_tokens=seen))
    state.log_history.append({**logs, "step": state.global_step})
    return logs


def train_summary(
    *,
    start_time: float,
    num_train_samples: float,
    steps_this_call: int,
    max_steps: int,
    total_flos: float,
    train_loss: float,
) -> dict[str, float]:
    """The final train summary before ``epoch``/``step``: speed keys, ``total_flos``, ``train_loss`` (§3.4)."""
    metrics = speed_metrics(
        "train",
        start_time,
        num_samples=num_train_samples * steps_this_call / max(max_steps, 1),
        num_steps=steps_this_call,
    )
    metrics["total_flos"] = total_flos
    metrics["train_loss"] = train_loss
    return metrics


def eval_speed_metrics(prefix: str, start_time: float, *, num_samples: int, eval_batch_size: int, world_size: int) -> dict[str, float]:
    """``{prefix}_runtime``, ``_samples_per_second``, ``_steps_per_second`` as ``evaluate()`` computes them."""
    total_batch_size = eval_batch_size * world_size
    return speed_metrics(prefix, start_time, num_samples=num_samples, num_steps=math.ceil(num_samples / total_batch_size))


def update_best_metric(
    state: TrainerState,
    metrics: dict[str, float],
    *,
    metric_for_best_model: str | None,
    greater_is_better: bool | None,
    save_strategy: str,
) -> bool:
    """``Trainer._determine_best_metric``: update ``best_metric``/``best_global_step``; return "is new best".

    Raises a ``KeyError`` naming the available metrics when the metric is missing.
    """
    if metric_for_best_model is None:
        return False
    name = metric_name_for_best(metric_for_best_model)
    if name not in metrics:
        raise KeyError(
            f"`metric_for_best_model={metric_for_best_model!r}` looks for {name!r}, which is not among the evaluation "
            f"metrics {sorted(metrics)}. Return it from `compute_metrics` (or a `metrics=` torchmetric), or change "
            "`metric_for_best_model`."
        )
    value = metrics[name]
    higher = greater_is_better if greater_is_better is not None else not metric_for_best_model.endswith("loss")
    operator = np.greater if higher else np.less
    if state.best_metric is None:
        state.best_metric = float("-inf") if higher else float("inf")
    if operator(value, state.best_metric):
        state.best_metric = value
        if save_strategy in ("steps", "epoch", "best"):
            state.best_global_step = state.global_step
        return True
    return False


class MemoryTracker(TrainerMemoryTracker):
    """transformers' ``TrainerMemoryTracker``, also usable from outside transformers.Trainer's methods.

    transformers derives the stage (init/train/eval/test) from the name of the calling method two
    frames up, which only works inside ``transformers.Trainer``. Here the stage is the one named by
    ``begin``/``end``, or else the nearest calling method with a stage name (``train``, ``evaluate``,
    ``predict``, ...). The keys, their order and the init-keys-go-first rule stay transformers' own.
    """

    def __init__(self, skip_memory_metrics: bool) -> None:
        super().__init__(skip_memory_metrics)
        self._stage: str | None = None

    @classmethod
    def adopt(cls, tracker: TrainerMemoryTracker) -> MemoryTracker:
        """This tracker with the state of ``tracker`` (e.g. what transformers' ``__init__`` measured)."""
        adopted = cls.__new__(cls)
        adopted.__dict__.update(tracker.__dict__)
        adopted._stage = None
        return adopted

    def derive_stage(self) -> str:
        if self._stage is not None:
            return self._stage
        import inspect

        frame = inspect.currentframe()
        while frame is not None:
            if frame.f_code.co_name in self.stages:
                return self.stages[frame.f_code.co_name]
            frame = frame.f_back
        raise ValueError(f"the memory tracker was not called from one of {list(self.stages)}")

    def begin(self, stage: str) -> None:
        """Start measuring ``stage`` (ignored while another stage, e.g. train around an eval, runs)."""
        if self.skip_memory_metrics:
            return
        self._stage = stage
        try:
            self.start()
        finally:
            self._stage = None

    def end(self, stage: str, metrics: dict[str, Any] | None = None) -> None:
        """Stop ``stage`` and add its ``{stage}_mem_*`` keys (and the init ones, the first time) to ``metrics``."""
        if self.skip_memory_metrics:
            return
        if "init" not in self.cpu and self.cur_stage != "init":
            self.init_reported = True  # no facade __init__ was measured (HFModule on its own)
        self._stage = stage
        try:
            self.stop_and_update_metrics(metrics)
        finally:
            self._stage = None


def start_memory_tracker(tracker: Any, stage: str) -> None:
    """``tracker.begin(stage)`` for hf_lightning's tracker (transformers' own derives its stage itself)."""
    if isinstance(tracker, MemoryTracker) and getattr(tracker, "cur_stage", None) is None:
        tracker.begin(stage)


def stop_memory_tracker(tracker: Any, stage: str, metrics: dict[str, Any] | None = None) -> None:
    """``tracker.end(stage, metrics)`` for hf_lightning's tracker."""
    if isinstance(tracker, MemoryTracker):
        tracker.end(stage, metrics)
