"""``TrainingArguments`` -> Lightning ``Trainer`` settings, with every problem reported up front.

No Lightning import here: this module only decides. ``trainer.build_trainer`` turns the decisions
into objects. ``ARGUMENT_SUPPORT`` classifies every ``TrainingArguments`` field, and the README's
table is generated from it (``python -m hf_lightning.arguments``), so a field can't be ignored
silently: a test checks that the table covers every field of the installed transformers.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

from transformers import TrainingArguments

from .fsdp_args import fsdp_problems, ignored_fsdp_config_keys
from .state import strategy_name

log = logging.getLogger(__name__)

__all__ = [
    "ARGUMENT_SUPPORT",
    "HONOURED",
    "NOT_APPLICABLE",
    "UNSUPPORTED",
    "LIGHTNING_LOGGERS",
    "precision_for",
    "trainer_limits",
    "validate_arguments",
    "schedule_problems",
    "train_dataset_problems",
    "check_train_dataset",
    "unsupported_arguments",
    "resolve_report_to",
    "process_log_level",
]

HONOURED = "honoured"
NOT_APPLICABLE = "not applicable"
UNSUPPORTED = "unsupported (error if set)"

# One line per field of transformers' TrainingArguments: (status, how/why).
ARGUMENT_SUPPORT: dict[str, tuple[str, str]] = {
    "output_dir": (HONOURED, "checkpoint-N folders, TensorBoard/CSV logs and `save_model()` go here"),
    "per_device_train_batch_size": (HONOURED, "micro-batch size per process"),
    "num_train_epochs": (HONOURED, "fractional epochs included; sets Lightning's max_epochs/max_steps"),
    "max_steps": (HONOURED, "optimizer steps; Lightning's `max_steps`"),
    "learning_rate": (HONOURED, "initial lr of both HF parameter groups"),
    "lr_scheduler_type": (HONOURED, "every name, through `transformers.get_scheduler`; plateau/greedy stepped on the eval metric"),
    "lr_scheduler_kwargs": (HONOURED, "passed to `get_scheduler`"),
    "warmup_steps": (HONOURED, "a count (>=1) or a ratio of max_steps ([0,1))"),
    "optim": (HONOURED, "every name transformers knows, through `Trainer.get_optimizer_cls_and_kwargs`"),
    "optim_args": (HONOURED, "parsed by transformers"),
    "weight_decay": (HONOURED, "the two HF parameter groups, with transformers' no-decay rule"),
    "adam_beta1": (HONOURED, "AdamW betas"),
    "adam_beta2": (HONOURED, "AdamW betas"),
    "adam_epsilon": (HONOURED, "AdamW eps"),
    "optim_target_modules": (HONOURED, "passed to the GaLore/APOLLO optimizers by transformers"),
    "gradient_accumulation_steps": (HONOURED, "one Lightning batch is one accumulation group; the last group of an epoch is short"),
    "average_tokens_across_devices": (HONOURED, "`num_items_in_batch` summed over ranks and the loss scaled by the world size"),
    "max_grad_norm": (HONOURED, "clipping after unscaling, also with fused AdamW under fp16; the pre-clip norm is logged"),
    "label_smoothing_factor": (HONOURED, "transformers' `LabelSmoother`, with the causal-LM shift"),
    "bf16": (HONOURED, "Lightning precision `bf16-mixed`, autocasting the model's forward only, as accelerate does"),
    "fp16": (HONOURED, "Lightning precision `16-mixed` with a GradScaler on GPU; on CPU full fp32, as transformers does (accelerate has no CPU fp16 autocast)"),
    "bf16_full_eval": (HONOURED, "`evaluate()`/`predict()` outside training cast the model to bf16 (it stays cast, as in transformers)"),
    "fp16_full_eval": (HONOURED, "`evaluate()`/`predict()` outside training cast the model to fp16 (it stays cast, as in transformers)"),
    "tf32": (HONOURED, "`TrainingArguments` itself sets (or refuses) the CUDA/cuDNN TF32 flags; `build_trainer` sets them again"),
    "activation_checkpointing": (HONOURED, "`model.activation_checkpointing_enable()` (or gradient_checkpointing_enable)"),
    "activation_checkpointing_kwargs": (HONOURED, "passed to the model's checkpointing method"),
    "gradient_checkpointing": (HONOURED, "deprecated alias of `activation_checkpointing`, resolved by transformers"),
    "gradient_checkpointing_kwargs": (HONOURED, "deprecated alias of `activation_checkpointing_kwargs`"),
    "torch_compile": (HONOURED, "`model.compile()` in place, so state-dict keys stay those of the model"),
    "torch_compile_backend": (HONOURED, "passed to `model.compile`"),
    "torch_compile_mode": (HONOURED, "passed to `model.compile`"),
    "use_liger_kernel": (UNSUPPORTED, "Liger kernels patch the model through accelerate; not wired in"),
    "liger_kernel_config": (UNSUPPORTED, "see `use_liger_kernel`"),
    "use_cache": (HONOURED, "written to `model.config.use_cache` like transformers does"),
    "neftune_noise_alpha": (HONOURED, "transformers' NEFTune hook is attached for training and removed after"),
    "torch_empty_cache_steps": (HONOURED, "accelerate's `clear_device_cache()` after each backward of every N-th optimizer step, as in `Trainer.training_step`"),
    "auto_find_batch_size": (HONOURED, "hf_lightning.Trainer.train halves the batch size on out-of-memory and retries (accelerate's find_executable_batch_size, as transformers); build_trainer refuses it (use Lightning's BatchSizeFinder)"),
    "logging_strategy": (HONOURED, "no / steps / epoch, in optimizer steps"),
    "logging_steps": (HONOURED, "int or ratio of max_steps"),
    "logging_first_step": (HONOURED, "log after the first optimizer step"),
    "log_on_each_node": (HONOURED, "`log_level` on every node's local rank 0 (Lightning's ranks), `log_level_replica` elsewhere"),
    "logging_nan_inf_filter": (HONOURED, "NaN/Inf step losses are replaced without a host sync"),
    "include_num_input_tokens_seen": (HONOURED, "no / all / non_padding; counted on device, synced at logging steps"),
    "log_level": (HONOURED, "transformers' logging verbosity on the main process (`passive` keeps it)"),
    "log_level_replica": (HONOURED, "transformers' logging verbosity on the other processes"),
    "disable_tqdm": (HONOURED, "Lightning's tqdm bar (optimizer steps, with loss and lr) and ProgressCallback-style log lines; off: PrinterCallback prints the log dicts"),
    "report_to": (HONOURED, "tensorboard, csv, wandb, mlflow, comet_ml, neptune -> Lightning loggers; other integrations run as transformers callbacks"),
    "run_name": (HONOURED, "logger run name/version"),
    "project": (HONOURED, "logger project (wandb, comet, neptune, mlflow experiment)"),
    "trackio_space_id": (HONOURED, "read by transformers' trackio callback"),
    "trackio_bucket_id": (HONOURED, "read by transformers' trackio callback"),
    "trackio_static_space_id": (HONOURED, "read by transformers' trackio callback"),
    "eval_strategy": (HONOURED, "no / steps / epoch, in optimizer steps, including the v5 final eval"),
    "eval_steps": (HONOURED, "int or ratio; defaults to logging_steps"),
    "eval_delay": (HONOURED, "steps or epochs before the first eval"),
    "per_device_eval_batch_size": (HONOURED, "eval/predict batch size per process"),
    "prediction_loss_only": (HONOURED, "predictions are not gathered"),
    "eval_on_start": (HONOURED, "an eval at step 0 before the first epoch"),
    "eval_do_concat_batches": (HONOURED, "transformers' EvalLoopContainer"),
    "eval_use_gather_object": (HONOURED, "one process: nothing to gather, the same as transformers; several processes: refused when evaluation starts (outputs are gathered as tensors)"),
    "eval_accumulation_steps": (HONOURED, "predictions moved to CPU every N eval steps"),
    "include_for_metrics": (HONOURED, "`inputs` and `loss` passed to `compute_metrics`"),
    "batch_eval_metrics": (HONOURED, "`compute_metrics(..., compute_result=)` per batch"),
    "save_only_model": (HONOURED, "no optimizer/scheduler/rng files"),
    "save_strategy": (HONOURED, "no / steps / epoch / best"),
    "save_steps": (HONOURED, "int or ratio"),
    "save_on_each_node": (UNSUPPORTED, "global rank 0 writes the model files (on one node that is the same); for per-node copies use a shared filesystem or copy after training"),
    "save_total_limit": (HONOURED, "rotation protecting the newest and the best checkpoint, limit-1 rule at the end"),
    "enable_jit_checkpoint": (HONOURED, "on SIGTERM (and SIGINT, always) the current optimizer step finishes and a checkpoint is saved even with `save_strategy='no'`; then `train()` raises `TrainingInterrupted` (exit code 143/130)"),
    "push_to_hub": (HONOURED, "hf_lightning.Trainer does what transformers.Trainer does (its own `init_hf_repo` at construction, `_push_from_checkpoint` after each checkpoint, a push from `save_model()`); `HFModule` without the facade (build_trainer, the CLI) refuses it: call `model.push_to_hub` after training"),
    "hub_token": (HONOURED, "with push_to_hub, as transformers"),
    "hub_private_repo": (HONOURED, "with push_to_hub, as transformers"),
    "hub_model_id": (HONOURED, "with push_to_hub, as transformers"),
    "hub_strategy": (HONOURED, "with push_to_hub, as transformers (end, every_save, checkpoint, all_checkpoints)"),
    "hub_always_push": (HONOURED, "with push_to_hub, as transformers"),
    "hub_revision": (HONOURED, "with push_to_hub, as transformers"),
    "load_best_model_at_end": (HONOURED, "best weights loaded after the train summary"),
    "metric_for_best_model": (HONOURED, "`eval_` prefix added; may name a torchmetrics metric"),
    "greater_is_better": (HONOURED, "defaults to `not metric.endswith('loss')`"),
    "ignore_data_skip": (HONOURED, "resume restarts the epoch from its first batch"),
    "restore_callback_states_from_checkpoint": (HONOURED, "ExportableState callbacks rebuilt from `stateful_callbacks`"),
    "full_determinism": (HONOURED, "`enable_full_determinism(seed)` and Lightning `deterministic=True`"),
    "seed": (HONOURED, "`set_seed(seed)` when the trainer is built, as transformers does in `Trainer.__init__`"),
    "data_seed": (HONOURED, "seed of the epoch permutations"),
    "use_cpu": (HONOURED, "Lightning accelerator `cpu`"),
    "accelerator_config": (UNSUPPORTED, "accelerate's dataloader/accumulation settings: only the defaults (`split_batches=False`, `dispatch_batches=None`, `even_batches=True`, `use_seedable_sampler=True`, no `gradient_accumulation_kwargs`) are reproduced; `non_blocking` and `use_configured_state` are accepted and have no effect"),
    "parallelism_config": (UNSUPPORTED, "tensor/context/sequence parallelism of accelerate; use a Lightning strategy"),
    "dataloader_drop_last": (HONOURED, "train and eval dataloaders"),
    "dataloader_num_workers": (HONOURED, "DataLoader workers, seeded like transformers"),
    "dataloader_pin_memory": (HONOURED, "DataLoader pin_memory (when CUDA is available)"),
    "dataloader_persistent_workers": (HONOURED, "DataLoader persistent_workers"),
    "dataloader_prefetch_factor": (HONOURED, "DataLoader prefetch_factor"),
    "dataloader_multiprocessing_context": (HONOURED, "DataLoader multiprocessing_context"),
    "dataloader_in_order": (HONOURED, "DataLoader in_order"),
    "remove_unused_columns": (HONOURED, "by the forward signature (PEFT unwrapped), `RemoveColumnsCollator` for torch datasets"),
    "label_names": (HONOURED, "which inputs are labels in evaluation"),
    "train_sampling_strategy": (HONOURED, "random / sequential / group_by_length (batch_rebalance: error)"),
    "length_column_name": (HONOURED, "lengths for group_by_length"),
    "ddp_find_unused_parameters": (HONOURED, "passed to Lightning's DDPStrategy"),
    "ddp_bucket_cap_mb": (HONOURED, "passed to Lightning's DDPStrategy"),
    "ddp_broadcast_buffers": (HONOURED, "passed to Lightning's DDPStrategy"),
    "ddp_static_graph": (HONOURED, "passed to Lightning's DDPStrategy"),
    "ddp_backend": (HONOURED, "process group backend of Lightning's DDPStrategy"),
    "ddp_timeout": (HONOURED, "process group timeout of Lightning's DDP/FSDP strategies"),
    "fsdp": (HONOURED, "FSDP2 -> `hf_lightning.distributed.FSDP2Strategy`, FSDP1 (CUDA) -> `FSDPStrategy`; full_shard/shard_grad_op/hybrid_shard/offload/auto_wrap mapped (docs/distributed.md), with transformers' checkpoint layouts"),
    "fsdp_config": (HONOURED, "version, reshard_after_forward, auto_wrap_policy, transformer_layer_cls_to_wrap, min_num_params, cpu_offload, state_dict_type, activation_checkpointing, cpu_ram_efficient_loading (+ FSDP1's prefetch/sync options); xla and LOCAL_STATE_DICT: error"),
    "deepspeed": (UNSUPPORTED, "pass Lightning's `strategy=\"deepspeed_stage_N\"` instead; HF DeepSpeed folders are not written"),
    "debug": (UNSUPPORTED, "underflow/overflow debugging of transformers is not wired in"),
    "skip_memory_metrics": (HONOURED, "False: transformers' TrainerMemoryTracker adds `init_`/`train_mem_*` keys to the train summary and `eval_`/`test_mem_*` keys to `evaluate()`/`predict()` results"),
    "do_train": (NOT_APPLICABLE, "not read by transformers.Trainer either (for scripts)"),
    "do_eval": (NOT_APPLICABLE, "not read by transformers.Trainer either (for scripts)"),
    "do_predict": (NOT_APPLICABLE, "not read by transformers.Trainer either (for scripts)"),
    "resume_from_checkpoint": (NOT_APPLICABLE, "not read by transformers.Trainer either; pass it to `train()` or `--ckpt_path`"),
    "local_rank": (NOT_APPLICABLE, "set by the launcher; Lightning's cluster environment owns ranks"),
}

# report_to names served by a Lightning logger; every other transformers integration runs as its
# own TrainerCallback through the callback bridge.
LIGHTNING_LOGGERS = ("tensorboard", "csv", "wandb", "mlflow", "comet_ml", "neptune")


def _default_of(name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(TrainingArguments)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


# accelerator_config fields whose non-default value would change the data order or the batching.
_ACCELERATOR_CONFIG_DEFAULTS = {
    "split_batches": False,
    "dispatch_batches": None,
    "even_batches": True,
    "use_seedable_sampler": True,
    "gradient_accumulation_kwargs": None,
}


def _accelerator_config_problems(config: Any) -> list[str]:
    if config is None:
        return []
    values = config if isinstance(config, dict) else dataclasses.asdict(config)
    changed = {k: values[k] for k, default in _ACCELERATOR_CONFIG_DEFAULTS.items() if k in values and values[k] not in (default, {} if default is None else default)}
    if not changed:
        return []
    return [
        f"`accelerator_config` sets {changed}, which hf_lightning does not reproduce: only the defaults "
        f"{_ACCELERATOR_CONFIG_DEFAULTS} are supported (data order and batching follow accelerate's defaults)."
    ]


def unsupported_arguments(args: TrainingArguments) -> list[str]:
    """Names of unsupported fields set to something other than their default, with why."""
    problems = []
    for name, (status, why) in ARGUMENT_SUPPORT.items():
        if name == "accelerator_config":
            problems += _accelerator_config_problems(getattr(args, name, None))
            continue
        if status != UNSUPPORTED or not hasattr(args, name):
            continue
        value = getattr(args, name)
        default = _default_of(name)
        if name == "debug" and (value in ("", [], None)):
            continue
        if value != default and value not in (None, False, "", [], {}):
            problems.append(f"`{name}={value!r}` is not supported by hf_lightning: {why}.")
    if strategy_name(args.train_sampling_strategy) == "batch_rebalance":
        problems.append(
            "`train_sampling_strategy='batch_rebalance'` is not supported by hf_lightning; "
            "use 'random', 'sequential' or 'group_by_length'."
        )
    return problems


def resolve_report_to(report_to: str | list[str] | None) -> list[str]:
    """transformers' ``report_to`` as a list of names (``"all"`` -> every installed integration)."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if names in (["none"], []):
        return []
    if names == ["all"]:
        from transformers.integrations import get_available_reporting_integrations

        return sorted(set(get_available_reporting_integrations()) | {"csv"})
    return names


