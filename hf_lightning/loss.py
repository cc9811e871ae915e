"""The loss of a micro-batch as transformers.Trainer computes it (§3.2).

``compute_loss`` mirrors ``Trainer.compute_loss``; ``count_items`` mirrors ``_get_num_items_in_batch``
(without the cross-rank gather, which the LightningModule does through the strategy);
``loss_is_scaled_for_ga`` mirrors the decision in ``Trainer.training_step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer_pt_utils import LabelSmoother
from transformers.trainer_utils import unwrap_peft_model

__all__ = ["LossSettings", "loss_settings", "count_items", "compute_loss", "loss_is_scaled_for_ga", "ModelReturnedNoLoss"]


class ModelReturnedNoLoss(ValueError):
    """The model's forward returned no ``loss``."""


@dataclass(frozen=True)
class LossSettings:
    """What transformers.Trainer works out once from the model and the arguments."""

    model_accepts_loss_kwargs: bool
    """Forward takes ``**kwargs`` (or declares ``accepts_loss_kwargs``): ``num_items_in_batch`` is passed."""
    loss_shifts_labels: bool
    """Causal-LM loss: tokens are counted over ``labels[..., 1:]``."""
    is_causal_lm_class: bool
    """The class name is a causal LM (label smoothing shifts labels)."""
    label_smoother: LabelSmoother | None
    compute_loss_func: Callable | None
    average_tokens_across_devices: bool
    world_size: int


def loss_settings(
    model: nn.Module,
    *,
    label_smoothing_factor: float,
    compute_loss_func: Callable | None,
    average_tokens_across_devices: bool,
    world_size: int,
) -> LossSettings:
    """Read the model the way ``Trainer.__init__`` does (PEFT models unwrapped)."""
    unwrapped = unwrap_peft_model(model)
    if hasattr(unwrapped, "accepts_loss_kwargs"):
        accepts = bool(unwrapped.accepts_loss_kwargs)
    else:
        params = inspect.signature(unwrapped.forward).parameters.values()
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    config = getattr(unwrapped, "config", None)
    shifts = LOSS_MAPPING.get(getattr(unwrapped, "loss_type", None)) is ForCausalLMLoss and not getattr(
        config, "is_encoder_decoder", False
    )
    smoother = None
    if label_smoothing_factor != 0 and getattr(config, "problem_type", None) != "multi_label_classification":
        smoother = LabelSmoother(epsilon=label_smoothing_factor)
    return LossSettings(
        model_accepts_loss_kwargs=accepts,
        loss_shifts_labels=shifts,
        is_causal_lm_class=unwrapped._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values(),
        label_smoother=smoother,
        compute_loss_func=compute_loss_func,
        average_tokens_across_devices=average_tokens_across_devices,
        world_size=world_size,
    )


def count_items(batches: Sequence[Mapping[str, Any]], settings: LossSettings) -> torch.Tensor | None:
    """Label tokens (``!= -100``) over one accumulation group, for ``num_items_in_batch``.

    None when transformers would not compute it: no ``labels``, or a model that takes no loss
    kwargs and no ``compute_loss_func``, or labels that can't be counted (object detection).
    The result stays on the labels' device: no host synchronisation.
    """
    if not batches or "labels" not in batches[0]:
        return None
    if not (settings.model_accepts_loss_kwargs or settings.compute_loss_func is not None):
        return None
    try:
        counted = [
            b["shift_labels"] if "shift_labels" in b else b["labels"][..., 1:] if settings.loss_shifts_labels else b["labels"]
            for b in batches
        ]
        return sum(labels.ne(-100).sum() for labels in counted)  # type: ignore[return-value]
    except (TypeError, AttributeError):
        return None


def loss_is_scaled_for_ga(settings: LossSettings, num_items_in_batch: Any) -> bool:
    """True when the loss is already normalised over the whole group (so no division by its size)."""
    return (settings.model_accepts_loss_kwargs and num_items_in_batch is not None) or settings.compute_loss_func is not None


def compute_loss(
    model: Callable[..., Any],
    inputs: Mapping[str, Any],
    settings: LossSettings,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    return_outputs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Any]:
    """``Trainer.compute_loss``: label smoothing, ``compute_loss_func``, loss kwargs, token averaging."""
    inputs = dict(inputs)
    labels = None
    if (settings.label_smoother is not None or settings.compute_loss_func is not None) and "labels" in inputs:
        labels = inputs.pop("labels")
    if settings.model_accepts_loss_kwargs and num_items_in_batch is not None:
        inputs["num_items_in_batch"] = num_items_in_batch
    outputs = model(**inputs)
    if settings.compute_loss_func is not None:
        loss = settings.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
    elif labels is not None:
        assert settings.label_smoother is not None
        loss = settings.label_smoother(
            outputs, labels, shift_labels=settings.is_causal_lm_class, num_items_in_batch=num_items_in_batch
        )
    else:
        if isinstance(outputs, Mapping):
            if outputs.get("loss") is None:
                raise ModelReturnedNoLoss(
                    f"The model did not return a loss; its output has the keys {sorted(k for k in outputs.keys() if outputs[k] is not None)} "
                    f"for the inputs {sorted(inputs.keys())}. Pass `labels` (see `label_names`) or a `compute_loss_func`."
                )
            loss = outputs["loss"]
        elif isinstance(outputs, (tuple, list)):
            loss = outputs[0]
        else:
            raise ModelReturnedNoLoss(
                f"The model returned a {type(outputs).__name__}, not a dict/ModelOutput or tuple with a loss."
            )
    if (
        settings.average_tokens_across_devices
        and (settings.model_accepts_loss_kwargs or settings.compute_loss_func is not None)
        and num_items_in_batch is not None
    ):
        loss = loss * settings.world_size
    return (loss, outputs) if return_outputs else loss
