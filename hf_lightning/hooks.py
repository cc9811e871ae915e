"""transformers.Trainer's override points, with transformers' default behaviour and no loop.

``TrainerHooks`` is the one interface through which the Lightning layer (``HFModule`` and the flow
callback) reaches everything a transformers user can override: ``training_step``, ``compute_loss``,
``prediction_step``, ``floating_point_ops``, ``log``, ``create_optimizer``/``create_scheduler``,
``evaluate``/``evaluation_loop``, the dataloader getters and ``save_model``. Its attributes carry
transformers' names and meanings (``args``, ``model``, ``state``, ``control``, ``callback_handler``,
``optimizer``, ``lr_scheduler``, ``label_smoother``, ``model_accepts_loss_kwargs``, ...).

- ``HFModule`` on its own (the Lightning way) uses a ``TrainerHooks``: transformers' semantics without
  a facade.
- ``hf_lightning.Trainer`` *is* a transformers.Trainer; the Lightning layer calls the same names on it,
  so a subclass's override (or ``Seq2SeqTrainer``'s) is what runs. Where its own method is still
  transformers' base one, it borrows the function from here, which computes the same thing with fewer
  Python calls on the training step's path.

The methods are written against those attribute names only, so they work as methods of either
class. What needs Lightning (running the evaluation loop, building dataloaders on the right rank,
gathering weights) goes through ``self.accelerator``, an ``accelerate.Accelerator``-like object the
Lightning layer provides, or through the ``evaluation_loop``/``get_*_dataloader`` methods it overrides.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import re
import weakref
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler
from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer_pt_utils import LabelSmoother, get_parameter_names, nested_detach
from transformers.trainer_utils import speed_metrics, unwrap_peft_model
from transformers.utils import can_return_loss, find_labels

from .state import MemoryTracker

__all__ = ["TrainerHooks", "introspect_model", "default_ignore_keys", "is_plateau_scheduler", "OVERRIDE_POINTS"]

logger = logging.getLogger(__name__)

_TRAINING = operator.attrgetter("training")

# The methods of transformers.Trainer that the Lightning layer calls (and so a subclass may override).
OVERRIDE_POINTS = (
    "training_step",
    "compute_loss",
    "compute_loss_context_manager",
    "autocast_smart_context_manager",
    "prediction_step",
    "evaluation_loop",
    "evaluate",
    "predict",
    "floating_point_ops",
    "log",
    "create_optimizer",
    "create_scheduler",
    "create_optimizer_and_scheduler",
    "get_decay_parameter_names",
    "get_train_dataloader",
    "get_eval_dataloader",
    "get_test_dataloader",
    "save_model",
)

# transformers.Trainer.get_decay_parameter_names' patterns (matched on lower-cased names).
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


_TRAIN_MODE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def train_mode(model: nn.Module) -> None:
    """``model.train()``, skipped when it would change nothing: every module is already in training mode and none
    has a ``train`` of its own (transformers' ``PreTrainedModel.train`` only acts when the top module's mode changes).

    transformers calls ``model.train()`` at every micro-batch; walking the module tree each time is most of a
    small model's per-step overhead. The module list is taken once per model (``clear_train_mode_cache`` after
    the model changes).
    """
    cached = _TRAIN_MODE_CACHE.get(model)
    if cached is None:
        from transformers import PreTrainedModel

        modules = list(model.modules())
        plain = all(type(m).train in (nn.Module.train, PreTrainedModel.train) for m in modules)
        cached = _TRAIN_MODE_CACHE[model] = (modules, plain)
    modules, plain = cached
    if not (plain and all(map(_TRAINING, modules))):
        model.train()


def clear_train_mode_cache(model: nn.Module) -> None:
    """Forget the module list ``train_mode`` keeps for ``model`` (call when the model may have changed)."""
    _TRAIN_MODE_CACHE.pop(model, None)


@functools.lru_cache(maxsize=None)
def overrides(cls: type, name: str) -> bool:
    """``cls`` has a user's ``name`` (not transformers.Trainer's, not hf_lightning's): hf_lightning calls it where
    transformers does (``private_overrides.ROUTED``). Cached per class: the step asks on every batch."""
    from .private_overrides import user_override

    return user_override(cls, name)


def count_num_items(host: Any, batch_samples: list) -> torch.Tensor | None:
    """``Trainer._get_num_items_in_batch``: the host's override, given ``args.device`` as transformers gives it, else
    ``TrainerHooks``' own (the batches are already on Lightning's device)."""
    if overrides(type(host), "_get_num_items_in_batch"):
        return host._get_num_items_in_batch(batch_samples, host.args.device)
    return TrainerHooks._get_num_items_in_batch(host, batch_samples, None)


def prepare_inputs(host: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``Trainer._prepare_inputs``: the host's override when it has one (TRL's GRPO/RLOO trainers do), else a copy."""
    cls = type(host)
    if overrides(cls, "_prepare_inputs") or overrides(cls, "_prepare_input"):
        prepare = getattr(host, "_prepare_inputs", None)
        return prepare(inputs) if prepare is not None else host._prepare_input(inputs)
    return _prepared(inputs)


