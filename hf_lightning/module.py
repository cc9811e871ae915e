"""``HFModule``: one LightningModule for any ``PreTrainedModel`` (or plain ``nn.Module`` returning a loss).

It owns *how* a step is computed, with transformers.Trainer's arithmetic: one Lightning batch is one
accumulation group (``data.MicroBatchGroup``), ``num_items_in_batch`` is counted over the group (and
the ranks), each micro-batch goes through the host's ``training_step`` (forward, loss, backward) with
the gradient all-reduce deferred to the last one, gradients are clipped after unscaling, then the
optimizer and scheduler step. Nothing here leaves the device during a step; the flow callback reads
the accumulators at logging steps only.

The host (``self.hooks``) is where transformers' override points live: a ``loops.LightningHooks``
when the module is used on its own, the ``hf_lightning.Trainer`` facade (a transformers.Trainer) when
the facade drives it. *When* to log, evaluate and save is decided by ``callbacks.HFFlowCallback``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from transformers import TrainingArguments
from transformers.trainer_utils import unwrap_peft_model
from typing_extensions import override

from . import distributed
from .callbacks.metrics import TorchMetrics
from .data import GroupedLoader, micro_batches
from .hooks import count_num_items, is_plateau_scheduler, overrides
from .precision import autocast_forward, is_forward_autocast
from .schedule import TrainPlan, plan_training
from .step_dispatch import LIGHTNING_DISPATCH, StepDispatch, plan_step_dispatch

__all__ = ["HFModule"]

HF_CHECKPOINT_KEY = "hf_lightning"

# Set at every step and never a parameter, buffer or submodule: ``HFModule.__setattr__`` skips nn.Module's
# checks for them (a few µs each).
_PLAIN_ATTRIBUTES = frozenset(
    {"_current_fx_name", "_tr_loss", "_grad_norm", "_learning_rate", "_tokens_pending", "_tokens_pending_host",
     "current_flos", "last_logged_step", "stepped", "end_of_data", "step_was_skipped", "eval_request", "model_written"}
)


def _optimizer_handles_unscaling(optimizer: Any) -> bool:
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class HFModule(pl.LightningModule):
    """Wrap a transformers model so Lightning trains it with transformers.Trainer's semantics.

    Args:
        model: a ``PreTrainedModel`` (or PEFT model), or an ``nn.Module`` whose forward returns a dict/``ModelOutput`` with ``loss``.
        args: the transformers ``TrainingArguments`` that configure the run.
        compute_metrics: ``EvalPrediction -> dict`` of metrics, as for transformers.Trainer.
        preprocess_logits_for_metrics: ``(logits, labels) -> logits`` applied per eval batch before gathering.
        compute_loss_func: ``(outputs, labels, num_items_in_batch) -> loss``, replacing the model's loss.
        processing_class: the tokenizer/processor, saved with every checkpoint.
        optimizers: ``(optimizer, scheduler)`` to use instead of the ones built from ``args``.
        optimizer_cls_and_kwargs: ``(optimizer class, kwargs)`` to use instead of ``args.optim``.
        metrics: a torchmetrics ``Metric``/``MetricCollection`` updated per eval batch, logged as ``eval_<name>``.
        hooks: the object carrying transformers' override points (default: a ``loops.LightningHooks`` built
            from the arguments above; ``hf_lightning.Trainer`` passes itself).
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        *,
        compute_metrics: Callable[..., dict] | None = None,
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
        compute_loss_func: Callable[..., torch.Tensor] | None = None,
        processing_class: Any = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        metrics: Any = None,
        hooks: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module (a transformers PreTrainedModel), got {type(model).__name__}.")
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"`args` must be a transformers.TrainingArguments, got {type(args).__name__}.")
        self.automatic_optimization = False
        self.model = model
        self.args = args
        if hooks is None:
            from .loops import LightningHooks

            hooks = LightningHooks(
                model,
                args,
                compute_loss_func=compute_loss_func,
                compute_metrics=compute_metrics,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                processing_class=processing_class,
                optimizers=optimizers,
                optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            )
            hooks.module = self
        self.hooks: Any = hooks
        # A plain holder, not a submodule: metric states stay out of state_dict and checkpoints.
        self.metrics = TorchMetrics(metrics, preprocess_logits_for_metrics) if metrics is not None else None
        # Loaded checkpoints are checked (and tied weights completed) in on_load_checkpoint.
        self.strict_loading = False
        self.train_plan: TrainPlan | None = None
        self.flow: Any = None
        """The flow callback (set by it): fires transformers' events, owns the schedule."""
        from .loops import EvalRuns

        self.evals = EvalRuns(self)
        self.eval_request: Any = None
        self.test_prefix = "test"
        """The metric prefix of a test loop that Lightning starts itself (``lightning.Trainer.test``)."""
        self._reset_train_accumulators()
        self._neftune_handle: Any = None
        self._pending_checkpoint: dict[str, Any] | None = None
        self.stepped = True
        """Whether the last training batch ended with an optimizer step."""
        self.end_of_data = False
        """The last training batch found the end of the (unsized) data."""
        self.step_was_skipped = False
        self.model_written = False
        """The host's own ``save_model`` wrote the model files of the checkpoint being saved."""
        self._parameters_for_clipping: list[nn.Parameter] | None = None
        self._step_optimizer: Any = None
        self._step_scheduler: Any = None
        self._scaler: Any = None
        self._plateau = False
        self._defers_sync = True
        self._plain_transfer = False
        self._device_for_batches: Any = None
        self._dispatch: StepDispatch = LIGHTNING_DISPATCH

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ---------------------------------------------------------------------- the host's names

    @property
    def compute_metrics(self) -> Callable | None:
        return self.hooks.compute_metrics

    @property
    def processing_class(self) -> Any:
        return self.hooks.processing_class

    @property
    def label_names(self) -> list[str]:
        return self.hooks.label_names

    @property
    def main_input_name(self) -> str:
        return getattr(self.model, "main_input_name", "input_ids")

    @override
    def forward(self, **inputs: Any) -> Any:
        return self.model(**inputs)

    # --------------------------------------------------------------------------------- setup

    @override
    def configure_callbacks(self) -> list[pl.Callback]:
        """In a ``lightning.Trainer`` not built by ``build_trainer``: what transformers' behaviour needs (the flow
        and checkpoint callbacks, the checkpoint format, the overlapping settings), see ``builder.adopt_trainer``."""
        from .builder import adopt_trainer

        return adopt_trainer(self.trainer, self.args) if self._trainer is not None else []

    @override
    def on_fit_start(self) -> None:
        # Train mode before Lightning's fit loop looks (it warns about eval-mode modules, which is what
        # from_pretrained returns); training_step sets it again each step, as transformers does.
        self.model.train()

    @override
    def setup(self, stage: str) -> None:
        plugin = self.trainer.precision_plugin
        if is_forward_autocast(plugin):  # bf16/fp16 as accelerate applies them: autocast in the model's forward only
            autocast_forward(self.model, plugin.device, plugin.autocast_dtype)
        if stage != "fit":
            return
        args = self.args
        if args.activation_checkpointing:
            # Trainer.train: `every_n_layers` and `offload` are options of the method, the rest goes to checkpoint().
            kwargs = dict(args.activation_checkpointing_kwargs or {})
            every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs=kwargs or None, every_n_layers=every_n_layers, offload=offload
                )
            else:  # models that only define the deprecated name (transformers keeps this fallback until v6)
                self.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs=kwargs or None, every_n_layers=every_n_layers, offload=offload
                )
        if self.processing_class is not None and hasattr(self.model, "config"):
            _align_special_tokens(self.model, self.processing_class)
        if args.neftune_noise_alpha is not None and self._neftune_handle is None:
            from transformers.integrations.neftune import activate_neftune

            self._neftune_handle = activate_neftune(self.model, args.neftune_noise_alpha)

    @override
    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._neftune_handle is not None:
            from transformers.integrations.neftune import deactivate_neftune

            deactivate_neftune(self.model, self._neftune_handle)
            self._neftune_handle = None

    @override
    def configure_model(self) -> None:
        if self.args.torch_compile and not getattr(self.model, "_compiled_call_impl", None):
            # In place, so state-dict keys (and so checkpoints) stay those of the model.
            self.model.compile(backend=self.args.torch_compile_backend or "inductor", mode=self.args.torch_compile_mode)

    def compute_train_plan(self) -> TrainPlan:
        """The step arithmetic of the run, from the training dataloader Lightning set up."""
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # what `estimated_stepping_batches` does when it needs the length
        loader = trainer.train_dataloader
        ga = self.args.gradient_accumulation_steps
        if isinstance(loader, GroupedLoader):
            micro = loader.micro_batches_per_epoch
        else:
            if ga > 1:
                raise ValueError(
                    f"`gradient_accumulation_steps={ga}` needs the accumulation groups of hf_lightning's training loader; "
                    f"this run's training dataloader is a plain {type(loader).__name__}, which yields single "
                    "micro-batches. Pass an `hf_lightning.HFDataModule` (or wrap the loader in "
                    "`hf_lightning.data.GroupedLoader`), or set `gradient_accumulation_steps=1`."
                )
            try:
                micro = len(loader)
            except TypeError:
                micro = None
        dataset = getattr(loader, "dataset", None)
        try:
            num_examples = len(dataset) if dataset is not None else None
        except TypeError:
            num_examples = None
        return plan_training(
            max_steps=self.args.max_steps,
            num_train_epochs=self.args.num_train_epochs,
            gradient_accumulation_steps=ga,
            per_device_train_batch_size=getattr(self.hooks, "_train_batch_size", self.args.per_device_train_batch_size),
            world_size=trainer.world_size,
            micro_batches_per_epoch=micro,
            num_examples=num_examples,
        )

    @override
    def configure_optimizers(self) -> Any:
        hooks = self.hooks
        _check_trainable(self.model, hooks.compute_loss_func)
        self.train_plan = self.compute_train_plan()
        if hooks.optimizer is not None and not _owns_parameters(self.model, hooks.optimizer):
            if hooks.optimizer is getattr(hooks, "_given_optimizer", None):
                raise ValueError(
                    "The optimizer passed in `optimizers=` updates parameters that are not the model's: a sharding "
                    f"strategy ({type(self.trainer.strategy).__name__}) replaced them, or the optimizer was built for "
                    "another model. transformers refuses `optimizers` with FSDP too: pass `optimizer_cls_and_kwargs=` "
                    "or override `create_optimizer` so the optimizer is built on the model the strategy prepared."
                )
            hooks.optimizer = None  # the strategy replaced the parameters (FSDP): build it for the new ones
        if getattr(hooks, "_created_lr_scheduler", False):
            # transformers rebuilds the scheduler it created for each train() (the schedule length may change)
            hooks.lr_scheduler = None
            hooks._created_lr_scheduler = False
        # What Trainer._prepare_for_training calls (not create_optimizer_and_scheduler, which train() never calls).
        hooks.create_optimizer()
        hooks.create_scheduler(num_training_steps=self.train_plan.max_steps)
        optimizer, scheduler = hooks.optimizer, hooks.lr_scheduler
        if optimizer is None:
            raise ValueError(
                f"`{type(hooks).__name__}.create_optimizer` left `self.optimizer` unset: it must create the optimizer "
                "and keep it in `self.optimizer`, as transformers.Trainer's does."
            )
        self._fill_missing_training_state(optimizer, scheduler)
        config: dict[str, Any] = {"optimizer": optimizer}
        if scheduler is not None:
            config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return config

    # ------------------------------------------------------------------------------ training

    def _reset_train_accumulators(self) -> None:
        self._tr_loss: torch.Tensor | None = None
        self._grad_norm: torch.Tensor | None = None
        self._learning_rate: float | None = None
        self._tokens_pending: torch.Tensor | None = None
        self._tokens_pending_host = 0
        self.current_flos = 0.0
        self.last_logged_step = 0

    def _event(self, name: str) -> Any:
        """Fire a transformers callback event; the ``TrainerControl`` after it (None without a flow callback)."""
        flow = self.flow
        return flow.event(name) if flow is not None else None

    def _track_inputs(self, micro: Mapping[str, Any]) -> None:
        self.current_flos += float(self.hooks.floating_point_ops(micro))
        if overrides(type(self.hooks), "_track_num_input_tokens"):
            self.hooks._track_num_input_tokens(micro)  # on every micro-batch, as transformers; it counts into the state
            return
        mode = str(self.args.include_num_input_tokens_seen)
        if mode in ("no", "False"):
            return
        main = micro.get(self.main_input_name) if isinstance(micro, Mapping) else None
        if main is None or not hasattr(main, "numel"):
            return
        tokens = None
        if mode == "non_padding":
            if "attention_mask" in micro:
                tokens = micro["attention_mask"].sum()
            elif self.processing_class is not None and getattr(self.processing_class, "pad_token_id", None) is not None:
                tokens = (main != self.processing_class.pad_token_id).sum()
        if tokens is None:
            # A shape is known on the host: a host count avoids a blocking host-to-device copy per step.
            self._tokens_pending_host += main.numel()
            return
        tokens = tokens.to(torch.int64)
        self._tokens_pending = tokens if self._tokens_pending is None else self._tokens_pending + tokens

    def _num_items_in_batch(self, micros: list[Any]) -> Any:
        """``Trainer._get_num_items_in_batch`` over the group: label tokens, summed over the ranks when asked."""
        return count_num_items(self.hooks, micros)

    @override
    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if isinstance(loader, GroupedLoader):
            loader.set_epoch(self.trainer.current_epoch)

    def _to_device(self, micro: Any) -> Any:
        """A drawn micro-batch onto the device, through Lightning's transfer hooks (a dict of tensors directly
        when this module keeps Lightning's default hooks)."""
        if self._plain_transfer and isinstance(micro, dict):
            device = self._device_for_batches
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and v.device != device else v
                    for k, v in micro.items()}
        return self.trainer.strategy.batch_to_device(micro)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        micros, group = micro_batches(batch)
        strategy = self.trainer.strategy
        if group is not None:
            micros = [self._to_device(m) for m in micros]
        self.end_of_data = group is not None and group.end_of_data
        flow = self.flow
        if flow is not None:
            flow.on_group_fetched(len(micros))
        if not micros:
            self.stepped = False  # the unsized data ended exactly at the previous group
            return
        hooks = self.hooks
        hooks.current_gradient_accumulation_steps = len(micros)
        num_items = self._num_items_in_batch(micros)
        steps_since_log = self.trainer.global_step - self.last_logged_step
        # transformers on unsized data: a group cut short by the end of the iterator is not a sync step; its
        # gradients and loss carry over into the first optimizer step of the next pass.
        plan = self.train_plan
        ga = self.args.gradient_accumulation_steps
        carries_over = plan is not None and plan.micro_batches_per_epoch is None and len(micros) < ga
        self.stepped = not carries_over
        last = len(micros) - 1
        empty_every = self.args.torch_empty_cache_steps
        sync_state = getattr(hooks.accelerator, "gradient_state", None)
        for i, micro in enumerate(micros):
            sync = i == last and not carries_over
            if sync_state is not None:
                sync_state.sync_gradients = sync
            if i == last or not self._defers_sync:
                step_loss = hooks.training_step(self.model, micro, num_items)
            else:
                with distributed.gradient_sync(strategy, self, enabled=False):
                    step_loss = hooks.training_step(self.model, micro, num_items)
            if empty_every is not None and self.trainer.global_step % empty_every == 0:
                _clear_device_cache()  # Trainer.training_step, after each backward
            step_loss = step_loss.detach()
            if self._tr_loss is None:
                self._tr_loss = torch.zeros((), device=step_loss.device, dtype=torch.float32)
            if self.args.logging_nan_inf_filter:
                # transformers replaces a NaN/Inf step loss by the running mean; torch.where avoids its host sync.
                fallback = self._tr_loss / (1 + steps_since_log)
                self._tr_loss = self._tr_loss + torch.where(torch.isfinite(step_loss), step_loss, fallback)
            else:
                self._tr_loss = self._tr_loss + step_loss
            self._track_inputs(micro)
            if not sync:
                control = self._event("on_substep_end")
                if control is not None and (control.should_epoch_stop or control.should_training_stop):
                    self.stepped = False  # transformers breaks out of the group here, without an optimizer step (§8)
                    return
        if carries_over:
            return
        optimizer, scheduler = self._step_optimizer, self._step_scheduler
        scaler = self._scaler
        scale_before = scaler.get_scale() if scaler is not None else None
        self._optimizer_step(optimizer)
        self._event("on_optimizer_step")
        plateau = self._plateau
        inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        if overrides(type(self.hooks), "_get_learning_rate"):
            self._learning_rate = self.hooks._get_learning_rate()
        else:
            self._learning_rate = inner.param_groups[0]["lr"] if plateau or scheduler is None else scheduler.get_last_lr()[0]
        self.step_was_skipped = scaler is not None and scaler.get_scale() < scale_before
        if scheduler is not None and not plateau and not self.step_was_skipped:
            scheduler.step()
        optimizer.zero_grad()

    def run_backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``manual_backward``, or the same calls without the hook dispatch when nobody listens (``step_dispatch``)."""
        if not self._dispatch.direct_backward:
            self.manual_backward(loss, **kwargs)
            return
        strategy = self.trainer.strategy
        strategy.pre_backward(loss)
        loss.backward(**kwargs)
        strategy.post_backward(loss.detach())

    def _optimizer_step(self, optimizer: Any) -> None:
        """``LightningOptimizer.step()``, or the same calls without the closure and hook dispatch (``step_dispatch``)."""
        inner = getattr(optimizer, "optimizer", None)
        if not self._dispatch.direct_optimizer_step or inner is None:
            optimizer.step()
            return
        optimizer._on_before_step()  # Lightning's step counters (``trainer.global_step``)
        self.on_before_optimizer_step(inner)
        inner.step()
        optimizer._on_after_step()

    @override
    def on_train_start(self) -> None:
        # transformers.Trainer starts its loop with accelerator.free_memory(): a full garbage collection and an
        # emptied device cache. Same here, so collecting the setup's garbage doesn't stall one of the first steps.
        from accelerate.utils.memory import clear_device_cache

        clear_device_cache(garbage_collection=True)
        # The parameters are final once the strategy has set the model up (wrapped, sharded, compiled).
        self._parameters_for_clipping = list(self.parameters())
        # What every step reads, looked up once per fit.
        from .hooks import clear_train_mode_cache

        clear_train_mode_cache(self.model)
        trainer = self.trainer
        self._step_optimizer, self._step_scheduler = self.optimizers(), self.lr_schedulers()
        self._plateau = is_plateau_scheduler(self._step_scheduler)
        self._scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._dispatch = plan_step_dispatch(
            callbacks=trainer.callbacks, module=self, module_base=HFModule, strategy=trainer.strategy,
            precision=trainer.precision_plugin, profiler=trainer.profiler,
        )
        self._defers_sync = distributed.is_distributed(trainer.strategy) or distributed.is_sharded(trainer.strategy)
        self._device_for_batches = trainer.strategy.root_device
        self._plain_transfer = all(
            getattr(type(self), hook) is getattr(pl.LightningModule, hook)
            for hook in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
        ) and (trainer.datamodule is None or all(
            getattr(type(trainer.datamodule), hook) is getattr(pl.LightningDataModule, hook)
            for hook in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
        ))

    @override
    def on_train_end(self) -> None:
        self._parameters_for_clipping = None
        self._step_optimizer = self._step_scheduler = self._scaler = None
        self._dispatch = LIGHTNING_DISPATCH

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        scaler = self._scaler
        if scaler is not None and _optimizer_handles_unscaling(optimizer):
            # Lightning leaves unscaling to fused optimizers; unscale first so the norm is the true one.
            scaler.unscale_(optimizer)
        hooks, clipping = self.hooks, bool(self.args.max_grad_norm and self.args.max_grad_norm > 0)
        if clipping and overrides(type(hooks), "_clip_grad_norm"):
            self._grad_norm = hooks._clip_grad_norm(self.model)  # transformers logs what it returns
        else:
            max_norm = self.args.max_grad_norm if clipping else math.inf
            self._grad_norm = distributed.clip_grad_norm(self.trainer.strategy, self, max_norm, self._parameters_for_clipping)
        if overrides(type(hooks), "_get_grad_norm"):
            self._grad_norm = hooks._get_grad_norm(self.model, grad_norm=self._grad_norm if clipping else None)
        self._event("on_pre_optimizer_step")

    # ----------------------------------------------------------------------- logging reads

    def pop_train_loss(self) -> float:
        """Mean over ranks of the loss summed since the last log; resets it. A collective."""
        value = torch.zeros((), device=self.device) if self._tr_loss is None else self._tr_loss
        value = float(distributed.reduce_mean(self.trainer.strategy, value.float()).item())
        if self._tr_loss is not None:
            # transformers resets with `tr_loss -= tr_loss`, in place (the tensor _maybe_log_save_evaluate was handed
            # reads 0 after it): a NaN (filter off) stays NaN for the rest of the run.
            self._tr_loss -= self._tr_loss
        self.last_logged_step = self.trainer.global_step
        return value

    def last_grad_norm(self) -> float | None:
        norm = self._grad_norm
        return None if norm is None else float(norm.item() if isinstance(norm, torch.Tensor) else norm)

    def last_learning_rate(self) -> float:
        if self._learning_rate is not None:
            return float(self._learning_rate)
        scheduler = self.lr_schedulers() if self._trainer is not None else None
        if scheduler is not None and not is_plateau_scheduler(scheduler):
            return float(scheduler.get_last_lr()[0])
        return float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def pop_input_tokens(self) -> int:
        """Input tokens counted since the last call, summed over ranks. A collective."""
        pending, host = self._tokens_pending, self._tokens_pending_host
        self._tokens_pending, self._tokens_pending_host = None, 0
        strategy = self.trainer.strategy
        if pending is None and not distributed.is_distributed(strategy):
            return host
        total = torch.tensor(host, dtype=torch.int64, device=self.device)
        if pending is not None:
            total = total + pending
        return int(distributed.reduce_sum(strategy, total).item())

    def pop_flos(self) -> float:
        """FLOPs counted since the last call, summed over ranks. A collective."""
        flos, self.current_flos = self.current_flos, 0.0
        strategy = self.trainer.strategy
        if not distributed.is_distributed(strategy):
            return flos
        value = torch.tensor(flos, dtype=torch.float64, device=self.device)
        return float(distributed.reduce_sum(strategy, value).item())

    # ---------------------------------------------------------------------------- evaluation

    @property
    def current_eval_gather(self) -> Any:
        """The gatherer of the evaluation batch being computed (``accelerator.gather_for_metrics`` uses it)."""
        return self.evals.current_gather

    @override
    def on_validation_model_zero_grad(self) -> None:
        # Lightning clears gradients before a validation inside training; transformers does not. They are
        # already None after every optimizer step; only a carried-over short group (unsized data) has some.
        pass

    @override
    def on_validation_start(self) -> None:
        self._cast_for_full_eval()

    @override
    def on_test_start(self) -> None:
        self._cast_for_full_eval()

    def _cast_for_full_eval(self) -> None:
        # Trainer.evaluation_loop outside train(): fp16/bf16_full_eval cast the model itself (it stays cast).
        if self.trainer.state.fn == "fit" or getattr(self.hooks, "is_in_train", False):
            return
        dtype = torch.float16 if self.args.fp16_full_eval else torch.bfloat16 if self.args.bf16_full_eval else None
        if dtype is not None:
            with torch.inference_mode(False):  # cast parameters must stay trainable if train() follows
                self.model.to(dtype=dtype)

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.trainer.sanity_checking:
            self.evals.step(batch, batch_idx, dataloader_idx, "validate")

    @override
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evals.step(batch, batch_idx, dataloader_idx, "test")

    # --------------------------------------------------------------------------- checkpoints

    def save_model(self, output_dir: str) -> None:
        """The host's ``save_model``: weights and config, tokenizer, ``training_args.bin``, loadable with ``from_pretrained``.

        Under several processes call it on every rank (the full state is gathered); rank 0 writes.
        """
        self.hooks.save_model(str(output_dir))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        collator = getattr(self.hooks, "data_collator", None)
        extras = checkpoint.setdefault(HF_CHECKPOINT_KEY, {})
        extras.update(
            {"model": self.model, "processing_class": self.processing_class, "data_collator": collator, "args": self.args,
             "model_written": self.model_written}
        )

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extras = checkpoint.get(HF_CHECKPOINT_KEY)
        if not extras or "source_dir" not in extras:
            return
        from .hf_format import CheckpointError, load_adapter_into

        if overrides(type(self.hooks), "_load_from_checkpoint"):
            # A subclass's override loads the weights, where transformers calls it on resume (sentence-transformers
            # loads its own model folder); Lightning then restores what the model holds.
            self.hooks._load_from_checkpoint(extras["source_dir"])
            checkpoint["state_dict"] = self.state_dict()
        elif extras.get("adapter_weights") is not None:
            load_adapter_into(self.model, extras["adapter_weights"])
            checkpoint["state_dict"] = self.state_dict()  # what Lightning restores next: the model as it now is
        state_dict = checkpoint["state_dict"]
        expected = self.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        tied = _tied_keys(self.model, prefix="model.")
        fixable = [k for k in missing if k in tied and tied[k] in state_dict]
        for key in fixable:
            state_dict[key] = state_dict[tied[key]]
        missing = [k for k in missing if k not in fixable]
        weights = extras.get("weights_file", extras["source_dir"])
        if missing or unexpected:
            raise CheckpointError(
                f"{weights}: the weights do not fit {type(self.model).__name__}: "
                f"missing {[k.removeprefix('model.') for k in missing][:10]}{' ...' if len(missing) > 10 else ''}, "
                f"unexpected {[k.removeprefix('model.') for k in unexpected][:10]}{' ...' if len(unexpected) > 10 else ''}."
            )
        mismatched = [
            f"`{key.removeprefix('model.')}` {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} in the model"
            for key, value in state_dict.items()
            if key in expected and tuple(expected[key].shape) != tuple(value.shape)
        ]
        overridden = type(self.model).load_state_dict is not nn.Module.load_state_dict
        if mismatched and not overridden:  # before anything is loaded: the model stays as it was
            raise CheckpointError(
                f"{weights}: the weights do not fit {type(self.model).__name__}, {len(mismatched)} shapes differ: "
                + "; ".join(mismatched[:10]) + (" ..." if len(mismatched) > 10 else "")
            )
        if overridden:
            # The model's own load_state_dict, non-strict, as transformers' _load_from_checkpoint calls it (this one
            # resizes a buffer, say); Lightning then restores what the model now holds.
            self.model.load_state_dict({k.removeprefix("model."): v for k, v in state_dict.items()}, False)
            checkpoint["state_dict"] = self.state_dict()
        if "optimizer_states" not in checkpoint or "lr_schedulers" not in checkpoint:
            self._pending_checkpoint = checkpoint
            if self._trainer is not None and self.trainer.optimizers:
                self._fill_missing_training_state(self.trainer.optimizers[0], self.lr_schedulers())

    def _fill_missing_training_state(self, optimizer: Any, scheduler: Any) -> None:
        # transformers starts a fresh optimizer/scheduler when the checkpoint has none (save_only_model);
        # Lightning insists on restoring them, so restore the fresh states.
        checkpoint, self._pending_checkpoint = self._pending_checkpoint, None
        if checkpoint is None:
            return
        checkpoint.setdefault("optimizer_states", [optimizer.state_dict()])  # only the missing part starts fresh
        checkpoint.setdefault("lr_schedulers", [scheduler.state_dict()] if scheduler is not None else [])


def _owns_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer still points at the model's parameters (not replaced by a sharding strategy)."""
    params = {id(p) for p in model.parameters()}
    return all(id(p) in params for group in optimizer.param_groups for p in group["params"])


