"""DDP and FSDP on Lightning: choosing the strategy, gradient sync, reductions and gathering.

- **Strategies**: ``resolve_strategy`` picks the run's strategy: ``ddp_strategy`` maps the ``ddp_*``
  TrainingArguments onto Lightning's ``DDPStrategy``, ``fsdp_strategy`` maps ``fsdp``/``fsdp_config`` onto
  ``FSDP2Strategy``/``FSDPStrategy`` (defined in ``fsdp_strategies``, exported here under their public names).
- **Training**: gradient-sync control during accumulation, strategy-aware clipping, reductions.
- **Data**: evaluation batches sharded like accelerate's ``BatchSamplerShard``, and gathering that
  drops the duplicated samples like ``gather_for_metrics``.

``launching`` gives Lightning's script launcher the ``RANK`` transformers needs; ``fsdp_units`` and
``fsdp_checkpoint`` pick the FSDP units and write the FSDP checkpoint files.

Every function here that communicates is a collective: call it on every rank.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from torch import nn
from transformers import TrainingArguments

from . import fsdp_args
from .fsdp_checkpoint import (
    FSDP_MODEL_DIR,
    FSDP_MODEL_FILE,
    FSDP_OPTIMIZER_DIR,
    checkpoint_layout,
    load_full_model,
    load_sharded_model,
    model_state,
    saved_world_size,
    share_tied,
    strip_model_prefix,
    warn_on_world_size_change,
)
from .fsdp_strategies import FSDP2Strategy, FSDPStrategy, HFShardedCheckpoints

__all__ = [
    "FSDP2Strategy",
    "FSDPStrategy",
    "ddp_strategy",
    "fsdp_strategy",
    "resolve_strategy",
    "several_processes",
    "gather_remainder",
    "gradient_sync",
    "clip_grad_norm",
    "reduce_sum",
    "reduce_mean",
    "world_size",
    "is_distributed",
    "is_sharded",
    "EvalGather",
    "full_model_state_dict",
    "load_full_weights",
    "checkpoint_layout",
    "saved_world_size",
    "warn_on_world_size_change",
    "FSDP_MODEL_FILE",
    "FSDP_MODEL_DIR",
    "FSDP_OPTIMIZER_DIR",
]

# ------------------------------------------------------------------------------------ basics


def world_size(strategy: Any) -> int:
    return int(getattr(strategy, "world_size", 1) or 1)


def is_distributed(strategy: Any) -> bool:
    return world_size(strategy) > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def is_sharded(strategy: Any) -> bool:
    """The strategy shards parameters (FSDP1/FSDP2): weights must be gathered or loaded collectively."""
    return isinstance(strategy, (ModelParallelStrategy, LightningFSDPStrategy))


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


# --------------------------------------------------------------------------------- strategies


def ddp_strategy(args: TrainingArguments) -> DDPStrategy:
    """Lightning's ``DDPStrategy`` with the ``ddp_*`` arguments, as ``Trainer._build_accelerator_args`` sets them.

    ``find_unused_parameters`` defaults like transformers: on, unless activation checkpointing is on.
    """
    from datetime import timedelta

    find_unused = args.ddp_find_unused_parameters
    if find_unused is None:
        find_unused = not (args.activation_checkpointing or getattr(args, "gradient_checkpointing", False))
    kwargs: dict[str, Any] = {"find_unused_parameters": find_unused}
    if args.ddp_bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = args.ddp_bucket_cap_mb
    if args.ddp_broadcast_buffers is not None:
        kwargs["broadcast_buffers"] = args.ddp_broadcast_buffers
    if args.ddp_static_graph is not None:
        kwargs["static_graph"] = args.ddp_static_graph
    return DDPStrategy(process_group_backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout), **kwargs)


_STRATEGY_NAMES = {"fsdp": "FSDPStrategy", "fsdp2": "FSDP2Strategy", "model_parallel": "FSDP2Strategy"}


def several_processes(trainer_kwargs: Mapping[str, Any]) -> bool:
    """Whether ``lightning.Trainer(**trainer_kwargs)`` will run several processes (devices or nodes)."""
    if int(trainer_kwargs.get("num_nodes", 1) or 1) > 1:
        return True
    devices = trainer_kwargs.get("devices", "auto")
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return int(devices) > 1 or int(devices) == -1
    if devices == "auto" and str(trainer_kwargs.get("accelerator", "auto")) in ("auto", "gpu", "cuda"):
        return torch.cuda.is_available() and torch.cuda.device_count() > 1  # Lightning's "auto" takes every GPU
    return False


def resolve_strategy(args: TrainingArguments, trainer_kwargs: Mapping[str, Any]) -> Any:
    """The Lightning strategy for a run: FSDP from ``args.fsdp``, the user's, a named FSDP one, or DDP for several processes.

    ``fsdp``/``fsdp_config`` give ``FSDP2Strategy``/``FSDPStrategy`` (``fsdp_strategy``); with them, a ``strategy``
    passed to Lightning is refused (two answers to one question). DDP gets the ``ddp_*`` arguments
    (``ddp_strategy``). Lightning's own ``FSDPStrategy``/``ModelParallelStrategy`` write Lightning's checkpoint
    layout, so they are refused with the hf_lightning subclass to use instead.
    """
    from datetime import timedelta

    strategy = trainer_kwargs.get("strategy")
    if fsdp_args.fsdp_enabled(args):
        if strategy not in (None, "auto"):
            shown = strategy if isinstance(strategy, str) else f"{type(strategy).__name__}(...)"
            raise ValueError(
                f"`fsdp={args.fsdp!r}` (TrainingArguments) and `strategy={shown!r}` (lightning.Trainer) both choose how the "
                "model is distributed; keep one: `fsdp`/`fsdp_config` (mapped onto hf_lightning's FSDP strategies), or "
                "`strategy=` with `fsdp` unset."
            )
        return fsdp_strategy(args, trainer_kwargs)
    if strategy is None and several_processes(trainer_kwargs):
        return ddp_strategy(args)
    if strategy == "ddp":
        return ddp_strategy(args)
    if isinstance(strategy, str) and strategy in _STRATEGY_NAMES:
        cls = FSDP2Strategy if _STRATEGY_NAMES[strategy] == "FSDP2Strategy" else FSDPStrategy
        return cls(process_group_backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout))
    if isinstance(strategy, (ModelParallelStrategy, LightningFSDPStrategy)) and not isinstance(strategy, HFShardedCheckpoints):
        ours, name = ("FSDP2Strategy", "fsdp2") if isinstance(strategy, ModelParallelStrategy) else ("FSDPStrategy", "fsdp")
        raise ValueError(
            f"`strategy={type(strategy).__name__}(...)` writes Lightning's checkpoint layout, not transformers' "
            f"checkpoint-N folders. Use `hf_lightning.distributed.{ours}(...)` (same arguments, plus "
            f"`state_dict_type='full'|'sharded'`), or `strategy={name!r}`."
        )
    return strategy


def fsdp_strategy(args: TrainingArguments, trainer_kwargs: Mapping[str, Any] | None = None) -> FSDP2Strategy | FSDPStrategy:
    """``FSDP2Strategy`` (``fsdp_config['version']`` 2, the default) or ``FSDPStrategy`` (1) for ``args.fsdp``/``fsdp_config``.

    The mapping of every option is ``fsdp_args.FSDPPlan.strategy_kwargs`` (table in docs/distributed.md); what
    cannot be mapped raises ``ValueError`` (``fsdp_args.fsdp_problems``, also checked by ``validate_arguments``).
    """
    from datetime import timedelta

    plan = fsdp_args.fsdp_plan(args)
    if plan is None:
        raise ValueError("`fsdp` is not set in these TrainingArguments.")
    accelerator = (trainer_kwargs or {}).get("accelerator", "auto")
    if plan.version == 1 and (accelerator == "cpu" or type(accelerator).__name__ == "CPUAccelerator"):
        raise ValueError(
            "`fsdp_config['version']=1` (FSDP1, Lightning's FSDPStrategy) needs CUDA GPUs, and `accelerator='cpu'` was "
            "given; use `fsdp_config['version']=2` (FSDP2, which also runs on CPU over gloo)."
        )
    common = dict(process_group_backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout))
    cls = FSDP2Strategy if plan.version == 2 else FSDPStrategy
    return cls(**plan.strategy_kwargs(), **common)


# --------------------------------------------------------------------- whole-model weights


def full_model_state_dict(strategy: Any, module: nn.Module) -> dict[str, torch.Tensor]:
    """The transformers model's full state dict on rank 0 (empty elsewhere under FSDP). A collective."""
    if is_sharded(strategy):
        return share_tied(module.model, strip_model_prefix(model_state(strategy.model, full=True)))  # type: ignore[arg-type]
    return {k: v for k, v in module.model.state_dict().items()}  # type: ignore[union-attr]


