"""The body of ``Trainer.evaluation_loop`` (§5), fed one batch at a time.

Lightning-free: the LightningModule feeds each batch's ``prediction_step`` output and injects how
tensors are padded and gathered across processes (``distributed.EvalGather``). Containers, padding
with -100, ``denumpify_detensorize`` and ``EvalPrediction`` are transformers' own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.trainer_pt_utils import EvalLoopContainer, find_batch_size
from transformers.trainer_utils import EvalPrediction, denumpify_detensorize

from .state import prefix_metrics

__all__ = ["EvalAccumulator", "EvalResult"]


@dataclass
class EvalResult:
    """What one evaluation of one dataset produced."""

    metrics: dict[str, Any]
    predictions: Any
    label_ids: Any
    num_samples: int


@dataclass
class EvalAccumulator:
    """The state of ``evaluation_loop`` for one dataset, fed batch by batch.

    ``gather`` must run on every rank (it is a collective under DDP); ``pad`` pads dim 1 across
    processes with -100 before gathering.
    """

    prefix: str
    eval_batch_size: int
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    include_for_metrics: Sequence[str] = ()
    batch_eval_metrics: bool = False
    eval_accumulation_steps: int | None = None
    eval_do_concat_batches: bool = True
    logging_nan_inf_filter: bool = True
    keep_predictions: bool = True
    """False for ``evaluate()`` with batch_eval_metrics; ``predict()`` always keeps them."""
    gather: Callable[[Any], Any] = lambda x: x
    pad: Callable[[Any], Any] = lambda x: x
    _losses: EvalLoopContainer = field(init=False)
    _preds: EvalLoopContainer = field(init=False)
    _labels: EvalLoopContainer = field(init=False)
    _inputs: EvalLoopContainer = field(init=False)
    _metrics: dict[str, Any] | None = field(init=False, default=None)
    _observed: int = field(init=False, default=0)
    _step: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._losses = EvalLoopContainer(self.eval_do_concat_batches, padding_index=-100)
        self._preds = EvalLoopContainer(self.eval_do_concat_batches, padding_index=-100)
        self._labels = EvalLoopContainer(self.eval_do_concat_batches, padding_index=-100)
        self._inputs = EvalLoopContainer(self.eval_do_concat_batches, padding_index=-100)

    def add(self, inputs: Mapping[str, Any], loss: torch.Tensor | None, logits: Any, labels: Any, *, main_input: Any, is_last: bool) -> None:
        """One batch of the loop body of ``evaluation_loop``."""
        observed = find_batch_size(inputs)
        if observed is not None:
            self._observed += observed
        # transformers repeats each batch's loss eval_batch_size times; gather_for_metrics then drops what the last
        # batch repeats (see distributed.EvalGather)
        batch_size = self.eval_batch_size if self.eval_batch_size is not None else observed
        keep = self.keep_predictions
        losses = None
        if loss is not None:
            losses = self.gather(loss.repeat(batch_size))
            self._losses.add(losses)
        inputs_decode = None
        if "inputs" in self.include_for_metrics and main_input is not None:
            inputs_decode = self.gather(self.pad(main_input))
            if keep:
                self._inputs.add(inputs_decode)
        if labels is not None:
            labels = self.pad(labels)
        if logits is not None:
            logits = self.pad(logits)
            if self.preprocess_logits_for_metrics is not None:
                logits = self.preprocess_logits_for_metrics(logits, labels)
            logits = self.gather(logits)
            if keep:
                self._preds.add(logits)
        if labels is not None:
            labels = self.gather(labels)
            if keep:
                self._labels.add(labels)
        if self.batch_eval_metrics:
            if self.compute_metrics is not None and logits is not None and labels is not None:
                kwargs = {
                    "losses": losses if "loss" in self.include_for_metrics else None,
                    "inputs": inputs if "inputs" in self.include_for_metrics else None,
                }
                self._metrics = self.compute_metrics(
                    EvalPrediction(predictions=logits, label_ids=labels, **kwargs), compute_result=is_last
                )
        elif self.eval_accumulation_steps is not None and (self._step + 1) % self.eval_accumulation_steps == 0:
            for container in (self._losses, self._preds, self._labels, self._inputs):
                container.to_cpu_and_numpy()
        self._step += 1

    def finish(self, num_samples: int | None, model_preparation_time: float | None = None) -> EvalResult:
        """The end of ``evaluation_loop``: metrics (prefixed), the loss, predictions and labels."""
        losses = self._losses.get_arrays()
        preds = self._preds.get_arrays()
        labels = self._labels.get_arrays()
        inputs = self._inputs.get_arrays()
        if num_samples is None or (num_samples == 0 and self._observed > 0):
            num_samples = self._observed
        metrics: dict[str, Any]
        if self.compute_metrics is not None and preds is not None and labels is not None and not self.batch_eval_metrics:
            kwargs = {
                "losses": losses if "loss" in self.include_for_metrics else None,
                "inputs": inputs if "inputs" in self.include_for_metrics else None,
            }
            metrics = self.compute_metrics(EvalPrediction(predictions=preds, label_ids=labels, **kwargs))
        elif self._metrics is not None:
            metrics = self._metrics
        else:
            metrics = {}
        metrics = denumpify_detensorize(metrics)
        loss_array = np.concatenate(losses) if isinstance(losses, list) and losses else losses
        if isinstance(loss_array, np.ndarray):
            finite = np.isfinite(loss_array)
            if self.logging_nan_inf_filter and finite.any():
                loss_array = loss_array[finite]
            metrics[f"{self.prefix}_loss"] = loss_array.mean().item()
        if model_preparation_time is not None:
            metrics[f"{self.prefix}_model_preparation_time"] = model_preparation_time
        metrics = prefix_metrics(metrics, self.prefix)
        return EvalResult(metrics=metrics, predictions=preds, label_ids=labels, num_samples=num_samples)