def _clear_device_cache() -> None:
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache()
    if torch.backends.mps.is_available() and hasattr(torch.mps, "clear_graph_cache"):
        torch.mps.clear_graph_cache()


def _tied_keys(model: nn.Module, prefix: str = "") -> dict[str, str]:
    """Parameters that share storage with another parameter: ``{alias: first name}``."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        key = id(param)
        if key in first:
            tied[prefix + name] = prefix + first[key]
        else:
            first[key] = name
    return tied


def _align_special_tokens(model: nn.Module, processing_class: Any) -> None:
    # transformers' train() aligns the model/generation config's pad/bos/eos ids with the tokenizer's.
    from transformers import PreTrainedTokenizerBase, ProcessorMixin
    from transformers.trainer_utils import align_special_tokens

    if isinstance(processing_class, (PreTrainedTokenizerBase, ProcessorMixin)):
        align_special_tokens(model, processing_class)


def _check_trainable(model: nn.Module, compute_loss_func: Callable | None) -> None:
    """A headless base model (``BertModel``) returns no loss: refuse to train it before the first step.

    Checked when training starts, not at construction, so such a model can still ``predict()``/``evaluate()``
    and can train with a ``compute_loss_func`` (transformers' own class-name check never matches, so it
    would fail at the first step instead).
    """
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    inspected = unwrap_peft_model(model)
    if compute_loss_func is None and inspected.__class__.__name__ in MODEL_MAPPING_NAMES.values():
        raise ValueError(
            f"The model you have picked ({inspected.__class__.__name__}) only computes hidden states and does not "
            "accept labels, so it can't be trained as is. Choose a model with a head, such as an `AutoModelForXxx` "
            "class, or pass a `compute_loss_func`."
        )