def _report_to_problems(report_to: list[str]) -> list[str]:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    known = sorted(set(LIGHTNING_LOGGERS) | set(INTEGRATION_TO_CALLBACK))
    return [
        f"`report_to` contains {name!r}, which is not a known integration; valid names are {known}, 'all' or 'none'."
        for name in report_to
        if name not in known
    ]


def process_log_level(args: TrainingArguments, *, global_rank: int, local_rank: int) -> int:
    """``TrainingArguments.get_process_log_level`` with Lightning's ranks instead of accelerate's state.

    The main process (global rank 0, or every local rank 0 with ``log_on_each_node``) gets ``log_level``,
    the others ``log_level_replica``; ``passive`` keeps transformers' current verbosity.
    """
    from transformers.utils import logging as hf_logging
    from transformers.training_args import trainer_log_levels

    main = local_rank == 0 if args.log_on_each_node else global_rank == 0
    level = trainer_log_levels[args.log_level if main else args.log_level_replica]
    return hf_logging.get_verbosity() if level == -1 else level


def precision_for(args: TrainingArguments, device_type: str = "cuda") -> str:
    """Lightning precision string for ``bf16``/``fp16`` on a ``device_type`` accelerator.

    accelerate has no fp16 autocast on CPU: transformers trains ``fp16=True`` on CPU in full fp32
    (Lightning would switch to bf16 instead), so fp16 on CPU is ``32-true`` here too.
    """
    if args.bf16:
        return "bf16-mixed"
    if args.fp16:
        return "32-true" if device_type == "cpu" else "16-mixed"
    return "32-true"


