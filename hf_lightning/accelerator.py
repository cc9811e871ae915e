"""``LightningAccelerator``: the ``accelerate.Accelerator`` methods trainers call, backed by Lightning.

transformers.Trainer and its subclasses (Seq2SeqTrainer, the QA example's trainer, TRL's trainers,
user subclasses) reach the hardware through ``self.accelerator``: ``backward``, ``gather``,
``gather_for_metrics``, ``pad_across_processes``, ``unwrap_model``, ``wait_for_everyone``, ``prepare``,
... Under hf_lightning, Lightning's strategy owns the processes, the devices, the precision and the
gradient synchronisation, so this object answers those calls from the running ``lightning.Trainer``
and ``HFModule`` instead of from accelerate's global state. Data loaders are prepared by accelerate's
own ``prepare_data_loader`` (the same sharding and sampler transformers gets), with Lightning's ranks.

Before a ``lightning.Trainer`` is attached it answers for one process on the CPU or the arguments'
device. An attribute it does not have raises an ``AttributeError`` that lists the ones it has.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from . import distributed

__all__ = ["LightningAccelerator", "SUPPORTED"]

SUPPORTED = (
    "backward", "gather", "gather_for_metrics", "pad_across_processes", "reduce", "unwrap_model", "prepare",
    "prepare_model", "prepare_data_loader", "prepare_optimizer", "prepare_scheduler", "no_sync", "autocast",
    "clip_grad_norm_", "wait_for_everyone", "print", "free_memory", "clear", "end_training", "get_state_dict", "save",
    "main_process_first", "local_main_process_first", "split_between_processes",
    "num_processes", "process_index", "local_process_index", "is_main_process", "is_local_main_process",
    "is_last_process", "use_distributed", "distributed_type", "device", "state", "mixed_precision", "scaler",
    "sync_gradients", "gradient_state", "optimizer_step_was_skipped", "parallelism_config", "is_fsdp2",
    "gradient_accumulation_steps",
)


class _GradientState(SimpleNamespace):
    """accelerate's ``GradientState`` fields that trainer code reads."""


