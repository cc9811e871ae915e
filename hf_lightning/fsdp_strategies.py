"""hf_lightning's FSDP strategies: Lightning's FSDP2 (``ModelParallelStrategy``) and FSDP1 (``FSDPStrategy``)
strategies, sharding the model in transformers' units and writing accelerate/transformers' FSDP checkpoint
layout (§1.3) instead of Lightning's own.

``fsdp_units`` picks and shards the units and ``fsdp_checkpoint`` reads and writes the files; this module
wires them into Lightning's strategy interface. ``distributed.resolve_strategy`` chooses among them, and
``hf_lightning.distributed.FSDP2Strategy``/``FSDPStrategy`` remain the public names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from transformers.trainer import OPTIMIZER_NAME_BIN
from typing_extensions import override

from . import hf_format
from .fsdp_checkpoint import (
    FSDP_MODEL_DIR,
    FSDP_MODEL_FILE,
    FSDP_OPTIMIZER_DIR,
    checkpoint_layout,
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
)
from .fsdp_units import LayerWrapPolicy, RankZeroWeights, checkpoint_units, fsdp2_mixed_precision, has_fsdp2, shard_model, size_policy, unit_policy
from .hf_format import CheckpointError
from .launching import ranked_launcher

__all__ = ["FSDP2Strategy", "FSDPStrategy", "HFShardedCheckpoints", "StateDictType"]

StateDictType = Literal["full", "sharded"]


class HFShardedCheckpoints:
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


class FSDP2Strategy(HFShardedCheckpoints, ModelParallelStrategy):
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
        self._launcher = ranked_launcher(self._launcher)

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


class FSDPStrategy(HFShardedCheckpoints, LightningFSDPStrategy):
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
        self._launcher = ranked_launcher(self._launcher)

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
