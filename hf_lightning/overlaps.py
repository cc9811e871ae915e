"""One rule for ``lightning.Trainer`` settings that overlap ``TrainingArguments``.

``max_epochs`` and ``num_train_epochs`` say the same thing twice; so do ``precision`` and ``bf16``,
``accumulate_grad_batches`` and ``gradient_accumulation_steps``, and a few more. The rule: a Lightning
setting that has a TrainingArguments equivalent is *honoured* by writing that equivalent into the
run's TrainingArguments (so ``training_args.bin`` records what ran), unless the TrainingArguments
field was set to something else, which is an error naming both. A Lightning setting with no
equivalent that would change transformers' schedule is refused. Nothing is dropped.

Pure: ``reconcile`` works on plain values and is tested with tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["OVERLAPS", "REFUSED", "reconcile", "apply", "lightning_settings_of", "LIGHTNING_DEFAULTS", "cli_hint"]


def _epochs(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`max_epochs={value!r}`: hf_lightning needs a positive number of epochs (num_train_epochs).")
    if args.get("max_steps", -1) > 0:
        raise ValueError(
            f"`max_epochs={value}` (lightning.Trainer) has no effect with `max_steps={args['max_steps']}` "
            "(TrainingArguments), which takes precedence over epochs in transformers: remove one of them."
        )
    return {"num_train_epochs": float(value)}


def _steps(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if value == -1:
        return {}
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`max_steps={value!r}`: use a positive number of optimizer steps (or -1 for none).")
    return {"max_steps": value}


_PRECISIONS = {
    "bf16-mixed": {"bf16": True, "fp16": False},
    "16-mixed": {"bf16": False, "fp16": True},
    "32-true": {"bf16": False, "fp16": False},
    "32": {"bf16": False, "fp16": False},
    "16": {"bf16": False, "fp16": True},
    "bf16": {"bf16": True, "fp16": False},
}


def _precision(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    key = str(value)
    if key not in _PRECISIONS:
        raise ValueError(
            f"`precision={value!r}` has no TrainingArguments equivalent; use one of {sorted(set(_PRECISIONS))} "
            "(bf16-mixed is `bf16=True`, 16-mixed is `fp16=True`)."
        )
    return dict(_PRECISIONS[key])


def _positive_int(field: str) -> Callable[[Any, Mapping[str, Any]], dict[str, Any]]:
    def convert(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{field}` must be a positive integer, got {value!r}.")
        return {field: value}

    return convert


def _accumulate(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    return _positive_int("gradient_accumulation_steps")(value, args)


def _clip(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if value is None:
        return {}
    return {"max_grad_norm": float(value)}


def _clip_algorithm(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if value in (None, "norm"):
        return {}
    raise ValueError(
        f"`gradient_clip_algorithm={value!r}`: transformers clips by norm (`max_grad_norm`); there is no clipping by value."
    )


def _val_check(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return {"eval_strategy": "steps", "eval_steps": value}
    if value == 1.0:
        return {"eval_strategy": "epoch"}
    raise ValueError(
        f"`val_check_interval={value!r}`: a fraction of an epoch has no TrainingArguments equivalent; use an integer "
        "(evaluate every N optimizer steps, `eval_steps`) or `eval_strategy='epoch'`."
    )


def _val_every(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if value == 1:
        return {"eval_strategy": "epoch"}
    raise ValueError(
        f"`check_val_every_n_epoch={value!r}`: transformers evaluates every epoch (`eval_strategy='epoch'`) or every "
        "N optimizer steps (`eval_strategy='steps'`, `eval_steps`); there is no every-N-epochs."
    )


def _log_every(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    return {"logging_strategy": "steps", **{"logging_steps": _positive_int("logging_steps")(value, args)["logging_steps"]}}


def _deterministic(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"full_determinism": value}
    raise ValueError(f"`deterministic={value!r}`: use True or False (TrainingArguments `full_determinism`).")


def _checkpointing(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    return {} if value else {"save_strategy": "no"}


def _root_dir(value: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    return {"output_dir": str(value)}


OVERLAPS: dict[str, tuple[tuple[str, ...], Callable[[Any, Mapping[str, Any]], dict[str, Any]]]] = {
    "max_epochs": (("num_train_epochs",), _epochs),
    "max_steps": (("max_steps",), _steps),
    "precision": (("bf16", "fp16"), _precision),
    "accumulate_grad_batches": (("gradient_accumulation_steps",), _accumulate),
    "gradient_clip_val": (("max_grad_norm",), _clip),
    "gradient_clip_algorithm": ((), _clip_algorithm),
    "val_check_interval": (("eval_strategy", "eval_steps"), _val_check),
    "check_val_every_n_epoch": (("eval_strategy",), _val_every),
    "log_every_n_steps": (("logging_strategy", "logging_steps"), _log_every),
    "deterministic": (("full_determinism",), _deterministic),
    "enable_checkpointing": (("save_strategy",), _checkpointing),
    "default_root_dir": (("output_dir",), _root_dir),
}
"""Lightning setting -> (the TrainingArguments fields it writes, how)."""

REFUSED: dict[str, str] = {
    "limit_train_batches": "the training length comes from `max_steps`/`num_train_epochs`",
    "limit_val_batches": "evaluations cover the whole eval dataset, as in transformers; pass a smaller `eval_dataset`",
    "limit_test_batches": "predict() covers the whole dataset; pass a smaller one",
    "overfit_batches": "no transformers equivalent; train on a small `train_dataset` instead",
    "fast_dev_run": "no transformers equivalent; use `max_steps` and a small `eval_dataset`",
    "num_sanity_val_steps": "transformers runs no sanity evaluation; use `eval_on_start=True` for an evaluation before training",
    "reload_dataloaders_every_n_epochs": "dataloaders are built as transformers builds them, once per train()",
    "use_distributed_sampler": "hf_lightning shards the data like accelerate (the same batches per rank as transformers)",
    "min_epochs": "transformers has no minimum; use `num_train_epochs`",
    "min_steps": "transformers has no minimum; use `max_steps`",
}
"""Lightning settings with no TrainingArguments equivalent that would change the schedule -> why refused."""

LIGHTNING_DEFAULTS: dict[str, Any] = {
    "max_epochs": None,
    "max_steps": -1,
    "precision": None,
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "gradient_clip_algorithm": None,
    "val_check_interval": None,
    "check_val_every_n_epoch": 1,
    "log_every_n_steps": None,
    "deterministic": None,
    "enable_checkpointing": None,
    "default_root_dir": None,
    "limit_train_batches": None,
    "limit_val_batches": None,
    "limit_test_batches": None,
    "overfit_batches": 0.0,
    "fast_dev_run": False,
    "num_sanity_val_steps": None,
    "reload_dataloaders_every_n_epochs": 0,
    "use_distributed_sampler": True,
    "min_epochs": None,
    "min_steps": None,
}
"""``lightning.Trainer``'s defaults for the settings above (a setting at its default was not asked for)."""