def trainer_limits(args: TrainingArguments) -> dict[str, int]:
    """Lightning ``max_steps``/``max_epochs`` known from the arguments alone.

    Fractional ``num_train_epochs`` needs the dataset length; the flow callback refines the limits at
    train start from the ``TrainPlan``.
    """
    if args.max_steps > 0:
        return {"max_steps": args.max_steps, "max_epochs": -1}
    return {"max_steps": -1, "max_epochs": max(math.ceil(args.num_train_epochs), 1)}


def validate_arguments(
    args: TrainingArguments,
    *,
    has_train_dataset: bool | None = None,
    train_dataset_has_length: bool | None = None,
    has_eval_dataset: bool | None = None,
    compute_metrics: Callable | None = None,
    optimizers: tuple[Any, Any] = (None, None),
    optimizer_cls_and_kwargs: tuple[type, dict] | None = None,
    hub_push: bool = False,
) -> None:
    """Collect every problem transformers.Trainer (and hf_lightning) would reject, and raise once.

    ``None`` for a ``has_*`` flag means "not known yet" and skips the checks that need it. ``hub_push``: the caller
    is an ``hf_lightning.Trainer``, which pushes to the Hub as transformers does (``push_to_hub=True``).
    """
    if not isinstance(args, TrainingArguments):
        raise TypeError(
            f"`args` must be a transformers.TrainingArguments (or a subclass), got {type(args).__name__}."
        )
    problems: list[str] = []
    problems += unsupported_arguments(args)
    if args.push_to_hub and not hub_push:
        problems.append(
            "`push_to_hub=True` pushes from an hf_lightning.Trainer (a transformers.Trainer, as in transformers); "
            "HFModule with build_trainer, a lightning.Trainer or the CLI has no Trainer to push from: call "
            "`model.push_to_hub(...)` (and the tokenizer's) after training, or use hf_lightning.Trainer."
        )
    problems += _report_to_problems(resolve_report_to(args.report_to))
    problems += fsdp_problems(args, optimizers=optimizers)  # fsdp/fsdp_config (fsdp_args.py)
    eval_strategy = strategy_name(args.eval_strategy)
    save_strategy = strategy_name(args.save_strategy)
    if has_eval_dataset is False and eval_strategy != "no":
        problems.append(
            f"`eval_strategy={eval_strategy!r}` needs an eval dataset, but none was given; pass `eval_dataset` "
            "or set `eval_strategy='no'`."
        )
    if has_eval_dataset is False and args.eval_on_start:
        problems.append("`eval_on_start=True` needs an eval dataset, but none was given.")
    if (save_strategy == "best" or args.load_best_model_at_end) and args.metric_for_best_model is None:
        problems.append(
            "`args.metric_for_best_model` must be provided when using 'best' save_strategy or if `args.load_best_model_at_end` is set to `True` (hf_lightning: set `metric_for_best_model`, e.g. 'loss')."
        )
    if save_strategy == "best" and eval_strategy == "no":
        # transformers accepts it (and never saves); so do we, with a warning.
        log.warning("`save_strategy='best'` saves after evaluations, but `eval_strategy='no'` never evaluates: no checkpoint will be written.")
    if args.batch_eval_metrics and compute_metrics is not None:
        if "compute_result" not in inspect.signature(compute_metrics).parameters:
            problems.append(
                "`batch_eval_metrics=True` needs a `compute_metrics(eval_pred, compute_result)` that takes a "
                "`compute_result` argument (True on the last batch)."
            )
    if optimizer_cls_and_kwargs is not None and optimizers[0] is not None:
        problems.append("Passing both `optimizers` and `optimizer_cls_and_kwargs` is incompatible.")
    if has_train_dataset and train_dataset_has_length is False and args.max_steps <= 0:
        problems.append(
            f"The train dataset has no length, so `max_steps` must be > 0 (got {args.max_steps}); the number of "
            "optimizer steps is needed for the scheduler."
        )
    problems += schedule_problems(args)
    if args.gradient_accumulation_steps < 1:
        problems.append(f"`gradient_accumulation_steps` must be >= 1, got {args.gradient_accumulation_steps}.")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        problems.append(f"`warmup_steps` must be >= 0 (a count, or a ratio in [0, 1)), got {args.warmup_steps}.")
    if problems:
        raise ValueError("Invalid training configuration:\n  - " + "\n  - ".join(problems))
    for key in ignored_fsdp_config_keys(args):
        log.warning("`fsdp_config[%r]` is not read by transformers for this FSDP version, so hf_lightning ignores it too.", key)


