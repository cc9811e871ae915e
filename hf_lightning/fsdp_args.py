"""transformers' ``fsdp``/``fsdp_config`` -> the settings of hf_lightning's FSDP strategies (pure: no Lightning).

``TrainingArguments.__post_init__`` has already normalised both: ``args.fsdp`` is ``True``, the legacy
strings (``"full_shard offload auto_wrap"``) are folded into ``fsdp_config``, and ``args.fsdp_plugin_args``
holds exactly what transformers.Trainer gives accelerate's ``FullyShardedDataParallelPlugin``. This module
reads those plugin arguments (so it sees what transformers sees) and decides:

- ``fsdp_plan(args)``: the ``FSDPPlan`` of a run (``None`` without FSDP), which ``distributed.fsdp_strategy``
  turns into ``FSDP2Strategy`` (``version`` 2) or ``FSDPStrategy`` (``version`` 1);
- ``fsdp_problems(args, ...)``: what cannot be mapped, each message naming the option, its value and
  what to use instead (collected by ``arguments.validate_arguments``);
- ``ignored_fsdp_config_keys(args)``: keys transformers does not read either (a warning, not an error:
  they change nothing in either framework).

``FSDP_OPTIONS`` is the table of docs/distributed.md: every option and what it becomes.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

__all__ = [
    "FSDPPlan",
    "FSDP_OPTIONS",
    "fsdp_enabled",
    "fsdp_plan",
    "fsdp_problems",
    "ignored_fsdp_config_keys",
]

# accelerate.utils.constants (spelled here so that this module needs no accelerate import to be read).
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
WRAP_POLICIES = {"TRANSFORMER_BASED_WRAP": "transformer", "SIZE_BASED_WRAP": "size", "NO_WRAP": "none"}
STATE_DICT_TYPES = {"FULL_STATE_DICT": "full", "SHARDED_STATE_DICT": "sharded", "LOCAL_STATE_DICT": "local", "1": "full", "2": "local", "3": "sharded"}
BACKWARD_PREFETCH = ("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH")

# fsdp_config keys transformers reads (TrainingArguments._process_fsdp_args), by FSDP version.
_COMMON_KEYS = {
    "version", "reshard_after_forward", "cpu_offload", "activation_checkpointing", "cpu_ram_efficient_loading",
    "state_dict_type", "auto_wrap_policy", "transformer_layer_cls_to_wrap", "min_num_params",
    "xla", "xla_fsdp_settings", "xla_fsdp_grad_ckpt", "xla_fsdp_v2",
}
_V1_KEYS = {"forward_prefetch", "backward_prefetch", "use_orig_params", "sync_module_states", "limit_all_gathers"}


@dataclasses.dataclass(frozen=True)
class FSDPPlan:
    """What a run's ``fsdp``/``fsdp_config`` ask for, in the terms of hf_lightning's strategies."""

    version: Literal[1, 2]
    """2: ``FSDP2Strategy`` (``fully_shard``, Lightning's ``ModelParallelStrategy``); 1: ``FSDPStrategy`` (Lightning's FSDP1)."""
    state_dict_type: Literal["full", "sharded"]
    """``full``: model.safetensors + pytorch_model_fsdp.bin + optimizer.bin; ``sharded``: pytorch_model_fsdp_0/ + optimizer_0/."""
    wrap: Literal["transformer", "size", "none"]
    """Which modules become FSDP units: transformer blocks, modules above ``min_num_params``, or the root only."""
    layer_classes: tuple[str, ...] | None
    """``transformer_layer_cls_to_wrap``; None: the model's ``_no_split_modules``."""
    min_num_params: int
    cpu_offload: bool
    activation_checkpointing: bool
    """Checkpoint the modules that ``wrap`` makes units (accelerate's FSDP activation checkpointing)."""
    cpu_ram_efficient_loading: bool
    """Rank 0's weights are broadcast into the shards; FSDP2: the other ranks drop their copy first."""
    reshard_after_forward: bool = True
    """FSDP2: ``fully_shard(reshard_after_forward=...)``: True = full_shard, False = shard_grad_op."""
    sharding_strategy: str = "FULL_SHARD"
    """FSDP1: torch's ``ShardingStrategy`` name."""
    forward_prefetch: bool = False
    backward_prefetch: str | None = None
    use_orig_params: bool = True
    sync_module_states: bool = True
    limit_all_gathers: bool | None = None

    def strategy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``FSDP2Strategy`` (version 2) or ``FSDPStrategy`` (version 1), besides the process group's."""
        kwargs: dict[str, Any] = {"state_dict_type": self.state_dict_type, "cpu_offload": self.cpu_offload,
                                  "checkpoint_layers": self.activation_checkpointing,
                                  "cpu_ram_efficient_loading": self.cpu_ram_efficient_loading}
        if self.wrap == "transformer":
            kwargs["shard_layers"] = list(self.layer_classes) if self.layer_classes is not None else None
        elif self.wrap == "size":
            kwargs["min_num_params"] = self.min_num_params
        else:
            kwargs["shard_layers"] = []
        if self.version == 2:
            kwargs["reshard_after_forward"] = self.reshard_after_forward
            return kwargs
        kwargs.update(
            sharding_strategy=self.sharding_strategy,
            forward_prefetch=self.forward_prefetch,
            backward_prefetch=self.backward_prefetch,
            use_orig_params=self.use_orig_params,
            sync_module_states=self.sync_module_states or self.cpu_ram_efficient_loading,
        )
        if self.limit_all_gathers is not None:
            kwargs["limit_all_gathers"] = self.limit_all_gathers
        return kwargs


