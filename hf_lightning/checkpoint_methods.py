"""transformers.Trainer's checkpoint methods as hf_lightning implements them: what a subclass's ``super()`` reaches.

transformers' loop calls ``_maybe_log_save_evaluate`` (which decides the saves), ``_save_checkpoint`` and the ``_load_*``
methods at fixed moments of a run. hf_lightning calls
a subclass's override at the same moments (``private_overrides.ROUTED``); without one, Lightning's checkpoint restore
and hf_lightning's callbacks do the same work directly. The bodies here are where the override's ``super()`` call lands.
Called outside ``train()`` (a test, a script), a ``_load_*`` method is transformers' own, except ``_load_from_checkpoint``,
which reads the weights with hf_lightning's reader (safetensors, or ``.bin`` with ``weights_only=True``).
"""

from __future__ import annotations

from typing import Any

from . import hf_format
from .callbacks.checkpoint import HFCheckpoint, load_weights_into
from .callbacks.flow import HFFlowCallback
from .callbacks.reporting import trainer_logger

__all__ = ["CheckpointMethods"]


class CheckpointMethods:
    """``hf_lightning.Trainer``'s ``_maybe_log_save_evaluate``, ``_save_checkpoint`` and ``_load_*`` methods (a mixin
    ahead of transformers.Trainer).

    Reads the facade's ``lightning_trainer``, ``module``, ``model`` and ``state``.
    """

    lightning_trainer: Any
    module: Any
    model: Any
    state: Any

    def _callback_of(self, kind: type) -> Any:
        """The running Lightning trainer's callback of type ``kind`` (None outside ``train()``)."""
        trainer = self.lightning_trainer
        return None if trainer is None else next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)

    def _training(self) -> bool:
        """Inside ``train()``: the ``_load_*`` methods then work on the running fit; called on their own they are transformers'."""
        trainer = self.lightning_trainer
        return trainer is not None and self.module is not None and bool(trainer.training) and self._callback_of(HFFlowCallback) is not None

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write ``checkpoint-{global_step}`` now (what transformers' JIT checkpointing calls), atomically, on every rank."""
        trainer, module = self.lightning_trainer, self.module
        flow = self._callback_of(HFFlowCallback)
        if flow is None or module is None or flow.host is not self or not trainer.training:
            raise RuntimeError("`_save_checkpoint` writes a checkpoint of the running training; call it during `train()`.")
        flow._save(trainer, module)

    def _maybe_log_save_evaluate(
        self,
        tr_loss: Any,
        grad_norm: Any,
        model: Any,
        trial: Any,
        epoch: float,
        ignore_keys_for_eval: list[str] | None,
        start_time: float,
        learning_rate: float | None = None,
    ) -> None:
        """Log, evaluate and save as ``self.control`` asks, after each optimizer step and at each epoch end.

        hf_lightning calls a subclass's override there with transformers' arguments, and its ``super()`` call lands
        here. The arguments are the run's own: ``tr_loss`` is the loss summed since the last log (this body resets
        it, as transformers' does), and the counters are ``self._globalstep_last_logged`` and ``self._total_loss_scalar``.

        Args:
            tr_loss: the loss summed since the last log (a tensor on the device).
            grad_norm: the last optimizer step's gradient norm.
            model: the model being trained.
            trial: the hyperparameter-search trial, or None.
            epoch: the epoch being trained.
            ignore_keys_for_eval: output keys that evaluation ignores.
            start_time: when ``train()`` started (``time.time()``).
            learning_rate: the learning rate of the last optimizer step.
        """
        flow = self._callback_of(HFFlowCallback)
        if flow is None or flow.host is not self or not self._training():
            raise RuntimeError("`_maybe_log_save_evaluate` logs, evaluates and saves the running training; it runs during `train()`.")
        flow.log_save_evaluate_for_host(self.lightning_trainer, self.module)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load the weights (or PEFT adapter) of ``resume_from_checkpoint`` into the model, as transformers does.

        On resume hf_lightning loads the weights while Lightning restores the checkpoint; a subclass's override is
        called there instead (sentence-transformers loads its own model folder), and its ``super()`` call lands here.

        Args:
            resume_from_checkpoint: the ``checkpoint-N`` folder to load.
            model: the model to load into (None: the model being trained).
        """
        if (model is not None and model is not self.model) or not self._training():
            hf_format.load_weights_into_model(self.model if model is None else model, hf_format.read_weights(resume_from_checkpoint))
            return
        load_weights_into(self.lightning_trainer, self.module, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """Load the best checkpoint's weights (``load_best_model_at_end``), after the training summary, as transformers.

        A subclass's override runs instead (sentence-transformers records the best step in its model card), and its
        ``super()`` call lands here. Called on every rank.
        """
        if not self._training():
            return super()._load_best_model()  # type: ignore[misc]
        trainer_logger().info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        load_weights_into(self.lightning_trainer, self.module, self.state.best_model_checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Set the random generators from this rank's ``rng_state*.pth`` of the checkpoint the run resumes from.

        hf_lightning calls it where transformers does (after the skipped batches of the resumed epoch, or at its start);
        a subclass's override is called there instead, and its ``super()`` call lands here.

        Args:
            checkpoint: the ``checkpoint-N`` folder the run resumes from (None: nothing to restore).
        """
        if not self._training():
            return super()._load_rng_state(checkpoint)  # type: ignore[misc]
        checkpointer = self._callback_of(HFCheckpoint)
        if checkpoint is not None and checkpointer is not None:
            checkpointer.restore_rng(checkpoint)

    def _load_scaler(self, checkpoint: str | None) -> None:
        """Nothing to load: Lightning has restored the gradient scaler from ``checkpoint`` before the loop.

        A subclass's override is called when a resumed run starts, right after ``_load_optimizer_and_scheduler``.

        Args:
            checkpoint: the ``checkpoint-N`` folder the run resumes from.
        """
        if not self._training():
            super()._load_scaler(checkpoint)  # type: ignore[misc]

    def _load_callback_state(self) -> None:
        """Rebuild the stateful TrainerCallbacks from the resumed ``TrainerState`` (``restore_callback_states_from_checkpoint``).

        Called on resume right after the state is read, as transformers does; a subclass's override is called there
        instead, and its ``super()`` call lands here.
        """
        if not self._training():
            return super()._load_callback_state()  # type: ignore[misc]
        self._callback_of(HFFlowCallback)._load_callback_state()

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Nothing to load: Lightning has restored ``optimizer.pt``/``scheduler.pt`` from ``checkpoint`` before the loop.

        A subclass's override is called when a resumed run starts, after that restore and before ``on_train_begin``, as
        transformers calls it (TRL's GRPOTrainer restores its entropy controller there); its ``super()`` call lands here.

        Args:
            checkpoint: the ``checkpoint-N`` folder the run resumes from (None: a fresh run).
        """
        if not self._training():
            super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