def schedule_problems(args: TrainingArguments) -> list[str]:
    """Schedule values transformers accepts but that make no sense; each problem names the option.

    - ``logging_steps``/``save_steps``/``eval_steps`` below zero (transformers resolves a ratio in
      (0, 1) against ``max_steps``; a negative value never logs, saves or evaluates);
    - ``save_steps=0`` with ``save_strategy="steps"`` (transformers refuses 0 only for logging);
    - ``eval_steps=0`` with ``eval_strategy="steps"``;
    - ``num_train_epochs`` zero or negative without ``max_steps`` (nothing would train).
    """
    problems = []
    for kind in ("logging", "save", "eval"):
        name = f"{kind}_steps"
        value = getattr(args, name)
        strategy = strategy_name(getattr(args, f"{kind}_strategy"))
        if value is None:
            continue
        if value < 0:
            problems.append(
                f"`{name}={value}` is negative; it must be a number of optimizer steps (>= 1) or a ratio of the run in "
                f"(0, 1) (`{kind}_strategy={strategy!r}`)."
            )
        elif value == 0 and strategy == "steps" and kind != "logging":  # transformers refuses logging_steps=0 itself
            problems.append(
                f"`{name}=0` with `{kind}_strategy='steps'` would {'save' if kind == 'save' else 'evaluate'} never (or divide by "
                f"zero); give a number of optimizer steps (>= 1) or a ratio in (0, 1), or set `{kind}_strategy='no'`."
            )
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        problems.append(
            f"`num_train_epochs={args.num_train_epochs}` with `max_steps={args.max_steps}` trains nothing; give "
            "`num_train_epochs` > 0 or `max_steps` > 0."
        )
    return problems


