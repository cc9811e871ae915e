"""transformers.Trainer's private methods that subclasses override, and what hf_lightning does with each override.

transformers' ``_inner_training_loop`` calls private methods that tutorials and libraries override (TRL's GRPO and
RLOO trainers override ``_prepare_inputs``). Lightning runs hf_lightning's loop, so each of them is either

- **routed**: hf_lightning calls the override where transformers calls the method (``ROUTED``), or
- **refused**: it has no place in Lightning's loop, and a subclass that overrides it gets an error before training
  starts, naming the method and what to override instead (``REFUSED``), rather than an override that never runs.

Pure: the decisions read classes and flags only, and are tested with tables.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

# The class itself, taken at import: a harness that later rebinds `transformers.Trainer` (to run transformers' own
# tests on hf_lightning) must not make transformers' methods look like a user's.
from transformers.trainer import Trainer as TransformersTrainer

__all__ = ["ROUTED", "REFUSED", "Refusal", "TransformersTrainer", "user_override", "refused_overrides", "check_overrides"]

ROUTED: dict[str, str] = {
    "_prepare_inputs": "called on each micro-batch before `compute_loss` (training_step) and on each evaluation batch (prediction_step)",
    "_prepare_input": "through transformers' `_prepare_inputs`, which calls it",
    "_get_num_items_in_batch": "called on each optimizer step's micro-batches and on each evaluation batch with labels",
    "_clip_grad_norm": "called before each optimizer step when `max_grad_norm > 0`; its return value is the logged `grad_norm`",
    "_get_grad_norm": "called before each optimizer step with `_clip_grad_norm`'s result (None without clipping); its return value is the logged `grad_norm`",
    "_get_learning_rate": "called after each optimizer step; its return value is the logged `learning_rate`",
    "_track_num_input_tokens": "called on each micro-batch (it returns at once unless `include_num_input_tokens_seen` counts), instead of hf_lightning's own count",
    "_maybe_log_save_evaluate": "called after each optimizer step and at each epoch end with transformers' arguments (`tr_loss` is the run's loss sum, reset in place by a copied body; `_globalstep_last_logged`/`_total_loss_scalar` are the run's counters); hf_lightning's own, reached through `super()`, logs, evaluates and saves",
    "_save": "called through `save_model` for the model files of every checkpoint and of `save_model()`",
    "_save_checkpoint": "called for every checkpoint the run saves; hf_lightning's own (reached through `super()`) writes the folder",
    "_load_from_checkpoint": "called on resume to load the weights, while Lightning restores the checkpoint (hf_lightning's own, reached through `super()`, loads them as transformers does)",
    "_load_best_model": "called at the end of training with `load_best_model_at_end`, after the summary log, on every rank (hf_lightning's own, reached through `super()`, loads the best checkpoint's weights)",
    "_load_rng_state": "called on resume where transformers calls it: after the skipped batches of the resumed epoch, or at its start (hf_lightning's own, reached through `super()`, sets this rank's generators from the checkpoint)",
    "_load_scaler": "called when a resumed run starts, right after `_load_optimizer_and_scheduler` (Lightning has restored the scaler; hf_lightning's own has nothing left to load)",
    "_load_callback_state": "called on resume right after the TrainerState is read (hf_lightning's own, reached through `super()`, rebuilds the stateful TrainerCallbacks)",
    "_load_optimizer_and_scheduler": "called when a resumed run starts, after Lightning restored `optimizer.pt`/`scheduler.pt` (hf_lightning's own, reached through `super()`, has nothing left to load), before `on_train_begin`",
}
"""Private methods whose override hf_lightning calls where transformers.Trainer calls it."""

When = Literal["always", "resume", "load_best"]


@dataclasses.dataclass(frozen=True)
class Refusal:
    when: When
    """When the override would have run: in any run (saves can come from a TrainerCallback too), on resume, or with
    ``load_best_model_at_end``."""
    instead: str
    """What to override or use instead, for the error message."""


_LOOP = "Lightning runs the training loop"
REFUSED: dict[str, Refusal] = {
    "_inner_training_loop": Refusal("always", f"{_LOOP}: override `training_step`/`compute_loss`, or add a Lightning Callback"),
    "_prepare_for_training": Refusal("always", f"{_LOOP}: override `create_optimizer`/`create_scheduler`, or use a TrainerCallback's `on_train_begin`"),
    "_init_training_state": Refusal("always", f"{_LOOP}: use a TrainerCallback's `on_train_begin`"),
    "_run_epoch": Refusal("always", f"{_LOOP}: override `training_step`, or use a TrainerCallback's `on_epoch_begin`/`on_epoch_end`"),
    "_finalize_training": Refusal("always", f"{_LOOP}: use a TrainerCallback's `on_train_end`"),
    "get_batch_samples": Refusal("always", f"{_LOOP} and draws the micro-batches: override `_get_num_items_in_batch` for the token count, or `training_step`"),
    "set_initial_training_values": Refusal("always", f"{_LOOP} and derives the schedule from TrainingArguments: set `max_steps`/`num_train_epochs`"),
    "num_examples": Refusal("always", f"{_LOOP} and counts the samples from the dataloader: give the dataset a `__len__`"),
    "_wrap_model": Refusal("always", "Lightning's strategy wraps the model: pass `strategy=` (lightning_kwargs)"),
    "_build_accelerator_args": Refusal("always", "Lightning's strategy and precision plugin replace accelerate's: pass `strategy=`/`plugins=` (lightning_kwargs)"),
    "get_total_train_batch_size": Refusal("always", f"{_LOOP} and derives the batch size from TrainingArguments: set `per_device_train_batch_size`/`gradient_accumulation_steps`"),
    "get_tp_size": Refusal("always", "hf_lightning has no tensor parallelism"),
    "get_sp_size": Refusal("always", "hf_lightning has no sequence parallelism"),
    "get_cp_size": Refusal("always", "hf_lightning has no context parallelism"),
    "_prepare_context_parallel_inputs": Refusal("always", "hf_lightning has no context parallelism"),
    "store_flos": Refusal("always", "hf_lightning counts `total_flos` itself: override `floating_point_ops`"),
    "_issue_warnings_after_load": Refusal("resume", "hf_lightning reports missing and unexpected keys itself"),
    "_save_optimizer_and_scheduler": Refusal("always", "hf_lightning writes `optimizer.pt`/`scheduler.pt` atomically: override `_save_checkpoint` or `save_model`"),
    "_save_scaler": Refusal("always", "hf_lightning writes `scaler.pt` atomically: override `_save_checkpoint` or `save_model`"),
    "_save_rng_state": Refusal("always", "hf_lightning writes the `rng_state*.pth` files atomically: override `_save_checkpoint` or `save_model`"),
    "_get_output_dir": Refusal("always", "checkpoints go to `args.output_dir` (per trial in hyperparameter_search): set `output_dir`"),
}
"""Private methods with no place in Lightning's loop: an override is an error (``when`` it would have run)."""


