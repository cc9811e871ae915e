"""torchmetrics as a second way to give evaluation metrics, next to ``compute_metrics``.

``HFModule(..., metrics=...)`` takes a torchmetrics ``Metric``, a ``MetricCollection`` or a dict of
metrics. Each evaluated dataset gets its own copy on the module's device; every eval batch updates
it with ``(logits, labels)`` (after ``preprocess_logits_for_metrics`` when given), and at the end of
the dataset torchmetrics reduces the states across ranks and computes. Nothing is gathered or kept
per sample, so memory does not grow with the eval set, unlike ``compute_metrics`` which needs all
predictions at once.

The values are logged like ``compute_metrics`` keys: ``eval_<name>`` (``eval_<set>_<name>`` for a
dict of eval sets, ``test_<name>`` in predict), so ``metric_for_best_model`` can name them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers.trainer_utils import denumpify_detensorize

from ..state import prefix_metrics

__all__ = ["TorchMetrics", "as_collection", "argmax_logits"]


def as_collection(metrics: Any) -> Any:
    """A ``MetricCollection`` from a ``Metric``, a ``MetricCollection`` or a ``{name: Metric}`` dict.

    A single ``Metric`` is named after its class, as ``MetricCollection`` names it; pass a dict to
    choose the logged names (``{"accuracy": MulticlassAccuracy(num_classes=2)}`` -> ``eval_accuracy``).
    """
    from torchmetrics import Metric, MetricCollection

    if isinstance(metrics, MetricCollection):
        return metrics
    if isinstance(metrics, Metric):
        return MetricCollection([metrics])
    if isinstance(metrics, Mapping):
        bad = {name: type(m).__name__ for name, m in metrics.items() if not isinstance(m, (Metric, MetricCollection))}
        if bad:
            raise TypeError(f"`metrics` values must be torchmetrics Metrics; got {bad}.")
        return MetricCollection(dict(metrics))
    raise TypeError(
        f"`metrics` must be a torchmetrics Metric, a MetricCollection or a dict of Metrics; got {type(metrics).__name__}."
    )


def argmax_logits(logits: Any, labels: Any = None) -> torch.Tensor:
    """``preprocess_logits_for_metrics`` that keeps only the predicted class (``logits.argmax(-1)``).

    Token classification logits are ``(batch, length, classes)``; their argmax ``(batch, length)``
    is what torchmetrics' multiclass metrics take together with ``ignore_index=-100``.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    return value


class TorchMetrics:
    """The torchmetrics of one module: a copy per eval dataset, updated per batch, computed per dataset.

    Args:
        metrics: a ``Metric``, ``MetricCollection`` or ``{name: Metric}``; used as a template, never updated itself.
        preprocess: ``(logits, labels) -> preds`` applied before each update (``preprocess_logits_for_metrics``).
    """

    def __init__(self, metrics: Any, preprocess: Callable[[Any, Any], Any] | None = None) -> None:
        self.template = as_collection(metrics)
        # MetricCollection sorts a dict's names; log them in the order the user wrote them, like compute_metrics keys.
        self.order = list(metrics) if isinstance(metrics, Mapping) else list(self.template.keys())
        self.preprocess = preprocess
        self._running: dict[int, Any] = {}

    def update(self, dataloader_idx: int, logits: Any, labels: Any) -> None:
        """Add one eval batch of dataset ``dataloader_idx``; stays on the logits' device."""
        preds = self.preprocess(logits, labels) if self.preprocess is not None else logits
        if isinstance(preds, (tuple, list)):
            preds = preds[0]
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        running = self._running.get(dataloader_idx)
        if running is None:
            running = self._running[dataloader_idx] = self.template.clone().to(preds.device)
        running.update(preds, labels)

    def compute(self, dataloader_idx: int, prefix: str) -> dict[str, Any]:
        """The values for dataset ``dataloader_idx`` named ``f"{prefix}_<name>"``; resets it. A collective under DDP.

        Empty when no batch updated it (``prediction_loss_only``, or no labels).
        """
        running = self._running.pop(dataloader_idx, None)
        if running is None:
            return {}
        computed = running.compute()
        running.reset()
        names = [n for n in self.order if n in computed] + [n for n in computed if n not in self.order]
        values = {name: _plain(computed[name]) for name in names}
        return prefix_metrics(denumpify_detensorize(values), prefix)

    def reset(self) -> None:
        self._running.clear()
