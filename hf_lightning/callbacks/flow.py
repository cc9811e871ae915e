"""``HFFlowCallback``: transformers.Trainer's control flow on Lightning's loops.

It owns the ``TrainerState`` and ``TrainerControl`` and fires transformers ``TrainerCallback``
events (through transformers' own ``CallbackHandler``) at the points transformers fires them. After
each optimizer step it takes the decisions ``DefaultFlowCallback`` takes (the pure functions of
``schedule``), lets user callbacks change them, then logs, asks Lightning's loop for a validation
run, and saves, in transformers' order: log, evaluate, save; then the same at the epoch's end.

The hooks stay short: arithmetic lives in ``schedule`` and ``state``, saving in
``callbacks.checkpoint``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, ExportableState, PrinterCallback
from typing_extensions import override

from .. import state as hf_state
from ..schedule import epoch_end_flags, epoch_progress, resolve_interval_steps, resume_position, step_end_flags

__all__ = ["HFFlowCallback", "FlowDecisions"]

log = logging.getLogger(__name__)


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


class _HFTrainingEpochLoop(_TrainingEpochLoop):
    """Lightning's training epoch loop, asking the flow callback when to validate and when to end the epoch.

    Lightning schedules validation by batch counts; transformers by decisions taken after each
    optimizer step (with user callbacks able to ask for one). This is the one override of
    Lightning internals in hf_lightning.
    """

    def _flow(self) -> HFFlowCallback | None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, HFFlowCallback):
                return callback
        return None

    @override
    def _should_check_val_fx(self, data_fetcher: Any) -> bool:
        flow = self._flow()
        if flow is None:
            return super()._should_check_val_fx(data_fetcher)
        return flow.take_validation_request()

    @override
    def on_run_start(self, data_fetcher: Any) -> None:
        super().on_run_start(data_fetcher)
        flow = self._flow()
        if flow is not None and flow.take_eval_on_start():
            self.trainer.validating = True
            self.val_loop.run()
            self.trainer.training = True

    @property
    def done(self) -> bool:
        flow = self._flow()
        if flow is not None and flow.epoch_stop_requested:
            return True
        return super().done


def install_epoch_loop(trainer: pl.Trainer) -> None:
    """Switch ``trainer.fit_loop.epoch_loop`` to ``_HFTrainingEpochLoop`` (same state, more decisions)."""
    loop = trainer.fit_loop.epoch_loop
    if type(loop) is _TrainingEpochLoop:
        loop.__class__ = _HFTrainingEpochLoop


class HFFlowCallback(Callback):
    """transformers.Trainer's logging/evaluation/saving schedule, ``TrainerState`` and ``TrainerCallback`` events.

    Args:
        args: the transformers TrainingArguments of the run.
        callbacks: transformers ``TrainerCallback`` instances or classes, called in order after the flow decisions.
        state: an existing ``TrainerState`` to continue (the facade passes its own).
    """

    def __init__(
        self,
        args: TrainingArguments,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        state: TrainerState | None = None,
    ) -> None:
        self.args = args
        self.control = TrainerControl()
        handler_callbacks: list[Any] = [FlowDecisions()]
        handler_callbacks += [cb() if isinstance(cb, type) else cb for cb in (callbacks or [])]
        self.handler = CallbackHandler(handler_callbacks, None, None, None, None)
        self.state = state if state is not None else TrainerState()
        self._refresh_stateful()
        self.checkpointer: Any = None  # HFCheckpoint, set by it in setup
        self.last_train_output: Any = None
        self.last_eval_metrics: dict[str, Any] = {}
        self.last_predictions: list[tuple[str, Any]] = []
        self.resume: dict[str, Any] | None = None
        self._validation_requested = False
        self._eval_on_start_pending = False
        self._epoch_stop = False
        self._epoch_finished = True
        self._after_eval: str | None = None
        self._module: Any = None
        self._reset_run_counters()

    # ------------------------------------------------------------------------------ plumbing

    def _reset_run_counters(self) -> None:
        self._start_time = time.time()
        self._initial_global_step = 0
        self._initial_tokens = 0
        self._total_loss_scalar = 0.0
        self._micro_done = 0
        self._group_index = 0
        self._updates_per_epoch = 1
        self._skip_groups = 0
        self._rng_restore: str | None = None
        self._current_eval_index: int | None = None

    @property
    def state_key(self) -> str:
        return "HFFlowCallback"

    @property
    def epoch_stop_requested(self) -> bool:
        return self._epoch_stop

    def take_validation_request(self) -> bool:
        requested, self._validation_requested = self._validation_requested, False
        return requested

    def take_eval_on_start(self) -> bool:
        pending, self._eval_on_start_pending = self._eval_on_start_pending, False
        return pending

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.handler.add_callback(callback)
        self._refresh_stateful()

    def _refresh_stateful(self) -> None:
        stateful = [cb for cb in self.handler.callbacks + [self.control] if isinstance(cb, ExportableState)]
        fresh = TrainerState(stateful_callbacks=stateful).stateful_callbacks
        for name, value in fresh.items():
            self.state.stateful_callbacks.setdefault(name, value)

    def _event(self, name: str, **kwargs: Any) -> None:
        self.control = getattr(self.handler, name)(self.args, self.state, self.control, **kwargs)

    def _module_event(self, name: str) -> None:
        self._event(name)

    def _use_printer(self) -> bool:
        return bool(self.args.disable_tqdm)

    # ----------------------------------------------------------------------------- lifecycle

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module
        pl_module.hf_events = self._module_event  # type: ignore[assignment]
        self.handler.model = getattr(pl_module, "model", pl_module)
        self.handler.processing_class = getattr(pl_module, "processing_class", None)
        if self._use_printer() and not any(isinstance(cb, PrinterCallback) for cb in self.handler.callbacks):
            self.handler.add_callback(PrinterCallback)
        if stage == "fit":
            install_epoch_loop(trainer)
        self.state.is_local_process_zero = trainer.local_rank == 0
        self.state.is_world_process_zero = trainer.global_rank == 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        plan = pl_module.train_plan
        args = self.args
        if self.resume is not None:
            self.state = self.resume["state"]
            if self.state.best_model_checkpoint is not None and not _isdir(self.state.best_model_checkpoint):
                self.state.best_model_checkpoint = None
            self._restore_callback_states()
        else:
            self.state = TrainerState(
                stateful_callbacks=[cb for cb in self.handler.callbacks + [self.control] if isinstance(cb, ExportableState)]
            )
            self.state.train_batch_size = args.per_device_train_batch_size
            for kind in ("logging", "eval", "save"):
                value = getattr(args, f"{kind}_steps")
                if value is not None:
                    setattr(self.state, f"{kind}_steps", resolve_interval_steps(value, plan.max_steps))
        self.state.max_steps = plan.max_steps
        self.state.num_train_epochs = plan.num_train_epochs
        self.state.is_local_process_zero = trainer.local_rank == 0
        self.state.is_world_process_zero = trainer.global_rank == 0
        trainer.fit_loop.epoch_loop.max_steps = plan.max_steps
        trainer.fit_loop.max_epochs = -1 if plan.num_train_epochs == sys.maxsize else plan.num_train_epochs
        self._reset_run_counters()
        self._updates_per_epoch = plan.updates_per_epoch
        self._initial_global_step = self.state.global_step
        self._initial_tokens = self.state.num_input_tokens_seen
        pl_module.last_logged_step = self.state.global_step
        if self.resume is not None:
            epochs, skip = resume_position(
                self.state.global_step,
                updates_per_epoch=plan.updates_per_epoch,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                ignore_data_skip=args.ignore_data_skip,
            )
            _fast_forward_loops(trainer, self.state.global_step, epochs)
            self._skip_groups = skip
            sampler = getattr(pl_module.trainer.datamodule, "train_batch_sampler", None)
            if skip and sampler is not None:
                sampler.skip_groups_once(skip)
            self._rng_restore = "batch" if skip else "epoch"
        self.handler.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.handler.lr_scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        self.handler.train_dataloader = trainer.train_dataloader
        self._event("on_train_begin")
        self._eval_on_start_pending = bool(args.eval_on_start)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_stop = False
        self._epoch_finished = False
        self._group_index = self._skip_groups
        self._micro_done = self._skip_groups * self.args.gradient_accumulation_steps
        self._skip_groups = 0
        if self._rng_restore == "epoch":
            self._restore_rng()
        self._event("on_epoch_begin")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._rng_restore == "batch":
            self._restore_rng()
        self._event("on_step_begin")

    def _restore_rng(self) -> None:
        self._rng_restore = None
        if self.resume is not None and self.checkpointer is not None:
            self.checkpointer.restore_rng(self.resume["dir"])

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.state.global_step = trainer.global_step
        self._micro_done += len(batch) if isinstance(batch, list) else 1
        self._group_index += 1
        steps_in_epoch = pl_module.train_plan.steps_in_epoch
        self.state.epoch = epoch_progress(trainer.current_epoch, min(self._micro_done, steps_in_epoch), steps_in_epoch)
        self._event("on_step_end")
        self._after_eval = None
        self._maybe_log(pl_module, trainer)
        if self.control.should_evaluate:
            self._request_validation("step")
            return
        self._maybe_save(trainer, pl_module)
        self._maybe_end_epoch(trainer, pl_module)

    def _epoch_ends(self) -> bool:
        return (
            self._group_index >= self._updates_per_epoch
            or self.state.global_step >= self.state.max_steps
            or self.control.should_training_stop
            or self.control.should_epoch_stop
        )

    def _maybe_end_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """transformers' ``on_epoch_end`` and its log/evaluate/save, when the step just done ended the epoch."""
        if self._epoch_finished or not self._epoch_ends():
            self._apply_stop(trainer)
            return
        self._epoch_finished = True
        self._event("on_epoch_end")
        self._maybe_log(pl_module, trainer)
        if self.control.should_evaluate:
            self._request_validation("epoch")
            return
        self._maybe_save(trainer, pl_module)
        self._apply_stop(trainer)

    def _apply_stop(self, trainer: pl.Trainer) -> None:
        if self.control.should_training_stop:
            trainer.should_stop = True
        if self.control.should_epoch_stop and not self.control.should_training_stop:
            self._epoch_stop = True

    def _request_validation(self, phase: str) -> None:
        self._validation_requested = True
        self._after_eval = phase

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch ran out of data before the planned number of steps (unsized data): end it now.
        if not self._epoch_finished:
            self._epoch_finished = True
            self._event("on_epoch_end")
            self._maybe_log(pl_module, trainer)
            self._maybe_save(trainer, pl_module)
            self._apply_stop(trainer)

    # ------------------------------------------------------------------------------- logging

    def _maybe_log(self, pl_module: Any, trainer: pl.Trainer) -> None:
        if not (self.control.should_log and self.state.global_step > pl_module.last_logged_step):
            return
        window = self.state.global_step - pl_module.last_logged_step
        loss = pl_module.pop_train_loss()
        logs = hf_state.train_log_entry(
            loss=loss / window, grad_norm=pl_module.last_grad_norm(), learning_rate=pl_module.last_learning_rate()
        )
        self._total_loss_scalar += loss
        self._store_flos(pl_module)
        self.hf_log(logs, trainer, start_time=self._start_time)
        if trainer.progress_bar_callback is not None:
            # Host tensors: Lightning reads progress-bar values back at every batch end, which on a
            # device tensor would be a host-device synchronisation per step.
            for name, key in (("loss", "loss"), ("lr", "learning_rate")):
                pl_module.log(name, torch.tensor(float(logs[key])), prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def _tracks_tokens(self) -> bool:
        return str(self.args.include_num_input_tokens_seen) not in ("no", "False")

    def _store_flos(self, pl_module: Any) -> None:
        """``Trainer.store_flos``: add this window's FLOPs, summed over ranks. A collective."""
        if pl_module is not None and pl_module._trainer is not None:
            self.state.total_flos += pl_module.pop_flos()

    def _sync_tokens(self) -> None:
        module = self._module
        if self._tracks_tokens() and module is not None and module._trainer is not None and module.trainer.training:
            self.state.num_input_tokens_seen += module.pop_input_tokens()

    def hf_log(self, logs: dict[str, float], trainer: pl.Trainer | None = None, start_time: float | None = None) -> dict[str, Any]:
        """``Trainer.log``: append to ``log_history``, fire ``on_log``, send to Lightning's loggers. A collective."""
        self._sync_tokens()
        hf_state.append_log(
            self.state,
            logs,
            num_input_tokens_seen=self._tracks_tokens(),
            start_time=start_time,
            initial_num_input_tokens_seen=self._initial_tokens,
        )
        self._event("on_log", logs=logs)
        if trainer is not None:
            self._to_loggers(trainer, logs)
            if not self._use_printer() and trainer.is_global_zero and trainer.progress_bar_callback is not None:
                self._print_logs(logs)
        return logs

    def _to_loggers(self, trainer: pl.Trainer, logs: dict[str, Any]) -> None:
        from transformers.integrations.integration_utils import rewrite_logs

        scalars = {k: v for k, v in rewrite_logs(logs).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=self.state.global_step)

    @staticmethod
    def _print_logs(logs: dict[str, Any]) -> None:
        # transformers' ProgressCallback.on_log: floats as .4g, without total_flos, above the bar.
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}
        from tqdm.auto import tqdm

        tqdm.write(str(shown))

    # ---------------------------------------------------------------------------- evaluation

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._current_eval_index = None
        self.handler.eval_dataloader = trainer.val_dataloaders
        if not trainer.training and trainer.state.fn != "fit":
            self.last_eval_metrics = {}

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._finish_datasets_before(trainer, pl_module, "validate", dataloader_idx)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._event("on_prediction_step")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_datasets_before(trainer, pl_module, "validate", None)

    def _finish_datasets_before(self, trainer: pl.Trainer, pl_module: Any, stage: str, index: int | None) -> None:
        for pending in pl_module.pending_eval_indices():
            if index is not None and pending >= index:
                continue
            finished = pl_module.finish_eval(stage, pending)
            if finished is None:
                continue
            prefix, result, start = finished
            if stage == "validate":
                self._record_evaluation(trainer, pl_module, prefix, result, start)
            else:
                self._record_prediction(trainer, pl_module, prefix, result, start)

    def _record_evaluation(self, trainer: pl.Trainer, pl_module: Any, prefix: str, result: Any, start: float) -> None:
        metrics = result.metrics
        metrics.update(
            hf_state.eval_speed_metrics(
                prefix,
                start,
                num_samples=result.num_samples,
                eval_batch_size=self.args.per_device_eval_batch_size,
                world_size=trainer.world_size,
            )
        )
        self.hf_log(metrics, trainer)
        self._event("on_evaluate", metrics=metrics)
        self.last_eval_metrics.update(metrics)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                pl_module.log(key, float(value), logger=False, on_step=False, on_epoch=True, add_dataloader_idx=False)

    def _record_prediction(self, trainer: pl.Trainer, pl_module: Any, prefix: str, result: Any, start: float) -> None:
        result.metrics.update(
            hf_state.eval_speed_metrics(
                prefix,
                start,
                num_samples=result.num_samples,
                eval_batch_size=self.args.per_device_eval_batch_size,
                world_size=trainer.world_size,
            )
        )
        self.last_predictions.append((prefix, result))
        self._event("on_predict", metrics=result.metrics)
        for key, value in result.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                pl_module.log(key, float(value), logger=False, on_step=False, on_epoch=True, add_dataloader_idx=False)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        metrics = dict(self.last_eval_metrics)
        self.last_eval_metrics = {}
        phase, self._after_eval = self._after_eval, None
        if phase is None:  # eval_on_start: no best-metric tracking, no scheduler step (§4.6)
            return
        new_best = hf_state.update_best_metric(
            self.state,
            metrics,
            metric_for_best_model=self.args.metric_for_best_model,
            greater_is_better=self.args.greater_is_better,
            save_strategy=hf_state.strategy_name(self.args.save_strategy),
        )
        if self.args.metric_for_best_model is not None:
            pl_module.plateau_step(metrics[hf_state.metric_name_for_best(self.args.metric_for_best_model)])
        elif _has_plateau(pl_module):
            pl_module.plateau_step(metrics["eval_loss"])
        if hf_state.strategy_name(self.args.save_strategy) == "best":
            self.control.should_save = new_best
        self._maybe_save(trainer, pl_module)
        if phase == "step":
            self._maybe_end_epoch(trainer, pl_module)
        else:
            self._apply_stop(trainer)

    # ------------------------------------------------------------------------------- testing

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_predictions = []
        self.handler.eval_dataloader = trainer.test_dataloaders

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._finish_datasets_before(trainer, pl_module, "test", dataloader_idx)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._event("on_prediction_step")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_datasets_before(trainer, pl_module, "test", None)

    # -------------------------------------------------------------------------------- saving

    def _maybe_save(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.control.should_save:
            return
        if self.checkpointer is None:
            raise RuntimeError(
                "A save was requested (save_strategy or a TrainerCallback) but the trainer has no HFCheckpoint callback; "
                "build it with hf_lightning.build_trainer or add hf_lightning.callbacks.HFCheckpoint."
            )
        self._store_flos(pl_module)
        self.checkpointer.save(trainer, pl_module)
        self._event("on_save")

    # ------------------------------------------------------------------------------ the end

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        if not self.args.skip_memory_metrics:
            metrics.update(_memory_metrics())
        self.hf_log(metrics, trainer)
        if self.checkpointer is not None:
            self.checkpointer.finish_training(trainer, pl_module, self.state)
        self._event("on_train_end")
        from transformers.trainer_utils import TrainOutput

        self.last_train_output = TrainOutput(self.state.global_step, train_loss, metrics)
        self.resume = None

    def _restore_callback_states(self) -> None:
        if not self.args.restore_callback_states_from_checkpoint:
            return
        stored = self.state.stateful_callbacks or {}
        originals = self.handler.callbacks + [self.control]
        missing = []
        for name, data in stored.items():
            entries = data if isinstance(data, list) else [data]
            matching = [cb for cb in originals if type(cb).__name__ == name]
            if not matching:
                missing.append(name)
                continue
            for callback, entry in zip(matching, entries):
                rebuilt = type(callback)(**entry.get("args", {}))
                for attribute, value in entry.get("attributes", {}).items():
                    setattr(rebuilt, attribute, value)
                if isinstance(callback, TrainerControl):
                    self.control = rebuilt
                else:
                    index = self.handler.callbacks.index(callback)
                    self.handler.callbacks[index] = rebuilt
        if missing:
            log.warning("Checkpoint included callbacks not in the current configuration, ignored: %s", ", ".join(missing))

    # -------------------------------------------------------------------------- checkpointing

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"trainer_state": _state_dict(self.state)}

    def snapshot_state(self) -> TrainerState:
        """The ``TrainerState`` to write, with stateful callbacks refreshed as transformers does."""
        for callback in [cb for cb in self.handler.callbacks + [self.control] if isinstance(cb, ExportableState)]:
            name = type(callback).__name__
            if isinstance(self.state.stateful_callbacks.get(name), list):
                self.state.stateful_callbacks[name].append(callback.state())
            else:
                self.state.stateful_callbacks[name] = callback.state()
        return self.state


