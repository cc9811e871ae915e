"""The only module that knows about DDP and FSDP.

Gradient-sync control during accumulation, strategy-aware clipping, reductions, and gathering
evaluation tensors the way accelerate's ``gather_for_metrics`` does. Every function here that
communicates is a collective: call it on every rank.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler, SequentialSampler
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from .state import strategy_name

__all__ = [
    "eval_sampler",
    "gradient_sync",
    "clip_grad_norm",
    "reduce_sum",
    "reduce_mean",
    "world_size",
    "is_distributed",
    "EvalGather",
]


def world_size(strategy: Any) -> int:
    return int(getattr(strategy, "world_size", 1) or 1)


def is_distributed(strategy: Any) -> bool:
    return world_size(strategy) > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def eval_sampler(dataset: Any, args: TrainingArguments, processing_class: Any, *, world_size: int, rank: int) -> Sampler[int] | None:
    """``Trainer._get_eval_sampler``: sequential on one process (length-grouped with group_by_length).

    With several processes the batches are sharded like accelerate does (``EvalBatchSharder``),
    so the sampler itself stays sequential.
    """
    if strategy_name(args.train_sampling_strategy) == "group_by_length":
        model_input_name = processing_class.model_input_names[0] if processing_class is not None else None
        lengths = None
        try:
            import datasets

            if isinstance(dataset, datasets.Dataset) and args.length_column_name in dataset.column_names:
                lengths = dataset[args.length_column_name]
        except ImportError:  # pragma: no cover
            pass
        return LengthGroupedSampler(
            args.per_device_eval_batch_size,
            dataset=dataset,
            lengths=lengths,
            model_input_name=model_input_name,
            generator=torch.Generator().manual_seed(args.data_seed if args.data_seed is not None else args.seed),
        )
    return SequentialSampler(dataset)


def _ddp_module(strategy: Any) -> Any:
    model = getattr(strategy, "model", None)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model
    return None


def _fsdp2_roots(module: nn.Module) -> list[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gradient_sync(strategy: Any, module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce for micro-batches that are not the last of their group.

    DDP: ``require_backward_grad_sync`` (what ``no_sync`` toggles; Lightning's manual-optimization
    backward honours it). FSDP2: ``set_requires_gradient_sync``. Elsewhere: nothing to do.
    """
    if enabled:
        yield
        return
    ddp = _ddp_module(strategy)
    if ddp is not None:
        previous = ddp.require_backward_grad_sync
        ddp.require_backward_grad_sync = False
        try:
            yield
        finally:
            ddp.require_backward_grad_sync = previous
        return
    roots = _fsdp2_roots(module)
    if roots:
        for root in roots:
            root.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for root in roots:
                root.set_requires_gradient_sync(True, recurse=False)
        return
    fsdp1 = getattr(strategy, "model", None)
    if fsdp1 is not None and type(fsdp1).__name__ == "FullyShardedDataParallel":
        with fsdp1.no_sync():
            yield
        return
    yield


def clip_grad_norm(strategy: Any, module: nn.Module, max_norm: float, parameters: Sequence[nn.Parameter] | None = None) -> torch.Tensor:
    """Clip to ``max_norm`` (``inf`` only measures) and return the pre-clip total norm, on device.

    FSDP1 uses the wrapper's own ``clip_grad_norm_``; DTensor (FSDP2) norms are materialised.
    ``parameters`` is ``module``'s parameters listed in advance (walking the submodules every step is slow).
    """
    wrapper = getattr(strategy, "model", None)
    if wrapper is not None and type(wrapper).__name__ == "FullyShardedDataParallel":
        return wrapper.clip_grad_norm_(max_norm)
    params = [p for p in (module.parameters() if parameters is None else parameters) if p.grad is not None]
    if not params:
        return torch.zeros((), device=module.device if hasattr(module, "device") else "cpu")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full_tensor = getattr(norm, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else norm


def reduce_sum(strategy: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity on one process)."""
    if not is_distributed(strategy):
        return tensor
    return strategy.reduce(tensor, reduce_op="sum")


def reduce_mean(strategy: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity on one process)."""
    if not is_distributed(strategy):
        return tensor
    return strategy.reduce(tensor, reduce_op="mean")


class EvalGather:
    """Pad and gather evaluation tensors across ranks like accelerate's ``gather_for_metrics``.

    On one process both are the identity. With several processes, tensors are padded on dim 1 with
    -100 to the largest length on any rank, gathered in rank order, and the samples that the
    even-batches sharding duplicated at the end of the dataset are dropped from the last batch.
    """

    def __init__(self, strategy: Any, *, num_samples: int | None, batch_size: int) -> None:
        self.strategy = strategy
        self.active = is_distributed(strategy)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seen = 0
        self._remaining: int | None = None

    def begin_batch(self) -> None:
        """Call once per eval batch, before its tensors are gathered."""
        if self.num_samples is not None:
            self._remaining = self.num_samples - self.seen
            self.seen += self.batch_size * world_size(self.strategy)

    def pad(self, data: Any) -> Any:
        if not self.active:
            return data
        from accelerate.utils import pad_across_processes

        return pad_across_processes(data, dim=1, pad_index=-100)

    def gather(self, data: Any) -> Any:
        if not self.active:
            return data
        from accelerate.utils import gather, recursively_apply

        gathered = gather(data)
        remaining = self._remaining
        if remaining is None or remaining >= self.batch_size * world_size(self.strategy):
            return gathered
        return recursively_apply(lambda t: t[: max(remaining, 0)], gathered)

    @staticmethod
    def steps(num_samples: int, batch_size: int, world: int) -> int:
        return math.ceil(num_samples / (batch_size * world))
