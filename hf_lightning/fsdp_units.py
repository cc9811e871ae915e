"""FSDP units: which submodules become their own FSDP (1 or 2) unit, and sharding a model with FSDP2.

transformers' ``auto_wrap_policy`` (TRANSFORMER_BASED_WRAP by layer class, SIZE_BASED_WRAP by parameter count)
as wrap policies, activation checkpointing of the same units, tied weights kept tied, and FSDP2's
``fully_shard`` applied bottom-up. Used by ``distributed``'s strategies.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp.wrap import CustomPolicy, ModuleWrapPolicy


log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- FSDP units


class LayerWrapPolicy(ModuleWrapPolicy):
    """``ModuleWrapPolicy`` over classes named at construction (default: the model's ``_no_split_modules``),
    resolved against the model by ``bind`` when Lightning wraps it (an unknown name is an error, as in accelerate)."""

    def __init__(self, names: list[type[nn.Module] | str] | None) -> None:
        super().__init__(())
        self.names = names

    def bind(self, model: nn.Module) -> None:
        self._module_classes = set(_layer_classes(model, self.names))
        self._module_classes_str = str(self._module_classes)


def size_policy(min_num_params: int) -> Any:
    """accelerate's FSDP1 size-based policy: ``size_based_auto_wrap_policy``; 0 means no wrapping."""
    if min_num_params <= 0:
        return CustomPolicy(lambda module: False)
    import functools

    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    return functools.partial(size_based_auto_wrap_policy, min_num_params=min_num_params)


def has_fsdp2(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def _layer_classes(model: nn.Module, names: list[type[nn.Module] | str] | None) -> set[type[nn.Module]]:
    wanted = names if names is not None else list(getattr(model, "_no_split_modules", None) or [])
    by_name = {type(m).__name__: type(m) for m in model.modules()}
    classes: set[type[nn.Module]] = set()
    for item in wanted:
        if isinstance(item, type):
            classes.add(item)
        elif item in by_name:
            classes.add(by_name[item])
        elif names is not None:
            raise ValueError(
                f"`shard_layers` (transformers: `fsdp_config['transformer_layer_cls_to_wrap']`) names {item!r}, which is not "
                f"a module class of {type(model).__name__}; it has {sorted(by_name)}."
            )
    return classes


def unit_policy(model: nn.Module, layers: list[type[nn.Module] | str] | None = None, min_num_params: int | None = None) -> Any:
    """Which submodules of ``model`` become FSDP2 units, as accelerate's ``fsdp2_prepare_auto_wrap_policy`` decides.

    Transformer blocks (``layers``, default ``_no_split_modules``; ``[]``: none), or (``min_num_params``) every
    module with more than that many parameters. A ``checkpoint_wrapper`` counts as the module it wraps.
    Modules holding one end of a tied parameter (embeddings/``lm_head``) are never units: the tie lives in the root.
    Nor are containers without a forward (``ModuleList``/``ModuleDict``), which ``fully_shard`` refuses.
    """
    tied = _tied_holders(model)
    if min_num_params is not None:
        def by_size(module: nn.Module) -> bool:
            inner = getattr(module, "_checkpoint_wrapped_module", module)
            if inner in tied or (isinstance(inner, (nn.ModuleList, nn.ModuleDict)) and type(inner).forward is nn.Module.forward):
                return False
            return sum(p.numel() for p in module.parameters()) > min_num_params

        return by_size
    classes = tuple(_layer_classes(model, layers))

    def by_class(module: nn.Module) -> bool:
        inner = getattr(module, "_checkpoint_wrapped_module", module)
        return bool(classes) and inner not in tied and isinstance(inner, classes)

    return by_class


def _tied_holders(model: nn.Module) -> set[nn.Module]:
    """Modules that contain some but not all references of a tied parameter."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    shared = [ns for ns in names.values() if len(ns) > 1]
    if not shared:
        return set()
    holders = set()
    for prefix, module in model.named_modules():
        if not prefix:
            continue
        for ns in shared:
            inside = [n.startswith(prefix + ".") for n in ns]
            if any(inside) and not all(inside):
                holders.add(module)
    return holders


def _bottom_up(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model``'s submodules, every module after its descendants, the root excluded."""
    return [(name, module) for name, module in reversed(list(model.named_modules())) if module is not model]


def checkpoint_units(model: nn.Module, policy: Any) -> None:
    """accelerate's ``fsdp2_apply_ac``: ``checkpoint_wrapper(preserve_rng_state=False)`` around each unit, bottom-up."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, module in _bottom_up(model):
        if policy(module):
            model.set_submodule(name, checkpoint_wrapper(module, preserve_rng_state=False))


def shard_model(
    model: nn.Module,
    mesh: Any,
    layers: list[type[nn.Module] | str] | None = None,
    reshard_after_forward: bool = True,
    *,
    policy: Any = None,
    cpu_offload: bool = False,
    mp_policy: Any = None,
) -> nn.Module:
    """``fully_shard`` each unit (``policy``, default ``unit_policy(model, layers)``), bottom-up, then the whole model.

    As accelerate's ``fsdp2_prepare_model``: a checkpoint wrapper is sharded instead of the module it wraps,
    and the root keeps torch's default ``reshard_after_forward``. Tied parameters (``lm_head``/embeddings)
    stay in the root unit, so they remain one parameter.
    """
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = policy if policy is not None else unit_policy(model, layers)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    kwargs: dict[str, Any] = dict(mesh=mesh, offload_policy=offload, mp_policy=mp_policy or MixedPrecisionPolicy())
    wrapped = {m._checkpoint_wrapped_module for m in model.modules() if hasattr(m, "_checkpoint_wrapped_module")}
    for _, module in _bottom_up(model):
        if module in wrapped or isinstance(module, FSDPModule):
            continue
        if policy(module):
            fully_shard(module, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    return model


def fsdp2_mixed_precision(precision_plugin: Any, device: torch.device) -> Any:
    """accelerate's FSDP2 ``MixedPrecisionPolicy`` under bf16 (parameters gathered, gradients reduced in bf16), on CUDA."""
    if getattr(precision_plugin, "precision", None) != "bf16-mixed" or device.type != "cuda":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)


class RankZeroWeights:
    """``cpu_ram_efficient_loading`` for FSDP2, as accelerate's ``fsdp2_prepare_model`` does it.

    Before sharding: rank 0 keeps its state dict, every rank keeps its non-persistent buffers (not in any state
    dict), and the model moves to ``meta`` (the other ranks' weights are freed). After sharding, ``broadcast``
    fills the shards from rank 0 (accelerate's ``fsdp2_load_full_state_dict``), puts the buffers back and re-ties.
    """

    def __init__(self, model: nn.Module, *, is_zero: bool) -> None:
        import copy

        self.is_zero = is_zero
        self.state = model.state_dict() if is_zero else {}
        self.buffers = {
            f"{prefix}.{name}" if prefix else name: copy.deepcopy(getattr(module, name))
            for prefix, module in model.named_modules()
            for name in module._non_persistent_buffers_set
            if getattr(module, name, None) is not None
        }
        model.to(torch.device("meta"))
        _tie(model)

    def broadcast(self, model: nn.Module, device: torch.device, *, cpu_offload: bool) -> None:
        from types import SimpleNamespace

        from accelerate.utils.fsdp_utils import fsdp2_load_full_state_dict

        fsdp2_load_full_state_dict(SimpleNamespace(is_main_process=self.is_zero, device=device), model, self.state, cpu_offload=cpu_offload)
        for name, buffer in self.buffers.items():
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner).register_buffer(attr, buffer.to(device), persistent=False)
        _tie(model)
        self.state = {}


def _tie(model: nn.Module) -> None:
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
