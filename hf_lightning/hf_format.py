"""The transformers checkpoint layout: file names, writing and reading ``checkpoint-N`` folders.

Pure I/O with torch, safetensors and transformers; no Lightning import. File names are the
constants transformers itself uses. Everything that reads a checkpoint reports problems by
naming the file and what is wrong with it, and every ``torch.load`` runs with
``weights_only=True`` so a checkpoint can never execute code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from transformers import PreTrainedModel, TrainerState
from transformers.trainer import (
    FSDP_MODEL_NAME,
    OPTIMIZER_NAME,
    OPTIMIZER_NAME_BIN,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
)
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, sort_checkpoints
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

__all__ = [
    "PREFIX_CHECKPOINT_DIR",
    "TRAINER_STATE_NAME",
    "TRAINING_ARGS_NAME",
    "OPTIMIZER_NAME",
    "OPTIMIZER_NAME_BIN",
    "SCHEDULER_NAME",
    "SCALER_NAME",
    "FSDP_MODEL_NAME",
    "SAFE_WEIGHTS_NAME",
    "CONFIG_NAME",
    "CheckpointError",
    "checkpoint_name",
    "temporary_name",
    "get_last_checkpoint",
    "find_last_checkpoint",
    "is_complete",
    "INCOMPLETE_MARKER",
    "remove_incomplete_checkpoints",
    "rotate_checkpoints",
    "delete_checkpoint",
    "sort_checkpoints",
    "rng_file_name",
    "capture_rng_state",
    "restore_rng_state",
    "read_rng_states",
    "apply_rng_state",
    "save_model_files",
    "save_torch",
    "load_torch",
    "load_model_state_dict",
    "read_weights",
    "Weights",
    "load_weights_into_model",
    "load_adapter_into",
    "read_trainer_state",
    "write_trainer_state",
    "write_trainer_state_json",
    "trainer_state_json",
    "has_training_state",
    "publish_checkpoint",
]

_TMP_PREFIX = ".tmp-"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}\-(\d+)$")

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or does not fit the model."""


def checkpoint_name(global_step: int) -> str:
    """``checkpoint-{global_step}``, the folder name transformers uses."""
    return f"{PREFIX_CHECKPOINT_DIR}-{global_step}"


def temporary_name(global_step: int) -> str:
    """Where a checkpoint is written before it is renamed into place.

    The leading dot keeps it out of ``checkpoint-*`` globs and ``get_last_checkpoint``, so resume
    can never pick up a half-written folder, in hf_lightning or in transformers.
    """
    return f"{_TMP_PREFIX}{checkpoint_name(global_step)}"


INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"  # transformers' JIT-checkpoint sentinel, present while it writes


def is_complete(checkpoint_dir: str | os.PathLike) -> bool:
    """A folder transformers or hf_lightning finished writing: ``trainer_state.json`` (written last) and no sentinel."""
    folder = str(checkpoint_dir)
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)) and not os.path.exists(os.path.join(folder, INCOMPLETE_MARKER))


def find_last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete ``checkpoint-N`` folder with the largest N in ``output_dir``, or None.

    transformers' rule (``get_last_checkpoint``: the name's N, never the mtime), except that a folder a
    killed transformers save left half-written (no ``trainer_state.json``, or its incomplete marker)
    is passed over with a warning instead of being resumed from.
    """
    output_dir = str(output_dir)
    if not os.path.isdir(output_dir):
        return None
    candidates = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    skipped = []
    for _, name in reversed(candidates):
        path = os.path.join(output_dir, name)
        if is_complete(path):
            if skipped:
                logger.warning("Skipped incomplete checkpoint folders (an interrupted save?): %s", skipped)
            return path
        skipped.append(path)
    if skipped:
        logger.warning("No complete checkpoint in %s; incomplete folders: %s", output_dir, skipped)
    return None


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Delete the temporary folders a killed save left behind; return what was removed."""
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for entry in os.listdir(output_dir):
        if entry.startswith(_TMP_PREFIX + PREFIX_CHECKPOINT_DIR) or entry.startswith(".old-" + PREFIX_CHECKPOINT_DIR):
            path = os.path.join(output_dir, entry)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def delete_checkpoint(checkpoint_dir: str | os.PathLike) -> None:
    """Delete a checkpoint folder so that a kill midway never leaves a partial ``checkpoint-N``.

    The folder is first renamed out of the ``checkpoint-*`` names (one atomic step), then removed;
    a kill during the removal leaves a hidden ``.old-checkpoint-N`` that the next start cleans up.
    """
    folder = Path(checkpoint_dir)
    if not folder.exists():
        return
    doomed = folder.with_name(".old-" + folder.name)
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate_checkpoints(
    output_dir: str | os.PathLike,
    save_total_limit: int | None = None,
    best_model_checkpoint: str | None = None,
    use_mtime: bool = False,
) -> list[str]:
    """transformers' ``rotate_checkpoints`` (§1.7), deleting with :func:`delete_checkpoint`; returns what it deleted.

    Same decisions: sort (by mtime, by step if the mtimes are within 1 s), protect the newest and the
    best, delete the oldest until ``max(limit, protected)`` remain. Re-written only so each deletion
    is atomic (transformers' ``shutil.rmtree`` killed midway leaves a half-deleted ``checkpoint-N``).
    """
    if save_total_limit is None or save_total_limit <= 0:
        return []
    checkpoints = sort_checkpoints(str(output_dir), PREFIX_CHECKPOINT_DIR, use_mtime)
    if len(checkpoints) <= save_total_limit:
        return []
    protected = {checkpoints[-1]}
    if best_model_checkpoint is not None:
        protected.add(str(Path(best_model_checkpoint)))
    keep = max(save_total_limit, len(protected))
    deleted: list[str] = []
    for checkpoint in checkpoints:
        if len(checkpoints) - len(deleted) <= keep:
            break
        if checkpoint not in protected:
            delete_checkpoint(checkpoint)
            deleted.append(checkpoint)
    return deleted