def is_plateau_scheduler(scheduler: Any) -> bool:
    """Schedulers that transformers steps with the eval metric instead of every optimizer step."""
    from transformers.optimization import GreedyLR

    return isinstance(scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau, GreedyLR))


@functools.lru_cache(maxsize=1)
def default_ignore_keys() -> list[str]:
    """The output keys ``Trainer.prediction_step`` of the installed transformers leaves out of the predictions
    when the model's config names none (``["cache"]`` in transformers 5)."""
    import ast

    from transformers import Trainer

    try:
        source = inspect.getsource(Trainer.prediction_step)
        found = re.search(r'keys_to_ignore_at_inference",\s*(\[[^\]]*\])', source)
        if found:
            return list(ast.literal_eval(found.group(1)))
    except (OSError, TypeError, ValueError, SyntaxError):
        pass
    return ["cache"]


def introspect_model(model: nn.Module, args: TrainingArguments) -> dict[str, Any]:
    """What ``Trainer.__init__`` reads off the model (PEFT unwrapped), under transformers' attribute names."""
    unwrapped = unwrap_peft_model(model)
    if hasattr(unwrapped, "accepts_loss_kwargs"):
        accepts = bool(unwrapped.accepts_loss_kwargs)
    else:
        params = inspect.signature(unwrapped.forward).parameters.values()
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    config = getattr(unwrapped, "config", None)
    smoother = None
    if args.label_smoothing_factor != 0:
        if getattr(config, "problem_type", None) == "multi_label_classification":
            logger.warning("Label smoothing is not compatible with multi-label classification; it is off for this run.")
        else:
            smoother = LabelSmoother(epsilon=args.label_smoothing_factor)
    return {
        "model_accepts_loss_kwargs": accepts,
        "label_names": list(args.label_names) if args.label_names is not None else find_labels(unwrapped.__class__),
        "can_return_loss": can_return_loss(unwrapped.__class__),
        "_loss_shifts_labels": LOSS_MAPPING.get(getattr(unwrapped, "loss_type", None)) is ForCausalLMLoss
        and not getattr(config, "is_encoder_decoder", False),
        "label_smoother": smoother,
    }


class _LocalAccelerator:
    """What ``TrainerHooks`` needs from an accelerator before the Lightning layer attaches its own: one process."""

    num_processes = 1
    process_index = 0
    parallelism_config = None

    @staticmethod
    def unwrap_model(model: nn.Module, keep_torch_compile: bool = True) -> nn.Module:
        return model

    @staticmethod
    def backward(loss: torch.Tensor, **kwargs: Any) -> None:
        loss.backward(**kwargs)

    @staticmethod
    def gather(tensor: Any) -> Any:
        return tensor