def fsdp_enabled(args: Any) -> bool:
    return bool(getattr(args, "fsdp", None))


def _processed(args: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(plugin arguments, fsdp_config)`` as transformers processed them.

    ``TrainingArguments`` computes them when it is built; when ``fsdp`` was set afterwards, the same
    processing runs on a copy (so the user's arguments are not changed).
    """
    plugin = getattr(args, "fsdp_plugin_args", None)
    config = args.fsdp_config if isinstance(args.fsdp_config, dict) else {}
    if plugin is None and not config.get("xla"):
        clone = copy.copy(args)
        clone.fsdp_config = copy.deepcopy(args.fsdp_config)
        plugin = clone._process_fsdp_args()
        config = clone.fsdp_config if isinstance(clone.fsdp_config, dict) else {}
    return plugin, config


def _flag(value: Any) -> bool:
    from transformers.utils.generic import strtobool

    return value if isinstance(value, bool) else bool(strtobool(str(value).lower()))


def _state_dict_type(value: Any) -> str | None:
    name = getattr(value, "name", value)  # a torch StateDictType enum, or its name or number
    return STATE_DICT_TYPES.get(str(name).upper())


def fsdp_plan(args: Any) -> FSDPPlan | None:
    """The ``FSDPPlan`` of ``args`` (None without ``fsdp``). Raises ``ValueError`` for what ``fsdp_problems`` reports."""
    if not fsdp_enabled(args):
        return None
    problems = _config_problems(args)
    if problems:
        raise ValueError("Invalid FSDP configuration:\n  - " + "\n  - ".join(problems))
    plugin, _ = _processed(args)
    assert plugin is not None
    return _plan(plugin)


def _plan(plugin: dict[str, Any]) -> FSDPPlan:
    version = int(plugin["fsdp_version"])
    layers = plugin.get("transformer_cls_names_to_wrap")
    common: dict[str, Any] = dict(
        version=version,
        state_dict_type=_state_dict_type(plugin.get("state_dict_type", "FULL_STATE_DICT")),
        wrap=WRAP_POLICIES[str(plugin.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")).upper()],
        layer_classes=tuple(n.strip() for n in layers.split(",") if n.strip()) if isinstance(layers, str) else (tuple(layers) if layers else None),
        min_num_params=int(plugin.get("min_num_params") or 0),
        cpu_offload=_flag(plugin.get("cpu_offload", False)),
        activation_checkpointing=_flag(plugin.get("activation_checkpointing", False)),
        cpu_ram_efficient_loading=_flag(plugin.get("cpu_ram_efficient_loading", False)),
    )
    if version == 2:
        return FSDPPlan(**common, reshard_after_forward=_flag(plugin.get("reshard_after_forward", True)))
    prefetch = str(plugin.get("backward_prefetch") or "NO_PREFETCH").upper()
    return FSDPPlan(
        **common,
        sharding_strategy=_sharding_strategy(plugin.get("reshard_after_forward", "full_shard")) or "FULL_SHARD",
        forward_prefetch=_flag(plugin.get("forward_prefetch", False)),
        backward_prefetch=None if prefetch == "NO_PREFETCH" else prefetch,
        use_orig_params=_flag(plugin.get("use_orig_params", True)),
        sync_module_states=_flag(plugin.get("sync_module_states", True)),
        limit_all_gathers=_flag(plugin["limit_all_gathers"]) if "limit_all_gathers" in plugin else None,
    )


def _sharding_strategy(value: Any) -> str | None:
    """FSDP1's ``reshard_after_forward`` (accelerate: a strategy name or its 1-based number) as torch's enum name."""
    text = str(getattr(value, "name", value)).upper().lstrip("_")
    if text.isdigit() and 1 <= int(text) <= len(SHARDING_STRATEGIES):
        text = SHARDING_STRATEGIES[int(text) - 1]
    if text not in SHARDING_STRATEGIES:
        return None
    return "_HYBRID_SHARD_ZERO2" if text == "HYBRID_SHARD_ZERO2" else text


def fsdp_problems(
    args: Any,
    *,
    optimizers: tuple[Any, Any] = (None, None),
    cuda_available: bool | None = None,
) -> list[str]:
    """Every ``fsdp``/``fsdp_config`` setting hf_lightning cannot honour, as messages for the person holding the config.

    ``cuda_available`` (default: ``torch.cuda.is_available()``) decides whether FSDP1 can run.
    """
    if not fsdp_enabled(args):
        return []
    problems = _config_problems(args)
    if not problems and (_processed(args)[0] or {}).get("fsdp_version") == 1:
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if getattr(args, "use_cpu", False) or not cuda_available:
            where = "`use_cpu=True`" if getattr(args, "use_cpu", False) else "this machine, which has no CUDA device"
            problems.append(
                f"`fsdp_config['version']=1` (FSDP1, Lightning's FSDPStrategy) needs CUDA GPUs, and the run is on CPU ({where}); "
                "use `fsdp_config['version']=2` (FSDP2, which also runs on CPU over gloo). transformers.Trainer "
                "refuses FSDP1 on CPU too."
            )
    if optimizers and optimizers[0] is not None:
        problems.append(
            "Passing `optimizers` is not allowed with `fsdp`: sharding replaces the parameters the optimizer holds "
            "(transformers.Trainer refuses it too). Pass `optimizer_cls_and_kwargs`, or subclass the Trainer and "
            "override `create_optimizer`/`create_scheduler`."
        )
    return problems


def _config_problems(args: Any) -> list[str]:
    """What cannot be mapped, whatever the machine."""
    try:
        plugin, config = _processed(args)
    except (ValueError, TypeError, OSError) as error:  # what TrainingArguments itself would have raised
        return [f"`fsdp={args.fsdp!r}`, `fsdp_config={args.fsdp_config!r}`: {error}"]
    if config.get("xla"):
        return [
            f"`fsdp_config['xla']={config['xla']!r}` (PyTorch/XLA FSDP) is not supported by hf_lightning: it trains with "
            "Lightning's FSDP strategies on CUDA (or CPU); remove `xla` to use FSDP version 2 (the default) or 1."
        ]
    assert plugin is not None
    problems: list[str] = []
    version = plugin.get("fsdp_version")
    if version not in (1, 2):
        return [f"`fsdp_config['version']={version!r}` is not valid; use 2 (FSDP2, the default) or 1 (FSDP1)."]
    sdt = plugin.get("state_dict_type", "FULL_STATE_DICT")
    kind = _state_dict_type(sdt)
    if kind == "local":
        problems.append(
            f"`fsdp_config['state_dict_type']={sdt!r}` (one pytorch_model_fsdp_rank{{r}}.bin per rank) is not supported by "
            "hf_lightning; use 'SHARDED_STATE_DICT' (pytorch_model_fsdp_0/ + optimizer_0/, also per-rank shards) or "
            "'FULL_STATE_DICT' (the default)."
        )
    elif kind is None:
        problems.append(f"`fsdp_config['state_dict_type']={sdt!r}` is not valid; use 'FULL_STATE_DICT' or 'SHARDED_STATE_DICT'.")
    if version == 1:
        if _sharding_strategy(plugin.get("reshard_after_forward", "full_shard")) is None:
            problems.append(
                f"`fsdp_config['reshard_after_forward']={plugin.get('reshard_after_forward')!r}` is not an FSDP1 sharding "
                f"strategy; use one of {[s.lower() for s in SHARDING_STRATEGIES]}."
            )
        prefetch = str(plugin.get("backward_prefetch") or "NO_PREFETCH").upper()
        if prefetch not in BACKWARD_PREFETCH:
            problems.append(f"`fsdp_config['backward_prefetch']={plugin.get('backward_prefetch')!r}` is not valid; use one of {list(BACKWARD_PREFETCH)}.")
    if not problems:
        plan = _plan(plugin)
        if plan.activation_checkpointing and (getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)):
            problems.append(
                "`fsdp_config['activation_checkpointing']=True` (FSDP's own activation checkpointing) and the "
                "`activation_checkpointing` training argument can't both be set to True, as in transformers.Trainer; "
                "keep `fsdp_config['activation_checkpointing']` and set `activation_checkpointing=False`."
            )
        no_units = plan.wrap == "none" or (plan.wrap == "size" and plan.version == 1 and plan.min_num_params <= 0)
        if plan.activation_checkpointing and no_units:
            policy = plugin.get("auto_wrap_policy")
            problems.append(
                f"`fsdp_config['activation_checkpointing']=True` with `auto_wrap_policy={policy!r}` "
                f"(min_num_params={plan.min_num_params}) names no layers to checkpoint; use `auto_wrap_policy='TRANSFORMER_BASED_WRAP'` "
                "(the default: the model's transformer blocks) or 'SIZE_BASED_WRAP' with `min_num_params` > 0."
            )
    return problems


def ignored_fsdp_config_keys(args: Any) -> list[str]:
    """``fsdp_config`` keys transformers does not read for this FSDP version (so neither does hf_lightning)."""
    if not fsdp_enabled(args):
        return []
    try:
        plugin, config = _processed(args)
    except (ValueError, TypeError, OSError):
        return []
    known = _COMMON_KEYS | (_V1_KEYS if plugin is not None and plugin.get("fsdp_version") == 1 else set())
    return sorted(k for k in config if k not in known)


# ----------------------------------------------------------------------------------- the table

# (transformers option, accepted values, FSDP2 (version 2), FSDP1 (version 1)); docs/distributed.md prints it.
FSDP_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("`fsdp`", "`True`, or legacy words below",
     "`FSDP2Strategy` (Lightning's `ModelParallelStrategy` + `fully_shard`)", "`FSDPStrategy` (Lightning's `FSDPStrategy`)"),
    ("`fsdp=\"full_shard\"`", "legacy word", "`reshard_after_forward=True`", "`sharding_strategy=\"FULL_SHARD\"`"),
    ("`fsdp=\"shard_grad_op\"`", "legacy word", "`reshard_after_forward=False`", "`sharding_strategy=\"SHARD_GRAD_OP\"`"),
    ("`fsdp=\"hybrid_shard\"`, `\"hybrid_shard_zero2\"`, `\"no_shard\"`", "legacy words",
     "refused by `TrainingArguments` itself (FSDP1 only)", "`sharding_strategy=\"HYBRID_SHARD\"`, `\"_HYBRID_SHARD_ZERO2\"`, `\"NO_SHARD\"`"),
    ("`fsdp=\"offload\"`", "legacy word", "`cpu_offload=True`: `fully_shard(offload_policy=CPUOffloadPolicy())`", "`cpu_offload=True`: `CPUOffload(offload_params=True)`"),
    ("`fsdp=\"auto_wrap\"`", "legacy word", "nothing (wrapping follows `auto_wrap_policy`, as in transformers)", "the same"),
    ("`version` (`fsdp_version`)", "2 (default), 1", "2", "1; CUDA only: refused up front on CPU (transformers raises there too)"),
    ("`reshard_after_forward`", "bool (v2); strategy name (v1)", "`fully_shard(reshard_after_forward=...)` of every unit but the root (torch's default there, as accelerate)",
     "`sharding_strategy` (`full_shard`, `shard_grad_op`, `no_shard`, `hybrid_shard`, `hybrid_shard_zero2`)"),
    ("`auto_wrap_policy`", "`TRANSFORMER_BASED_WRAP` (default), `SIZE_BASED_WRAP`, `NO_WRAP`",
     "transformer blocks / modules above `min_num_params` / the root only, each its own `fully_shard` unit, then the root",
     "`auto_wrap_policy` = `ModuleWrapPolicy(blocks)` / `size_based_auto_wrap_policy` / none"),
    ("`transformer_layer_cls_to_wrap`", "class names", "`shard_layers=[...]` (default: the model's `_no_split_modules`); an unknown name is an error",
     "the same classes in `ModuleWrapPolicy`"),
    ("`min_num_params`", "int (with `SIZE_BASED_WRAP`)", "`min_num_params=N`: every module with more than N parameters (0: every module with parameters, as accelerate's FSDP2)",
     "`size_based_auto_wrap_policy(min_num_params=N)`; 0: no wrapping, as accelerate"),
    ("`cpu_offload`", "bool", "as `fsdp=\"offload\"`", "as `fsdp=\"offload\"`"),
    ("`state_dict_type`", "`FULL_STATE_DICT` (default), `SHARDED_STATE_DICT`; `LOCAL_STATE_DICT` refused",
     "`state_dict_type=\"full\"` / `\"sharded\"`: the checkpoint layouts below", "the same"),
    ("`activation_checkpointing`", "bool", "`checkpoint_layers=True`: `checkpoint_wrapper` on the units of `auto_wrap_policy` before sharding",
     "`checkpoint_layers=True`: Lightning's `activation_checkpointing_policy` = the wrap policy"),
    ("`cpu_ram_efficient_loading`", "bool", "`cpu_ram_efficient_loading=True`: the model moves to `meta` before sharding (ranks > 0 free their copy), then rank 0's weights are broadcast into the shards",
     "`sync_module_states=True` (rank 0's weights broadcast)"),
    ("`forward_prefetch`, `backward_prefetch`, `use_orig_params`, `sync_module_states`, `limit_all_gathers`", "v1 only",
     "not read by transformers for v2: warned about, not used", "passed to `FullyShardedDataParallel`"),
    ("`xla`, `xla_fsdp_settings`, `xla_fsdp_grad_ckpt`, `xla_fsdp_v2`", "", "`xla=True` refused (no XLA)", "the same"),
    ("other keys", "", "not read by transformers: warned about, not used", "the same"),
    ("`bf16=True` (not an FSDP key)", "", "on CUDA, `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16)` (accelerate's), plus autocast",
     "Lightning's FSDP precision: `MixedPrecision(bf16, bf16, bf16)` (accelerate's), plus autocast"),
    ("`optimizers=(...)` of the Trainer", "", "refused, as transformers refuses it under FSDP", "the same"),
)


def _markdown_table() -> str:
    rows = ["| transformers `fsdp` / `fsdp_config` | values | FSDP2 (`version` 2) | FSDP1 (`version` 1) |", "|---|---|---|---|"]
    rows += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in FSDP_OPTIONS]
    return "\n".join(rows)


if __name__ == "__main__":  # prints the table of docs/distributed.md
    print(_markdown_table())
