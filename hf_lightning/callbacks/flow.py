"""``HFFlowCallback``: transformers.Trainer's control flow on Lightning's loops.

It fires transformers ``TrainerCallback`` events (through the host's ``CallbackHandler``) at the points
transformers fires them, on the host's ``TrainerState`` and ``TrainerControl``. After each optimizer
step it lets ``DefaultFlowCallback`` (and user callbacks) decide, then does what
``Trainer._maybe_log_save_evaluate`` does, in its order: log through the host's ``log``, evaluate
through the host's ``evaluate`` (Lightning's validation loop runs right there, between two steps),
save; then the same at the epoch's end.

The host is ``HFModule.hooks``: the ``hf_lightning.Trainer`` facade, or a ``loops.LightningHooks`` when
the module is used on its own. The hooks stay short: arithmetic lives in ``schedule`` and ``state``,
saving in ``callbacks.checkpoint``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, ExportableState, PrinterCallback
from typing_extensions import override

from .. import distributed
from .. import state as hf_state
from .flow_loops import LoopDriver, fast_forward_loops, install_epoch_loop, install_evaluation_loops
from .reporting import LightningLoggers, log_training_start, prints_logs_with_bar, to_callback_metrics, trainer_logger
from ..schedule import epoch_end_flags, epoch_progress, resolve_interval_steps, resume_position, step_end_flags

__all__ = ["HFFlowCallback", "FlowDecisions", "LightningLoggers"]

log = logging.getLogger(__name__)


# Events whose CallbackHandler method only calls the callbacks (on_step_begin, on_log, on_save, ... also reset
# control flags, so they always run).
_SKIPPABLE_EVENTS = frozenset({"on_pre_optimizer_step", "on_optimizer_step", "on_substep_end", "on_step_end", "on_prediction_step"})


class FlowDecisions(DefaultFlowCallback):
    """``DefaultFlowCallback``'s place in the callback list, deciding with ``schedule``'s pure functions."""

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        flags = step_end_flags(
            global_step=state.global_step,
            max_steps=state.max_steps,
            logging_steps=state.logging_steps,
            eval_steps=state.eval_steps,
            save_steps=state.save_steps,
            logging_strategy=hf_state.strategy_name(args.logging_strategy),
            eval_strategy=hf_state.strategy_name(args.eval_strategy),
            save_strategy=hf_state.strategy_name(args.save_strategy),
            logging_first_step=args.logging_first_step,
            eval_delay=args.eval_delay,
        )
        control.should_log |= flags.log
        control.should_evaluate |= flags.evaluate
        control.should_save |= flags.save
        control.should_training_stop |= flags.stop
        return control

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        flags = epoch_end_flags(
            epoch=state.epoch,
            logging_strategy=hf_state.strategy_name(args.logging_strategy),
            eval_strategy=hf_state.strategy_name(args.eval_strategy),
            save_strategy=hf_state.strategy_name(args.save_strategy),
            eval_delay=args.eval_delay,
        )
        control.should_log |= flags.log
        control.should_evaluate |= flags.evaluate
        control.should_save |= flags.save
        return control


class HFFlowCallback(LoopDriver):
    """transformers.Trainer's logging/evaluation/saving schedule, ``TrainerState`` and ``TrainerCallback`` events.

    Args:
        args: the transformers TrainingArguments of the run.
        callbacks: transformers ``TrainerCallback`` instances or classes, called in order after the flow decisions
            (when the host has no callback list of its own; the facade has).
    """

    def __init__(self, args: TrainingArguments, callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None) -> None:
        self.args = args
        self.callbacks = list(callbacks or [])
        self.host: Any = None
        self.checkpointer: Any = None  # HFCheckpoint, set by it in setup
        self.last_train_output: Any = None
        self.last_eval_metrics: dict[str, Any] = {}
        self.last_predictions: list[tuple[str, Any]] = []
        self.loop_results: list[dict[str, Any]] = []
        """Metrics of each dataloader of the validate/test loop Lightning runs now (``_HFEvaluationLoop`` returns them)."""
        self.resume: dict[str, Any] | None = None
        self.ignore_keys_for_eval: list[str] | None = None
        self.trial: Any = None
        self.progress_metrics: dict[str, float] = {}
        """The latest training ``loss`` and ``lr``, shown by ``HFProgressBar``."""
        self._module: Any = None
        self._listeners: dict[tuple, bool] = {}
        self._epoch_stop = False
        self._epoch_finished = True
        self._reset_run_counters()

    # ------------------------------------------------------------------------------ plumbing

    def _reset_run_counters(self) -> None:
        self._start_time = time.time()
        self._initial_global_step = 0
        self._total_loss_scalar = 0.0
        self._micro_done = 0
        self._group_index = 0
        self._updates_per_epoch = 1
        self._skip_groups = 0
        self._rng_restore: str | None = None

    @property
    def state_key(self) -> str:
        return "HFFlowCallback"

    @property
    def state(self) -> TrainerState:
        return self.host.state

    @state.setter
    def state(self, value: TrainerState) -> None:
        self.host.state = value

    @property
    def control(self) -> TrainerControl:
        return self.host.control

    @control.setter
    def control(self, value: TrainerControl) -> None:
        self.host.control = value

    @property
    def handler(self) -> CallbackHandler:
        return self.host.callback_handler

    @property
    def epoch_stop_requested(self) -> bool:
        return self._epoch_stop

    def event(self, name: str, **kwargs: Any) -> TrainerControl:
        """Fire transformers' event ``name`` on every TrainerCallback; returns the ``TrainerControl`` after it.

        The per-step events that change nothing in the handler itself are skipped when no callback in the list
        overrides them (``TrainerCallback``'s own methods do nothing): nobody listening costs nothing.
        """
        host = self.host
        handler = host.callback_handler
        key = (name, type(handler), tuple(map(type, handler.callbacks)))
        listened = self._listeners.get(key)
        if listened is None:
            base = getattr(TrainerCallback, name, None)
            listened = self._listeners[key] = (
                name not in _SKIPPABLE_EVENTS
                or getattr(type(handler), name) is not getattr(CallbackHandler, name)
                or any(getattr(type(cb), name, base) is not base for cb in handler.callbacks)
            )
        if listened:
            host.control = getattr(handler, name)(self.args, host.state, host.control, **kwargs)
        return host.control

    def _attach(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Take the module's host; give it a callback list (and an accelerator on this trainer) if it has none."""
        from ..accelerator import LightningAccelerator

        host = getattr(pl_module, "hooks", None)
        if host is None:
            raise TypeError(
                f"HFFlowCallback drives an `hf_lightning.HFModule`; the LightningModule is a {type(pl_module).__name__}."
            )
        self.host = host
        self._module = pl_module
        pl_module.flow = self
        if not isinstance(host.accelerator, LightningAccelerator):
            host.accelerator = LightningAccelerator(self.args)
        host.accelerator.bind(trainer, pl_module)
        handler = host.callback_handler
        if handler is None:
            callbacks = [FlowDecisions(), *[cb() if isinstance(cb, type) else cb for cb in self.callbacks]]
            if self.args.disable_tqdm:
                callbacks.append(PrinterCallback())
            host.callback_handler = handler = CallbackHandler(callbacks, host.model, host.processing_class, None, None)
            host.state = TrainerState(stateful_callbacks=[cb for cb in handler.callbacks + [host.control] if isinstance(cb, ExportableState)])
            self.event("on_init_end")
        else:
            present = {type(cb) for cb in handler.callbacks}
            for callback in self.callbacks:  # report_to integrations the host's list already has stay single
                if (callback if isinstance(callback, type) else type(callback)) not in present:
                    handler.add_callback(callback)
        self.callbacks = []
        bridges = [cb for cb in handler.callbacks if isinstance(cb, LightningLoggers)]
        for bridge in bridges:
            bridge.trainer = trainer
        if not bridges and (trainer.loggers or prints_logs_with_bar(trainer)):
            handler.callbacks.insert(1 if handler.callbacks and isinstance(handler.callbacks[0], DefaultFlowCallback) else 0, LightningLoggers(trainer))

    # ----------------------------------------------------------------------------- lifecycle

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._attach(trainer, pl_module)
        distributed.sync_accelerate_state(trainer, self.args)
        if stage == "fit":
            _validate_fit(self.args, trainer, pl_module)
            install_epoch_loop(trainer)
        install_evaluation_loops(trainer)
        from transformers.utils import logging as hf_logging

        from ..arguments import process_log_level

        hf_logging.set_verbosity(process_log_level(self.args, global_rank=trainer.global_rank, local_rank=trainer.local_rank))
        self.state.is_local_process_zero = trainer.local_rank == 0
        self.state.is_world_process_zero = trainer.global_rank == 0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.host.is_in_train = True
        hf_state.start_memory_tracker(self.host._memory_tracker, "train")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        host, args, plan = self.host, self.args, pl_module.train_plan
        stateful = [cb for cb in self.handler.callbacks + [self.control] if isinstance(cb, ExportableState)]
        state = TrainerState(stateful_callbacks=stateful)
        state.is_hyper_param_search = self.trial is not None
        state.train_batch_size = getattr(host, "_train_batch_size", args.per_device_train_batch_size)
        for kind in ("logging", "eval", "save"):
            value = getattr(args, f"{kind}_steps")
            if value is not None:
                setattr(state, f"{kind}_steps", resolve_interval_steps(value, plan.max_steps))
        host.state = state
        if self.resume is not None:
            host.state = state = self.resume["state"]
            if state.best_model_checkpoint is not None and not os.path.isdir(state.best_model_checkpoint):
                trainer_logger().warning(
                    f"The best checkpoint {state.best_model_checkpoint} recorded in the resumed state does not "
                    "exist anymore. Ignoring it for this run."
                )
                state.best_model_checkpoint = None
            if self._host_overrides("_load_callback_state"):
                host._load_callback_state()  # its super() lands in this callback's own
            else:
                self._load_callback_state()
        _init_training_references(host, state, plan, self.trial, trainer)
        trainer.fit_loop.epoch_loop.max_steps = plan.max_steps
        trainer.fit_loop.max_epochs = -1 if plan.num_train_epochs == sys.maxsize else plan.num_train_epochs
        self._reset_run_counters()
        self._updates_per_epoch = plan.updates_per_epoch
        self._initial_global_step = state.global_step
        host._initial_num_input_tokens_seen = state.num_input_tokens_seen
        pl_module.last_logged_step = state.global_step
        if self.resume is not None:
            epochs, skip = resume_position(
                state.global_step,
                updates_per_epoch=plan.updates_per_epoch,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                ignore_data_skip=args.ignore_data_skip,
            )
            fast_forward_loops(trainer, state.global_step, epochs)
            self._skip_groups = skip
            loader = trainer.train_dataloader
            if skip and hasattr(loader, "skip_groups_once"):
                loader.skip_groups_once(skip)
            self._rng_restore = "batch" if skip else "epoch"
            if self._host_overrides("_load_optimizer_and_scheduler"):
                host._load_optimizer_and_scheduler(self.resume["dir"])  # after Lightning's restore, as transformers calls it
            if self._host_overrides("_load_scaler"):
                host._load_scaler(self.resume["dir"])
        handler = self.handler
        handler.model = host.model
        handler.optimizer = host.optimizer
        handler.lr_scheduler = host.lr_scheduler
        from ..loops import unwrap_loader

        handler.train_dataloader = unwrap_loader(trainer.train_dataloader)
        log_training_start(host, plan, args, state, resumed=self.resume is not None, skip=self._skip_groups)
        self.event("on_train_begin")
        if args.eval_on_start:
            self._evaluate(trainer, pl_module, skip_scheduler=True)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_stop = False
        self._epoch_finished = False
        self._group_index = self._skip_groups
        self._micro_done = self._skip_groups * self.args.gradient_accumulation_steps
        self._skip_groups = 0
        self.event("on_epoch_begin")
        if self._rng_restore == "epoch":
            self._restore_rng()

    def on_group_fetched(self, micro_batches: int) -> None:
        """Called by ``HFModule.training_step`` once the step's micro-batches are drawn, before the first forward."""
        if self._rng_restore == "batch":
            self._restore_rng()  # transformers restores the RNG after drawing the first resumed group
        if micro_batches:
            self.event("on_step_begin")

    def _restore_rng(self) -> None:
        self._rng_restore = None
        if self.resume is None:
            return
        if self._host_overrides("_load_rng_state"):
            self.host._load_rng_state(self.resume["dir"])  # where transformers calls it; its super() lands in restore_rng
        elif self.checkpointer is not None:
            self.checkpointer.restore_rng(self.resume["dir"])

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not getattr(pl_module, "stepped", True):
            # no optimizer step (see HFModule.training_step): a short group at the end of unsized data, or a
            # callback stopped the epoch/training between micro-batches; the epoch ends here, with its log/evaluate/save
            self._maybe_end_epoch(trainer, pl_module)
            return
        state = self.state
        state.global_step = trainer.global_step
        self._micro_done += self.host.current_gradient_accumulation_steps
        self._group_index += 1
        steps_in_epoch = pl_module.train_plan.steps_in_epoch
        state.epoch = epoch_progress(trainer.current_epoch, min(self._micro_done, steps_in_epoch), steps_in_epoch)
        self.event("on_step_end")
        self._maybe_log_save_evaluate(trainer, pl_module)
        self._maybe_end_epoch(trainer, pl_module)

    def _epoch_ends(self, trainer: pl.Trainer, pl_module: Any) -> bool:
        return (
            self._group_index >= self._updates_per_epoch
            or getattr(pl_module, "end_of_data", False)
            or self.state.global_step >= self.state.max_steps
            or self.control.should_training_stop
            or self.control.should_epoch_stop
        )

    def _maybe_end_epoch(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """transformers' ``on_epoch_end`` and its log/evaluate/save, when the step just done ended the epoch."""
        if not self._epoch_finished and self._epoch_ends(trainer, pl_module):
            self._end_epoch(trainer, pl_module)
        self._apply_stop(trainer)

    def _end_epoch(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._epoch_finished = True
        self.event("on_epoch_end")
        self._maybe_log_save_evaluate(trainer, pl_module)

    def _apply_stop(self, trainer: pl.Trainer) -> None:
        if self.control.should_training_stop:
            trainer.should_stop = True
        if self.control.should_epoch_stop and not self.control.should_training_stop:
            self._epoch_stop = True

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch ran out of data before the planned number of steps (unsized data): end it now.
        if not self._epoch_finished:
            self._end_epoch(trainer, pl_module)
            self._apply_stop(trainer)

    # ------------------------------------------------------------------- log, evaluate, save

    def _maybe_log_save_evaluate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """``Trainer._maybe_log_save_evaluate``: the host's override where transformers calls it, else hf_lightning's own."""
        if self._host_overrides("_maybe_log_save_evaluate"):
            self._call_host_log_save_evaluate(trainer, pl_module)
        else:
            self._log_save_evaluate(trainer, pl_module)

    def _call_host_log_save_evaluate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Call the override with transformers' arguments; the host's ``_tr_loss``, ``_globalstep_last_logged`` and
        ``_total_loss_scalar`` are this run's counters while it runs (a copied body resets ``tr_loss`` in place)."""
        self._sync_tokens()  # transformers counts tokens into the state per micro-batch: they are there before any log
        if pl_module._tr_loss is None:
            pl_module._tr_loss = torch.zeros((), device=pl_module.device, dtype=torch.float32)
        history = len(self.state.log_history)
        self._counters_to_host(pl_module)
        try:
            self.host._maybe_log_save_evaluate(
                pl_module._tr_loss, pl_module._grad_norm, pl_module.model, self.trial, trainer.current_epoch,
                self.ignore_keys_for_eval, self._start_time, learning_rate=pl_module.last_learning_rate(),
            )
        finally:
            self._counters_from_host(pl_module)
        for logs in self.state.log_history[history:]:  # a training log written by the override feeds Lightning too
            if isinstance(logs.get("loss"), float) and isinstance(logs.get("learning_rate"), float):
                self._show_training_log(trainer, pl_module, logs)

    def log_save_evaluate_for_host(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """hf_lightning's ``_maybe_log_save_evaluate``, where an override's ``super()`` call lands."""
        self._counters_from_host(pl_module)
        try:
            self._log_save_evaluate(trainer, pl_module)
        finally:
            self._counters_to_host(pl_module)

    def _counters_to_host(self, pl_module: Any) -> None:
        host = self.host
        host._tr_loss = pl_module._tr_loss
        host._globalstep_last_logged = pl_module.last_logged_step
        host._total_loss_scalar = self._total_loss_scalar

    def _counters_from_host(self, pl_module: Any) -> None:
        host = self.host
        pl_module._tr_loss = host._tr_loss
        pl_module.last_logged_step = host._globalstep_last_logged
        self._total_loss_scalar = host._total_loss_scalar

    def _log_save_evaluate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """transformers' ``_maybe_log_save_evaluate`` body: log, then evaluate, then save, as the control asks."""
        if self.control.should_log and self.state.global_step > pl_module.last_logged_step:
            self._log_training(trainer, pl_module)
        if self.control.should_evaluate:
            metrics = self._evaluate(trainer, pl_module)
            new_best = self.host._determine_best_metric(metrics, self.trial)
            if hf_state.strategy_name(self.args.save_strategy) == "best":
                self.control.should_save = new_best
        if self.control.should_save:
            if self._host_overrides("_save_checkpoint"):  # TRL's trainers write a model card there
                self.host._save_checkpoint(pl_module.model, self.trial)  # its super() reaches Trainer._save_checkpoint
            else:
                self._save(trainer, pl_module)
            self.event("on_save")

    def _log_training(self, trainer: pl.Trainer, pl_module: Any) -> None:
        window = self.state.global_step - pl_module.last_logged_step
        loss = pl_module.pop_train_loss()
        logs = hf_state.train_log_entry(
            loss=loss / window, grad_norm=pl_module.last_grad_norm(), learning_rate=pl_module.last_learning_rate()
        )
        self._total_loss_scalar += loss
        self._store_flos(pl_module)
        self._sync_tokens()
        self.host.log(logs, self._start_time)
        self._show_training_log(trainer, pl_module, logs)

    def _show_training_log(self, trainer: pl.Trainer, pl_module: Any, logs: dict[str, Any]) -> None:
        """A training log's loss and learning rate to the progress bar and Lightning's ``callback_metrics``."""
        self.progress_metrics = {"loss": logs["loss"], "lr": logs["learning_rate"]}
        to_callback_metrics(trainer, pl_module, {k: logs[k] for k in ("loss", "grad_norm", "learning_rate") if isinstance(logs.get(k), float)})

    def _evaluate(self, trainer: pl.Trainer, pl_module: Any, *, skip_scheduler: bool = False) -> dict[str, float]:
        """The host's ``_evaluate``: ``evaluate()``, the hyper-parameter search report, the plateau scheduler step."""
        self._sync_tokens()
        return self.host._evaluate(self.trial, self.ignore_keys_for_eval, skip_scheduler=skip_scheduler)

    def _host_overrides(self, name: str) -> bool:
        """The host is a transformers.Trainer subclass that overrides the private method ``name``."""
        from ..hooks import overrides
        from ..private_overrides import TransformersTrainer

        host = self.host
        return isinstance(host, TransformersTrainer) and overrides(type(host), name)

    def _save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.checkpointer is None:
            raise RuntimeError(
                "A save was requested (save_strategy or a TrainerCallback) but the trainer has no HFCheckpoint callback; "
                "build it with hf_lightning.build_trainer or add hf_lightning.callbacks.HFCheckpoint."
            )
        self._store_flos(pl_module)
        self._sync_tokens()  # transformers counts tokens per micro-batch, so a checkpoint's state has them all
        folder = self.checkpointer.save(trainer, pl_module)
        push = getattr(self.host, "_push_from_checkpoint", None)
        if self.args.push_to_hub and callable(push):
            push(folder)  # transformers' _save_checkpoint pushes once the folder is written (rank 0; the Hub upload runs in the background)

    def _tracks_tokens(self) -> bool:
        return str(self.args.include_num_input_tokens_seen) not in ("no", "False")

    def _store_flos(self, pl_module: Any) -> None:
        """``Trainer.store_flos``: add this window's FLOPs, summed over ranks. A collective."""
        if pl_module is not None and pl_module._trainer is not None:
            self.state.total_flos += pl_module.pop_flos()

    def _sync_tokens(self) -> None:
        module = self._module
        # During fit, evaluation logs and checkpoints too carry every token trained so far (transformers counts per micro-batch).
        if self._tracks_tokens() and module is not None and module._trainer is not None and module.trainer.state.fn == "fit":
            self.state.num_input_tokens_seen += module.pop_input_tokens()

    # ---------------------------------------------------------------------------- evaluation

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_loop_start(trainer, pl_module, "validate")

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_loop_start(trainer, pl_module, "test")

    def _eval_loop_start(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        from ..loops import unwrap_loader

        if stage == "test":
            self.last_predictions = []
        elif pl_module.eval_request is None and trainer.state.fn != "fit":
            self.last_eval_metrics = {}
        self.handler.eval_dataloader = unwrap_loader(pl_module.evals.dataloader(stage, 0))
        if pl_module.eval_request is None:
            hf_state.start_memory_tracker(self.host._memory_tracker, "eval" if stage == "validate" else "test")

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._finish_runs_before(trainer, pl_module, "validate", dataloader_idx)

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._finish_runs_before(trainer, pl_module, "test", dataloader_idx)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.event("on_prediction_step")

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.event("on_prediction_step")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_runs_before(trainer, pl_module, "validate", None)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_runs_before(trainer, pl_module, "test", None)

    def _finish_runs_before(self, trainer: pl.Trainer, pl_module: Any, stage: str, index: int | None) -> None:
        """Close the evaluation of each dataloader before ``index`` (all with None), in order."""
        from ..loops import unwrap_loader

        if index is not None:
            self.handler.eval_dataloader = unwrap_loader(pl_module.evals.dataloader(stage, index))
        for pending in pl_module.evals.pending():
            if index is not None and pending >= index:
                continue
            finished = pl_module.evals.finish(stage, pending)
            if finished is not None:
                self._record(trainer, pl_module, stage, *finished)

    def _record(self, trainer: pl.Trainer, pl_module: Any, stage: str, prefix: str, result: Any, start: float) -> None:
        """Hand one dataloader's result to ``evaluation_loop``, or, for a loop Lightning started itself
        (``lightning.Trainer.validate``/``test``), finish it as ``evaluate()``/``predict()`` would."""
        from transformers.trainer_utils import EvalLoopOutput

        for key, value in result.metrics.items():  # what Lightning callbacks (EarlyStopping, ModelCheckpoint) monitor
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                pl_module.log(key, torch.tensor(float(value)), logger=False, on_step=False, on_epoch=True, add_dataloader_idx=False)
        request = pl_module.eval_request
        if request is not None:
            request.output = EvalLoopOutput(
                predictions=result.predictions, label_ids=result.label_ids, metrics=result.metrics, num_samples=result.num_samples
            )
            if stage == "validate":
                self.last_eval_metrics = result.metrics
            return
        metrics = result.metrics
        metrics.update(
            hf_state.eval_speed_metrics(
                prefix, start, num_samples=result.num_samples, eval_batch_size=self.args.per_device_eval_batch_size,
                world_size=trainer.world_size,
            )
        )
        self.loop_results.append(dict(metrics))
        if stage == "validate":
            self.host.log(metrics)
            self.event("on_evaluate", metrics=metrics)
            self.last_eval_metrics.update(metrics)
        else:
            self.last_predictions.append((prefix, result))
            self.event("on_predict", metrics=metrics)
        hf_state.stop_memory_tracker(self.host._memory_tracker, "eval" if stage == "validate" else "test", metrics)

    # ------------------------------------------------------------------------------ the end

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``Trainer._finalize_training``: the summary log, the best model, the ``save_total_limit=1`` rule, ``on_train_end``."""
        from transformers.trainer_utils import TrainOutput

        trainer_logger().info("\n\nTraining completed. Do not forget to share your model on huggingface.co/models =)\n\n")
        remaining = pl_module.pop_train_loss()
        self._total_loss_scalar += remaining
        steps = self.state.global_step - self._initial_global_step
        train_loss = self._total_loss_scalar / max(steps, 0.001)
        self._store_flos(pl_module)
        metrics = hf_state.train_summary(
            start_time=self._start_time,
            num_train_samples=pl_module.train_plan.num_train_samples,
            steps_this_call=steps,
            max_steps=self.state.max_steps,
            total_flos=self.state.total_flos,
            train_loss=train_loss,
        )
        hf_state.stop_memory_tracker(self.host._memory_tracker, "train", metrics)
        self._sync_tokens()
        self.host.log(metrics)
        if self.checkpointer is not None:
            self.checkpointer.finish_training(trainer, pl_module, self.state)
        self.event("on_train_end")
        finish_push = getattr(self.host, "_finish_current_push", None)
        if callable(finish_push):
            finish_push()  # transformers waits for the checkpoint uploads here
        self.host.is_in_train = False
        self.last_train_output = TrainOutput(self.state.global_step, train_loss, metrics)
        self.resume = None

    def _load_callback_state(self) -> None:
        """``Trainer._load_callback_state``: rebuild ExportableState callbacks (and the control) from the checkpoint."""
        if not self.args.restore_callback_states_from_checkpoint:
            return
        handler = self.handler
        not_found, rebuilt = [], []
        originals = handler.callbacks + [self.control]
        for name, data in self.state.stateful_callbacks.items():
            entries = data if isinstance(data, list) else [data]
            duplicates = [cb for cb in originals if type(cb).__name__ == name]
            if not duplicates:
                not_found.append(name)
                continue
            for callback, entry in zip(duplicates, entries):
                new = type(callback)(**entry.get("args", {}))
                for attribute, value in entry.get("attributes", {}).items():
                    setattr(new, attribute, value)
                if isinstance(callback, TrainerControl):
                    self.control = new
                else:
                    rebuilt.append(new)
                handler.remove_callback(type(new))
            trainer_logger().info("Continuing training from checkpoint, restoring any callbacks that were passed in")
        if not_found:
            trainer_logger().warning(
                f"Checkpoint included callbacks not included in current configuration. Ignoring. ({', '.join(not_found)})"
            )
        for callback in rebuilt:
            handler.add_callback(callback)

    # -------------------------------------------------------------------------- checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        import dataclasses

        return {"trainer_state": dataclasses.asdict(self.state)}

    def snapshot_state(self) -> TrainerState:
        """The ``TrainerState`` to write, with stateful callbacks refreshed as transformers does."""
        for callback in [cb for cb in self.handler.callbacks + [self.control] if isinstance(cb, ExportableState)]:
            name = type(callback).__name__
            if isinstance(self.state.stateful_callbacks.get(name), list):
                self.state.stateful_callbacks[name].append(callback.state())
            else:
                self.state.stateful_callbacks[name] = callback.state()
        return self.state


def _init_training_references(host: Any, state: TrainerState, plan: Any, trial: Any, trainer: pl.Trainer) -> None:
    """``TrainerState.init_training_references``: trial name/params, step counts, process-zero flags."""
    hp_name = getattr(host, "hp_name", None)
    if hp_name is not None and trial is not None:
        state.trial_name = hp_name(trial)
    state.trial_params = None
    if trial is not None:
        from transformers.integrations import hp_params

        state.trial_params = hp_params(trial)
    state.max_steps = plan.max_steps
    state.num_train_epochs = plan.num_train_epochs
    state.is_local_process_zero = trainer.local_rank == 0
    state.is_world_process_zero = trainer.global_rank == 0


def _validate_fit(args: TrainingArguments, trainer: pl.Trainer, pl_module: Any) -> None:
    """The Trainer-level checks of ``validate_arguments`` on the Lightning path (``trainer.fit(HFModule, HFDataModule)``),
    where the datasets and the module's functions are only known at fit time."""
    from ..arguments import validate_arguments
    from ..data import HFDataModule

    datamodule = trainer.datamodule
    if not isinstance(datamodule, HFDataModule) or datamodule.source is not None:
        return  # plain dataloaders (Lightning owns them), or the facade (it validated at construction)
    train = datamodule.train_dataset
    try:
        sized = None if train is None else (len(train) >= 0)
    except TypeError:
        sized = False
    hooks = pl_module.hooks
    validate_arguments(
        args,
        has_train_dataset=train is not None,
        train_dataset_has_length=sized,
        has_eval_dataset=datamodule.eval_dataset is not None,
        compute_metrics=hooks.compute_metrics,
        optimizers=(hooks.optimizer, hooks.lr_scheduler),
        optimizer_cls_and_kwargs=hooks.optimizer_cls_and_kwargs,
    )
