"""``HFCheckpoint``: transformers' ``_save_checkpoint`` on Lightning, atomically.

The flow callback decides *when*; this callback writes ``checkpoint-{global_step}``:
Lightning gathers and ``HFCheckpointIO`` writes the rank-0 files into a hidden temporary folder,
every rank adds its RNG file, rank 0 writes ``trainer_state.json``, and only then is the folder
renamed into place and older ones rotated. A kill at any instant leaves either no new folder or
a complete one; the leftovers of a killed save are removed at the next start.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from transformers import TrainerState, TrainingArguments
from typing_extensions import override

from .. import distributed, hf_format
from ..checkpoint_io import EXTRAS_KEY
from ..state import strategy_name

__all__ = ["HFCheckpoint"]

log = logging.getLogger(__name__)


class HFCheckpoint(Checkpoint):
    """Writes transformers ``checkpoint-N`` folders when the flow callback asks, and handles resume.

    Args:
        args: the transformers TrainingArguments (``output_dir``, ``save_only_model``, ``save_total_limit``, ...).
    """

    def __init__(self, args: TrainingArguments) -> None:
        self.args = args
        self.flow: Any = None

    @property
    def state_key(self) -> str:
        return "HFCheckpoint"

    @property
    def output_dir(self) -> str:
        return str(self.args.output_dir)

    @property
    def last_model_path(self) -> str | None:
        """The newest complete ``checkpoint-N`` in ``output_dir``; what ``ckpt_path="last"`` resumes from."""
        return hf_format.find_last_checkpoint(self.output_dir)

    @property
    def best_model_path(self) -> str | None:
        return None if self.flow is None else self.flow.state.best_model_checkpoint

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from .flow import HFFlowCallback

        for callback in trainer.callbacks:
            if isinstance(callback, HFFlowCallback):
                self.flow = callback
                callback.checkpointer = self
        if stage == "fit" and trainer.is_global_zero:
            removed = hf_format.remove_incomplete_checkpoints(self.output_dir)
            if removed:
                log.warning("Removed incomplete checkpoint folders left by an interrupted save: %s", removed)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        extras = checkpoint.get(EXTRAS_KEY) or {}
        if self.flow is None or "source_dir" not in extras:
            return
        state: TrainerState | None = extras.get("trainer_state")
        distributed.warn_on_world_size_change(extras["source_dir"], trainer.world_size)
        if state is not None:
            self.flow.resume = {"state": state, "dir": extras["source_dir"]}
            _warn_on_changed_args(self.args, state)

    # ------------------------------------------------------------------------------- saving

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """``Trainer._save_checkpoint``. Call on every rank; returns the final folder."""
        args = self.args
        step = trainer.global_step
        final = os.path.join(self.output_dir, hf_format.checkpoint_name(step))
        tmp = os.path.join(self.output_dir, hf_format.temporary_name(step))
        strategy = trainer.strategy
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        strategy.barrier("hf_checkpoint_tmp")
        trainer.save_checkpoint(tmp, weights_only=bool(args.save_only_model))
        state = self.flow.state
        if strategy_name(args.save_strategy) in ("steps", "epoch", "best") and state.best_global_step:
            best = os.path.join(self.output_dir, hf_format.checkpoint_name(state.best_global_step))
            if state.best_global_step == step or os.path.exists(best):
                state.best_model_checkpoint = best
        if not args.save_only_model:
            os.makedirs(tmp, exist_ok=True)
            distributed = trainer.world_size > 1
            hf_format.save_torch(
                hf_format.capture_rng_state(distributed),
                os.path.join(tmp, hf_format.rng_file_name(trainer.world_size, trainer.global_rank)),
            )
        if trainer.is_global_zero:
            hf_format.write_trainer_state(self.flow.snapshot_state(), tmp)
        strategy.barrier("hf_checkpoint_written")
        if trainer.is_global_zero:
            hf_format.publish_checkpoint(tmp, final)
            hf_format.rotate_checkpoints(
                output_dir=self.output_dir,
                save_total_limit=args.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=True,
            )
        strategy.barrier("hf_checkpoint_published")
        return final

    def restore_rng(self, checkpoint_dir: str) -> None:
        trainer = self.flow._module.trainer if self.flow is not None and self.flow._module is not None else None
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        path = os.path.join(checkpoint_dir, hf_format.rng_file_name(world, rank))
        if not hf_format.restore_rng_state(path, distributed=world > 1):
            log.info("No RNG file %s; reproducibility of the resumed run is not guaranteed.", path)

    # -------------------------------------------------------------------------- end of train

    def finish_training(self, trainer: pl.Trainer, pl_module: Any, state: TrainerState) -> None:
        """After the summary log: load the best model, then the ``save_total_limit=1`` rule (§1.7)."""
        if self.args.load_best_model_at_end and state.best_model_checkpoint is not None:
            load_weights_into(trainer, pl_module, state.best_model_checkpoint)
        if trainer.is_global_zero and state.best_model_checkpoint is not None and self.args.save_total_limit == 1:
            for checkpoint in hf_format.sort_checkpoints(self.output_dir, best_model_checkpoint=state.best_model_checkpoint):
                if not os.path.samefile(checkpoint, state.best_model_checkpoint):
                    shutil.rmtree(checkpoint, ignore_errors=True)
        trainer.strategy.barrier("hf_finish_training")


def load_weights_into(trainer: pl.Trainer | None, pl_module: Any, checkpoint_dir: str) -> None:
    """Load a checkpoint's weights into the module's model (non-strict, tied weights re-tied), like transformers."""
    if trainer is not None and distributed.is_sharded(trainer.strategy):
        distributed.load_full_weights(trainer.strategy, checkpoint_dir)  # collective, into the shards
        return
    state_dict = hf_format.load_model_state_dict(checkpoint_dir)
    model = pl_module.model
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        tie = getattr(model, "tie_weights", None)
        if callable(tie):
            tie()
        log.info("Missing keys when loading %s (tied weights re-tied): %s", checkpoint_dir, result.missing_keys)
    if result.unexpected_keys:
        log.warning("Unexpected keys in %s: %s", checkpoint_dir, result.unexpected_keys)


def export_model(trainer: pl.Trainer | None, pl_module: Any, output_dir: str) -> None:
    """``Trainer.save_model``: weights + config, tokenizer files and ``training_args.bin`` (rank 0 writes)."""
    datamodule = trainer.datamodule if trainer is not None else None
    collator = getattr(datamodule, "data_collator", None)
    if trainer is not None and (trainer.world_size > 1 or distributed.is_sharded(trainer.strategy)):
        state_dict = distributed.full_model_state_dict(trainer.strategy, pl_module)  # gathered under FSDP
        if trainer.is_global_zero:
            hf_format.save_model_files(
                output_dir, pl_module.model, state_dict=state_dict, processing_class=pl_module.processing_class, data_collator=collator, args=pl_module.args
            )
        trainer.strategy.barrier("hf_save_model")
        return
    hf_format.save_model_files(
        output_dir, pl_module.model, processing_class=pl_module.processing_class, data_collator=collator, args=pl_module.args
    )


def _warn_on_changed_args(args: TrainingArguments, state: TrainerState) -> None:
    from transformers.trainer_utils import compare_trainer_and_checkpoint_args

    compare_trainer_and_checkpoint_args(args, state)
