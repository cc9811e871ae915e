"""Optimizer and scheduler exactly as transformers.Trainer builds them (§6).

Everything is delegated to transformers: the no-decay rule (``get_parameter_names`` with its name
patterns), the optimizer class for ``args.optim`` (``Trainer.get_optimizer_cls_and_kwargs``, so
every optimizer name transformers knows works), and ``transformers.get_scheduler``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer as _HFTrainer
from transformers import TrainingArguments, get_scheduler
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_pt_utils import get_parameter_names

__all__ = ["decay_parameter_names", "parameter_groups", "create_optimizer", "create_scheduler", "is_plateau_scheduler"]

# transformers.Trainer.get_decay_parameter_names, which is an instance method there.
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get weight decay (transformers' rule, on lower-cased names)."""
    return get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The two groups of ``Trainer.create_optimizer``: decayed, then not decayed; frozen params left out."""
    decay = set(decay_parameter_names(model))
    return [
        {"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad], "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad], "weight_decay": 0.0},
    ]


def create_optimizer(
    model: nn.Module,
    args: TrainingArguments,
    optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """``Trainer.create_optimizer`` for ``model`` (the unwrapped PreTrainedModel or nn.Module)."""
    groups = parameter_groups(model, args.weight_decay)
    if optimizer_cls_and_kwargs is not None:
        optimizer_cls, optimizer_kwargs = optimizer_cls_and_kwargs
    else:
        try:
            optimizer_cls, optimizer_kwargs = _HFTrainer.get_optimizer_cls_and_kwargs(args, model)
        except ValueError as error:
            raise ValueError(f"`optim={args.optim!r}`: {error}") from error
    optimizer_kwargs = dict(optimizer_kwargs)
    if is_optimizer_factory(optimizer_cls):
        # Muon/Dion-style factories split the parameters themselves (Trainer.create_optimizer does the same).
        return optimizer_cls()(model, **optimizer_kwargs)
    # Some transformers handlers build their own parameter list (GaLore, LOMO, layer-wise optimizers).
    for key in ("params", "model", "optimizer_dict"):
        if key in optimizer_kwargs:
            groups = optimizer_kwargs.pop(key)
    return optimizer_cls(groups, **optimizer_kwargs)


def create_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, max_steps: int) -> Any:
    """``Trainer.create_scheduler``: ``get_scheduler(lr_scheduler_type, warmup=args.get_warmup_steps(T), T)``."""
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.get_warmup_steps(max_steps),
        num_training_steps=max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )


def is_plateau_scheduler(scheduler: Any) -> bool:
    """Schedulers that transformers steps with the eval metric instead of every optimizer step."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return True
    return type(scheduler).__name__ == "GreedyLR"
