"""``build_trainer``: a ``lightning.Trainer`` configured from transformers ``TrainingArguments``.

Limits, precision, seed, loggers from ``report_to``, the transformers checkpoint format, and the
flow and checkpoint callbacks. The drop-in facade (``trainer.py``) and the CLI build on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.profilers import PassThroughProfiler
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import enable_full_determinism, set_seed

from . import distributed, launching, overlaps
from .arguments import LIGHTNING_LOGGERS, precision_for, process_log_level, resolve_report_to, trainer_limits, validate_arguments
from .callbacks.checkpoint import HFCheckpoint, install_checkpoint_connector
from .callbacks.flow import HFFlowCallback
from .callbacks.nonfinite import NonFiniteGuard
from .callbacks.signals import HFSignalHandler
from .callbacks.progress import HFProgressBar
from .checkpoint_io import HFCheckpointIO
from .console import lightning_banners_muted
from .precision import ForwardAutocastPrecision
from .step_dispatch import QuietProfiler

__all__ = ["build_trainer", "make_loggers", "lightning_info_muted"]

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
            Settings that overlap TrainingArguments (``max_epochs``, ``precision``, ``accumulate_grad_batches``,
            ...) are written into ``args`` or refused (see ``overlaps``). ``logger`` adds to the loggers of
            ``report_to``. ``async_save=True`` writes checkpoints in a background thread (see ``HFCheckpoint``).
            ``on_nonfinite="stop"`` ends training at the first logging step whose loss or gradient norm is
            NaN/Inf, before a checkpoint is written (default ``"warn"``: see ``NonFiniteGuard``).
            ``callbacks`` are appended after the hf_lightning ones; transformers ``TrainerCallback``s
            among them run through the flow callback. ``plugins`` are added to ``HFCheckpointIO``.
    """
    if getattr(args, "auto_find_batch_size", False):
        raise ValueError(
            "`auto_find_batch_size=True` needs `hf_lightning.Trainer.train()`, which retries with half the batch size "
            "on out-of-memory; with a lightning.Trainer use Lightning's `BatchSizeFinder` callback instead."
        )
    return _build(args, overrides, seed=True)


def _build(args: TrainingArguments, overrides: dict[str, Any], *, seed: bool, hub_push: bool = False) -> pl.Trainer:
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"`args` must be a transformers.TrainingArguments, got {type(args).__name__}.")
    overrides = dict(overrides)
    overlapping = {k: overrides.pop(k) for k in list(overrides) if k in overlaps.OVERLAPS or k in overlaps.REFUSED}
    overlaps.apply(args, overlapping)
    validate_arguments(args, hub_push=hub_push)
    if seed:
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
    loggers, integrations = make_loggers(args)
    loggers += _user_loggers(overrides.pop("logger", None), args)
    guards, signals = NonFiniteGuard(overrides.pop("on_nonfinite", "warn")), HFSignalHandler(args)  # issue 13
    flow = HFFlowCallback(args, callbacks=[*integrations, *hf_callbacks, guards])
    checkpoint = HFCheckpoint(args, async_save=overrides.pop("async_save", False))
    plugins = overrides.pop("plugins", None) or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    if not any(isinstance(p, HFCheckpointIO) or type(p).__name__.endswith("CheckpointIO") for p in plugins):
        plugins = [HFCheckpointIO(), *plugins]
    kwargs: dict[str, Any] = {
        "default_root_dir": str(args.output_dir),
        "logger": loggers if loggers else False,
        "callbacks": [flow, checkpoint, signals, *pl_callbacks],
        "plugins": plugins,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": not args.disable_tqdm,
        "enable_checkpointing": True,
        "use_distributed_sampler": False,
        "check_val_every_n_epoch": 1,
        "log_every_n_steps": 1,
        "enable_model_summary": False,  # quiet by default (issue 11): pass enable_model_summary=True to see it
        # transformers evaluates under torch.no_grad(): tensors a model caches while evaluating stay usable in training
        "inference_mode": False,
        **trainer_limits(args),
    }
    if args.use_cpu:
        kwargs["accelerator"] = "cpu"
    if args.full_determinism:
        kwargs["deterministic"] = True
    kwargs.update(overrides)
    kwargs.setdefault("profiler", QuietProfiler())
    device_type = _device_type(kwargs.get("accelerator", "auto"))
    kwargs["precision"] = precision_for(args, device_type)
    if kwargs["enable_progress_bar"] and not any(isinstance(cb, ProgressBar) for cb in pl_callbacks):
        kwargs["callbacks"].append(HFProgressBar())
    strategy = distributed.resolve_strategy(args, kwargs)
    if strategy is not None:
        kwargs["strategy"] = strategy
    _autocast_the_forward_only(kwargs, device_type)
    with lightning_banners_muted():  # quiet by default (issue 11): no hardware/tip banners, see console.BANNERS
        trainer = pl.Trainer(**kwargs)
    launching.prepare_launcher(trainer)
    install_checkpoint_connector(trainer)
    set_process_log_level(args, trainer)  # again in HFFlowCallback.setup, where spawned ranks are known
    return trainer


