"""Lightning's loops as hf_lightning runs them: the training epoch loop and the validate/test loop, switched in place.

The training epoch loop leaves validation and the end of an epoch to the flow callback (transformers decides
those after each optimizer step); the validate/test loop returns transformers' metrics; a resumed HF checkpoint
moves Lightning's progress counters to its position. The loops take their cues from a ``LoopDriver`` callback
(``HFFlowCallback``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from typing_extensions import override

__all__ = ["LoopDriver", "install_epoch_loop", "install_evaluation_loops", "fast_forward_loops"]


class LoopDriver(Callback):
    """What the loops ask of the callback that drives them (``HFFlowCallback``)."""

    loop_results: list[dict[str, Any]]
    """Metrics of each dataloader of the validate/test loop running now (``_HFEvaluationLoop`` returns them)."""

    @property
    def epoch_stop_requested(self) -> bool:
        """Whether the epoch must end after this batch (a TrainerCallback asked for it)."""
        return False


class _HFTrainingEpochLoop(_TrainingEpochLoop):
    """Lightning's training epoch loop, leaving validation and the end of an epoch to the flow callback.

    Lightning validates on batch counts; transformers after the decisions of each optimizer step (user
    callbacks can ask for one). The flow callback runs those evaluations itself; this loop only stops
    scheduling its own.
    """

    def _flow(self) -> LoopDriver | None:
        for callback in self.trainer.callbacks:
            if isinstance(callback, LoopDriver):
                return callback
        return None

    @override
    def _build_kwargs(self, kwargs: Any, batch: Any, batch_idx: int) -> Any:
        # Lightning inspects training_step's signature (inspect.getfullargspec, ~35 us) on every batch; the
        # answer is the same for as long as training_step is the same function.
        step = self.trainer.lightning_module.training_step
        key = getattr(step, "__func__", step)
        cached = self.__dict__.get("_step_kwargs_for")
        if cached is None or cached[0] is not key:
            cached = self._step_kwargs_for = (key, is_param_in_hook_signature(step, "batch_idx", min_args=2))
        kwargs["batch"] = batch
        if cached[1]:
            kwargs["batch_idx"] = batch_idx
        return kwargs

    @override
    def _should_check_val_fx(self, data_fetcher: Any) -> bool:
        if self._flow() is None:
            return super()._should_check_val_fx(data_fetcher)
        return False

    @property
    def done(self) -> bool:
        flow = self._flow()
        if flow is not None and flow.epoch_stop_requested:
            return True
        return super().done


def install_epoch_loop(trainer: pl.Trainer) -> None:
    """Switch ``trainer.fit_loop.epoch_loop`` to ``_HFTrainingEpochLoop`` (same state, fewer decisions)."""
    loop = trainer.fit_loop.epoch_loop
    if type(loop) is _TrainingEpochLoop:
        loop.__class__ = _HFTrainingEpochLoop


class _HFEvaluationLoop(_EvaluationLoop):
    """Lightning's validate/test loop, returning the metrics of transformers' evaluation.

    ``lightning.Trainer.validate``/``test`` return what was logged for the loggers; hf_lightning writes the evaluation
    record to the loggers itself (under transformers' names, once), so the loop adds each dataloader's metrics
    (``eval_loss``, ``eval_<metric>``, ...) to what it returns.
    """

    @override
    def run(self) -> list[dict[str, Any]]:
        verbose, self.verbose = self.verbose, False  # Lightning would print its table before the metrics are added
        try:
            outputs = super().run()
        finally:
            self.verbose = verbose
        flow = next((cb for cb in self.trainer.callbacks if isinstance(cb, LoopDriver)), None)
        if flow is not None and flow.loop_results:
            recorded, flow.loop_results = flow.loop_results, []
            outputs = list(outputs) + [{} for _ in range(len(recorded) - len(outputs))]
            outputs = [{**out, **metrics} for out, metrics in zip(outputs, recorded)] + outputs[len(recorded):]
        if verbose and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._print_results(outputs, self._stage.value)
        return outputs


def install_evaluation_loops(trainer: pl.Trainer) -> None:
    """Switch ``trainer.validate_loop``/``test_loop`` to ``_HFEvaluationLoop`` (same state, transformers' metrics returned)."""
    for loop in (trainer.validate_loop, trainer.test_loop):
        if type(loop) is _EvaluationLoop:
            loop.__class__ = _HFEvaluationLoop


def fast_forward_loops(trainer: pl.Trainer, global_step: int, epochs_trained: int) -> None:
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