def train_dataset_problems(
    dataset: Any,
    *,
    signature_columns: list[str] | None,
    label_names: list[str],
    model_name: str = "the model",
) -> list[str]:
    """An empty train dataset, or one whose columns leave the model no input once unused columns are removed.

    ``signature_columns``: what ``remove_unused_columns`` keeps (the forward's parameters and the
    label names), or None when columns are not removed. The columns are the dataset's
    ``column_names`` (``datasets.Dataset``), else the keys of its first sample if that is a dict.
    """
    try:
        size = len(dataset)
    except TypeError:
        size = None  # unsized (streaming) data: nothing can be said before reading it
    columns = _dataset_columns(dataset, size)
    inputs = [c for c in (signature_columns or []) if c not in {"label", "label_ids", *label_names}]
    if size == 0:
        return [
            f"The train dataset is empty (0 samples{f'; columns {columns}' if columns else ''}); "
            f"{model_name} needs samples with its inputs {inputs or '(see its forward)'}."
        ]
    if signature_columns is None or columns is None:
        return []
    kept = [c for c in columns if c in signature_columns]
    model_inputs = [c for c in kept if c in inputs]
    if model_inputs:
        return []
    removed = [c for c in columns if c not in signature_columns]
    if not kept:  # transformers' words (Trainer._remove_unused_columns), then ours
        return [
            f"No columns in the dataset match the model's forward method signature: ({', '.join(signature_columns)}). "
            f"The following columns have been ignored: [{', '.join(removed)}]. Please check the dataset and model. You may "
            "need to set `remove_unused_columns=False` in `TrainingArguments`. (hf_lightning: the training dataset has the "
            f"columns {columns}; {model_name}.forward takes none of them; its inputs are {inputs}. Tokenize the text first, "
            "or rename the columns to the model's inputs.)"
        ]
    return [
        f"The train dataset has columns {columns}; `remove_unused_columns=True` removes {removed}, which "
        f"{model_name}.forward does not take, and leaves {kept or 'nothing'}, with no model input among them. "
        f"{model_name} takes {inputs}. Tokenize or rename the columns first (e.g. `dataset.map(lambda b: tokenizer(b['text']), "
        "batched=True)`), or set `remove_unused_columns=False` if a data collator builds the inputs."
    ]


