"""``hf_lightning.Trainer``: a transformers.Trainer whose training and evaluation loops are Lightning's.

It subclasses ``transformers.Trainer``, so its constructor, attributes, methods and override points
are transformers' own (``isinstance(trainer, transformers.Trainer)`` holds). It replaces only what runs
the loops: ``train`` runs ``lightning.Trainer.fit`` on an ``HFModule`` whose host is this trainer (so
``training_step``, ``compute_loss``, ``prediction_step``, ``log``, ``evaluate``, ``create_optimizer``, ...
are called on it, overridden or not), ``evaluation_loop`` runs Lightning's validation/test loop, and
``self.accelerator`` is a ``LightningAccelerator`` backed by Lightning's strategy.

Other transformers.Trainer subclasses run on Lightning the same way: ``Seq2SeqTrainer`` here, or
``on_lightning(SomeTrainer)`` for any other (TRL's, the QA example's), which puts this class between
that trainer and ``transformers.Trainer`` in the method resolution order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import transformers
from lightning.pytorch.callbacks import Callback
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import EvalLoopOutput, TrainOutput, enable_full_determinism, set_seed, suppress_progress_bars

from . import checkpoint_folders, hf_format
from .accelerator import LightningAccelerator
from .arguments import LIGHTNING_LOGGERS, resolve_report_to, validate_arguments
from . import overlaps
from .builder import _build, build_trainer, lightning_info_muted, make_loggers
from .callbacks.flow import HFFlowCallback
from .checkpoint_methods import CheckpointMethods
from .data import HFDataModule
from .hooks import TrainerHooks
from .loops import run_evaluation
from .module import HFModule
from .private_overrides import check_overrides
from .state import MemoryTracker

__all__ = ["Trainer", "Seq2SeqTrainer", "on_lightning", "build_trainer", "make_loggers"]

log = logging.getLogger(__name__)


class Trainer(CheckpointMethods, transformers.Trainer):
    """transformers.Trainer, trained and evaluated by ``lightning.Trainer``.

    Takes transformers.Trainer's arguments (``model``, ``args``, ``data_collator``, ``train_dataset``,
    ``eval_dataset``, ``processing_class``, ``model_init``, ``compute_loss_func``, ``compute_metrics``,
    ``callbacks``, ``optimizers``, ``optimizer_cls_and_kwargs``, ``preprocess_logits_for_metrics``), and:

    Args:
        metrics: torchmetrics ``Metric``/``MetricCollection``/dict updated per eval batch, logged as ``eval_<name>``.
        lightning_kwargs: ``lightning.Trainer`` keyword arguments (strategy, devices, accelerator, plugins,
            precision, loggers, ...) and ``async_save=True``. ``callbacks`` may mix transformers
            ``TrainerCallback``s and Lightning ``Callback``s. ``enable_progress_bar=True`` shows Lightning's
            bar instead of transformers' ``ProgressCallback``.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., torch.nn.Module] | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        metrics: Any = None,
        **lightning_kwargs: Any,
    ) -> None:
        stashed = self.__dict__.pop("_hf_lightning_kwargs", {})  # from an on_lightning() subclass's constructor
        if "metrics" in stashed:
            metrics = stashed.pop("metrics")
        lightning_kwargs = {**stashed, **lightning_kwargs}
        if "tokenizer" in lightning_kwargs:
            raise TypeError("hf_lightning.Trainer does not take `tokenizer`: use `processing_class=` (as in transformers 5).")
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        # An override of a private method hf_lightning never calls is an error, not a no-op (private_overrides.py).
        check_overrides(type(self), resuming=False, load_best=bool(args.load_best_model_at_end))
        callbacks = list(callbacks or [])
        self._lightning_callbacks = [cb for cb in callbacks if isinstance(cb, Callback)]
        trainer_callbacks = [cb for cb in callbacks if not isinstance(cb, Callback)]
        bad = [cb for cb in trainer_callbacks if not _is_trainer_callback(cb)]
        if bad:
            raise TypeError(
                f"`callbacks` must be transformers TrainerCallbacks (instances or classes) or Lightning Callbacks; got "
                f"{[type(cb).__name__ for cb in bad]}."
            )
        self._lightning_kwargs = _check_lightning_kwargs(lightning_kwargs)
        overlapping = {k: self._lightning_kwargs.pop(k) for k in list(self._lightning_kwargs) if k in overlaps.OVERLAPS or k in overlaps.REFUSED}
        overlaps.apply(args, overlapping)  # honoured in the arguments (and so in training_args.bin), or refused
        validate_arguments(
            args,
            has_train_dataset=train_dataset is not None,
            train_dataset_has_length=_has_length(train_dataset),
            has_eval_dataset=eval_dataset is not None,
            compute_metrics=compute_metrics,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            hub_push=True,
        )
        if args.push_to_hub and self._lightning_kwargs.get("async_save"):
            raise ValueError(
                "`push_to_hub=True` pushes each checkpoint once it is written; with `async_save=True` it is written "
                "later, in the background. Use one of them."
            )
        self.metrics = metrics
        self.lightning_trainer: pl.Trainer | None = None
        self.module: HFModule | None = None
        self.datamodule: HFDataModule | None = None
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        report_to = args.report_to  # transformers does not know report_to names only Lightning serves ("csv")
        args.report_to = [name for name in resolve_report_to(report_to) if name in INTEGRATION_TO_CALLBACK]
        # fsdp is Lightning's strategy here (distributed.fsdp_strategy); transformers' __init__ would refuse it in a
        # process that is not distributed yet (the one Lightning's launcher starts the other ranks from).
        fsdp, args.fsdp = args.fsdp, None
        try:
            super().__init__(
                model=model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                model_init=model_init,
                compute_loss_func=compute_loss_func,
                compute_metrics=compute_metrics,
                callbacks=trainer_callbacks,
                optimizers=optimizers,
                optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            )
        finally:
            args.report_to = report_to
            args.fsdp = fsdp
        self._given_optimizer = optimizers[0]  # a sharding strategy cannot use it (HFModule.configure_optimizers)
        self._memory_tracker = MemoryTracker.adopt(self._memory_tracker)
        # report_to integrations that Lightning loggers carry (tensorboard, csv, wandb, ...) leave the callback list.
        for name in resolve_report_to(self.args.report_to):
            if name in LIGHTNING_LOGGERS and name in INTEGRATION_TO_CALLBACK:
                self.callback_handler.remove_callback(INTEGRATION_TO_CALLBACK[name])
        if self._lightning_kwargs.get("enable_progress_bar"):
            self.callback_handler.remove_callback(ProgressCallback)  # Lightning's bar instead of transformers'

    # ------------------------------------------------------------------- transformers' hooks

    def create_accelerator_and_postprocess(self) -> None:
        """The accelerator is Lightning's strategy, seen through ``LightningAccelerator``."""
        self.accelerator = LightningAccelerator(self.args)
        _restore_accelerator_state(self.args)
        self.gather_function = functools.partial(self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object)
        self.is_deepspeed_enabled = False
        self.is_fsdp_enabled = False
        if self.lightning_trainer is not None and self.module is not None:
            self.accelerator.bind(self.lightning_trainer, self.module)

    # The step's override points with transformers' semantics and fewer Python calls (see hooks.py).
    training_step = TrainerHooks.training_step
    compute_loss = TrainerHooks.compute_loss
    compute_loss_context_manager = TrainerHooks.compute_loss_context_manager
    prediction_step = TrainerHooks.prediction_step
    floating_point_ops = TrainerHooks.floating_point_ops

    def _lightning(self, *, fresh: bool = False) -> pl.Trainer:
        """The ``lightning.Trainer`` (with its ``HFModule`` and ``HFDataModule``), built on first use or afresh."""
        if not fresh and self.lightning_trainer is not None and self.module is not None and self.module.model is self.model:
            return self.lightning_trainer
        self.module = HFModule(
            self.model, self.args, metrics=self.metrics, preprocess_logits_for_metrics=self.preprocess_logits_for_metrics, hooks=self
        )
        self.datamodule = HFDataModule(self.args, processing_class=self.processing_class, data_collator=self.data_collator)
        self.datamodule.source = self
        kwargs = dict(self._lightning_kwargs)
        kwargs.setdefault("enable_model_summary", False)  # transformers prints no model table
        kwargs["enable_progress_bar"] = bool(kwargs.get("enable_progress_bar", False))
        with lightning_info_muted():
            self.lightning_trainer = _build(self.args, {"callbacks": list(self._lightning_callbacks), **kwargs}, seed=False, hub_push=True)
        self.accelerator.bind(self.lightning_trainer, self.module)
        return self.lightning_trainer

    # ------------------------------------------------------------------------------- train

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> TrainOutput:
        """Train on ``train_dataset`` with ``lightning.Trainer.fit``; ``resume_from_checkpoint``: a ``checkpoint-N``
        folder (ours or transformers'), or True for the newest one in ``output_dir``."""
        if kwargs:
            raise TypeError(f"train() got unexpected keyword arguments: {', '.join(sorted(kwargs))}.")
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        self._memory_tracker.start()
        args = self.args
        self.is_in_train = True
        if self.model_init is not None:
            enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
            self.model = self.call_model_init(trial)
            self.optimizer, self.lr_scheduler = None, None
            if self.place_model_on_device:
                self._move_model_to_device(self.model, args.device)
            self.model_wrapped = self.model
        self._hp_search_setup(trial)
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = checkpoint_folders.find_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({args.output_dir})")
        check_overrides(type(self), resuming=resume_from_checkpoint is not None, load_best=bool(args.load_best_model_at_end))
        if resume_from_checkpoint is not None and not os.path.isdir(resume_from_checkpoint):
            raise hf_format.CheckpointError(
                f"Can't find a valid checkpoint at {resume_from_checkpoint}: checkpoint folder not found (pass a "
                "checkpoint-N folder, or True for the newest one in output_dir)."
            )
        if resume_from_checkpoint is not None and args.auto_find_batch_size:
            state = hf_format.read_trainer_state(resume_from_checkpoint)
            if state is not None and state.train_batch_size is not None:
                self._train_batch_size = state.train_batch_size  # continue at the size the search settled on
        from transformers.trainer_utils import find_executable_batch_size

        inner = find_executable_batch_size(self._fit, self._train_batch_size, args.auto_find_batch_size)
        # transformers mutes the Hub client's progress bars while checkpoints upload
        with suppress_progress_bars() if args.push_to_hub else contextlib.nullcontext():
            return inner(resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)

    def _fit(self, batch_size: int, *, resume_from_checkpoint: str | None, trial: Any, ignore_keys_for_eval: list[str] | None) -> TrainOutput:
        """One attempt of ``train`` at ``batch_size`` (``auto_find_batch_size`` halves it on out-of-memory)."""
        if self.args.auto_find_batch_size and batch_size != self._train_batch_size:
            self._train_batch_size = batch_size
            self.model_wrapped = self.model
        trainer = self._lightning(fresh=True)
        flow = next(cb for cb in trainer.callbacks if isinstance(cb, HFFlowCallback))
        flow.trial = trial
        flow.ignore_keys_for_eval = ignore_keys_for_eval
        with lightning_info_muted():
            trainer.fit(self.module, datamodule=self.datamodule, ckpt_path=resume_from_checkpoint)
        self.is_in_train = False
        self._trained_once = True
        output = flow.last_train_output
        if output is None:
            raise RuntimeError("Training ended without a summary (was it interrupted?).")
        return output

    # ------------------------------------------------------------------- evaluation loop

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """transformers' ``evaluation_loop`` on Lightning's validation (``"Prediction"``: test) loop, over ``dataloader``."""
        trainer = self._lightning()
        if not self.is_in_train and not hasattr(self, "model_preparation_time") and not getattr(self, "_trained_once", False):
            start = time.time()
            self.model_preparation_time = round(time.time() - start, 4)  # nothing to prepare: Lightning places the model
        if hasattr(self.optimizer, "eval") and callable(self.optimizer.eval):
            self.optimizer.eval()
        try:
            with lightning_info_muted():
                return run_evaluation(
                    trainer,
                    self.module,
                    self.datamodule,
                    dataloader,
                    description=description,
                    prediction_loss_only=prediction_loss_only,
                    ignore_keys=ignore_keys,
                    metric_key_prefix=metric_key_prefix,
                )
        finally:
            self.gather_function = self.accelerator.gather_for_metrics  # what transformers' evaluation_loop resets it to

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Ray Tune ships the trainer to its workers): the Lightning objects are rebuilt on first use."""
        state = dict(self.__dict__)
        state.update(lightning_trainer=None, module=None, datamodule=None)
        return state

    # ------------------------------------------------------------------------------ saving

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """transformers' ``save_model``; under a sharding strategy the full weights are gathered first (a collective)."""
        from . import distributed

        trainer = self.lightning_trainer
        if trainer is not None and self.module is not None and distributed.is_sharded(trainer.strategy):
            from .callbacks.checkpoint import export_model

            export_model(trainer, self.module, str(output_dir if output_dir is not None else self.args.output_dir))
            return
        super().save_model(output_dir, _internal_call=_internal_call)


