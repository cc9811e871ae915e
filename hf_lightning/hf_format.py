"""The transformers checkpoint layout: file names, and writing and reading the files of ``checkpoint-N`` folders
(the folders' own life on disk is ``checkpoint_folders``; why a save failed, in words, is ``save_errors``).

Pure I/O with torch, safetensors and transformers; no Lightning import. File names are the
constants transformers itself uses. Everything that reads a checkpoint reports problems by
naming the file and what is wrong with it, and every ``torch.load`` runs with
``weights_only=True`` so a checkpoint can never execute code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
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

from .save_errors import CheckpointSaveError, free_space, writing

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
    "CheckpointSaveError",
    "writing",
    "free_space",
    "describe_load_error",
    "checkpoint_name",
    "checkpoint_step",
    "get_last_checkpoint",
    "INCOMPLETE_MARKER",
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
    "read_trainer_state_checked",
    "read_rng_states_checked",
    "problems_error",
    "write_trainer_state",
    "write_trainer_state_json",
    "trainer_state_json",
    "has_training_state",
]

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}\-(\d+)$")

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or does not fit the model."""


def checkpoint_name(global_step: int) -> str:
    """``checkpoint-{global_step}``, the folder name transformers uses."""
    return f"{PREFIX_CHECKPOINT_DIR}-{global_step}"


def checkpoint_step(checkpoint_dir: str | os.PathLike) -> int | None:
    """N of a folder named ``checkpoint-N`` (transformers' pattern), else None."""
    match = _CHECKPOINT_RE.match(Path(checkpoint_dir).name)
    return int(match.group(1)) if match else None


INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"  # transformers' JIT-checkpoint sentinel, present while it writes


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


def read_rng_states(checkpoint_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every ``rng_state*.pth`` of a checkpoint, loaded safely and checked: ``{file name: states}``.

    Read when the checkpoint is opened, so a bad file stops the run before its first step.
    """
    states, problems = read_rng_states_checked(checkpoint_dir)
    if problems:
        raise problems_error(checkpoint_dir, problems)
    return states


def read_rng_states_checked(checkpoint_dir: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """:func:`read_rng_states` returning the problems (unreadable files, wrong values) instead of raising."""
    from .checkpoint_checks import rng_problems

    states: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name in sorted(os.listdir(checkpoint_dir)):
        if not (name.startswith("rng_state") and name.endswith(".pth")):
            continue
        path = os.path.join(checkpoint_dir, name)
        try:
            loaded = load_torch(path)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        found = rng_problems(loaded, path)
        if found:
            problems += found
        else:
            states[name] = loaded
    return states, problems


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
    """``torch.save`` as transformers writes ``optimizer.pt``/``scheduler.pt``/``scaler.pt``.

    A failure (disk full, permission denied) is a ``CheckpointSaveError`` naming ``path`` and the cause.
    """
    with writing(path):
        torch.save(obj, path)


def load_torch(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a ``.pt``/``.pth``/``.bin`` checkpoint file without executing any code from it.

    ``weights_only=True`` with only numpy's array reconstruction allowed (what rng states need).
    A file that asks for anything else is refused, and a damaged one reported as damaged; both
    errors name the file.
    """
    try:
        with safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found.") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a file torch.save wrote.") from None
    except Exception as error:  # pickle.UnpicklingError, RuntimeError from torch's zip reader, EOFError
        raise CheckpointError(f"{path}: {describe_load_error(error)}") from error