def _dataset_columns(dataset: Any, size: int | None) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, (list, tuple)):
        return list(names)
    if size:
        try:
            first = dataset[0]
        except Exception:  # noqa: BLE001 - a dataset that cannot be indexed: nothing to say
            return None
        if isinstance(first, dict):
            return list(first)
    return None


def check_train_dataset(
    dataset: Any, signature_columns: list[str] | None, model_name: str, remove_unused_columns: bool, label_names: Any
) -> None:
    """Raise a ``ValueError`` with :func:`train_dataset_problems`, if any (one call before the train loader is built).

    ``signature_columns``: the model's forward parameters and label names (None: unknown);
    ``remove_unused_columns``: ``args.remove_unused_columns`` (when False, only emptiness is checked).
    """
    if dataset is None:
        return
    problems = train_dataset_problems(
        dataset,
        signature_columns=signature_columns if remove_unused_columns else None,
        label_names=list(label_names or []),
        model_name=model_name,
    )
    if problems:
        raise ValueError("\n".join(problems))


def _markdown_table() -> str:
    rows = ["| TrainingArguments field | status | how / why |", "|---|---|---|"]
    for name, (status, why) in ARGUMENT_SUPPORT.items():
        rows.append(f"| `{name}` | {status} | {why} |")
    return "\n".join(rows)


def _not_applicable_list() -> str:
    return "\n".join(f"- `{name}`: {why}" for name, (status, why) in ARGUMENT_SUPPORT.items() if status == NOT_APPLICABLE)


if __name__ == "__main__":  # prints the README table (docs/arguments.md); `--not-applicable` prints that list
    import sys

    print(_not_applicable_list() if "--not-applicable" in sys.argv[1:] else _markdown_table())