def on_lightning(trainer_class: type[transformers.Trainer], name: str | None = None) -> type[Trainer]:
    """``trainer_class`` (a transformers.Trainer subclass: TRL's, the QA example's, yours) trained by Lightning.

    The returned class derives from ``trainer_class`` and ``hf_lightning.Trainer``, so its own overrides
    run and everything it inherits from transformers.Trainer comes from hf_lightning's. Its constructor
    takes ``trainer_class``'s arguments plus hf_lightning's (``metrics=`` and ``lightning.Trainer``
    keyword arguments).
    """
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, transformers.Trainer)):
        raise TypeError(f"on_lightning() takes a transformers.Trainer subclass, got {trainer_class!r}.")
    if issubclass(trainer_class, Trainer):
        return trainer_class

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        own = {k: kwargs.pop(k) for k in list(kwargs) if k == "metrics" or k in _LIGHTNING_PARAMETERS}
        self.__dict__["_hf_lightning_kwargs"] = own  # picked up by hf_lightning.Trainer.__init__
        trainer_class.__init__(self, *args, **kwargs)

    namespace = {"__init__": __init__, "__module__": trainer_class.__module__, "__doc__": trainer_class.__doc__,
                 "__qualname__": name or trainer_class.__qualname__}
    return type(name or trainer_class.__name__, (trainer_class, Trainer), namespace)