class TrainerHooks:
    """The override points of transformers.Trainer with their default behaviour, for ``HFModule`` alone.

    Args:
        model: the model being trained.
        args: the run's TrainingArguments.
        compute_loss_func: ``(outputs, labels, num_items_in_batch) -> loss``, replacing the model's loss.
        compute_metrics: ``EvalPrediction -> dict`` of metrics.
        preprocess_logits_for_metrics: ``(logits, labels) -> logits`` applied per eval batch.
        processing_class: the tokenizer/processor.
        optimizers: ``(optimizer, scheduler)`` to use instead of building them from ``args``.
        optimizer_cls_and_kwargs: ``(optimizer class, kwargs)`` to use instead of ``args.optim``.
    """

    # transformers.Trainer's class attribute: None lets training_step decide whether compute_loss's loss is
    # already normalised over the accumulation group.
    loss_is_scaled_for_ga: bool | None = None

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        *,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        processing_class: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None = None,
    ) -> None:
        self.args = args
        self.model = self.model_wrapped = model
        self.compute_loss_func = compute_loss_func
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.processing_class = processing_class
        self.optimizer, self.lr_scheduler = optimizers
        self._given_optimizer = optimizers[0]
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        self._created_lr_scheduler = False
        for name, value in introspect_model(model, args).items():
            setattr(self, name, value)
        self.accelerator: Any = _LocalAccelerator()
        self.state = TrainerState()
        self.control = TrainerControl()
        self.callback_handler: Any = None  # the flow callback's transformers CallbackHandler
        self.current_gradient_accumulation_steps = 1
        self.current_flos = 0
        self._initial_num_input_tokens_seen = 0
        self._memory_tracker = MemoryTracker(args.skip_memory_metrics)
        self.is_in_train = False

    # ------------------------------------------------------------------------------- the step

    def compute_loss_context_manager(self) -> contextlib.AbstractContextManager:
        """transformers' ExitStack around the forward; it holds ``autocast_smart_context_manager()``."""
        stack = contextlib.ExitStack()
        autocast = self.autocast_smart_context_manager()
        if not isinstance(autocast, contextlib.nullcontext):
            stack.enter_context(autocast)
        return stack

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> contextlib.AbstractContextManager:
        """No autocast here: Lightning's precision plugin wraps each step, as accelerate does for transformers."""
        return contextlib.nullcontext()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``Trainer.compute_loss``: the model's loss, ``compute_loss_func``, label smoothing, token averaging."""
        if (self.label_smoother is not None or self.compute_loss_func is not None) and "labels" in inputs:
            labels = inputs.pop("labels")
        else:
            labels = None
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            if labels is None:
                logger.warning(
                    "Trainer: `compute_loss_func` is defined but `labels=None`. "
                    "Your custom loss function will still be called with labels=None. "
                )
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            unwrapped = unwrap_peft_model(self.accelerator.unwrap_model(model))
            shift = unwrapped._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
            loss = self.label_smoother(outputs, labels, shift_labels=shift, num_items_in_batch=num_items_in_batch)
        else:
            if isinstance(outputs, dict) and "loss" not in outputs:
                raise ValueError(
                    "The model did not return a loss from the inputs, only the following keys: "
                    f"{','.join(outputs.keys())}. For reference, the inputs it received are {','.join(inputs.keys())}."
                )
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if (
            self.args.average_tokens_across_devices
            and (self.model_accepts_loss_kwargs or self.compute_loss_func)
            and num_items_in_batch is not None
        ):
            processes = self.accelerator.num_processes
            if processes != 1:  # `loss * 1` is `loss`, bit for bit: one operator and its backward node fewer
                loss = loss * processes
        return (loss, outputs) if return_outputs else loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """``Trainer.training_step``: forward and loss, the accumulation scaling, backward; the detached loss."""
        train_mode(model)
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = prepare_inputs(self, inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        del inputs
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        if not scaled and self.current_gradient_accumulation_steps != 1:  # `loss / 1` is `loss`, bit for bit
            loss = loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """``6 * tokens * non-embedding parameters`` for models that can count them (``Trainer.floating_point_ops``)."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input in inputs and hasattr(self.model, "num_parameters"):
            counted = self.__dict__.get("_flos_parameters")
            if counted is None or counted[0] is not self.model:
                counted = (self.model, self.model.num_parameters(exclude_embeddings=True))
                self.__dict__["_flos_parameters"] = counted
            return 6 * inputs[main_input].numel() * counted[1]
        return 0

    # ------------------------------------------------------------------------------ evaluation

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """``Trainer.prediction_step``: ``(loss, logits, labels)`` of one batch, each possibly None."""
        has_labels = False if len(self.label_names) == 0 else all(inputs.get(k) is not None for k in self.label_names)
        return_loss = inputs.get("return_loss")
        if return_loss is None:
            return_loss = self.can_return_loss
        loss_without_labels = len(self.label_names) == 0 and return_loss
        inputs = prepare_inputs(self, inputs)
        if ignore_keys is None:
            if hasattr(self.model, "config"):
                ignore_keys = getattr(self.model.config, "keys_to_ignore_at_inference", default_ignore_keys())
            else:
                ignore_keys = []
        if has_labels or loss_without_labels:
            labels = nested_detach(tuple(inputs.get(name) for name in self.label_names))
            if len(labels) == 1:
                labels = labels[0]
        else:
            labels = None
        with torch.no_grad():
            if has_labels or loss_without_labels:
                num_items_in_batch = count_num_items(self, [inputs])
                with self.compute_loss_context_manager():
                    loss, outputs = self.compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
                loss = loss.detach().mean()
                if isinstance(outputs, dict):
                    logits = tuple(v for k, v in outputs.items() if k not in ignore_keys + ["loss"])
                else:
                    logits = outputs[1:]
            else:
                loss = None
                with self.compute_loss_context_manager():
                    outputs = model(**inputs)
                if isinstance(outputs, dict):
                    logits = tuple(v for k, v in outputs.items() if k not in ignore_keys)
                else:
                    logits = outputs
        if prediction_loss_only:
            return (loss, None, None)
        logits = nested_detach(logits)
        if len(logits) == 1:
            logits = logits[0]
        return (loss, logits, labels)

    def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> torch.Tensor | None:
        """Label tokens (``!= -100``) over ``batch_samples``, summed over processes with ``average_tokens_across_devices``."""
        num_items = None
        if (
            len(batch_samples) > 0
            and "labels" in batch_samples[0]
            and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)
        ):
            try:
                counted = [
                    b["shift_labels"] if "shift_labels" in b else b["labels"][..., 1:] if self._loss_shifts_labels else b["labels"]
                    for b in batch_samples
                ]
                num_items = functools.reduce(operator.add, (labels.ne(-100).sum() for labels in counted))  # sum() adds a 0 first
            except (TypeError, AttributeError):
                pass
        if num_items is not None and self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            num_items = self.accelerator.gather(num_items).sum()
        if torch.is_tensor(num_items):
            if device is not None:
                num_items = num_items.to(device)
            # transformers divides by the tensor/context/sequence-parallel sizes (1 here: hf_lightning has none of
            # them), which makes the count a float tensor; a loss or compute_loss that reads it sees the same.
            num_items = num_items / 1
        return num_items

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """``Trainer.evaluate``: run ``evaluation_loop`` on the eval set(s), add speed metrics, log, ``on_evaluate``."""
        override = eval_dataset is not None
        eval_dataset = eval_dataset if override else self.eval_dataset
        if isinstance(eval_dataset, dict):
            metrics: dict[str, float] = {}
            for name, dataset in eval_dataset.items():
                metrics.update(
                    self.evaluate(
                        eval_dataset=dataset if override else name,
                        ignore_keys=ignore_keys,
                        metric_key_prefix=f"{metric_key_prefix}_{name}",
                    )
                )
            return metrics
        self._memory_tracker.start()
        dataloader = self.get_eval_dataloader(eval_dataset)
        start_time = time.time()
        output = self.evaluation_loop(
            dataloader,
            description="Evaluation",
            prediction_loss_only=True if self.compute_metrics is None else None,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        total_batch_size = self.args.eval_batch_size * self.accelerator.num_processes
        if f"{metric_key_prefix}_model_preparation_time" in output.metrics:
            start_time += output.metrics[f"{metric_key_prefix}_model_preparation_time"]
        output.metrics.update(
            speed_metrics(
                metric_key_prefix, start_time, num_samples=output.num_samples, num_steps=math.ceil(output.num_samples / total_batch_size)
            )
        )
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, output.metrics)
        self._memory_tracker.stop_and_update_metrics(output.metrics)
        return output.metrics

    def _evaluate(self, trial: Any, ignore_keys_for_eval: list[str] | None, skip_scheduler: bool = False) -> dict[str, float]:
        """``Trainer._evaluate``: ``evaluate()`` during training, then the ReduceLROnPlateau/GreedyLR step."""
        metrics = self.evaluate(ignore_keys=ignore_keys_for_eval)
        if is_plateau_scheduler(self.lr_scheduler) and not skip_scheduler:
            metric_to_check = self.args.metric_for_best_model
            if not metric_to_check.startswith("eval_"):
                metric_to_check = f"eval_{metric_to_check}"
            try:
                self.lr_scheduler.step(metrics[metric_to_check])
            except KeyError as exc:
                raise KeyError(
                    f"The `metric_for_best_model` training argument is set to '{metric_to_check}', "
                    f"which is not found in the evaluation metrics. "
                    f"The available evaluation metrics are: {list(metrics.keys())}. "
                    f"Please ensure that the `compute_metrics` function returns a dictionary that includes '{metric_to_check}' or "
                    f"consider changing the `metric_for_best_model` via the TrainingArguments."
                ) from exc
        return metrics

    def _determine_best_metric(self, metrics: dict[str, float], trial: Any) -> bool:
        """``Trainer._determine_best_metric``: update ``state.best_metric``/``best_global_step``; True for a new best."""
        from .state import strategy_name, update_best_metric

        return update_best_metric(
            self.state,
            metrics,
            metric_for_best_model=self.args.metric_for_best_model,
            greater_is_better=self.args.greater_is_better,
            save_strategy=strategy_name(self.args.save_strategy),
        )

    # -------------------------------------------------------------------------------- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer.log``: add ``epoch`` (and token counts), append to ``log_history``, fire ``on_log``."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            if start_time is not None:
                current = self.state.num_input_tokens_seen - self._initial_num_input_tokens_seen
                logs.update(speed_metrics("train", start_time, num_tokens=current))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # ----------------------------------------------------------------------- optimizer, schedule

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Names of the parameters that get weight decay: not biases, not norms (transformers' rule)."""
        return get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """``Trainer.create_optimizer``: the two parameter groups and the class of ``args.optim`` (kept if set)."""
        from transformers import Trainer as _HFTrainer
        from transformers.trainer_optimizer import is_optimizer_factory

        opt_model = self.model if model is None else model
        if self.optimizer is None:
            decay = self.get_decay_parameter_names(opt_model)
            groups: Any = [
                {"params": [p for n, p in opt_model.named_parameters() if n in decay and p.requires_grad], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in opt_model.named_parameters() if n not in decay and p.requires_grad], "weight_decay": 0.0},
            ]
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                try:
                    optimizer_cls, optimizer_kwargs = _HFTrainer.get_optimizer_cls_and_kwargs(self.args, opt_model)
                except ValueError as error:
                    raise ValueError(f"`optim={self.args.optim!r}`: {error}") from error
            optimizer_kwargs = dict(optimizer_kwargs)
            if is_optimizer_factory(optimizer_cls):
                self.optimizer = optimizer_cls()(opt_model, **optimizer_kwargs)
                return self.optimizer
            for key in ("params", "model", "optimizer_dict"):
                if key in optimizer_kwargs:
                    groups = optimizer_kwargs.pop(key)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """``Trainer.create_scheduler``: ``get_scheduler(lr_scheduler_type, warmup, num_training_steps)`` (kept if set)."""
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=self.optimizer if optimizer is None else optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """``Trainer.create_optimizer_and_scheduler``."""
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)



def _prepared(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict of the batch, as ``Trainer._prepare_inputs`` returns one (compute_loss pops ``labels`` from it);
    Lightning has already moved it to the device."""
    if len(inputs) == 0:
        raise ValueError(
            "The batch received was empty, your model won't be able to train on it. Double-check that your "
            "dataset contains keys expected by the model."
        )
    return type(inputs)(inputs) if isinstance(inputs, dict) else dict(inputs)