def load_full_weights(strategy: Any, checkpoint_dir: str | os.PathLike) -> None:
    """Load a checkpoint's weights (any layout) into a sharded model, e.g. the best model at the end. A collective."""
    path = Path(checkpoint_dir)
    if checkpoint_layout(path) == "sharded":
        load_sharded_model(strategy.model, path / FSDP_MODEL_DIR)
    else:
        load_full_model(strategy.model, path, is_zero=strategy.is_global_zero)


# --------------------------------------------------------------------------- gradient sync


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
    backward honours it). FSDP2: ``set_requires_gradient_sync``. FSDP1: ``no_sync``. Elsewhere: nothing.
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

    FSDP1 uses the wrapper's own ``clip_grad_norm_``; with FSDP2 the norm of the DTensor gradients
    is reduced over the shards and returned as a plain tensor.
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


# ----------------------------------------------------------------------------------- data


def gather_remainder(loader: Any) -> int:
    """accelerate's ``GradientState.remainder`` for ``loader``: how many samples of its last gathered batch are real.

    -1 (keep everything) unless the loader was prepared by accelerate (``DataLoaderShard``), knows its
    length and keeps its last batch, as ``gather_for_metrics`` decides.
    """
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

    if not isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)) or loader._drop_last:
        return -1
    try:
        length = getattr(loader.dataset, "total_dataset_length", len(loader.dataset))
        return length % loader.total_batch_size
    except (TypeError, AttributeError):
        return -1


