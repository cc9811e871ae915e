"""DDP and FSDP on Lightning: strategies, launching, gradient sync and gathering (with ``fsdp_units``, which
picks and shards the FSDP units, and ``fsdp_checkpoint``, which writes and reads FSDP checkpoint files, the
only modules that know about DDP and FSDP).

- **Strategies**: ``ddp_strategy`` maps the ``ddp_*`` TrainingArguments onto Lightning's ``DDPStrategy``;
  ``FSDP2Strategy`` (Lightning's ``ModelParallelStrategy``, runs on CPU too) and ``FSDPStrategy``
  (Lightning's FSDP1 strategy, GPU only) shard the model and write accelerate/transformers' FSDP
  checkpoint layout (§1.3) instead of Lightning's own.
- **Training**: gradient-sync control during accumulation, strategy-aware clipping, reductions.
- **Data**: evaluation batches sharded like accelerate's ``BatchSamplerShard``, and gathering that
  drops the duplicated samples like ``gather_for_metrics``.
- **Launching**: Lightning's script launcher with the ``RANK`` that transformers' ``TrainingArguments``
  (through accelerate) needs in each child process.

Every function here that communicates is a collective: call it on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import nn
from transformers import TrainingArguments
from transformers.trainer import OPTIMIZER_NAME_BIN
from typing_extensions import override

from . import fsdp_args, hf_format
from .fsdp_units import LayerWrapPolicy, RankZeroWeights, checkpoint_units, fsdp2_mixed_precision, has_fsdp2, shard_model, size_policy, unit_policy
from .fsdp_checkpoint import (
    dcp_save,
    fsdp_optimizer_source,
    load_full_model,
    load_full_optimizer,
    load_scheduler,
    load_sharded_model,
    load_sharded_optimizer,
    model_state,
    optimizer_state,
    save_model_description,
    share_tied,
    strip_model_prefix,
    strip_optimizer_prefix,
    FSDP_MODEL_DIR,
    FSDP_MODEL_FILE,
    FSDP_OPTIMIZER_DIR,
    checkpoint_layout,
    saved_world_size,
    warn_on_world_size_change,
)
from .hf_format import CheckpointError

__all__ = [
    "FSDP2Strategy",
    "FSDPStrategy",
    "ddp_strategy",
    "fsdp_strategy",
    "resolve_strategy",
    "several_processes",
    "prepare_launcher",
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

log = logging.getLogger(__name__)


StateDictType = Literal["full", "sharded"]


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


# ---------------------------------------------------------------------------------- launching


class _RankedScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, also giving each child its global ``RANK``.

    A child re-runs the user's script, which builds ``TrainingArguments`` before Lightning starts;
    accelerate (inside ``TrainingArguments``) then initialises the process group from the environment
    and, without ``RANK``, takes rank 0 in every child (CPU) or refuses to start (GPU). With ``RANK``
    set it joins as the right rank and Lightning reuses that process group. The body is Lightning's
    ``_call_children_scripts`` with the two extra variables.
    """

    @override
    def _call_children_scripts(self) -> None:
        from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd

        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        os.environ["LOCAL_WORLD_SIZE"] = str(self.num_processes)
        first = env.node_rank() * self.num_processes
        os.environ["RANK"] = str(first)
        for local_rank in range(1, self.num_processes):
            child = os.environ.copy()
            child["LOCAL_RANK"] = str(local_rank)
            child["RANK"] = str(first + local_rank)
            if os.environ.get("PL_GLOBAL_SEED") is None:
                child.pop("PL_GLOBAL_SEED", None)
            self.procs.append(subprocess.Popen(_basic_subprocess_cmd(), env=child))


def prepare_launcher(trainer: Any) -> None:
    """Swap the strategy's Lightning script launcher for ``_RankedScriptLauncher`` (same settings)."""
    strategy = trainer.strategy
    strategy._launcher = _ranked(getattr(strategy, "_launcher", None))


