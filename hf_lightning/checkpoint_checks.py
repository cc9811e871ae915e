"""What a checkpoint's files must hold to be resumed from: pure checks that list every problem.

Each function takes what was read from one file (already loaded without running code from it,
see ``hf_format.load_torch``) and returns problems as ``"<file>: <field>: <what is wrong>"``,
never raising, so a resume can name every problem of a checkpoint at once before its first step.
No Lightning, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerState

__all__ = [
    "trainer_state_problems",
    "optimizer_problems",
    "scheduler_problems",
    "scaler_problems",
    "rng_problems",
    "optimizer_fit_problems",
    "scheduler_fit_problems",
    "STEP_FIELDS",
]

STEP_FIELDS = ("logging_steps", "eval_steps", "save_steps")
_MAX_STEP = 2**53  # beyond this a step count is not a training run (and JSON numbers lose precision)
_TRAINER_STATE_FIELDS = {f.name for f in dataclasses.fields(TrainerState)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def trainer_state_problems(
    data: Any,
    path: str,
    *,
    folder_step: int | None = None,
    steps_in_use: Iterable[str] = STEP_FIELDS,
) -> list[str]:
    """Problems of the parsed ``trainer_state.json`` of a checkpoint.

    Args:
        data: the parsed JSON.
        path: the file, named in every problem.
        folder_step: N of the ``checkpoint-N`` folder it lies in (None for another name): ``global_step`` must equal it.
        steps_in_use: which of ``logging_steps``/``eval_steps``/``save_steps`` the run divides by (its strategy is
            "steps"); those must be positive.
    """
    if not isinstance(data, Mapping):
        return [f"{path}: must be a JSON object (transformers' TrainerState), got a {_type_name(data)}."]
    problems: list[str] = []

    def bad(field: str, text: str) -> None:
        problems.append(f"{path}: `{field}` {text}")

    unknown = sorted(set(data) - _TRAINER_STATE_FIELDS)
    if unknown:
        problems.append(f"{path}: unknown fields {unknown}; this is not a transformers TrainerState (its fields: {sorted(_TRAINER_STATE_FIELDS)}).")
    if "global_step" not in data:
        bad("global_step", "is missing: the step to resume from is unknown.")
    else:
        step = data["global_step"]
        if not _is_int(step):
            bad("global_step", f"must be an integer, got {step!r} ({_type_name(step)}).")
        elif step < 0:
            bad("global_step", f"must be >= 0, got {step}.")
        elif step > _MAX_STEP:
            bad("global_step", f"is {step}, beyond any training run (at most {_MAX_STEP}).")
        else:
            if folder_step is not None and step != folder_step:
                bad("global_step", f"is {step}, but the folder is named checkpoint-{folder_step}; the files do not belong together.")
            max_steps = data.get("max_steps")
            if _is_int(max_steps) and max_steps > 0 and step > max_steps:
                bad("global_step", f"is {step}, beyond `max_steps` {max_steps} recorded in the same file.")
    if "log_history" not in data:
        bad("log_history", "is missing (transformers always writes it, [] before the first log).")
    else:
        history = data["log_history"]
        if not isinstance(history, list):
            bad("log_history", f"must be a list of log entries, got {_type_name(history)}.")
        else:
            for index, entry in enumerate(history):
                if not isinstance(entry, Mapping):
                    bad(f"log_history[{index}]", f"must be an object, got {_type_name(entry)}.")
                elif "step" in entry and not _is_int(entry["step"]):
                    bad(f"log_history[{index}].step", f"must be an integer, got {entry['step']!r}.")
    for field in ("max_steps", "num_train_epochs", "num_input_tokens_seen"):
        if field in data and (not _is_int(data[field]) or data[field] < 0):
            bad(field, f"must be an integer >= 0, got {data[field]!r}.")
    for field in ("train_batch_size", "best_global_step"):
        value = data.get(field)
        if value is not None and (not _is_int(value) or value < 0):
            bad(field, f"must be an integer >= 0 or null, got {value!r}.")
    for field in ("epoch", "total_flos"):
        value = data.get(field, 0)
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            bad(field, f"must be a finite number >= 0, got {value!r}.")
    in_use = set(steps_in_use)
    for field in STEP_FIELDS:
        if field not in data:
            continue
        value = data[field]
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
            bad(field, f"must be a number, got {value!r} ({_type_name(value)}).")
        elif value < 0 or (value == 0 and field in in_use):
            bad(field, f"must be > 0 (the run logs/evaluates/saves every `{field}` steps), got {value}.")
    best_metric = data.get("best_metric")
    if best_metric is not None and not _is_number(best_metric):
        bad("best_metric", f"must be a number or null, got {best_metric!r}.")
    for field in ("best_model_checkpoint", "trial_name"):
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            bad(field, f"must be a string or null, got {value!r}.")
    for field in ("is_local_process_zero", "is_world_process_zero", "is_hyper_param_search"):
        if field in data and not isinstance(data[field], bool):
            bad(field, f"must be true or false, got {data[field]!r}.")
    for field in ("trial_params", "stateful_callbacks"):
        value = data.get(field)
        if value is not None and not isinstance(value, Mapping):
            bad(field, f"must be an object or null, got {_type_name(value)}.")
    callbacks = data.get("stateful_callbacks")
    if isinstance(callbacks, Mapping):
        for name, entry in callbacks.items():
            for item in entry if isinstance(entry, list) else [entry]:
                if not isinstance(item, Mapping) or not isinstance(item.get("args", {}), Mapping) or not isinstance(item.get("attributes", {}), Mapping):
                    bad(f"stateful_callbacks.{name}", "must be {\"args\": {...}, \"attributes\": {...}} (TrainerCallback.state()).")
                    break
    return problems


def optimizer_problems(data: Any, path: str) -> list[str]:
    """Problems of a loaded ``optimizer.pt``/``optimizer.bin``: a torch optimizer ``state_dict``."""
    if not isinstance(data, Mapping):
        return [f"{path}: must hold an optimizer state_dict (a dict with `state` and `param_groups`), got {_type_name(data)}."]
    problems = []
    state, groups = data.get("state"), data.get("param_groups")
    if "state" not in data:
        problems.append(f"{path}: `state` is missing (an optimizer state_dict has `state` and `param_groups`; keys found: {sorted(map(str, data))}).")
    elif not isinstance(state, Mapping):
        problems.append(f"{path}: `state` must be a dict of per-parameter states, got {_type_name(state)}.")
    if "param_groups" not in data:
        problems.append(f"{path}: `param_groups` is missing (an optimizer state_dict has `state` and `param_groups`; keys found: {sorted(map(str, data))}).")
        return problems
    if not isinstance(groups, list):
        return [*problems, f"{path}: `param_groups` must be a list, got {_type_name(groups)}."]
    ids: list[Any] = []
    for index, group in enumerate(groups):
        if not isinstance(group, Mapping):
            problems.append(f"{path}: `param_groups[{index}]` must be a dict, got {_type_name(group)}.")
            continue
        params = group.get("params")
        if not isinstance(params, list) or not all(_is_int(p) or isinstance(p, str) for p in params):
            problems.append(f"{path}: `param_groups[{index}].params` must be a list of parameter ids, got {params!r:.80}.")
        else:
            ids += params
        lr = group.get("lr")
        if "lr" in group and not (_is_number(lr) or isinstance(lr, torch.Tensor)):
            problems.append(f"{path}: `param_groups[{index}].lr` must be a number, got {lr!r}.")
    if isinstance(state, Mapping) and ids:
        stray = [key for key in state if key not in set(ids)]
        if stray:
            problems.append(f"{path}: `state` has entries for parameters no group lists: {stray[:10]}.")
        for key, value in state.items():
            if not isinstance(value, Mapping):
                problems.append(f"{path}: `state[{key!r}]` must be a dict of tensors, got {_type_name(value)}.")
                break
    return problems


def scheduler_problems(data: Any, path: str) -> list[str]:
    """Problems of a loaded ``scheduler.pt``: an LR scheduler ``state_dict``."""
    if not isinstance(data, Mapping):
        return [f"{path}: must hold an LR scheduler state_dict (a dict), got {_type_name(data)}."]
    problems = []
    if "last_epoch" in data and not _is_int(data["last_epoch"]):
        problems.append(f"{path}: `last_epoch` must be an integer, got {data['last_epoch']!r}.")
    for field in ("base_lrs", "_last_lr"):
        if field in data and (not isinstance(data[field], list) or not all(_is_number(v) or isinstance(v, torch.Tensor) for v in data[field])):
            problems.append(f"{path}: `{field}` must be a list of learning rates, got {data[field]!r:.80}.")
    if "lr_lambdas" in data and not isinstance(data["lr_lambdas"], list):
        problems.append(f"{path}: `lr_lambdas` must be a list, got {_type_name(data['lr_lambdas'])}.")
    return problems


def scaler_problems(data: Any, path: str) -> list[str]:
    """Problems of a loaded ``scaler.pt``: a ``GradScaler`` state_dict."""
    if not isinstance(data, Mapping):
        return [f"{path}: must hold a GradScaler state_dict (a dict), got {_type_name(data)}."]
    scale = data.get("scale")
    if "scale" in data and not (_is_number(scale) or isinstance(scale, torch.Tensor)):
        return [f"{path}: `scale` must be a number, got {scale!r}."]
    return []


def rng_problems(data: Any, path: str) -> list[str]:
    """Problems of a loaded ``rng_state*.pth``: each generator state is tried on a fresh generator."""
    keys = ("python", "numpy", "cpu")
    if not isinstance(data, Mapping):
        return [f"{path}: must hold a dict of generator states with keys {list(keys)}, got {_type_name(data)}."]
    missing = [key for key in keys if key not in data]
    if missing:
        return [f"{path}: not an RNG state file, it lacks {missing} (expected keys {list(keys)}; found {sorted(map(str, data))})."]
    problems = []
    try:
        random.Random().setstate(data["python"])
    except Exception as error:  # noqa: BLE001 - any failure means "not a random.getstate() value"
        problems.append(f"{path}: `python` is not a random.getstate() value ({type(error).__name__}: {error}).")
    try:
        np.random.RandomState().set_state(data["numpy"])
    except Exception as error:  # noqa: BLE001
        problems.append(f"{path}: `numpy` is not a numpy.random.get_state() value ({type(error).__name__}: {error}).")
    cpu = data["cpu"]
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8:
        problems.append(f"{path}: `cpu` must be torch.random.get_rng_state()'s uint8 tensor, got {_type_name(cpu)}.")
    else:
        try:
            torch.Generator().set_state(cpu)
        except Exception as error:  # noqa: BLE001
            problems.append(f"{path}: `cpu` is not a torch CPU generator state ({str(error).splitlines()[0]}).")
    if "cuda" in data:
        cuda = data["cuda"]
        states = cuda if isinstance(cuda, (list, tuple)) else [cuda]
        if not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in states):
            problems.append(f"{path}: `cuda` must be CUDA generator state tensors (uint8), got {_type_name(cuda)}.")
    return problems


def optimizer_fit_problems(saved: Mapping[str, Any], param_groups: Sequence[Mapping[str, Any]], path: str, names: Mapping[int, str] | None = None) -> list[str]:
    """Whether an optimizer ``state_dict`` (already structure-checked) fits the run's optimizer.

    ``param_groups``: the live optimizer's groups (their ``params`` are tensors); ``names``: the
    parameter name of each position in the flat parameter order, for the messages.
    """
    saved_groups = saved.get("param_groups") or []
    problems = []
    if len(saved_groups) != len(param_groups):
        sizes = [len(g.get("params", [])) for g in saved_groups]
        live = [len(g["params"]) for g in param_groups]
        return [
            f"{path}: `param_groups` has {len(saved_groups)} groups of {sizes} parameters, the run's optimizer "
            f"{len(param_groups)} groups of {live}: the checkpoint belongs to another model or optimizer setup."
        ]
    flat_saved: list[Any] = []
    flat_live: list[torch.Tensor] = []
    for index, (old, new) in enumerate(zip(saved_groups, param_groups)):
        if len(old.get("params", [])) != len(new["params"]):
            problems.append(
                f"{path}: `param_groups[{index}]` has {len(old.get('params', []))} parameters, the run's optimizer "
                f"{len(new['params'])} (weight decay groups follow the model's parameters: another model?)."
            )
        flat_saved += list(old.get("params", []))
        flat_live += list(new["params"])
    if problems:
        return problems
    state = saved.get("state") or {}
    for position, (key, param) in enumerate(zip(flat_saved, flat_live)):
        entry = state.get(key)
        if not isinstance(entry, Mapping):
            continue
        for field, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                name = (names or {}).get(position, f"parameter {position}")
                problems.append(
                    f"{path}: `state[{key!r}].{field}` has shape {tuple(value.shape)}, the model's {name} {tuple(param.shape)}."
                )
                break
    return problems


def scheduler_fit_problems(saved: Mapping[str, Any], live: Mapping[str, Any], path: str, scheduler_name: str = "scheduler") -> list[str]:
    """Whether a ``scheduler.pt`` state_dict fits the run's scheduler (same keys, one base lr per group)."""
    missing = sorted(set(live) - set(saved))
    problems = []
    if missing:
        problems.append(f"{path}: lacks {missing}, which the run's {scheduler_name} has (keys found: {sorted(saved)}).")
    for field in ("base_lrs", "lr_lambdas"):
        if isinstance(saved.get(field), list) and isinstance(live.get(field), list) and len(saved[field]) != len(live[field]):
            problems.append(f"{path}: `{field}` has {len(saved[field])} entries, the run's {scheduler_name} {len(live[field])} (one per parameter group).")
    return problems
