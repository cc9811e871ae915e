"""Where transformers' log records go on Lightning: the ``lightning.Trainer``'s loggers, ``callback_metrics`` (what
Lightning callbacks monitor), and the console lines transformers prints (its ``ProgressCallback`` log dicts and the
``***** Running training *****`` block).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

__all__ = ["LightningLoggers", "to_callback_metrics", "log_training_start", "prints_logs", "prints_logs_with_bar", "print_logs", "trainer_logger"]


def trainer_logger() -> Any:
    """transformers.Trainer's logger: the messages transformers logs go where its users (and tests) look."""
    from transformers import trainer

    return trainer.logger


class LightningLoggers(TrainerCallback):
    """Sends every log record to the ``lightning.Trainer``'s loggers, where transformers' reporting
    integrations sit in the callback list (after the flow decisions, before user callbacks)."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        # What transformers' TensorBoardCallback writes at train begin: the args and the model config as text.
        from lightning.pytorch.loggers import TensorBoardLogger

        if not state.is_world_process_zero:
            return
        config = getattr(model, "config", None)
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("args", args.to_json_string())
                if config is not None:
                    logger.experiment.add_text("model_config", config.to_json_string())

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        from transformers.integrations.integration_utils import rewrite_logs

        if not logs:
            return
        scalars = {k: v for k, v in rewrite_logs(logs).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in self.trainer.loggers:
            logger.log_metrics(scalars, step=state.global_step)
        if prints_logs(self.trainer):
            print_logs(logs)


def log_training_start(host: Any, plan: Any, args: TrainingArguments, state: TrainerState, *, resumed: bool, skip: int) -> None:
    """The ``***** Running training *****`` block transformers logs before the first step."""
    from transformers.trainer_pt_utils import get_model_param_count

    logger = trainer_logger()
    batch_size = getattr(host, "_train_batch_size", args.per_device_train_batch_size)
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {plan.num_examples:,}")
    logger.info(f"  Num Epochs = {plan.num_train_epochs:,}")
    logger.info(f"  Num update steps per epoch = {plan.updates_per_epoch:,}")
    logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size:,}")
    if args.per_device_train_batch_size != batch_size:
        logger.info(f"  Training with DataParallel so batch size has been adjusted to: {batch_size:,}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {plan.total_train_batch_size:,}")
    logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {plan.max_steps:,}")
    logger.info(f"  Number of trainable parameters = {get_model_param_count(host.model, trainable_only=True):,}")
    if resumed:
        epochs = state.global_step // max(plan.updates_per_epoch, 1)
        logger.info(f"  Resuming training from checkpoint with epoch {epochs} and global step {state.global_step}")
        if not args.ignore_data_skip:
            logger.info(
                f"  Fast-forwarding the dataloader past {epochs} epochs and {skip * args.gradient_accumulation_steps} "
                "batches to resume from the exact training state."
            )


def to_callback_metrics(trainer: pl.Trainer, pl_module: Any, values: dict[str, float]) -> None:
    """Put the training log's values in ``trainer.callback_metrics`` (what EarlyStopping/ModelCheckpoint monitor).

    Straight into the dict Lightning's ``callback_metrics`` returns: ``LightningModule.log`` would build a
    torchmetrics-backed result per key at every logging step, for scalars already reduced over the ranks.
    """
    metrics = getattr(trainer._logger_connector, "_callback_metrics", None)
    if isinstance(metrics, dict):
        metrics.update({key: torch.tensor(value) for key, value in values.items()})
        return
    for key, value in values.items():  # pragma: no cover - another Lightning version
        pl_module.log(key, torch.tensor(value), logger=False, on_step=True, on_epoch=False)


def prints_logs_with_bar(trainer: pl.Trainer) -> bool:
    from .progress import HFProgressBar

    return isinstance(trainer.progress_bar_callback, HFProgressBar)


def prints_logs(trainer: pl.Trainer) -> bool:
    """transformers' ProgressCallback writes log dicts while its training bar exists; so does ``HFProgressBar``."""
    from .progress import HFProgressBar

    return (
        trainer.is_global_zero
        and isinstance(trainer.progress_bar_callback, HFProgressBar)
        and trainer.state.fn == "fit"
        and trainer.training
    )


def print_logs(logs: dict[str, Any], max_str_len: int = 100) -> None:
    # transformers' ProgressCallback.on_log: floats as .4g, long strings elided, no total_flos, above the bar.
    shown: dict[str, Any] = {}
    for key, value in logs.items():
        if isinstance(value, str) and len(value) > max_str_len:
            shown[key] = f"[String too long to display, length: {len(value)} > {max_str_len}. Consider increasing `max_str_len` if needed.]"
        elif isinstance(value, float):
            shown[key] = f"{value:.4g}"
        else:
            shown[key] = value
    shown.pop("total_flos", None)
    from tqdm.auto import tqdm

    tqdm.write(str(shown))