def _is_framework_class(klass: type) -> bool:
    module = getattr(klass, "__module__", "") or ""
    return klass is TransformersTrainer or module == "hf_lightning" or module.startswith("hf_lightning.")


def user_override(cls: type, name: str) -> bool:
    """``cls`` gets ``name`` from a class other than transformers.Trainer and hf_lightning's own."""
    # By hand: lightning_utilities' is_overridden compares with one parent class, and hf_lightning's classes can sit
    # anywhere in the MRO (on_lightning puts hf_lightning.Trainer under TRL's trainers).
    for klass in cls.__mro__:
        if name in vars(klass):
            return not _is_framework_class(klass)
    return False


def refused_overrides(cls: type, *, resuming: bool, load_best: bool) -> list[str]:
    """One message per refused method that ``cls`` overrides and this run would have called.

    Args:
        cls: the trainer class (a transformers.Trainer subclass).
        resuming: the run resumes from a checkpoint.
        load_best: ``load_best_model_at_end`` is on.
    """
    applies = {"always": True, "resume": resuming, "load_best": load_best}
    problems = []
    for name, refusal in REFUSED.items():
        if applies[refusal.when] and user_override(cls, name):
            owner = next(klass for klass in cls.__mro__ if name in vars(klass))
            problems.append(f"`{owner.__name__}.{name}` overrides transformers.Trainer.{name}, which hf_lightning never calls: {refusal.instead}.")
    return problems


def check_overrides(cls: type, *, resuming: bool, load_best: bool) -> None:
    """Raise ``TypeError`` listing every refused override of ``cls`` that this run would have called."""
    problems = refused_overrides(cls, resuming=resuming, load_best=load_best)
    if problems:
        raise TypeError("\n".join(problems))