class LightningAccelerator:
    """``accelerate.Accelerator``'s interface for trainer code, on a ``lightning.Trainer``.

    Args:
        args: the run's TrainingArguments (device and dataloader settings before a trainer is attached).
    """

    parallelism_config = None
    gradient_accumulation_steps = 1  # transformers accumulates itself and gives accelerate 1
    is_fsdp2 = False

    def __init__(self, args: Any) -> None:
        self.args = args
        self.trainer: Any = None
        self.module: Any = None
        self.gradient_state = _GradientState(sync_gradients=True, end_of_dataloader=False, remainder=-1)
        self.state = SimpleNamespace(fsdp_plugin=None, deepspeed_plugin=None, megatron_lm_plugin=None, owner=self)

    def bind(self, trainer: Any, module: Any) -> None:
        """Attach the ``lightning.Trainer`` and the ``HFModule`` that answer from now on."""
        self.trainer, self.module = trainer, module
        self.state.distributed_type = self.distributed_type
        self.state.num_processes = self.num_processes
        self.state.process_index = self.process_index
        self.state.mixed_precision = self.mixed_precision

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "trainer": None, "module": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"hf_lightning's accelerator (a Lightning-backed stand-in for accelerate.Accelerator) has no `{name}`; "
            f"it has: {', '.join(SUPPORTED)}. Use `trainer.lightning_trainer` for anything else."
        )

    # ------------------------------------------------------------------------------ topology

    @property
    def strategy(self) -> Any:
        return None if self.trainer is None else self.trainer.strategy

    @property
    def num_processes(self) -> int:
        return 1 if self.trainer is None else int(self.trainer.world_size)

    @property
    def process_index(self) -> int:
        return 0 if self.trainer is None else int(self.trainer.global_rank)

    @property
    def local_process_index(self) -> int:
        return 0 if self.trainer is None else int(self.trainer.local_rank)

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_process_index == 0

    @property
    def is_last_process(self) -> bool:
        return self.process_index == self.num_processes - 1

    @property
    def use_distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return self.args.device

    @property
    def distributed_type(self) -> DistributedType:
        if self.num_processes <= 1:
            return DistributedType.NO
        if distributed.is_sharded(self.strategy):
            return DistributedType.FSDP
        return DistributedType.MULTI_GPU if self.device.type == "cuda" else DistributedType.MULTI_CPU

    @property
    def mixed_precision(self) -> str:
        precision = str(getattr(self.trainer, "precision", "32-true"))
        if precision.startswith("bf16"):
            return "bf16"
        if precision.startswith("16"):
            return "fp16"
        return "no"

    @property
    def scaler(self) -> Any:
        plugin = getattr(self.trainer, "precision_plugin", None)
        return getattr(plugin, "scaler", None)

    @property
    def sync_gradients(self) -> bool:
        return self.gradient_state.sync_gradients

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """An fp16 step skipped for inf/nan gradients (the GradScaler lowered its scale)."""
        return bool(getattr(self.module, "step_was_skipped", False))

    # ---------------------------------------------------------------------------- the step

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Lightning's ``manual_backward`` (``HFModule.run_backward``): precision scaling, and DDP/FSDP gradient hooks."""
        learning_rate = kwargs.pop("learning_rate", None)
        optimizer = getattr(self.module, "hooks", None) and self.module.hooks.optimizer
        if learning_rate is not None and hasattr(optimizer, "fused_backward"):  # LOMO/AdaLOMO step inside backward
            optimizer.fused_backward(loss, learning_rate)  # what accelerate's lomo_backward does
            return
        if self.module is None or self.trainer is None:
            loss.backward(**kwargs)
            return
        # Lightning's bf16-mixed autocasts the whole step; accelerate only the forward. On CPU the backward runs
        # on this thread, so it would run under autocast and round the gradients differently from transformers.
        # (Entering torch.autocast costs ~25 us a step, so only when autocast is on.)
        device_type = loss.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                self.module.run_backward(loss, **kwargs)
        else:
            self.module.run_backward(loss, **kwargs)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module | None = None) -> Iterator[None]:
        """Skip the gradient all-reduce of the backward passes inside (accumulation micro-batches)."""
        if self.trainer is None:
            yield
            return
        with distributed.gradient_sync(self.strategy, self.module, enabled=False):
            yield

    @contextlib.contextmanager
    def autocast(self, autocast_handler: Any = None) -> Iterator[None]:
        """The run's autocast (under ``bf16-mixed``/``16-mixed``), also where only the model's forward autocasts."""
        plugin = getattr(self.trainer, "precision_plugin", None)
        if hasattr(plugin, "autocast_context_manager"):
            context = plugin.autocast_context_manager()
        else:
            context = plugin.forward_context() if plugin is not None else contextlib.nullcontext()
        with context:
            yield

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2) -> torch.Tensor:
        """Unscale (fp16), clip and return the total norm, across shards under FSDP."""
        scaler = self.scaler
        optimizer = getattr(self.module, "hooks", None) and self.module.hooks.optimizer
        if scaler is not None and optimizer is not None:
            inner = getattr(optimizer, "optimizer", optimizer)
            if scaler._per_optimizer_states[id(inner)]["stage"].name == "READY":
                scaler.unscale_(inner)
        if self.trainer is None:
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
        return distributed.clip_grad_norm(self.strategy, self.module, max_norm, list(parameters))

    # ----------------------------------------------------------------------- collectives

    def gather(self, tensor: Any) -> Any:
        """Every process's tensors concatenated on dim 0, in rank order (identity on one process)."""
        return distributed.gather(self.strategy, tensor)

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """``gather`` without the samples repeated to even out the last batch of an evaluation."""
        gather = getattr(self.module, "current_eval_gather", None)
        if gather is not None:
            return gather.gather(input_data)
        return self.gather(input_data)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad ``dim`` to the largest size on any process (a collective with several processes)."""
        return distributed.pad_across_processes(self.strategy, tensor, dim=dim, pad_index=pad_index, pad_first=pad_first)

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        if reduction == "sum":
            reduced = distributed.reduce_sum(self.strategy, tensor)
        elif reduction == "mean":
            reduced = distributed.reduce_mean(self.strategy, tensor)
        else:
            raise ValueError(f"reduce(reduction={reduction!r}): use 'sum' or 'mean'.")
        return reduced * scale if scale != 1.0 else reduced

    def wait_for_everyone(self) -> None:
        if self.trainer is not None and self.num_processes > 1:
            self.strategy.barrier("accelerator.wait_for_everyone")

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        if not self.is_local_main_process:
            self.wait_for_everyone()
        yield
        if self.is_local_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """This process's contiguous share of a list/tuple/tensor (accelerate's split, without padding)."""
        if apply_padding:
            raise ValueError("split_between_processes(apply_padding=True) is not supported by hf_lightning's accelerator.")
        n, rank = self.num_processes, self.process_index
        length = len(inputs)
        per, extra = divmod(length, n)
        start = rank * per + min(rank, extra)
        end = start + per + (1 if rank < extra else 0)
        yield inputs[start:end]

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_local_main_process:
            print(*args, **kwargs)

    # ----------------------------------------------------------------------- preparation

    def prepare(self, *objects: Any, device_placement: Any = None) -> Any:
        """DataLoaders are sharded like accelerate's; models, optimizers and schedulers pass through (Lightning owns them)."""
        prepared = tuple(self.prepare_data_loader(o) if isinstance(o, torch.utils.data.DataLoader) else o for o in objects)
        return prepared[0] if len(prepared) == 1 else prepared

    def prepare_model(self, model: nn.Module, device_placement: Any = None, evaluation_mode: bool = False) -> nn.Module:
        """accelerate's ``prepare_model`` for a model Lightning does not run (a reference or teacher model, which TRL's
        trainers prepare with ``evaluation_mode=True``): moved to the device, and under mixed precision its forward
        autocasts and returns fp32 outputs. Lightning's strategy places and wraps the model it trains."""
        from .arguments import precision_for
        from .precision import autocast_dtype_for, autocast_forward, is_forward_autocast

        if self.module is not None and model is getattr(self.module, "model", None):
            return model
        if not evaluation_mode and max(self.num_processes, self.args.world_size) > 1 and any(p.requires_grad for p in model.parameters()):
            raise NotImplementedError(
                f"accelerator.prepare_model({type(model).__name__}) for training under several processes: accelerate would "
                "wrap it in DistributedDataParallel, but Lightning's strategy trains only the HFModule's model, so its "
                "gradients would not be synchronised. Prepare it with evaluation_mode=True (no training), or train it "
                "in its own HFModule."
            )
        if device_placement is not False:
            model = model.to(self.device)
        plugin = getattr(self.trainer, "precision_plugin", None)
        if plugin is not None:
            dtype = plugin.autocast_dtype if is_forward_autocast(plugin) else None  # otherwise the step autocasts (or fp32)
            device_type = getattr(plugin, "device", None)
        else:  # before train() builds the lightning.Trainer: what the arguments will make it
            device_type = torch.device(self.device).type
            dtype = autocast_dtype_for(precision_for(self.args, device_type))
        if dtype is not None:
            autocast_forward(model, device_type, dtype)
        return model

    def prepare_optimizer(self, optimizer: Any, device_placement: Any = None) -> Any:
        return optimizer

    def prepare_scheduler(self, scheduler: Any) -> Any:
        return scheduler

    def prepare_data_loader(self, data_loader: torch.utils.data.DataLoader, device_placement: Any = None) -> Any:
        """accelerate's ``prepare_data_loader`` with Lightning's ranks: seedable sampler, per-rank batch shards."""
        from accelerate.data_loader import DataLoaderShard, prepare_data_loader

        if isinstance(data_loader, DataLoaderShard):
            return data_loader
        world, rank = distributed.data_ranks(self.trainer)
        config = self.args.accelerator_config
        return prepare_data_loader(
            data_loader,
            device=None,  # Lightning moves batches
            num_processes=world,
            process_index=rank,
            split_batches=config.split_batches,
            put_on_device=False,
            rng_types=None,
            dispatch_batches=False,
            even_batches=config.even_batches,
            use_seedable_sampler=config.use_seedable_sampler,
            data_seed=self.args.data_seed,
            non_blocking=config.non_blocking,
        )

    def unwrap_model(self, model: nn.Module, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True) -> nn.Module:
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(model, keep_fp32_wrapper, keep_torch_compile)

    def get_state_dict(self, model: nn.Module, unwrap: bool = True) -> dict[str, torch.Tensor]:
        """The model's full state dict (gathered from the shards under FSDP; a collective there)."""
        if self.trainer is None or self.module is None:
            return self.unwrap_model(model).state_dict()
        return distributed.full_model_state_dict(self.strategy, self.module)

    def save(self, obj: Any, f: Any, safe_serialization: bool = False) -> None:
        if self.is_main_process:
            torch.save(obj, f)

    def free_memory(self, *objects: Any) -> tuple:
        from accelerate.utils.memory import clear_device_cache

        clear_device_cache(garbage_collection=True)
        return tuple(None for _ in objects)

    clear = free_memory

    def end_training(self) -> None:
        """Lightning tears the process group down itself at the end of ``fit``; nothing to do."""

    def __repr__(self) -> str:
        return f"LightningAccelerator(num_processes={self.num_processes}, process_index={self.process_index}, device={os.fspath(str(self.device))})"