def _ranked(launcher: Any) -> Any:
    if type(launcher) is _SubprocessScriptLauncher and not _hydra_in_use():  # hydra children need Lightning's own command
        return _RankedScriptLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
    return launcher


def _hydra_in_use() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return False
    return HydraConfig.initialized()


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
    if isinstance(strategy, (ModelParallelStrategy, LightningFSDPStrategy)) and not isinstance(strategy, _HFShardedCheckpoints):
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


class _HFShardedCheckpoints:
    """Checkpoints of a sharding strategy in accelerate/transformers' FSDP layout (§1.3).

    ``state_dict_type="full"``: rank 0 writes ``model.safetensors`` + config/tokenizer/``training_args.bin``
    (through ``HFCheckpointIO``), ``pytorch_model_fsdp.bin`` and ``optimizer.bin`` (full, FQN-keyed).
    ``state_dict_type="sharded"``: every rank writes its shard through ``torch.distributed.checkpoint``
    into ``pytorch_model_fsdp_0/`` (``{"model": sd}``) and ``optimizer_0/`` (``{"optimizer": osd}``);
    with ``save_consolidated=True`` rank 0 also writes the gathered ``model.safetensors`` + config.
    Loading reads whichever layout is on disk, in place into the sharded model and optimizer.
    """

    _hf_state_dict_type: StateDictType = "full"
    _hf_save_consolidated: bool = False

    def _init_hf(self, state_dict_type: str, save_consolidated: bool) -> None:
        normalised = {"full": "full", "full_state_dict": "full", "sharded": "sharded", "sharded_state_dict": "sharded"}.get(
            str(state_dict_type).lower()
        )
        if normalised is None:
            raise ValueError(
                f"`state_dict_type={state_dict_type!r}` is not valid; use 'full' (model.safetensors + "
                "pytorch_model_fsdp.bin + optimizer.bin) or 'sharded' (pytorch_model_fsdp_0/ + optimizer_0/)."
            )
        if save_consolidated and normalised == "full":
            raise ValueError("`save_consolidated=True` only applies to `state_dict_type='sharded'` (full saves write model.safetensors already).")
        self._hf_state_dict_type = normalised  # type: ignore[assignment]
        self._hf_save_consolidated = bool(save_consolidated)

    @property
    def state_dict_type(self) -> StateDictType:
        return self._hf_state_dict_type

    # What Lightning's dump_checkpoint collects (collectives).

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return model_state(self.model, full=self._hf_state_dict_type == "full")  # type: ignore[attr-defined]

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        return optimizer_state(self.model, optimizer, full=self._hf_state_dict_type == "full")  # type: ignore[attr-defined]

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """Weights were loaded in place by ``load_checkpoint``."""

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Optimizer states were loaded in place by ``load_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(str(filepath)))  # type: ignore[attr-defined]
        is_zero = self.is_global_zero  # type: ignore[attr-defined]
        weights = checkpoint.pop("state_dict", None)
        optimizer_states = checkpoint.pop("optimizer_states", None) or []
        if self._hf_state_dict_type == "sharded":
            dcp_save({"model": strip_model_prefix(weights or {})}, path / FSDP_MODEL_DIR)
            if optimizer_states:
                dcp_save({"optimizer": strip_optimizer_prefix(optimizer_states[0])}, path / FSDP_OPTIMIZER_DIR)
            if self._hf_save_consolidated:
                checkpoint["state_dict"] = share_tied(self.model, model_state(self.model, full=True))  # type: ignore[attr-defined]
        else:
            checkpoint["state_dict"] = share_tied(self.model, weights or {})  # type: ignore[attr-defined]
            if is_zero and optimizer_states:  # accelerate's save_fsdp_model/optimizer; not with save_only_model (§1.3)
                path.mkdir(parents=True, exist_ok=True)
                hf_format.save_torch(strip_model_prefix(weights or {}), path / FSDP_MODEL_FILE)
                hf_format.save_torch(strip_optimizer_prefix(optimizer_states[0]), path / OPTIMIZER_NAME_BIN)
        if is_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)  # type: ignore[attr-defined]
            if "state_dict" not in checkpoint:
                save_model_description(path, checkpoint)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        from .checkpoint_io import EXTRAS_KEY, load_hf_checkpoint

        path = Path(self.broadcast(str(checkpoint_path)))  # type: ignore[attr-defined]
        if not path.is_dir():
            raise CheckpointError(f"{path}: {type(self).__name__} resumes from transformers checkpoint-N folders only.")
        checkpoint = load_hf_checkpoint(str(path), with_weights=False)
        root = self.model  # type: ignore[attr-defined]
        layout = checkpoint_layout(path)
        if layout == "sharded":
            load_sharded_model(root, path / FSDP_MODEL_DIR)
        else:
            load_full_model(root, path, is_zero=self.is_global_zero)  # type: ignore[attr-defined]
        optimizers = self.optimizers  # type: ignore[attr-defined]
        fitting = self.lightning_module.trainer.state.fn == "fit"  # type: ignore[attr-defined]
        if fitting and optimizers:
            # Whatever is intact is restored; a missing optimizer or scheduler starts fresh (HFCheckpoint warns).
            optimizer_file = fsdp_optimizer_source(path, layout)
            if optimizer_file is not None:
                optimizer = getattr(optimizers[0], "_optimizer", optimizers[0])
                if layout == "sharded":
                    load_sharded_optimizer(root, optimizer, path / FSDP_OPTIMIZER_DIR)
                else:
                    load_full_optimizer(root, optimizer, path / OPTIMIZER_NAME_BIN, is_zero=self.is_global_zero)  # type: ignore[attr-defined]
                checkpoint["optimizer_states"] = [optimizer.state_dict()]
            else:
                checkpoint[EXTRAS_KEY]["fresh"].append(OPTIMIZER_NAME_BIN if layout == "full" else FSDP_OPTIMIZER_DIR)
            scheduler_file = path / hf_format.SCHEDULER_NAME
            if scheduler_file.is_file():
                checkpoint["lr_schedulers"] = [load_scheduler(scheduler_file)]
                checkpoint[EXTRAS_KEY]["scheduler_file"] = str(scheduler_file)
            else:
                checkpoint[EXTRAS_KEY]["fresh"].append(hf_format.SCHEDULER_NAME)
        # The weights are in the model already; HFModule checks these names and shapes against its own.
        checkpoint["state_dict"] = model_state(root, full=False, cpu_offload=False)
        return checkpoint


