"""The drop-in ``Trainer`` facade.

``Trainer`` composes ``HFModule`` + ``HFDataModule`` + ``build_trainer`` behind transformers.Trainer's
constructor and methods; it has no loop of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import TrainingArguments
from transformers.trainer_utils import PredictionOutput, TrainOutput

from . import hf_format
from .arguments import validate_arguments
from .builder import build_trainer, lightning_info_muted, make_loggers
from .callbacks.checkpoint import export_model
from .callbacks.flow import HFFlowCallback
from .data import HFDataModule
from .module import HFModule
from .state import MemoryTracker

__all__ = ["build_trainer", "Trainer", "make_loggers"]

log = logging.getLogger(__name__)


def _find(trainer: pl.Trainer, cls: type) -> Any:
    for callback in trainer.callbacks:
        if isinstance(callback, cls):
            return callback
    raise RuntimeError(f"{cls.__name__} is missing from the Lightning trainer's callbacks.")


class Trainer:
    """transformers.Trainer's interface, running on ``lightning.Trainer``.

    Args:
        model: the model to train (a ``PreTrainedModel`` or an ``nn.Module`` returning a loss).
        args: TrainingArguments; default ``TrainingArguments(output_dir="tmp_trainer")`` like transformers.
        data_collator: the collator; default ``DataCollatorWithPadding`` with a tokenizer, else ``default_data_collator``.
        train_dataset: training data (``datasets.Dataset`` or torch dataset).
        eval_dataset: evaluation data, or a dict of named datasets.
        processing_class: the tokenizer/processor (saved with checkpoints).
        compute_loss_func: replaces the model's loss: ``(outputs, labels, num_items_in_batch) -> loss``.
        compute_metrics: ``EvalPrediction -> dict`` of metrics.
        callbacks: transformers ``TrainerCallback``s (and/or Lightning ``Callback``s).
        optimizers: ``(optimizer, scheduler)`` to use instead of the ones built from ``args``.
        preprocess_logits_for_metrics: ``(logits, labels) -> logits`` applied per eval batch.
        optimizer_cls_and_kwargs: ``(optimizer class, kwargs)`` to use instead of ``args.optim``.
        metrics: torchmetrics ``Metric``/``MetricCollection``/dict updated per eval batch, logged as ``eval_<name>``.
        lightning_kwargs: ``lightning.Trainer`` keyword arguments (strategy, devices, accelerator, plugins, enable_progress_bar, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None = None,
        metrics: Any = None,
        **lightning_kwargs: Any,
    ) -> None:
        if "model_init" in lightning_kwargs or "tokenizer" in lightning_kwargs:
            bad = "model_init" if "model_init" in lightning_kwargs else "tokenizer"
            hint = "pass a built `model`" if bad == "model_init" else "use `processing_class=` (as in transformers 5)"
            raise TypeError(f"hf_lightning.Trainer does not take `{bad}`: {hint}.")
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        if model is None:
            raise RuntimeError("`Trainer` requires a `model`.")
        validate_arguments(
            args,
            has_train_dataset=train_dataset is not None,
            train_dataset_has_length=_has_length(train_dataset),
            has_eval_dataset=eval_dataset is not None,
            compute_metrics=compute_metrics,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        )
        self.args = args
        self._memory = MemoryTracker(args.skip_memory_metrics)
        self._memory.begin("init")
        self.module = HFModule(
            model,
            args,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            compute_loss_func=compute_loss_func,
            processing_class=processing_class,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            metrics=metrics,
        )
        self.datamodule = HFDataModule(
            args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            processing_class=processing_class,
        )
        self.callbacks = list(callbacks or [])
        self._lightning_kwargs = dict(lightning_kwargs)
        self._trained = False
        self._state = None
        self.lightning_trainer = self._build()
        if args.should_save:
            os.makedirs(args.output_dir, exist_ok=True)
        self._memory.end("init")

    def _build(self) -> pl.Trainer:
        kwargs = dict(self._lightning_kwargs)
        user_callbacks = list(kwargs.pop("callbacks", None) or [])
        kwargs.setdefault("enable_model_summary", False)  # transformers prints no model table
        with lightning_info_muted():
            trainer = build_trainer(self.args, callbacks=[*self.callbacks, *user_callbacks], hf_state=self._state, **kwargs)
        first_build = not hasattr(self, "flow")
        self.flow: HFFlowCallback = _find(trainer, HFFlowCallback)
        self.flow.memory = self._memory
        self.flow.init_end(self.module.model, self.module.processing_class, fire=first_build)
        return trainer

    # -------------------------------------------------------------------------- properties

    @property
    def model(self) -> torch.nn.Module:
        return self.module.model

    @property
    def state(self) -> Any:
        return self.flow.state

    @property
    def control(self) -> Any:
        return self.flow.control

    @property
    def train_dataset(self) -> Any:
        return self.datamodule.train_dataset

    @property
    def eval_dataset(self) -> Any:
        return self.datamodule.eval_dataset

    @property
    def processing_class(self) -> Any:
        return self.module.processing_class

    @property
    def data_collator(self) -> Any:
        return self.datamodule.data_collator

    @property
    def callback_handler(self) -> Any:
        return self.flow.handler

    # transformers' helpers for scripts (run_glue & co): `***** train metrics *****`, `{split}_results.json`, ...
    from transformers.trainer_pt_utils import get_num_trainable_parameters, log_metrics, metrics_format, save_metrics

    def add_callback(self, callback: Any) -> None:
        """Add a transformers TrainerCallback (instance or class) after the existing ones."""
        self.flow.add_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        """Remove a TrainerCallback (instance or class) and return it, like ``transformers.Trainer.pop_callback``."""
        return self.flow.handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        """Remove a TrainerCallback (instance or class), like ``transformers.Trainer.remove_callback``."""
        self.flow.handler.remove_callback(callback)

    def is_world_process_zero(self) -> bool:
        return self.lightning_trainer.is_global_zero

    # ------------------------------------------------------------------------------ train

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Train on ``train_dataset``; ``resume_from_checkpoint`` is a ``checkpoint-N`` folder or True for the last one."""
        if kwargs:
            raise TypeError(f"train() got unexpected arguments {sorted(kwargs)}.")
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:
            resume_from_checkpoint = hf_format.find_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if resume_from_checkpoint is not None and not os.path.isdir(resume_from_checkpoint):
            raise hf_format.CheckpointError(f"{resume_from_checkpoint}: checkpoint folder not found.")
        if self._trained:
            self._state = None
            self.lightning_trainer = self._build()
        self._trained = True
        with lightning_info_muted():
            self.lightning_trainer.fit(self.module, datamodule=self.datamodule, ckpt_path=resume_from_checkpoint)
        output = self.flow.last_train_output
        if output is None:
            raise RuntimeError("Training ended without a summary (was it interrupted?).")
        return output

    # --------------------------------------------------------------------------- evaluate

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate and log like transformers: metrics prefixed ``metric_key_prefix``, with ``epoch``."""
        dataset = eval_dataset if eval_dataset is not None else self.datamodule.eval_dataset
        if dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset.")
        self._prepare_for_eval()
        previous = self.datamodule.eval_dataset
        self.datamodule.eval_dataset = dataset
        self.module.eval_prefix, self.module.eval_ignore_keys = metric_key_prefix, ignore_keys
        self._memory.begin("eval")
        try:
            with lightning_info_muted():
                self.lightning_trainer.validate(self.module, datamodule=self.datamodule, verbose=False)
        finally:
            self.datamodule.eval_dataset = previous
            self.module.eval_prefix, self.module.eval_ignore_keys = "eval", None
        metrics = dict(self.flow.last_eval_metrics)
        self._memory.end("eval", metrics)  # after the log, like transformers: returned, not logged
        return metrics

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test") -> PredictionOutput:
        """Predictions, labels and ``test_*`` metrics for ``test_dataset`` (not logged, like transformers)."""
        self._prepare_for_eval()
        self.datamodule.test_dataset = test_dataset
        self.module.test_prefix, self.module.eval_ignore_keys = metric_key_prefix, ignore_keys
        self._memory.begin("test")
        try:
            with lightning_info_muted():
                self.lightning_trainer.test(self.module, datamodule=self.datamodule, verbose=False)
        finally:
            self.module.eval_ignore_keys = None
        _, result = self.flow.last_predictions[0]
        self._memory.end("test", result.metrics)
        return PredictionOutput(predictions=result.predictions, label_ids=result.label_ids, metrics=result.metrics)

    def _prepare_for_eval(self) -> None:
        # transformers prepares the model in the first evaluation_loop run before any train() and from
        # then on reports `{prefix}_model_preparation_time` in every evaluate()/predict() of that Trainer.
        if not self._trained and self.module.model_preparation_time is None:
            self.module.model_preparation_time = 0.0

    # ------------------------------------------------------------------------------- save

    def save_model(self, output_dir: str | None = None) -> None:
        """Weights + config, tokenizer and ``training_args.bin``, loadable with ``from_pretrained``."""
        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        trainer = self.lightning_trainer if self._trained else None
        export_model(trainer, self.module, output_dir)

    def save_state(self) -> None:
        """``trainer_state.json`` in ``output_dir``, like transformers' ``save_state``."""
        if self.lightning_trainer.is_global_zero:
            os.makedirs(self.args.output_dir, exist_ok=True)
            hf_format.write_trainer_state(self.flow.snapshot_state(), self.args.output_dir)


def _has_length(dataset: Any) -> bool | None:
    if dataset is None:
        return None
    try:
        len(dataset)
        return True
    except TypeError:
        return False