def publish_checkpoint(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a complete checkpoint into place in one rename.

    A folder already at ``final_dir`` (a second save at the same step) is moved aside first and
    deleted after, so ``final_dir`` is never partial: the old complete folder, briefly nothing, then
    the new one. Files are fsynced before the rename so a crash of the machine cannot expose a
    renamed folder whose files were never written to disk.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    _fsync_tree(tmp_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(".old-" + final_dir.name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------- rng


def rng_file_name(world_size: int, rank: int) -> str:
    """``rng_state.pth`` for one process, ``rng_state_{rank}.pth`` for several (§1.5)."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


def capture_rng_state(distributed: bool = False) -> dict[str, Any]:
    """The dict transformers writes to ``rng_state*.pth``: python, numpy, cpu (and cuda)."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.random.get_rng_state_all() if distributed else torch.cuda.random.get_rng_state()
    return states


_RNG_KEYS = ("python", "numpy", "cpu")


def read_rng_states(checkpoint_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every ``rng_state*.pth`` of a checkpoint, loaded safely and checked: ``{file name: states}``.

    Read when the checkpoint is opened, so a bad file stops the run before its first step.
    """
    states: dict[str, dict[str, Any]] = {}
    for name in sorted(os.listdir(checkpoint_dir)):
        if not (name.startswith("rng_state") and name.endswith(".pth")):
            continue
        path = os.path.join(checkpoint_dir, name)
        loaded = load_torch(path)
        missing = [key for key in _RNG_KEYS if not isinstance(loaded, dict) or key not in loaded]
        if missing:
            raise CheckpointError(f"{path}: not an RNG state file, it lacks {missing} (expected keys {list(_RNG_KEYS)}).")
        states[name] = loaded
    return states


def apply_rng_state(states: Mapping[str, Any], distributed: bool = False) -> None:
    """Set python, numpy, torch CPU (and CUDA) generators from a ``rng_state*.pth`` dict (``Trainer._load_rng_state``)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        if distributed and isinstance(states["cuda"], (list, tuple)):
            torch.cuda.random.set_rng_state_all(states["cuda"])
        else:
            cuda_state = states["cuda"][0] if isinstance(states["cuda"], (list, tuple)) else states["cuda"]
            torch.cuda.random.set_rng_state(cuda_state)


def restore_rng_state(path: str | os.PathLike, distributed: bool = False) -> bool:
    """Restore the RNG states saved in ``path``; False (and nothing changed) if the file is absent."""
    if not os.path.isfile(path):
        return False
    apply_rng_state(load_torch(path), distributed=distributed)
    return True


# -------------------------------------------------------------------------------------- torch files


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` as transformers writes ``optimizer.pt``/``scheduler.pt``/``scaler.pt``."""
    torch.save(obj, path)


def load_torch(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a ``.pt``/``.pth`` checkpoint file without executing any code from it.

    ``weights_only=True`` with only numpy's array reconstruction allowed (what rng states need).
    A file that wants anything else is refused with an error that names it.
    """
    try:
        with safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found.") from None
    except Exception as error:  # pickle.UnpicklingError, RuntimeError from torch's weights_only unpickler
        raise CheckpointError(
            f"{path}: refused to load. A checkpoint file may hold only tensors, numbers, strings and containers "
            f"(torch.load with weights_only=True), and this one asks for more: {_unpickling_reason(error)}"
        ) from error


def _unpickling_reason(error: BaseException) -> str:
    """The informative line of torch's weights_only error (the global it refused), else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.split(" Please use", 1)[0]  # not torch's advice to allowlist it
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------- the model


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_model_files(
    output_dir: str | os.PathLike,
    model: torch.nn.Module,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    processing_class: Any = None,
    data_collator: Any = None,
    args: Any = None,
) -> None:
    """What ``Trainer._save`` writes: weights (+config), tokenizer files and ``training_args.bin`` (§1.2).

    ``state_dict`` is the full (gathered) state of ``model``; None means "read it from the model".
    Call on the writing rank only.
    """
    os.makedirs(output_dir, exist_ok=True)
    if isinstance(model, PreTrainedModel) or _is_peft_model(model):
        model.save_pretrained(output_dir, state_dict=dict(state_dict) if state_dict is not None else None)
    else:
        tensors = dict(state_dict) if state_dict is not None else model.state_dict()
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        safetensors.torch.save_file(tensors, os.path.join(output_dir, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    tokenizer = processing_class
    if tokenizer is None and data_collator is not None:
        tokenizer = getattr(data_collator, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    if args is not None:
        torch.save(args, os.path.join(output_dir, TRAINING_ARGS_NAME))


@dataclasses.dataclass
class Weights:
    """The weights of a checkpoint folder: the tensors, the file they came from, and whether they are a PEFT adapter."""

    state_dict: dict[str, torch.Tensor]
    path: str
    adapter: bool = False


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from error


def _read_index(index_path: str, read_shard: Any) -> dict[str, torch.Tensor]:
    """A sharded checkpoint: ``{"weight_map": {param: shard file}}`` and the shards it names."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise CheckpointError(f"{index_path}: not a valid shard index, it needs a \"weight_map\" ({error}).") from error
    folder = os.path.dirname(index_path)
    state: dict[str, torch.Tensor] = {}
    for name in files:
        shard = os.path.join(folder, name)
        if not os.path.isfile(shard):
            raise CheckpointError(f"{shard}: shard listed in {os.path.basename(index_path)} is missing.")
        state.update(read_shard(shard))
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise CheckpointError(f"{index_path}: the shards lack tensors the index lists: {absent[:10]}.")
    return state


def read_weights(checkpoint_dir: str | os.PathLike) -> Weights:
    """The model weights of a checkpoint folder, in transformers' order of preference (§1.6).

    ``model.safetensors``, then a sharded safetensors index, then ``pytorch_model.bin`` or its
    index (read with ``weights_only=True``), then a PEFT adapter (``adapter_model.safetensors`` or
    ``.bin``). Errors name the folder or the file at fault.
    """
    folder = str(checkpoint_dir)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: checkpoint folder not found.")
    if os.path.exists(os.path.join(folder, INCOMPLETE_MARKER)):
        raise CheckpointError(
            f"{os.path.join(folder, INCOMPLETE_MARKER)}: transformers marked this checkpoint as still being written; "
            "its save was interrupted. Resume from an earlier checkpoint."
        )

    def at(name: str) -> str:
        return os.path.join(folder, name)

    if os.path.isfile(at(SAFE_WEIGHTS_NAME)):
        return Weights(_read_safetensors(at(SAFE_WEIGHTS_NAME)), at(SAFE_WEIGHTS_NAME))
    if os.path.isfile(at(SAFE_WEIGHTS_INDEX_NAME)):
        return Weights(_read_index(at(SAFE_WEIGHTS_INDEX_NAME), _read_safetensors), at(SAFE_WEIGHTS_INDEX_NAME))
    if os.path.isfile(at(WEIGHTS_NAME)):
        return Weights(load_torch(at(WEIGHTS_NAME)), at(WEIGHTS_NAME))
    if os.path.isfile(at(WEIGHTS_INDEX_NAME)):
        return Weights(_read_index(at(WEIGHTS_INDEX_NAME), load_torch), at(WEIGHTS_INDEX_NAME))
    if os.path.isfile(at(ADAPTER_SAFE_WEIGHTS_NAME)):
        return Weights(_read_safetensors(at(ADAPTER_SAFE_WEIGHTS_NAME)), at(ADAPTER_SAFE_WEIGHTS_NAME), adapter=True)
    if os.path.isfile(at(ADAPTER_WEIGHTS_NAME)):
        return Weights(load_torch(at(ADAPTER_WEIGHTS_NAME)), at(ADAPTER_WEIGHTS_NAME), adapter=True)
    looked_for = [SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME, ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME]
    raise CheckpointError(
        f"{folder}: no model weights found (looked for {', '.join(looked_for)}); the folder holds {sorted(os.listdir(folder))}."
    )


def load_model_state_dict(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of :func:`read_weights` (a full model, or a PEFT adapter's own tensors)."""
    return read_weights(checkpoint_dir).state_dict


def load_weights_into_model(model: torch.nn.Module, weights: Weights) -> None:
    """Load checkpoint weights into ``model`` like ``Trainer._load_from_checkpoint``.

    A full state dict loads non-strictly, tied weights re-tied; a shape mismatch is an error
    naming the file. A PEFT adapter goes through peft's ``set_peft_model_state_dict`` into the
    active adapter (what ``load_adapter`` does); keys it does not know are an error.
    """
    if weights.adapter:
        load_adapter_into(model, weights)
        return
    expected = model.state_dict()
    mismatched = [
        f"`{key}` {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} in the model"
        for key, value in weights.state_dict.items()
        if key in expected and tuple(expected[key].shape) != tuple(value.shape)
    ]
    if mismatched:
        raise CheckpointError(
            f"{weights.path}: the weights do not fit {type(model).__name__}, {len(mismatched)} shapes differ: "
            + "; ".join(mismatched[:10]) + (" ..." if len(mismatched) > 10 else "")
        )
    result = model.load_state_dict(weights.state_dict, strict=False)
    if result.missing_keys:
        tie = getattr(model, "tie_weights", None)
        if callable(tie):
            tie()
        logger.info("Missing keys when loading %s (tied weights re-tied): %s", weights.path, result.missing_keys)
    if result.unexpected_keys:
        logger.warning("Unexpected keys in %s: %s", weights.path, result.unexpected_keys)


def load_adapter_into(model: torch.nn.Module, weights: Weights) -> None:
    """A PEFT adapter file into the model's active adapter, checked: every tensor must land somewhere."""
    if not _is_peft_model(model):
        raise CheckpointError(
            f"{weights.path}: this checkpoint holds a PEFT adapter, but the model is a {type(model).__name__}, not a "
            "peft.PeftModel. Wrap the base model as when it was trained (peft.get_peft_model(model, config))."
        )
    from peft.utils import set_peft_model_state_dict

    adapter_name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    try:
        result = set_peft_model_state_dict(model, weights.state_dict, adapter_name=adapter_name)
    except RuntimeError as error:  # size mismatches from load_state_dict
        raise CheckpointError(f"{weights.path}: the adapter does not fit the model ({str(error).strip()}).") from error
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(
            f"{weights.path}: the adapter has tensors the model's adapter {adapter_name!r} lacks: {unexpected[:10]}."
        )


# ------------------------------------------------------------------------------------ trainer state


def read_trainer_state(checkpoint_dir: str | os.PathLike) -> TrainerState | None:
    """``trainer_state.json`` of a checkpoint as a ``TrainerState``; None if the file is absent."""
    path = os.path.join(checkpoint_dir, TRAINER_STATE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        return TrainerState.load_from_json(path)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: corrupt JSON at line {error.lineno} column {error.colno} ({error.msg}).") from error
    except TypeError as error:
        raise CheckpointError(f"{path}: not a transformers TrainerState ({error}).") from error


def trainer_state_json(state: TrainerState) -> str:
    """The text ``TrainerState.save_to_json`` writes (sorted keys, indent 2)."""
    return json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"


def write_trainer_state(state: TrainerState, checkpoint_dir: str | os.PathLike) -> None:
    """``TrainerState.save_to_json`` (sorted keys, indent 2), as transformers writes it."""
    write_trainer_state_json(trainer_state_json(state), checkpoint_dir)


def write_trainer_state_json(text: str, checkpoint_dir: str | os.PathLike) -> None:
    """Write already-serialised ``trainer_state.json`` text into ``checkpoint_dir``."""
    with open(os.path.join(checkpoint_dir, TRAINER_STATE_NAME), "w", encoding="utf-8") as f:
        f.write(text)


def has_training_state(checkpoint_dir: str | os.PathLike) -> bool:
    """transformers restores optimizer and scheduler only when both files exist (§1.6)."""
    d = str(checkpoint_dir)
    has_optimizer = os.path.isfile(os.path.join(d, OPTIMIZER_NAME)) or os.path.isfile(os.path.join(d, OPTIMIZER_NAME_BIN))
    return has_optimizer and os.path.isfile(os.path.join(d, SCHEDULER_NAME))
