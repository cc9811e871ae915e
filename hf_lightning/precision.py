"""Mixed precision where accelerate puts it for transformers.Trainer: around the model's forward, nowhere else.

Lightning's ``MixedPrecision`` autocasts every training/evaluation step as a whole. accelerate instead wraps the
model's ``forward`` in autocast and converts its outputs to fp32 (``Accelerator.prepare_model``,
``convert_outputs_to_fp32``). Under transformers.Trainer a loss computed outside the model (label smoothing,
``compute_loss_func``, the evaluation loss of ``prediction_step``) then sees fp32 logits and runs without autocast,
and so does what ``generate`` computes between forwards (the encoder of an encoder-decoder, the logits processors).

``ForwardAutocastPrecision`` keeps everything else of Lightning's plugin (its precision name, the fp16 GradScaler,
gradient clipping rules) and only drops the step-wide autocast; ``autocast_forward`` wraps the model the way
accelerate does. ``build_trainer`` (and so ``hf_lightning.Trainer``) uses both for ``bf16``/``fp16`` on one device
or under DDP; FSDP keeps Lightning's plugin. An ``HFModule`` in a ``lightning.Trainer`` of one's own gets the same:
its Lightning ``MixedPrecision`` is swapped for this one when the module attaches (``builder.adopt_trainer``); a
precision plugin of another kind is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from types import MethodType
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from typing_extensions import override

__all__ = ["ForwardAutocastPrecision", "autocast_forward", "is_forward_autocast"]

_ORIGINAL_FORWARD = "_original_forward"  # accelerate's name: extract_model_from_parallel(keep_fp32_wrapper=False) undoes it


class ForwardAutocastPrecision(MixedPrecision):
    """Lightning's ``MixedPrecision`` without the step-wide autocast: the model's forward autocasts itself.

    Args:
        precision: ``"bf16-mixed"`` or ``"16-mixed"``.
        device: the device type autocast runs on (``"cpu"``, ``"cuda"``).
        scaler: a ``torch.amp.GradScaler`` for ``16-mixed`` (one is made when absent, as Lightning does).
    """

    @property
    def autocast_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16

    @override
    @contextlib.contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        yield


def autocast_dtype_for(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (``None``: no autocast)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))


def is_forward_autocast(plugin: Any) -> bool:
    """Whether a run's precision plugin leaves autocast to the model's forward."""
    return isinstance(plugin, ForwardAutocastPrecision)


def autocast_forward(model: nn.Module, device_type: str, dtype: torch.dtype) -> nn.Module:
    """Wrap ``model.forward`` in autocast and convert its outputs to fp32, as accelerate's ``prepare_model``.

    Args:
        model: the model whose forward autocasts from now on.
        device_type: the autocast device type (``"cpu"``, ``"cuda"``).
        dtype: ``torch.bfloat16`` or ``torch.float16``.

    Done once per model (a second call finds it wrapped) and, as under accelerate, left in place afterwards.
    """
    from accelerate.utils import convert_outputs_to_fp32

    if _ORIGINAL_FORWARD in model.__dict__:
        return model
    autocast = torch.autocast(device_type=device_type, dtype=dtype)
    setattr(model, _ORIGINAL_FORWARD, model.forward)
    if hasattr(model.forward, "__func__"):
        model.forward = MethodType(autocast(model.forward.__func__), model)
        model.forward = MethodType(convert_outputs_to_fp32(model.forward.__func__), model)
    else:
        model.forward = convert_outputs_to_fp32(autocast(model.forward))
    return model