class EvalGather:
    """Pad and gather evaluation tensors across ranks like accelerate's ``gather_for_metrics``.

    With several processes, tensors are padded on dim 1 with -100 to the largest length on any rank
    and gathered in rank order. In the dataloader's last batch only the first ``remainder`` gathered
    samples are kept (the rest repeat samples to even the batches out, or, on one process, the loss
    repeated ``eval_batch_size`` times); see ``gather_remainder``.
    """

    def __init__(self, strategy: Any, *, remainder: int = -1) -> None:
        self.strategy = strategy
        self.active = is_distributed(strategy)
        self.remainder = remainder
        self._last = False

    def begin_batch(self, is_last: bool = False) -> None:
        """Call once per eval batch, before its tensors are gathered."""
        self._last = is_last

    def pad(self, data: Any) -> Any:
        if not self.active:
            return data
        from accelerate.utils import recursively_apply

        return recursively_apply(_pad_across_ranks, data, error_on_other_type=True)

    def gather(self, data: Any) -> Any:
        from accelerate.utils import recursively_apply

        gathered = recursively_apply(_gather_cat, data, error_on_other_type=True) if self.active else data
        if self._last and self.remainder > 0:
            remainder = self.remainder
            return recursively_apply(lambda t: t[:remainder], gathered)
        return gathered


def gather(strategy: Any, data: Any) -> Any:
    """accelerate's ``gather``: every rank's tensors concatenated on dim 0 in rank order (identity on one process)."""
    if not is_distributed(strategy):
        return data
    from accelerate.utils import recursively_apply

    return recursively_apply(_gather_cat, data, error_on_other_type=True)


def pad_across_processes(strategy: Any, data: Any, *, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
    """accelerate's ``pad_across_processes``: pad ``dim`` to the largest size on any rank (identity on one process)."""
    if not is_distributed(strategy):
        return data
    from accelerate.utils import recursively_apply

    return recursively_apply(_pad_across_ranks, data, error_on_other_type=True, dim=dim, pad_index=pad_index, pad_first=pad_first)


def data_ranks(trainer: Any) -> tuple[int, int]:
    """``(world size, global rank)`` for sharding data, also before Lightning has launched the processes.

    A process that Lightning's launcher started knows its rank from the environment only once the
    strategy has set its world ranks; that is done here if it has not happened yet.
    """
    if trainer is None:
        return 1, 0
    strategy = trainer.strategy
    world = int(trainer.world_size)
    if world > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        set_ranks = getattr(strategy, "set_world_ranks", None)
        if callable(set_ranks):
            set_ranks()
    return world, int(trainer.global_rank)


def sync_accelerate_state(trainer: Any, args: TrainingArguments) -> None:
    """Make accelerate's global ``PartialState`` (which ``TrainingArguments.world_size``/``process_index`` read)
    agree with the process group Lightning has set up.

    A process started by Lightning's launcher, or the launching process itself, built its
    ``TrainingArguments`` before the process group existed, so accelerate took it for a single process.
    transformers code that branches on ``args.world_size`` would then take different branches on
    different ranks (a collective on some ranks only: a hang). Call on every rank after setup.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    from accelerate.state import PartialState

    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    state = PartialState()
    if state.num_processes == world and state.process_index == rank:
        return
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(trainer.local_rank))
    PartialState._reset_state()
    PartialState(cpu=args.use_cpu)
    if args.__dict__.get("_n_gpu", 1) > 1:
        args._n_gpu = 1  # one device per process, as transformers sets it for distributed runs


# accelerate's `gather`/`pad_across_processes`, on torch.distributed directly: accelerate's versions
# consult its global PartialState, which is not distributed in a process Lightning's launcher started.


def _gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' tensors concatenated on dim 0 in rank order (0-d tensors become 1-element rows)."""
    if tensor.ndim == 0:
        tensor = tensor.clone()[None]
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def _pad_across_ranks(tensor: torch.Tensor, dim: int = 1, pad_index: int = -100, pad_first: bool = False) -> torch.Tensor:
    """Pad ``dim`` with ``pad_index`` to the largest size on any rank (a collective unless ``dim`` is absent)."""
    if dim >= tensor.ndim:
        return tensor
    sizes = _gather_cat(torch.tensor(tensor.shape, device=tensor.device)[None]).cpu()
    largest = int(sizes[:, dim].max())
    if largest == tensor.shape[dim]:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = largest
    padded = tensor.new_full(shape, pad_index)
    start = largest - tensor.shape[dim] if pad_first else 0
    padded.narrow(dim, start, tensor.shape[dim]).copy_(tensor)
    return padded
