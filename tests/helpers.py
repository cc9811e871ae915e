"""Run transformers.Trainer and hf_lightning.Trainer on the same tiny case and compare them.

``run_both`` builds the model twice from the same seed, trains it with each framework in its own
output folder, and returns both trainers. ``assert_same_history`` compares ``log_history`` entry by
entry: same keys in the same order, same steps, floats within a relative 1e-4 (timing keys are
only checked for presence). ``assert_same_weights`` compares final weights within 1e-4.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer as HFTrainer
from transformers import TrainingArguments

import hf_lightning

TIMING = ("runtime", "per_second", "model_preparation_time", "step_time")  # wall-clock keys (step_time: TRL's)
LIGHTNING_QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def make_args(output_dir: str | os.PathLike, **overrides: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(
        output_dir=str(output_dir), report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no", seed=42
    )
    base.update(overrides)
    return TrainingArguments(**base)


def build(
    framework: str,
    model_fn: Callable[[], torch.nn.Module],
    output_dir: str | os.PathLike,
    *,
    model_seed: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    **args: Any,
):
    """A transformers (``"hf"``) or hf_lightning (``"hl"``) Trainer over a freshly seeded model."""
    torch.manual_seed(model_seed)
    model = model_fn()
    kwargs = dict(trainer_kwargs or {})
    if framework == "hl":
        kwargs = {**LIGHTNING_QUIET, **kwargs}
        cls = hf_lightning.Trainer
    else:
        cls = HFTrainer
    return cls(model=model, args=make_args(output_dir, **args), **kwargs)


def run_both(model_fn: Callable[[], torch.nn.Module], tmp_path, *, trainer_kwargs: dict[str, Any] | None = None, **args: Any):
    """Train with transformers.Trainer, then with hf_lightning.Trainer; return ``(hf, hl)``."""
    results = []
    for framework in ("hf", "hl"):
        out = os.path.join(str(tmp_path), framework)
        shutil.rmtree(out, ignore_errors=True)
        trainer = build(framework, model_fn, out, trainer_kwargs=trainer_kwargs, **args)
        trainer.train()
        results.append(trainer)
    return tuple(results)


def act_both(
    model_fn: Callable[[], torch.nn.Module],
    tmp_path,
    action: Callable[[Any], Any],
    *,
    trainer_kwargs: dict[str, Any] | None = None,
    **args: Any,
):
    """Build both trainers and run ``action(trainer)`` on each; return ``(hf, hl, hf_result, hl_result)``."""
    trainers, results = [], []
    for framework in ("hf", "hl"):
        out = os.path.join(str(tmp_path), framework)
        shutil.rmtree(out, ignore_errors=True)
        trainer = build(framework, model_fn, out, trainer_kwargs=trainer_kwargs, **args)
        results.append(action(trainer))
        trainers.append(trainer)
    return trainers[0], trainers[1], results[0], results[1]


def assert_same_metrics(expected: dict, actual: dict, rel: float = 1e-4) -> None:
    """Same keys in the same order, values within ``rel`` (timing keys only checked for presence)."""
    assert list(expected) == list(actual), f"keys {list(expected)} != {list(actual)}"
    for key in expected:
        if any(t in key for t in TIMING):
            continue
        assert _close(expected[key], actual[key], rel), f"{key}: {expected[key]!r} != {actual[key]!r}"


def assert_same_arrays(expected: Any, actual: Any, rel: float = 1e-4) -> None:
    """Nested tuples/lists of numpy arrays: same structure, shapes, and values within ``rel``."""
    import numpy as np

    if expected is None or actual is None:
        assert expected is None and actual is None, f"{type(expected)} != {type(actual)}"
        return
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(expected) == len(actual)
        for e, a in zip(expected, actual):
            assert_same_arrays(e, a, rel)
        return
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert expected.shape == actual.shape, f"shape {expected.shape} != {actual.shape}"
    assert expected.dtype == actual.dtype, f"dtype {expected.dtype} != {actual.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=1e-6)


def _close(a: Any, b: Any, rel: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)
    return a == b


def assert_same_history(expected: list[dict], actual: list[dict], rel: float = 1e-4) -> None:
    assert len(expected) == len(actual), _history_diff(expected, actual)
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert list(e.keys()) == list(a.keys()), f"entry {i}: keys {list(e)} != {list(a)}\n{_history_diff(expected, actual)}"
        for key in e:
            if any(t in key for t in TIMING):
                continue
            assert _close(e[key], a[key], rel), f"entry {i} ({e.get('step')}): {key} {e[key]!r} != {a[key]!r}"


def _history_diff(expected: list[dict], actual: list[dict]) -> str:
    lines = ["transformers:"] + [f"  {e}" for e in expected] + ["hf_lightning:"] + [f"  {a}" for a in actual]
    return "\n".join(lines)


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module, atol: float = 1e-4) -> None:
    e, a = expected.state_dict(), actual.state_dict()
    assert e.keys() == a.keys()
    worst = max((e[k].float() - a[k].float()).abs().max().item() for k in e)
    assert worst <= atol, f"final weights differ by {worst}"


def checkpoint_files(folder: str | os.PathLike) -> set[str]:
    return set(os.listdir(folder))
