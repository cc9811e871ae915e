"""``HFProgressBar``: Lightning's tqdm bar, with transformers' latest training ``loss`` and ``lr``."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

__all__ = ["HFProgressBar"]


class HFProgressBar(TQDMProgressBar):
    """The training bar counts optimizer steps and shows the ``loss`` and ``lr`` of the latest training log.

    The values come from ``HFFlowCallback`` rather than ``self.log``: a log can happen right after a
    validation run (epoch-end logging), where Lightning does not allow ``self.log``.
    """

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        from .flow import HFFlowCallback

        for callback in trainer.callbacks:
            if isinstance(callback, HFFlowCallback):
                metrics.update(callback.progress_metrics)
        return metrics
