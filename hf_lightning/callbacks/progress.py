"""``HFProgressBar``: progress as transformers shows it, on Lightning's tqdm bar.

transformers' ``ProgressCallback`` draws one training bar over ``max_steps`` optimizer steps for the whole run,
and one bar per evaluation or prediction loop; its ``evaluation_loop`` calls these "Evaluation" and
"Prediction". Lightning's ``TQDMProgressBar`` draws one bar per epoch ("Epoch 1: 6/6") and names the loops
"Validation DataLoader 0" and "Testing DataLoader 0". This bar is used by ``build_trainer`` and
``hf-lightning``, and can be added to any ``lightning.Trainer`` that trains an ``HFModule``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from typing_extensions import override

__all__ = ["HFProgressBar", "TRAIN_DESCRIPTION", "EVALUATION_DESCRIPTION", "PREDICTION_DESCRIPTION", "loop_description"]

TRAIN_DESCRIPTION = "Training"
EVALUATION_DESCRIPTION = "Evaluation"  # transformers' evaluate(): evaluation_loop(description="Evaluation")
PREDICTION_DESCRIPTION = "Prediction"  # transformers' predict(): evaluation_loop(description="Prediction")


def loop_description(description: str, dataset_names: list[str] | None, dataloader_idx: int) -> str:
    """The bar's name for eval loader ``dataloader_idx``: ``Evaluation``, or ``Evaluation (name)`` for a dict of eval sets."""
    if dataset_names and len(dataset_names) > 1 and dataloader_idx < len(dataset_names):
        return f"{description} ({dataset_names[dataloader_idx]})"
    return description


def epoch_postfix(epoch: float | None) -> dict[str, str]:
    """The epoch as transformers counts it (1.50: halfway through the second epoch), for the bar's postfix."""
    return {} if epoch is None else {"epoch": f"{epoch:.2f}"}


class HFProgressBar(TQDMProgressBar):
    """One training bar over the run's optimizer steps with the epoch, the latest training ``loss`` and ``lr``;
    "Evaluation" and "Prediction" bars for the eval and test/predict loops.

    Steps, epoch and losses come from ``HFFlowCallback`` (its ``TrainerState`` and latest training log):
    a log can happen right after a validation run (epoch-end logging), where Lightning does not allow
    ``self.log``. Without that callback the bar falls back on Lightning's counters.
    """

    @property
    @override
    def train_description(self) -> str:
        return TRAIN_DESCRIPTION

    @property
    @override
    def validation_description(self) -> str:
        return EVALUATION_DESCRIPTION

    @property
    @override
    def test_description(self) -> str:
        return PREDICTION_DESCRIPTION

    @property
    @override
    def predict_description(self) -> str:
        return PREDICTION_DESCRIPTION

    # ------------------------------------------------------------------------------ training

    @override
    def init_train_tqdm(self) -> Tqdm:
        """Lightning's training bar, with the run's optimizer steps as its total from the start."""
        return Tqdm(
            desc=self.train_description,
            total=self._steps(self.trainer)[1],
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self._show_train_progress(trainer, pl_module, refresh=True)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """One bar for the whole run: nothing to reset at an epoch start (Lightning starts a new bar here)."""

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._show_train_progress(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show_train_progress(trainer, pl_module, refresh=True)

    def _show_train_progress(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, refresh: bool = False) -> None:
        bar = self._train_progress_bar
        if bar is None or bar.disable:
            return
        step, total = self._steps(trainer)
        if total is not None and bar.total != total:
            bar.total = total
        if not (refresh or self._should_update(step, total or 0)):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def _flow(self, trainer: pl.Trainer) -> Any:
        from .flow import HFFlowCallback

        return next((cb for cb in trainer.callbacks if isinstance(cb, HFFlowCallback)), None)  # type: ignore[attr-defined]

    def _steps(self, trainer: pl.Trainer) -> tuple[int, int | None]:
        """``(optimizer steps done, optimizer steps of the run)``: transformers' ``global_step`` and ``max_steps``."""
        flow = self._flow(trainer)
        state = getattr(flow, "state", None)
        if state is not None and getattr(state, "max_steps", 0):
            return int(state.global_step), int(state.max_steps)
        total = convert_inf(trainer.estimated_stepping_batches)
        return trainer.global_step, int(total) if total is not None else None

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        flow = self._flow(trainer)
        state = getattr(flow, "state", None)
        epoch = getattr(state, "epoch", None) if state is not None else None
        if epoch is None and trainer.training:
            epoch = _lightning_epoch(trainer)
        metrics = {**epoch_postfix(epoch), **super().get_metrics(trainer, pl_module)}
        metrics.pop("v_num", None)  # the logger's version: no transformers equivalent
        if flow is not None:
            metrics.update(flow.progress_metrics)
        return metrics

    # -------------------------------------------------------------------- evaluation, prediction

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self._restart(self.val_progress_bar, self.total_val_batches_current_dataloader,
                      loop_description(self.validation_description, _eval_names(trainer), _eval_index(trainer, dataloader_idx)))

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self._restart(self.test_progress_bar, self.total_test_batches_current_dataloader,
                      loop_description(self.test_description, None, dataloader_idx))

    @override
    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self._restart(self.predict_progress_bar, self.total_predict_batches_current_dataloader,
                      loop_description(self.predict_description, None, dataloader_idx))

    @override
    def init_test_tqdm(self) -> Tqdm:
        """Lightning's test bar, named "Prediction" (Lightning hard-codes "Testing"): hf_lightning's test loop is transformers' predict()."""
        return Tqdm(
            desc=self.test_description,
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
        )

    @staticmethod
    def _restart(bar: Any, total: float | None, description: str) -> None:
        bar.reset()
        bar.total = convert_inf(total)
        bar.initial = 0
        bar.set_description(description)


def _lightning_epoch(trainer: pl.Trainer) -> float:
    """The epoch counted like transformers' (epochs done + the fraction of this one), from Lightning's counters."""
    batches = convert_inf(trainer.num_training_batches)
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    return trainer.current_epoch + (done / batches if batches else 0.0)


def _eval_index(trainer: pl.Trainer, dataloader_idx: int) -> int:
    """The position of the named eval set an ``evaluate()`` loop runs on (it runs one set per loop)."""
    eval_dataset = getattr(getattr(trainer, "datamodule", None), "eval_dataset", None)
    request = getattr(trainer.lightning_module, "eval_request", None)
    if isinstance(eval_dataset, Mapping) and request is not None:
        for index, name in enumerate(eval_dataset):
            if request.metric_key_prefix.endswith(f"_{name}"):
                return index
    return dataloader_idx


def _eval_names(trainer: pl.Trainer) -> list[str] | None:
    """The names of a dict of eval sets (``HFDataModule(eval_dataset={...})``), in loader order."""
    eval_dataset = getattr(getattr(trainer, "datamodule", None), "eval_dataset", None)
    return list(eval_dataset) if isinstance(eval_dataset, Mapping) else None