def adopt_trainer(trainer: pl.Trainer, args: TrainingArguments) -> list[Callback]:
    """Make a ``lightning.Trainer`` the user built (``trainer.fit(HFModule(...), ...)``) behave like ``build_trainer``'s.

    Returns the callbacks ``HFModule.configure_callbacks`` adds (none if the trainer already has the flow
    callback). Lightning settings that overlap TrainingArguments follow ``overlaps``' rule; Lightning's
    default checkpointing is replaced by ``checkpoint-N`` folders, and a ModelCheckpoint the user
    configured is refused (it would write Lightning checkpoints next to transformers' folders).
    """
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    if any(isinstance(cb, HFFlowCallback) for cb in trainer.callbacks):
        return []
    settings = overlaps.lightning_settings_of(trainer)
    if trainer.num_sanity_val_steps not in (0, 2):  # 2 is Lightning's default: not asked for
        settings["num_sanity_val_steps"] = trainer.num_sanity_val_steps
    overlaps.apply(args, settings)
    validate_arguments(args)
    # honoured in the arguments: Lightning must not do them again (it refuses them with manual optimization)
    trainer.accumulate_grad_batches = 1
    trainer.gradient_clip_val = None
    trainer.num_sanity_val_steps = 0
    trainer.log_every_n_steps = 1  # logging follows logging_steps (HFFlowCallback); no "smaller than the logging interval"
    _add_report_to_loggers(trainer, args)
    _autocast_the_forward_only_in(trainer)
    for loop in (trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop, trainer.test_loop):
        loop.inference_mode = False  # as build_trainer: tensors a model caches while evaluating stay usable in training
    if type(trainer.profiler) is PassThroughProfiler:
        trainer.profiler = QuietProfiler()
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = HFCheckpointIO()
    install_checkpoint_connector(trainer)
    for callback in list(trainer.checkpoint_callbacks):
        if not isinstance(callback, ModelCheckpoint):
            continue
        if _is_default_model_checkpoint(callback):
            trainer.callbacks.remove(callback)
            log.info("hf_lightning writes transformers' checkpoint-N folders (save_strategy=%s) instead of Lightning's "
                     "default ModelCheckpoint.", args.save_strategy)
        else:
            raise ValueError(
                "A lightning ModelCheckpoint was configured, but HFModule saves transformers' checkpoint-N folders in "
                f"`output_dir` ({args.output_dir}): set when with `save_strategy`/`save_steps`, how many with "
                "`save_total_limit`, and keep the best with `metric_for_best_model` + `load_best_model_at_end`. "
                "Remove the ModelCheckpoint callback."
            )
    callbacks: list[Callback] = [HFFlowCallback(args, callbacks=[NonFiniteGuard()]), HFCheckpoint(args), HFSignalHandler(args)]  # issue 13
    if type(trainer.progress_bar_callback) is TQDMProgressBar:
        callbacks.append(HFProgressBar())  # replaces Lightning's bar (one bar per epoch, "Validation DataLoader 0")
    return callbacks