def _restore_accelerator_state(args: TrainingArguments) -> None:
    """Rebuild accelerate's global ``AcceleratorState`` as a transformers.Trainer's Accelerator would.

    ``TrainingArguments`` resets it when it sets up its device, and every transformers.Trainer rebuilds it;
    hf_lightning builds no Accelerator, so a transformers.Trainer made earlier in this process (notebooks
    compare both) would find it empty.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import TorchDynamoPlugin

    if AcceleratorState._shared_state:
        return
    mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    for precision in dict.fromkeys((mixed_precision, "no")):
        try:
            AcceleratorState(mixed_precision=precision, cpu=args.use_cpu, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
            return
        except (ValueError, RuntimeError):  # e.g. fp16 where accelerate has none
            AcceleratorState._reset_state()


def _is_trainer_callback(callback: Any) -> bool:
    return isinstance(callback, TrainerCallback) or (isinstance(callback, type) and issubclass(callback, TrainerCallback))


def _has_length(dataset: Any) -> bool | None:
    if dataset is None:
        return None
    try:
        len(dataset)
        return True
    except TypeError:
        return False


def _lightning_parameters() -> frozenset[str]:
    import inspect

    return frozenset((set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}) | {"async_save", "on_nonfinite"})


_LIGHTNING_PARAMETERS = _lightning_parameters()


def _check_lightning_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Only ``lightning.Trainer``'s keyword arguments (and ``async_save``) pass; anything else is a typo."""
    valid = _LIGHTNING_PARAMETERS
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise TypeError(
            f"hf_lightning.Trainer got unexpected keyword arguments {unknown}: they are neither transformers.Trainer's "
            f"nor lightning.Trainer's. lightning.Trainer takes: {', '.join(sorted(valid))}."
        )
    return dict(kwargs)


Seq2SeqTrainer = on_lightning(transformers.Seq2SeqTrainer)
Seq2SeqTrainer.__module__ = __name__
Seq2SeqTrainer.__doc__ = "transformers' ``Seq2SeqTrainer`` (``predict_with_generate``, generation kwargs) trained by Lightning."