def _state_dict(state: TrainerState) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(state)


def _isdir(path: str) -> bool:
    import os

    return os.path.isdir(path)


def _has_plateau(pl_module: Any) -> bool:
    from ..optim import is_plateau_scheduler

    try:
        return is_plateau_scheduler(pl_module.lr_schedulers())
    except Exception:
        return False


def _fast_forward_loops(trainer: pl.Trainer, global_step: int, epochs_trained: int) -> None:
    """Set Lightning's progress counters to a transformers checkpoint's position.

    An HF folder carries no Lightning loop state, so Lightning starts at step 0, epoch 0. Moving
    its counters makes ``trainer.global_step``, ``current_epoch``, the sampler epochs and
    ``max_steps`` agree with the resumed ``TrainerState``.
    """
    fit_loop = trainer.fit_loop
    for progress in (fit_loop.epoch_progress.total, fit_loop.epoch_progress.current):
        progress.ready = progress.started = progress.processed = progress.completed = epochs_trained
    steps = fit_loop.epoch_loop.manual_optimization.optim_step_progress.total
    steps.ready = steps.completed = global_step
    fit_loop.epoch_loop._batches_that_stepped = global_step


def _memory_metrics() -> dict[str, int]:
    metrics: dict[str, int] = {}
    if torch.cuda.is_available():
        metrics["train_mem_gpu_peaked_delta"] = int(torch.cuda.max_memory_allocated())
    try:
        import resource

        metrics["train_mem_cpu_peaked_delta"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    except ImportError:  # pragma: no cover
        pass
    return metrics