class FSDP2Strategy(_HFShardedCheckpoints, ModelParallelStrategy):
    """FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``, with transformers' checkpoint folders.

    Each transformer block (the model's ``_no_split_modules`` classes, or ``shard_layers``) becomes
    one FSDP unit and the model its root, as accelerate's FSDP2 auto-wrap does; runs on CPU (gloo) too.
    ``TrainingArguments.fsdp``/``fsdp_config`` (version 2) map onto these arguments (``fsdp_strategy``).
    Under ``bf16`` on CUDA the units gather and reduce in bf16 (``MixedPrecisionPolicy``), as accelerate does.

    Args:
        state_dict_type: ``"sharded"`` (``pytorch_model_fsdp_0/`` + ``optimizer_0/`` via
            torch.distributed.checkpoint; each rank writes its shard) or ``"full"`` (gathered on rank 0:
            ``model.safetensors``, ``pytorch_model_fsdp.bin``, ``optimizer.bin``).
        save_consolidated: with ``"sharded"``, also write the gathered ``model.safetensors`` + config
            at every save (costs a full copy of the weights on rank 0).
        shard_layers: module classes (or class names) to shard as separate units; default the
            model's ``_no_split_modules``; ``[]``: the root only (``NO_WRAP``).
        min_num_params: instead of ``shard_layers``, every module with more than this many parameters
            is a unit (``SIZE_BASED_WRAP``); modules holding one end of a tied parameter stay in the root.
        reshard_after_forward: ``fully_shard``'s option for the units (True: ZeRO-3, False: ZeRO-2-like);
            the root follows torch's default (kept gathered after forward), as accelerate does.
        cpu_offload: sharded parameters, gradients and optimizer step live on the CPU (``CPUOffloadPolicy``).
        checkpoint_layers: activation checkpointing (``checkpoint_wrapper``) of every unit, before sharding.
        cpu_ram_efficient_loading: the weights are rank 0's, broadcast into the shards after sharding; the
            model is moved to ``meta`` first, so the other ranks drop their copy.
        kwargs: ``ModelParallelStrategy`` arguments (``process_group_backend``, ``timeout``, ...).
    """

    def __init__(
        self,
        state_dict_type: StateDictType = "sharded",
        *,
        save_consolidated: bool = False,
        shard_layers: list[type[nn.Module] | str] | None = None,
        min_num_params: int | None = None,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        checkpoint_layers: bool = False,
        cpu_ram_efficient_loading: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("tensor_parallel_size", 1)
        if kwargs["tensor_parallel_size"] not in (1, "auto") or kwargs.get("data_parallel_size", "auto") != "auto":
            raise ValueError(
                "FSDP2Strategy shards over every process (data parallel only); leave `data_parallel_size` and "
                f"`tensor_parallel_size` unset (got tensor_parallel_size={kwargs['tensor_parallel_size']!r}, "
                f"data_parallel_size={kwargs.get('data_parallel_size', 'auto')!r})."
            )
        _check_unit_options(shard_layers, min_num_params, checkpoint_layers)
        kwargs["tensor_parallel_size"] = 1
        kwargs.pop("save_distributed_checkpoint", None)
        super().__init__(save_distributed_checkpoint=state_dict_type != "full", **kwargs)
        self._init_hf(state_dict_type, save_consolidated)
        self.shard_layers = shard_layers
        self.min_num_params = min_num_params
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = bool(cpu_offload)
        self.checkpoint_layers = bool(checkpoint_layers)
        self.cpu_ram_efficient_loading = bool(cpu_ram_efficient_loading)

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @override
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        self._launcher = _ranked(self._launcher)

    @override
    def setup(self, trainer: Any) -> None:
        module = self.lightning_module
        model = getattr(module, "model", None)
        if isinstance(model, nn.Module) and not has_fsdp2(model):
            policy = unit_policy(model, self.shard_layers, self.min_num_params)
            if self.checkpoint_layers:
                checkpoint_units(model, policy)
            loading = RankZeroWeights(model, is_zero=self.global_rank == 0) if self.cpu_ram_efficient_loading else None
            shard_model(
                model,
                self.device_mesh["data_parallel"],
                reshard_after_forward=self.reshard_after_forward,
                policy=policy,
                cpu_offload=self.cpu_offload,
                mp_policy=fsdp2_mixed_precision(self.precision_plugin, self.root_device),
            )
            if loading is not None:
                loading.broadcast(model, self.root_device, cpu_offload=self.cpu_offload)
        super().setup(trainer)

    @override
    def model_to_device(self) -> None:
        if not self.cpu_offload:
            super().model_to_device()
            return
        # `.to()` on CPU-offloaded FSDP2 parameters raises: move only what FSDP does not manage.
        inner = getattr(self.lightning_module, "model", None)
        for child in self.model.children():  # type: ignore[union-attr]
            if child is not inner:
                child.to(self.root_device)


class FSDPStrategy(_HFShardedCheckpoints, LightningFSDPStrategy):
    """Lightning's ``FSDPStrategy`` (FSDP1, CUDA only) with transformers' checkpoint folders.

    Takes every argument of Lightning's ``FSDPStrategy``; ``state_dict_type`` (``"full"`` by default,
    or ``"sharded"``) selects accelerate's full or sharded layout, and ``save_consolidated`` also
    writes ``model.safetensors`` at sharded saves. Without ``auto_wrap_policy`` the units are the
    model's ``_no_split_modules`` blocks (or ``shard_layers``, or modules above ``min_num_params``).
    ``TrainingArguments.fsdp``/``fsdp_config`` (version 1) map onto these arguments (``fsdp_strategy``).

    Args:
        shard_layers: module classes (or names) wrapped as units; ``[]``: the root only.
        min_num_params: ``size_based_auto_wrap_policy`` instead (0: no wrapping, as accelerate).
        checkpoint_layers: activation checkpointing of the units (Lightning's ``activation_checkpointing_policy``).
        cpu_ram_efficient_loading: rank 0's weights are broadcast (``sync_module_states=True``).
        backward_prefetch: torch's ``BackwardPrefetch`` or its name (``"BACKWARD_PRE"``, ``"BACKWARD_POST"``).
    """

    def __init__(
        self,
        *args: Any,
        state_dict_type: StateDictType = "full",
        save_consolidated: bool = False,
        shard_layers: list[type[nn.Module] | str] | None = None,
        min_num_params: int | None = None,
        checkpoint_layers: bool = False,
        cpu_ram_efficient_loading: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_unit_options(shard_layers, min_num_params, checkpoint_layers)
        if kwargs.get("auto_wrap_policy") is not None and (shard_layers is not None or min_num_params is not None):
            raise ValueError("Pass either `auto_wrap_policy` or `shard_layers`/`min_num_params` to FSDPStrategy, not both.")
        self._unit_policy: LayerWrapPolicy | None = None
        if kwargs.get("auto_wrap_policy") is None:
            if min_num_params is not None:
                kwargs["auto_wrap_policy"] = size_policy(min_num_params)
            else:
                self._unit_policy = LayerWrapPolicy(shard_layers)
                kwargs["auto_wrap_policy"] = self._unit_policy
        if checkpoint_layers:
            if kwargs.get("activation_checkpointing") is not None or kwargs.get("activation_checkpointing_policy") is not None:
                raise ValueError("Pass either `checkpoint_layers=True` or `activation_checkpointing(_policy)` to FSDPStrategy, not both.")
            kwargs["activation_checkpointing_policy"] = kwargs["auto_wrap_policy"]
        if cpu_ram_efficient_loading:
            kwargs["sync_module_states"] = True
        if isinstance(kwargs.get("backward_prefetch"), str):
            from torch.distributed.fsdp import BackwardPrefetch

            kwargs["backward_prefetch"] = BackwardPrefetch[kwargs["backward_prefetch"].upper()]
        super().__init__(*args, state_dict_type="full" if str(state_dict_type).lower().startswith("full") else "sharded", **kwargs)
        self._init_hf(state_dict_type, save_consolidated)

    @override
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        self._launcher = _ranked(self._launcher)

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self._unit_policy is not None:
            self._unit_policy.bind(getattr(model, "model", model))
        return super()._setup_model(model)


def _check_unit_options(shard_layers: Any, min_num_params: int | None, checkpoint_layers: bool) -> None:
    if shard_layers is not None and min_num_params is not None:
        raise ValueError(
            f"`shard_layers={shard_layers!r}` and `min_num_params={min_num_params!r}` both choose the FSDP units; pass one "
            "(transformers: `auto_wrap_policy` TRANSFORMER_BASED_WRAP or SIZE_BASED_WRAP)."
        )
    if min_num_params is not None and (not isinstance(min_num_params, int) or min_num_params < 0):
        raise ValueError(f"`min_num_params={min_num_params!r}` must be an integer >= 0.")
    if checkpoint_layers and shard_layers is not None and len(shard_layers) == 0:
        raise ValueError("`checkpoint_layers=True` checkpoints the FSDP units, and `shard_layers=[]` makes none; name the layers to checkpoint.")


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