def _add_report_to_loggers(trainer: pl.Trainer, args: TrainingArguments) -> None:
    """``report_to``'s loggers join the ones the user gave the trainer, as in ``build_trainer``; they replace
    Lightning's default logger (``logger=True``, which nobody asked for), and ``logger=False`` contradicts them."""
    wanted, _ = make_loggers(args)  # the other integrations run as TrainerCallbacks (HFFlowCallback)
    if not wanted:
        return
    current = list(trainer.loggers)
    if not current:
        raise ValueError(
            f"`logger=False` (lightning.Trainer) contradicts `report_to={args.report_to!r}` (TrainingArguments): "
            "set `report_to='none'` for no loggers, or give the trainer a logger."
        )
    if len(current) == 1 and _is_default_logger(current[0], trainer):
        current = []
    trainer.loggers = current + wanted


def _is_default_logger(logger: Any, trainer: pl.Trainer) -> bool:
    """The logger Lightning adds by itself for ``logger=True``: TensorBoard (or CSV) under ``default_root_dir/lightning_logs``."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    return (
        type(logger) in (TensorBoardLogger, CSVLogger)
        and logger.name == "lightning_logs"
        and os.path.abspath(str(logger.root_dir)) == os.path.abspath(os.path.join(str(trainer.default_root_dir), "lightning_logs"))
    )


def _is_default_model_checkpoint(callback: Any) -> bool:
    """The ModelCheckpoint Lightning adds by itself when no checkpoint callback was given."""
    return (
        callback.dirpath is None
        and callback.monitor is None
        and callback.filename is None
        and callback.save_top_k == 1
        and not callback.save_last
        and callback._every_n_train_steps == 0
        and callback._every_n_epochs == 1
        and callback._train_time_interval is None
    )


def _user_loggers(logger: Any, args: TrainingArguments) -> list[Any]:
    """Loggers passed to ``build_trainer``/the facade: added to those of ``report_to`` (True: none more)."""
    from lightning.pytorch.loggers import Logger

    if logger is None or logger is True:
        return []
    if logger is False:
        if resolve_report_to(args.report_to):
            raise ValueError(
                f"`logger=False` (lightning.Trainer) contradicts `report_to={args.report_to!r}` (TrainingArguments): "
                "set `report_to='none'` for no loggers."
            )
        return []
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    bad = [type(lg).__name__ for lg in loggers if not isinstance(lg, Logger)]
    if bad:
        raise TypeError(f"`logger` must be Lightning Loggers; got {bad}.")
    return loggers


def _forward_autocast_fits(strategy: Any) -> bool:
    """Where bf16/fp16 autocast the model's forward only (precision.py): one device or DDP; FSDP keeps its own plugin."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    if strategy in (None, "auto"):
        return True
    return isinstance(strategy, (DDPStrategy, SingleDeviceStrategy)) and not distributed.is_sharded(strategy)


def _autocast_the_forward_only(kwargs: dict[str, Any], device_type: str) -> None:
    """bf16/fp16 as accelerate applies them (precision.py) wherever Lightning's ``MixedPrecision`` would serve, when the
    user gave no precision plugin of their own."""
    from lightning.pytorch.plugins.precision import Precision

    if kwargs["precision"] not in ("bf16-mixed", "16-mixed") or not _forward_autocast_fits(kwargs.get("strategy")):
        return
    if any(isinstance(p, Precision) for p in kwargs["plugins"]):
        return
    kwargs["plugins"] = [*kwargs["plugins"], ForwardAutocastPrecision(kwargs.pop("precision"), device_type)]


def _autocast_the_forward_only_in(trainer: pl.Trainer) -> None:
    """A plain trainer's Lightning ``MixedPrecision`` becomes ``ForwardAutocastPrecision``, as ``build_trainer`` makes it
    (the same rule; precision plugins of the user's own are kept)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    strategy, plugin = trainer.strategy, trainer.strategy.precision_plugin
    if type(plugin) is MixedPrecision and plugin.precision in ("bf16-mixed", "16-mixed") and _forward_autocast_fits(strategy):
        strategy.precision_plugin = ForwardAutocastPrecision(plugin.precision, plugin.device, scaler=plugin.scaler)


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


@contextlib.contextmanager
def lightning_info_muted() -> Iterator[None]:
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
