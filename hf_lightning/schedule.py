"""Pure scheduling decisions, counted in optimizer steps exactly as transformers.Trainer counts them.

Nothing here imports Lightning. Every function is a decision that the Lightning callbacks
call; tests check them with tables against transformers' own ``DefaultFlowCallback``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

__all__ = [
    "TrainPlan",
    "StepFlags",
    "plan_training",
    "group_size",
    "epoch_progress",
    "resume_position",
    "resolve_interval_steps",
    "step_end_flags",
    "epoch_end_flags",
]


@dataclass(frozen=True)
class TrainPlan:
    """The numbers ``Trainer.set_initial_training_values`` computes, for one rank."""

    micro_batches_per_epoch: int | None
    """Micro-batches one rank sees per epoch (``len(train_dataloader)`` in transformers); None if unsized."""
    updates_per_epoch: int
    """Optimizer steps per epoch; a short last accumulation group counts as a full step."""
    max_steps: int
    """Optimizer steps of the whole run."""
    num_train_epochs: int
    """Loop bound on epochs (``ceil`` of the requested epochs, or of ``max_steps / updates_per_epoch``)."""
    num_examples: int
    """Samples in the training set (as transformers' ``num_examples`` reports it)."""
    num_train_samples: float
    """Samples of the whole schedule, used for ``train_samples_per_second``."""
    total_train_batch_size: int
    """``per_device_train_batch_size * gradient_accumulation_steps * world_size``."""
    steps_in_epoch: int
    """Micro-batches per epoch used for the epoch float (``max_steps * GA`` when unsized)."""


def plan_training(
    *,
    max_steps: int,
    num_train_epochs: float,
    gradient_accumulation_steps: int,
    per_device_train_batch_size: int,
    world_size: int,
    micro_batches_per_epoch: int | None,
    num_examples: int | None,
) -> TrainPlan:
    """Mirror ``Trainer.set_initial_training_values`` (§4.1).

    Args:
        max_steps: ``args.max_steps`` (negative means "count epochs").
        num_train_epochs: ``args.num_train_epochs``, fractional values allowed.
        gradient_accumulation_steps: ``args.gradient_accumulation_steps``.
        per_device_train_batch_size: the per-device micro-batch size.
        world_size: number of data-parallel processes.
        micro_batches_per_epoch: micro-batches one rank sees per epoch, or None for an unsized dataset.
        num_examples: length of the training set, or None for an unsized dataset.
    """
    ga = gradient_accumulation_steps
    total_train_batch_size = per_device_train_batch_size * ga * world_size
    if micro_batches_per_epoch is not None and micro_batches_per_epoch > 0:
        updates_per_epoch = max(micro_batches_per_epoch // ga + int(micro_batches_per_epoch % ga > 0), 1)
        # transformers counts epochs only for a negative max_steps; max_steps=0 keeps 0 steps.
        total_steps = math.ceil(num_train_epochs * updates_per_epoch) if max_steps < 0 else max_steps
        if max_steps > 0:
            epochs = total_steps // updates_per_epoch + int(total_steps % updates_per_epoch > 0)
            num_train_samples: float = total_steps * total_train_batch_size
        else:
            epochs = math.ceil(num_train_epochs)
            num_train_samples = (num_examples or 0) * num_train_epochs
        return TrainPlan(
            micro_batches_per_epoch=micro_batches_per_epoch,
            updates_per_epoch=updates_per_epoch,
            max_steps=total_steps,
            num_train_epochs=epochs,
            num_examples=num_examples if num_examples is not None else micro_batches_per_epoch * per_device_train_batch_size,
            num_train_samples=num_train_samples,
            total_train_batch_size=total_train_batch_size,
            steps_in_epoch=micro_batches_per_epoch,
        )
    if max_steps > 0:
        return TrainPlan(
            micro_batches_per_epoch=None,
            updates_per_epoch=max_steps,
            max_steps=max_steps,
            num_train_epochs=sys.maxsize,
            num_examples=total_train_batch_size * max_steps,
            num_train_samples=max_steps * total_train_batch_size,
            total_train_batch_size=total_train_batch_size,
            steps_in_epoch=max_steps * ga,
        )
    raise ValueError(
        "`max_steps` must be set to a positive value when the training dataset has no length "
        f"(got max_steps={max_steps}); the number of optimizer steps is needed up front for the scheduler."
    )


def group_size(update_index: int, *, steps_in_epoch: int, gradient_accumulation_steps: int, updates_per_epoch: int) -> int:
    """Micro-batches in the ``update_index``-th optimizer step of an epoch (§4.2).

    Accumulation never crosses an epoch: the last group holds ``steps_in_epoch % GA`` (or GA) batches.
    """
    ga = gradient_accumulation_steps
    if update_index != updates_per_epoch - 1:
        return ga
    remainder = steps_in_epoch % ga
    return remainder if remainder else ga


def epoch_progress(epoch_index: int, micro_batches_done: int, steps_in_epoch: int) -> float:
    """``state.epoch`` after an optimizer step: ``epoch + (step + 1) / steps_in_epoch`` (§4.3)."""
    return epoch_index + micro_batches_done / steps_in_epoch


def resume_position(
    global_step: int, *, updates_per_epoch: int, gradient_accumulation_steps: int, ignore_data_skip: bool
) -> tuple[int, int]:
    """Where a resumed run starts: ``(epochs_trained, updates_to_skip_in_that_epoch)`` (§1.6).

    transformers skips ``(global_step % updates_per_epoch) * GA`` micro-batches, i.e. whole groups.
    """
    epochs_trained = global_step // updates_per_epoch
    updates_to_skip = 0 if ignore_data_skip else global_step % updates_per_epoch
    return epochs_trained, updates_to_skip


def resolve_interval_steps(value: float | int | None, max_steps: int, default: int = 500) -> float | int:
    """``TrainerState.compute_steps`` for one of logging/eval/save steps: ratios in [0, 1) become ``ceil``.

    Other values are kept as they are, type included: ``--logging_steps 1`` parses to ``1.0``, which
    TrainingArguments only turns into an int above 1, and trainer_state.json then says ``1.0`` as transformers'.
    """
    if value is None:
        return default
    if value < 1:
        return math.ceil(max_steps * value)
    return value


@dataclass
class StepFlags:
    """The flags ``DefaultFlowCallback`` sets on ``TrainerControl``."""

    log: bool = False
    evaluate: bool = False
    save: bool = False
    stop: bool = False


def step_end_flags(
    *,
    global_step: int,
    max_steps: int,
    logging_steps: int,
    eval_steps: int,
    save_steps: int,
    logging_strategy: str,
    eval_strategy: str,
    save_strategy: str,
    logging_first_step: bool,
    eval_delay: float,
) -> StepFlags:
    """``DefaultFlowCallback.on_step_end`` (§4.5), as a pure function of the step and the resolved steps."""
    flags = StepFlags()
    if global_step == 1 and logging_first_step:
        flags.log = True
    if logging_strategy == "steps" and global_step % logging_steps == 0:
        flags.log = True
    if eval_strategy == "steps" and global_step % eval_steps == 0 and eval_delay <= global_step:
        flags.evaluate = True
    if save_strategy == "steps" and save_steps > 0 and global_step % save_steps == 0:
        flags.save = True
    if global_step >= max_steps:
        flags.stop = True
        if eval_strategy == "steps" and global_step % eval_steps != 0 and eval_delay <= global_step:
            flags.evaluate = True
        if save_strategy == "steps":
            flags.save = True
    return flags


def epoch_end_flags(*, epoch: float, logging_strategy: str, eval_strategy: str, save_strategy: str, eval_delay: float) -> StepFlags:
    """``DefaultFlowCallback.on_epoch_end`` (§4.5)."""
    return StepFlags(
        log=logging_strategy == "epoch",
        evaluate=eval_strategy == "epoch" and eval_delay <= epoch,
        save=save_strategy == "epoch",
    )