def describe_load_error(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words: a refused global, or a damaged file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            reason = line.split(" Please use", 1)[0]  # not torch's advice to allowlist it
            return (
                "refused to load. A checkpoint file may hold only tensors, numbers, strings and containers "
                f"(torch.load with weights_only=True), and this one asks for more: {reason}"
            )
    if isinstance(error, EOFError) or not lines:
        return "is empty or truncated (EOFError): the file is damaged; it is not what torch.save writes."
    detail = next((line for line in lines if "Unsupported operand" in line or "failed" in line.lower()), lines[0])
    if "Weights only load failed" in detail:
        detail = lines[-2] if len(lines) > 1 else detail
    return f"is damaged or not a file torch.save writes ({type(error).__name__}: {detail[:200]})."


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
    with writing(output_dir):
        _save_model_files(output_dir, model, state_dict=state_dict, processing_class=processing_class, data_collator=data_collator, args=args)


def _save_model_files(output_dir: str | os.PathLike, model: torch.nn.Module, *, state_dict: Any, processing_class: Any, data_collator: Any, args: Any) -> None:
    os.makedirs(output_dir, exist_ok=True)
    if isinstance(model, PreTrainedModel) or _is_peft_model(model):
        model.save_pretrained(output_dir, state_dict=dict(state_dict) if state_dict is not None else None)
    else:
        tensors = dict(state_dict) if state_dict is not None else model.state_dict()
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        path = os.path.join(output_dir, SAFE_WEIGHTS_NAME)
        with writing(path):
            safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
    tokenizer = processing_class
    if tokenizer is None and data_collator is not None:
        tokenizer = getattr(data_collator, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    if args is not None:
        with writing(os.path.join(output_dir, TRAINING_ARGS_NAME)):
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


def read_trainer_state_checked(
    checkpoint_dir: str | os.PathLike, *, steps_in_use: Any = None
) -> tuple[TrainerState | None, list[str]]:
    """``trainer_state.json`` of a checkpoint and every problem found in it: ``(state or None, problems)``.

    ``(None, [])`` when the file is absent. The file must be UTF-8 JSON holding a transformers
    ``TrainerState`` whose fields have the right types, ``global_step`` equal to the folder's N
    (``checkpoint-N``), and positive step intervals (``steps_in_use``: the ``*_steps`` fields the
    run divides by; default all three). See ``checkpoint_checks.trainer_state_problems``.
    """
    from .checkpoint_checks import STEP_FIELDS, trainer_state_problems

    path = os.path.join(checkpoint_dir, TRAINER_STATE_NAME)
    if not os.path.isfile(path):
        return None, []
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as error:
        return None, [f"{path}: not UTF-8 text (a binary file?), byte {error.start} is {error.object[error.start:error.start + 1]!r}; trainer_state.json is JSON."]
    except OSError as error:
        return None, [f"{path}: cannot be read ({error.strerror or error})."]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, [f"{path}: corrupt JSON at line {error.lineno} column {error.colno} ({error.msg})."]
    problems = trainer_state_problems(
        data, path, folder_step=checkpoint_step(checkpoint_dir), steps_in_use=STEP_FIELDS if steps_in_use is None else steps_in_use
    )
    if problems:
        return None, problems
    try:
        return TrainerState(**data), []
    except TypeError as error:
        return None, [f"{path}: not a transformers TrainerState ({error})."]


def read_trainer_state(checkpoint_dir: str | os.PathLike) -> TrainerState | None:
    """``trainer_state.json`` of a checkpoint as a ``TrainerState``; None if the file is absent.

    Raises a ``CheckpointError`` naming the file and every problem (see :func:`read_trainer_state_checked`).
    """
    state, problems = read_trainer_state_checked(checkpoint_dir)
    if problems:
        raise problems_error(checkpoint_dir, problems)
    return state


def problems_error(checkpoint_dir: str | os.PathLike, problems: list[str]) -> CheckpointError:
    """One ``CheckpointError`` for all the problems of a checkpoint (each already names its file and field)."""
    if len(problems) == 1:
        return CheckpointError(problems[0])
    listed = "\n  - ".join(problems)
    return CheckpointError(f"{checkpoint_dir}: cannot be resumed from, {len(problems)} problems:\n  - {listed}")


def trainer_state_json(state: TrainerState) -> str:
    """The text ``TrainerState.save_to_json`` writes (sorted keys, indent 2)."""
    return json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True) + "\n"


def write_trainer_state(state: TrainerState, checkpoint_dir: str | os.PathLike) -> None:
    """``TrainerState.save_to_json`` (sorted keys, indent 2), as transformers writes it."""
    write_trainer_state_json(trainer_state_json(state), checkpoint_dir)


def write_trainer_state_json(text: str, checkpoint_dir: str | os.PathLike) -> None:
    """Write already-serialised ``trainer_state.json`` text into ``checkpoint_dir``."""
    path = os.path.join(checkpoint_dir, TRAINER_STATE_NAME)
    with writing(path), open(path, "w", encoding="utf-8") as f:
        f.write(text)


def has_training_state(checkpoint_dir: str | os.PathLike) -> bool:
    """transformers restores optimizer and scheduler only when both files exist (§1.6)."""
    d = str(checkpoint_dir)
    has_optimizer = os.path.isfile(os.path.join(d, OPTIMIZER_NAME)) or os.path.isfile(os.path.join(d, OPTIMIZER_NAME_BIN))
    return has_optimizer and os.path.isfile(os.path.join(d, SCHEDULER_NAME))
