"""``build_trainer`` and the drop-in ``Trainer`` facade.

``build_trainer(args)`` is a ``lightning.Trainer`` configured from ``TrainingArguments``: limits,
precision, seed, loggers from ``report_to``, the transformers checkpoint format, and the flow and
checkpoint callbacks. ``Trainer`` composes ``HFModule`` + ``HFDataModule`` + ``build_trainer`` behind
transformers.Trainer's constructor and methods; it has no loop of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PredictionOutput, TrainOutput, enable_full_determinism, set_seed

from . import distributed, hf_format
from .arguments import LIGHTNING_LOGGERS, precision_for, process_log_level, resolve_report_to, trainer_limits, validate_arguments
from .callbacks.checkpoint import HFCheckpoint, export_model, install_checkpoint_connector
from .callbacks.flow import HFFlowCallback
from .callbacks.progress import HFProgressBar
from .checkpoint_io import HFCheckpointIO
from .data import HFDataModule
from .module import HFModule
from .state import MemoryTracker

__all__ = ["build_trainer", "Trainer", "make_loggers"]

log = logging.getLogger(__name__)


def make_loggers(args: TrainingArguments) -> tuple[list[Any], list[TrainerCallback]]:
    """Lightning loggers for ``report_to`` (tensorboard, csv, wandb, mlflow, comet_ml, neptune).

    Other transformers integrations come back as their ``TrainerCallback`` classes, to run through
    the callback bridge unmodified.
    """
    from lightning.pytorch import loggers as pl_loggers
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, default_logdir

    loggers: list[Any] = []
    integrations: list[TrainerCallback] = []
    run_name = args.run_name
    for name in resolve_report_to(args.report_to):
        if name == "tensorboard":
            log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
            if log_dir:
                loggers.append(pl_loggers.TensorBoardLogger(save_dir=os.path.expanduser(log_dir), name="", version="", default_hp_metric=False))
            else:
                # transformers' default: <output_dir>/runs/<date>_<host>
                loggers.append(pl_loggers.TensorBoardLogger(save_dir=str(args.output_dir), name="", version=default_logdir(), default_hp_metric=False))
        elif name == "csv":
            loggers.append(pl_loggers.CSVLogger(save_dir=str(args.output_dir), name="csv_logs", version=run_name))
        elif name == "wandb":
            loggers.append(pl_loggers.WandbLogger(name=run_name, project=args.project, save_dir=str(args.output_dir)))
        elif name == "mlflow":
            loggers.append(pl_loggers.MLFlowLogger(experiment_name=args.project, run_name=run_name))
        elif name == "comet_ml":
            loggers.append(pl_loggers.CometLogger(project=args.project, name=run_name))
        elif name == "neptune":
            loggers.append(pl_loggers.NeptuneLogger(project=args.project, name=run_name))
        elif name in INTEGRATION_TO_CALLBACK:
            integrations.append(INTEGRATION_TO_CALLBACK[name])
    assert set(LIGHTNING_LOGGERS) >= {"tensorboard", "csv"}
    return loggers, integrations


def _seed(args: TrainingArguments) -> None:
    # transformers seeds in Trainer.__init__, before anything else.
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def build_trainer(args: TrainingArguments, **overrides: Any) -> pl.Trainer:
    """A ``lightning.Trainer`` configured from transformers ``TrainingArguments``.

    Args:
        args: the TrainingArguments of the run.
        overrides: ``lightning.Trainer`` keyword arguments (strategy, devices, accelerator, plugins, ...).
            ``async_save=True`` writes checkpoints in a background thread (see ``HFCheckpoint``).
            ``callbacks`` are appended after the hf_lightning ones; transformers ``TrainerCallback``s
            among them run through the callback bridge. ``plugins`` are added to ``HFCheckpointIO``.
    """
    validate_arguments(args)
    _seed(args)
    if args.tf32 is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    extra_callbacks = list(overrides.pop("callbacks", None) or [])
    hf_callbacks = [cb for cb in extra_callbacks if _is_trainer_callback(cb)]
    pl_callbacks = [cb for cb in extra_callbacks if not _is_trainer_callback(cb)]
    bad = [cb for cb in pl_callbacks if not isinstance(cb, Callback)]
    if bad:
        raise TypeError(
            f"`callbacks` must be lightning Callbacks or transformers TrainerCallbacks; got {[type(cb).__name__ for cb in bad]}."
        )
    flow_state = overrides.pop("hf_state", None)
    loggers, integrations = make_loggers(args)
    flow = HFFlowCallback(args, callbacks=[*integrations, *hf_callbacks], state=flow_state)
    checkpoint = HFCheckpoint(args, async_save=overrides.pop("async_save", False))
    plugins = overrides.pop("plugins", None) or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    if not any(isinstance(p, HFCheckpointIO) or type(p).__name__.endswith("CheckpointIO") for p in plugins):
        plugins = [HFCheckpointIO(), *plugins]
    kwargs: dict[str, Any] = {
        "default_root_dir": str(args.output_dir),
        "logger": loggers if loggers else False,
        "callbacks": [flow, checkpoint, *pl_callbacks],
        "plugins": plugins,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": not args.disable_tqdm,
        "enable_checkpointing": True,
        "use_distributed_sampler": False,
        "check_val_every_n_epoch": 1,
        "log_every_n_steps": 1,
        # transformers evaluates under torch.no_grad(): tensors a model caches while evaluating stay usable in training
        "inference_mode": False,
        **trainer_limits(args),
    }
    if args.use_cpu:
        kwargs["accelerator"] = "cpu"
    if args.full_determinism:
        kwargs["deterministic"] = True
    kwargs.update(overrides)
    kwargs.setdefault("precision", precision_for(args, _device_type(kwargs.get("accelerator", "auto"))))
    if kwargs["enable_progress_bar"] and not any(isinstance(cb, ProgressBar) for cb in pl_callbacks):
        kwargs["callbacks"].append(HFProgressBar())
    strategy = distributed.resolve_strategy(args, kwargs)
    if strategy is not None:
        kwargs["strategy"] = strategy
    trainer = pl.Trainer(**kwargs)
    distributed.prepare_launcher(trainer)
    install_checkpoint_connector(trainer)
    set_process_log_level(args, trainer)  # again in HFFlowCallback.setup, where spawned ranks are known
    return trainer


def _device_type(accelerator: Any) -> str:
    """"cpu" when the run will be on CPU (asked for, or "auto" with no GPU), else the accelerator's device type."""
    if isinstance(accelerator, str):
        if accelerator == "auto":
            if torch.cuda.is_available():
                return "cuda"
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                return "mps"
            return "cpu"
        return {"gpu": "cuda"}.get(accelerator, accelerator)
    from lightning.pytorch.accelerators import CPUAccelerator

    return "cpu" if isinstance(accelerator, CPUAccelerator) else "cuda"


def _is_trainer_callback(callback: Any) -> bool:
    return isinstance(callback, TrainerCallback) or (isinstance(callback, type) and issubclass(callback, TrainerCallback))


def set_process_log_level(args: TrainingArguments, trainer: pl.Trainer) -> None:
    """transformers' verbosity for this process, as ``Trainer.__init__`` sets it (``log_level``/``log_level_replica``)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(process_log_level(args, global_rank=trainer.global_rank, local_rank=trainer.local_rank))


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
        with _lightning_info_muted():
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
        with _lightning_info_muted():
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
            with _lightning_info_muted():
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
            with _lightning_info_muted():
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


@contextlib.contextmanager
def _lightning_info_muted() -> Iterator[None]:
    """Keep Lightning's INFO lines (hardware, tips, "fit stopped") off the console of the drop-in facade,
    whose console shows what transformers.Trainer shows; Lightning's warnings still pass."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _has_length(dataset: Any) -> bool | None:
    if dataset is None:
        return None
    try:
        len(dataset)
        return True
    except TypeError:
        return False
