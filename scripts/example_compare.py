"""Compare two output folders of the same example script, file by file and bit for bit (scripts/example_scripts.py).

Both runs write the same file names. JSON files are compared as parsed values (key order included) after the
wall-clock keys are dropped (``*_runtime``, ``*_per_second``); weights (``.safetensors``) tensor by tensor, with
dtype and shape; torch pickles (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``)
as nested values with tensors compared bitwise; every other file (predictions, model card, tokenizer and
config files) byte for byte.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["WALL_CLOCK", "compare_files", "compare_folders", "compare_values", "without_wall_clock"]

WALL_CLOCK = ("_runtime", "_per_second", "model_preparation_time")  # keys that measure time, not the run
TORCH_PICKLES = (".pt", ".pth", ".bin")


def compare_folders(expected: Path, actual: Path, limit: int = 5) -> list[str]:
    """The differences between two output trees (missing or extra files, then files that differ), at most ``limit``."""
    expected_files = _files(expected)
    actual_files = _files(actual)
    problems = [f"only in stock: {name}" for name in sorted(expected_files - actual_files)]
    problems += [f"only in hf_lightning: {name}" for name in sorted(actual_files - expected_files)]
    for name in sorted(expected_files & actual_files):
        if len(problems) >= limit:
            break
        difference = compare_files(expected / name, actual / name)
        if difference is not None:
            problems.append(f"{name}: {difference}")
    return problems[:limit]


def count_files(folder: Path) -> int:
    """How many files the tree under ``folder`` holds."""
    return len(_files(folder))


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def compare_files(expected: Path, actual: Path) -> str | None:
    """``None`` when the two files hold the same thing, else the first difference in words."""
    if expected.suffix == ".json":
        try:
            before, after = json.loads(expected.read_text()), json.loads(actual.read_text())
        except ValueError:
            pass  # not JSON after all (a predictions file): compare the bytes
        else:
            return compare_values(without_wall_clock(before), without_wall_clock(after))
    if expected.suffix == ".safetensors":
        return _compare_safetensors(expected, actual)
    if expected.suffix in TORCH_PICKLES:
        import torch

        return compare_values(torch.load(expected, weights_only=False), torch.load(actual, weights_only=False))
    before, after = expected.read_bytes(), actual.read_bytes()
    if before == after:
        return None
    return _first_different_line(before.decode(errors="replace"), after.decode(errors="replace"))


def without_wall_clock(value: Any) -> Any:
    """``value`` with every dict key that measures time (``WALL_CLOCK``) removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if not k.endswith(WALL_CLOCK)}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


def compare_values(expected: Any, actual: Any, where: str = "") -> str | None:
    """The first place two nested values differ (dict keys in order, tensors and arrays bitwise), or ``None``."""
    import numpy as np
    import torch

    here = where or "value"
    if type(expected) is not type(actual):
        return f"{here}: {type(expected).__name__} != {type(actual).__name__}"
    if isinstance(expected, torch.Tensor):
        if expected.dtype != actual.dtype or expected.shape != actual.shape:
            return f"{here}: {expected.dtype}{tuple(expected.shape)} != {actual.dtype}{tuple(actual.shape)}"
        if not torch.equal(_bits(expected), _bits(actual)):
            return f"{here}: tensors differ (largest gap {(expected.double() - actual.double()).abs().max().item():.3g})"
        return None
    if isinstance(expected, np.ndarray):
        return compare_values(torch.from_numpy(np.ascontiguousarray(expected)), torch.from_numpy(np.ascontiguousarray(actual)), where)
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            return f"{here}: keys {list(expected)} != {list(actual)}"
        for key in expected:
            difference = compare_values(expected[key], actual[key], f"{where}.{key}" if where else str(key))
            if difference:
                return difference
        return None
    if isinstance(expected, (list, tuple)):
        if len(expected) != len(actual):
            return f"{here}: {len(expected)} items != {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            difference = compare_values(e, a, f"{where}[{i}]")
            if difference:
                return difference
        return None
    if isinstance(expected, float) and math.isnan(expected) and math.isnan(actual):
        return None
    if expected == actual:
        return None
    if hasattr(expected, "__dict__") and not isinstance(expected, type):  # objects without __eq__: their fields
        return compare_values(vars(expected), vars(actual), where)
    return f"{here}: {expected!r} != {actual!r}"


def _bits(tensor: Any) -> Any:
    """The tensor's bytes (so -0.0 and 0.0, or two NaNs with other payloads, count as different)."""
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _compare_safetensors(expected: Path, actual: Path) -> str | None:
    from safetensors.torch import load_file

    return compare_values(load_file(expected), load_file(actual))


def _first_different_line(expected: str, actual: str) -> str:
    before, after = expected.splitlines(), actual.splitlines()
    for number, (e, a) in enumerate(zip(before, after), 1):
        if e != a:
            return f"line {number}: {e[:80]!r} != {a[:80]!r}"
    return f"{len(before)} lines != {len(after)} lines"