# The values hf_lightning itself passes; asking for them explicitly is no conflict.
_OWN_VALUES: dict[str, Any] = {"use_distributed_sampler": False, "num_sanity_val_steps": 0, "enable_checkpointing": True}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return str(getattr(a, "value", a)) == str(getattr(b, "value", b))


def reconcile(args: Mapping[str, Any], defaults: Mapping[str, Any], lightning: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainingArguments updates that honour ``lightning`` (the explicitly set Lightning settings).

    Args:
        args: the current TrainingArguments values (field -> value).
        defaults: TrainingArguments' defaults (a field at its default was not asked for; a tuple lists several).
        lightning: the Lightning settings asked for (name -> value), overlapping or not.

    Raises a ``ValueError`` listing every conflict and refusal at once.
    """
    problems: list[str] = []
    updates: dict[str, Any] = {}
    for name, value in lightning.items():
        if name in _OWN_VALUES and value == _OWN_VALUES[name]:
            continue
        if name in REFUSED:
            problems.append(f"`{name}={value!r}` (lightning.Trainer) is not supported: {REFUSED[name]}.")
            continue
        if name not in OVERLAPS:
            continue
        _, convert = OVERLAPS[name]
        try:
            wanted = convert(value, args)
        except ValueError as error:
            problems.append(str(error))
            continue
        for field, new in wanted.items():
            current = updates.get(field, args.get(field))
            if _same(current, new):
                continue
            unset = defaults.get(field)
            at_default = any(_same(current, d) for d in unset) if isinstance(unset, tuple) else _same(current, unset)
            asked = field in updates or not at_default
            if asked:
                problems.append(
                    f"`{name}={value!r}` (lightning.Trainer) contradicts `{field}={current!r}` (TrainingArguments): "
                    f"set one of them, or both to the same value."
                )
            else:
                updates[field] = new
    if problems:
        raise ValueError("lightning.Trainer settings that overlap TrainingArguments:\n- " + "\n- ".join(problems))
    return updates


def apply(args: Any, lightning: Mapping[str, Any]) -> dict[str, Any]:
    """Honour the overlapping settings of ``lightning`` in ``args`` (in place); returns the fields changed."""
    from transformers import TrainingArguments
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    fields = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    defaults: dict[str, Any] = {name: f.default for name, f in fields.items() if f.default is not dataclasses.MISSING}
    # transformers fills an unset eval_steps with logging_steps when evaluating by steps
    defaults["eval_steps"] = (defaults.get("eval_steps"), getattr(args, "logging_steps", None))
    current = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    updates = reconcile(current, defaults, lightning)
    enums = {"eval_strategy": IntervalStrategy, "logging_strategy": IntervalStrategy, "save_strategy": SaveStrategy}
    for field, value in updates.items():
        setattr(args, field, enums[field](value) if field in enums else value)
    if "eval_strategy" in updates and getattr(args, "do_eval", None) is False:
        args.do_eval = True  # what TrainingArguments.__post_init__ does for an evaluation strategy
    return updates


def cli_hint(name: str, section: str = "trainer", args_section: str = "args") -> str | None:
    """What to write instead of ``<section>.<name>`` in an hf-lightning config, when ``name`` is a Lightning setting
    this rule covers (the CLI's ``trainer`` section only takes the settings TrainingArguments has no word for).

    Args:
        name: the lightning.Trainer setting the config gave (e.g. ``max_epochs``).
        section: the config section it was given in.
        args_section: the config section of the TrainingArguments.
    """
    if name in REFUSED:
        return f"`{section}.{name}` is not supported: {REFUSED[name]}."
    if name not in OVERLAPS:
        return None
    fields = OVERLAPS[name][0]
    if not fields:
        return f"`{section}.{name}`: transformers clips by the gradient norm only (`{args_section}.max_grad_norm`)."
    instead = " / ".join(f"`{args_section}.{field}`" for field in fields)
    return f"`{section}.{name}` is a TrainingArguments setting in hf-lightning: set {instead} instead."


def lightning_settings_of(trainer: Any) -> dict[str, Any]:
    """The overlapping settings a user-built ``lightning.Trainer`` was given (those not at Lightning's default)."""
    observed = {
        "max_epochs": None
        if trainer.fit_loop.max_epochs in (None, -1) or (trainer.fit_loop.max_epochs == 1000 and trainer.max_steps == -1)
        else trainer.fit_loop.max_epochs,
        "log_every_n_steps": None if trainer.log_every_n_steps == 50 else trainer.log_every_n_steps,
        "max_steps": trainer.max_steps,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "limit_train_batches": None if trainer.limit_train_batches == 1.0 else trainer.limit_train_batches,
        "limit_val_batches": None if trainer.limit_val_batches == 1.0 else trainer.limit_val_batches,
        "overfit_batches": trainer.overfit_batches,
        "fast_dev_run": trainer.fast_dev_run,
        "reload_dataloaders_every_n_epochs": trainer.reload_dataloaders_every_n_epochs,
        "precision": None if str(trainer.precision) == "32-true" else str(trainer.precision),
    }
    if trainer.val_check_interval != 1.0:
        observed["val_check_interval"] = trainer.val_check_interval
    return {k: v for k, v in observed.items() if not _same_default(k, v)}


def _same_default(name: str, value: Any) -> bool:
    default = LIGHTNING_DEFAULTS.get(name)
    if value is None or value == default:
        return True
    return name == "max_steps" and value == -1
