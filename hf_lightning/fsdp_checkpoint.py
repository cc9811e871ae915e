"""FSDP checkpoints in accelerate/transformers' layout: ``pytorch_model_fsdp_0/`` + ``optimizer_0/`` (sharded, DCP)
or ``pytorch_model_fsdp.bin`` / ``model.safetensors`` (full), written and read with torch's state-dict API.

Every function that communicates is a collective: call it on every rank. DCP folders are read through
``safe_load`` (no code from a checkpoint runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers.trainer import FSDP_MODEL_NAME, OPTIMIZER_NAME, OPTIMIZER_NAME_BIN

from . import hf_format
from .hf_format import CheckpointError

log = logging.getLogger(__name__)

# accelerate's FSDP file names (``save_fsdp_model``/``save_fsdp_optimizer`` with model/optimizer index 0).
FSDP_MODEL_FILE = f"{FSDP_MODEL_NAME}.bin"  # pytorch_model_fsdp.bin: full state dict, torch.save
FSDP_MODEL_DIR = f"{FSDP_MODEL_NAME}_0"  # pytorch_model_fsdp_0/: DCP, {"model": state_dict}
FSDP_OPTIMIZER_DIR = f"{OPTIMIZER_NAME.split('.')[0]}_0"  # optimizer_0/: DCP, {"optimizer": state_dict}
MODEL_PREFIX = "model."  # HFModule keeps the transformers model in ``self.model``


# ------------------------------------------------------------------------- FSDP state dicts


def _options(full: bool, cpu_offload: bool = True, broadcast_from_rank0: bool = False, strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=cpu_offload, broadcast_from_rank0=broadcast_from_rank0, strict=strict)


def model_state(root: nn.Module, *, full: bool, cpu_offload: bool | None = None) -> dict[str, Any]:
    """The root module's state dict (``model.``-prefixed names): gathered on rank 0 or this rank's shards."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    offload = full if cpu_offload is None else cpu_offload
    state = get_model_state_dict(root, options=_options(full, cpu_offload=offload))
    return {k: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer, *, full: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(root, optimizer, options=_options(full, cpu_offload=full))


def strip_model_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def add_model_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    return {MODEL_PREFIX + k: v for k, v in state.items()}


def _rekey_optimizer(osd: Mapping[str, Any], rename: Any) -> dict[str, Any]:
    if not osd:
        return dict(osd)
    return {
        "state": {rename(k): v for k, v in osd.get("state", {}).items()},
        "param_groups": [{**g, "params": [rename(p) for p in g["params"]]} for g in osd.get("param_groups", [])],
    }


def strip_optimizer_prefix(osd: Mapping[str, Any]) -> dict[str, Any]:
    """FQN-keyed optimizer state of the LightningModule -> of the transformers model (accelerate's keys)."""
    return _rekey_optimizer(osd, lambda k: k[len(MODEL_PREFIX) :] if isinstance(k, str) and k.startswith(MODEL_PREFIX) else k)


def add_optimizer_prefix(osd: Mapping[str, Any]) -> dict[str, Any]:
    return _rekey_optimizer(osd, lambda k: MODEL_PREFIX + k if isinstance(k, str) else k)


def save_model_description(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Config, generation config, tokenizer files and ``training_args.bin`` of a sharded save (no weights).

    transformers' sharded checkpoints have none of these; with them a sharded checkpoint alone is
    enough for ``hf_lightning.consolidate`` and documents what it holds.
    """
    import copy

    from .checkpoint_io import EXTRAS_KEY

    extras = checkpoint.get(EXTRAS_KEY) or {}
    model = extras.get("model")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config = copy.deepcopy(config)
        config.architectures = [type(model).__name__.removeprefix("FSDP")]
        config.save_pretrained(str(path))
        generation = getattr(model, "generation_config", None)
        can_generate = getattr(model, "can_generate", lambda: False)
        if generation is not None and can_generate():
            generation.save_pretrained(str(path))
    tokenizer = extras.get("processing_class") or getattr(extras.get("data_collator"), "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    if extras.get("args") is not None:
        torch.save(extras["args"], path / hf_format.TRAINING_ARGS_NAME)


def dcp_save(state: dict[str, Any], folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)))


def dcp_load(state: dict[str, Any], folder: Path) -> None:
    """``dcp.load`` without running code from the folder (``safe_load``: allow-listed metadata, weights-only entries)."""
    from .safe_load import dcp_load

    dcp_load(state, folder)


def load_sharded_model(root: nn.Module, folder: Path) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = {"model": strip_model_prefix(model_state(root, full=False, cpu_offload=False))}
    dcp_load(state, folder)
    set_model_state_dict(root, add_model_prefix(state["model"]), options=_options(False, cpu_offload=False, strict=False))


def load_sharded_optimizer(root: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    template = get_optimizer_state_dict(root, optimizer, options=_options(False, cpu_offload=False))
    state = {"optimizer": strip_optimizer_prefix(template)}
    dcp_load(state, folder)
    set_optimizer_state_dict(root, optimizer, add_optimizer_prefix(state["optimizer"]), options=_options(False, cpu_offload=False))


def load_full_model(root: nn.Module, path: Path, *, is_zero: bool) -> None:
    """``pytorch_model_fsdp.bin`` (or ``model.safetensors``) read on rank 0 and broadcast into the shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    def read() -> dict[str, Any]:
        file = path / FSDP_MODEL_FILE
        state = hf_format.load_torch(file) if file.is_file() else hf_format.load_model_state_dict(path)
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{file}: must hold a state dict of tensors (what accelerate's save_fsdp_model writes).")
        return _complete_tied(root, add_model_prefix(state))

    state = _read_on_rank_zero(read, is_zero)
    set_model_state_dict(root, state, options=_options(True, broadcast_from_rank0=True))


def _read_on_rank_zero(read: Any, is_zero: bool) -> Any:
    """``read()`` on rank 0; a ``CheckpointError`` there is raised on every rank (else the others would wait forever)."""
    result: Any = {}
    message = None
    if is_zero:
        try:
            result = read()
        except CheckpointError as error:
            message = str(error)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise CheckpointError(message)
    return result


def _tied_aliases(module: nn.Module) -> dict[str, str]:
    """Parameters that are another parameter (tied ``lm_head``/embeddings): ``{alias: first name}``."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _complete_tied(root: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """model.safetensors drops tied duplicates (lm_head.weight); give them the tensor they share."""
    for alias, name in _tied_aliases(root).items():
        if alias not in state and name in state:
            state[alias] = state[name]
    return state


def share_tied(module: nn.Module, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Make tied entries of a gathered state dict one tensor again, so ``save_pretrained`` writes them once."""
    for alias, name in _tied_aliases(module).items():
        if prefix + alias in state and prefix + name in state:
            state[prefix + alias] = state[prefix + name]
    return state


def load_full_optimizer(root: nn.Module, optimizer: torch.optim.Optimizer, file: Path, *, is_zero: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    def read() -> dict[str, Any]:
        from .checkpoint_checks import optimizer_problems

        loaded = hf_format.load_torch(file)
        problems = optimizer_problems(loaded, str(file))
        if problems:
            raise hf_format.problems_error(file.parent, problems)
        return add_optimizer_prefix(loaded)

    state = _read_on_rank_zero(read, is_zero)
    set_optimizer_state_dict(root, optimizer, state, options=_options(True, broadcast_from_rank0=True))


def checkpoint_layout(path: str | os.PathLike) -> Literal["sharded", "full", "plain"]:
    """Which of accelerate's layouts a checkpoint folder holds (transformers' own detection, §1.6)."""
    path = Path(path)
    if (path / FSDP_MODEL_DIR).is_dir():
        return "sharded"
    if (path / FSDP_MODEL_FILE).is_file():
        return "full"
    return "plain"


def fsdp_optimizer_source(path: Path, layout: str) -> Path | None:
    """The FSDP optimizer state of a checkpoint (``optimizer_0/`` or ``optimizer.bin``), None if it has none.

    A plain ``optimizer.pt`` (DDP or one process) cannot be loaded into a sharded optimizer: refused.
    """
    source = path / FSDP_OPTIMIZER_DIR if layout == "sharded" else path / OPTIMIZER_NAME_BIN
    found = source.is_dir() if layout == "sharded" else source.is_file()
    if not found and (path / OPTIMIZER_NAME).is_file():
        raise CheckpointError(
            f"{path}: holds `{OPTIMIZER_NAME}` from a DDP/single-process run, which cannot be loaded into a "
            f"sharded optimizer. Resume with the strategy that wrote it, or start from its weights "
            "(`model.safetensors`) without `resume_from_checkpoint`."
        )
    return source if found else None


def load_scheduler(file: Path) -> Any:
    """``scheduler.pt``, loaded weights-only and checked."""
    from .checkpoint_checks import scheduler_problems

    state = hf_format.load_torch(file)
    problems = scheduler_problems(state, str(file))
    if problems:
        raise hf_format.problems_error(file.parent, problems)
    return state


def saved_world_size(checkpoint_dir: str | os.PathLike) -> int | None:
    """How many processes wrote a checkpoint, from its RNG files (None without them: ``save_only_model``)."""
    names = os.listdir(checkpoint_dir)
    if "rng_state.pth" in names:
        return 1
    ranks = [n for n in names if n.startswith("rng_state_") and n.endswith(".pth")]
    return len(ranks) or None


def warn_on_world_size_change(checkpoint_dir: str | os.PathLike, world: int) -> None:
    """Resuming with another number of processes works, like transformers, but does not reproduce the run."""
    saved = saved_world_size(checkpoint_dir)
    if saved is not None and saved != world:
        log.warning(
            "%s was written by %d process(es) and is resumed by %d. Weights, optimizer, scheduler and trainer state "
            "are restored (sharded FSDP checkpoints are resharded), and the step counts continue from the saved "
            "global_step with this run's batches per epoch, as transformers does; but the data each step sees and "
            "the random streams differ from an uninterrupted run, so it will not reproduce the original.",
            checkpoint_dir,
            saved,
            world,
        )
