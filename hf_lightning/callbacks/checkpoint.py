"""``HFCheckpoint``: transformers' ``_save_checkpoint`` on Lightning, atomically, optionally in the background.

The flow callback decides *when*; this callback writes ``checkpoint-{global_step}``:
Lightning gathers and ``HFCheckpointIO`` writes the rank-0 files into a hidden temporary folder,
every rank adds its RNG file, rank 0 writes ``trainer_state.json``, and only then is the folder
renamed into place and older ones rotated. A kill at any instant leaves either no new folder or
a complete one; the leftovers of a killed save are removed at the next start.

With ``async_save=True`` training is blocked only while the state is copied to CPU memory; a
background thread writes the files, publishes the folder and rotates, in that order, one save at a
time.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
from lightning_utilities.core.apply_func import apply_to_collection
from transformers import TrainerState, TrainingArguments
from typing_extensions import override

from .. import distributed, hf_format
from ..checkpoint_io import EXTRAS_KEY
from ..state import strategy_name

__all__ = ["HFCheckpoint", "install_checkpoint_connector", "export_model", "load_weights_into", "snapshot_state"]

log = logging.getLogger(__name__)


class HFCheckpoint(Checkpoint):
    """Writes transformers ``checkpoint-N`` folders when the flow callback asks, and handles resume.

    Args:
        args: the transformers TrainingArguments (``output_dir``, ``save_only_model``, ``save_total_limit``, ...).
        async_save: write checkpoints in a background thread; training waits only for a copy of the
            state in CPU memory (and for the previous save, if it is still being written).
    """

    def __init__(self, args: TrainingArguments, *, async_save: bool = False) -> None:
        self.args = args
        self.async_save = bool(async_save)
        self.flow: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._resume_rng: dict[str, Any] = {}

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
        if self.async_save and not _rank_zero_writes(trainer.strategy):
            raise ValueError(
                f"`async_save=True` needs a strategy whose checkpoint files are all written by rank 0 through the "
                f"CheckpointIO (single device, DDP); {type(trainer.strategy).__name__} writes its own. "
                "Use async_save=False with this strategy."
            )
        if stage == "fit" and trainer.is_global_zero:
            removed = hf_format.remove_incomplete_checkpoints(self.output_dir)
            if removed:
                log.warning("Removed incomplete checkpoint folders left by an interrupted save: %s", removed)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Let an asynchronous save that is under way finish (it was complete in memory), but do not mask `exception`.
        try:
            self.wait()
        except Exception as error:  # noqa: BLE001
            log.error("The asynchronous checkpoint save failed too: %s", error)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        extras = checkpoint.get(EXTRAS_KEY) or {}
        if self.flow is None or "source_dir" not in extras:
            return
        state: TrainerState | None = extras.get("trainer_state")
        distributed.warn_on_world_size_change(extras["source_dir"], trainer.world_size)
        if state is not None:
            self.flow.resume = {"state": state, "dir": extras["source_dir"]}
            self._resume_rng = dict(extras.get("rng_states") or {})
            _warn_on_changed_args(self.args, state)
        else:
            log.warning(
                "%s has no %s: training starts at step 0 from its weights (and optimizer/scheduler, if present), "
                "as transformers does.", extras["source_dir"], hf_format.TRAINER_STATE_NAME,
            )

    # ------------------------------------------------------------------------------- saving

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """``Trainer._save_checkpoint``. Call on every rank; returns the final folder.

        Steps: (1) the rank-0 files (model, tokenizer, training_args, optimizer, scheduler, scaler) go
        to ``.tmp-checkpoint-N`` through Lightning and ``HFCheckpointIO``; (2) ``best_model_checkpoint``
        is updated; (3) every rank writes its RNG file; (4) rank 0 writes ``trainer_state.json``;
        (5) rank 0 renames the folder to ``checkpoint-N`` and rotates. With ``async_save``, (1), (4)
        and (5) run in the background on a copy of the state.
        """
        self.wait()  # the previous save is published before this one starts (rotation and best-model order)
        args = self.args
        step = trainer.global_step
        final = os.path.join(self.output_dir, hf_format.checkpoint_name(step))
        tmp = os.path.join(self.output_dir, hf_format.temporary_name(step))
        strategy = trainer.strategy
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        strategy.barrier("hf_checkpoint_tmp")
        weights_only = bool(args.save_only_model)
        if self.async_save:
            # What trainer.save_checkpoint does first; the write itself happens in the background.
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only)
            snapshot = snapshot_state(checkpoint) if trainer.is_global_zero else None
            del checkpoint
        else:
            host = getattr(pl_module, "hooks", None)
            if host is not None and saves_model_itself(host):
                # transformers' _save_checkpoint writes the model through save_model(output_dir, _internal_call=True);
                # a subclass's override does it here too (on every rank), into the folder being written.
                host.save_model(tmp, _internal_call=True)
                pl_module.model_written = True
            try:
                trainer.save_checkpoint(tmp, weights_only=weights_only)
            finally:
                pl_module.model_written = False
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
        state_json = _state_json(self.flow.snapshot_state()) if trainer.is_global_zero else ""
        strategy.barrier("hf_checkpoint_written")
        if trainer.is_global_zero:
            finish = _Publish(
                io=strategy.checkpoint_io,
                tmp=tmp,
                final=final,
                output_dir=self.output_dir,
                save_total_limit=args.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                state_json=state_json,
            )
            if self.async_save:
                self._pending = self._background().submit(finish, snapshot)
            else:
                finish(None)
        if not self.async_save:
            strategy.barrier("hf_checkpoint_published")
        return final

    def wait(self) -> None:
        """Block until an asynchronous save under way is published; re-raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _background(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_checkpoint")
        return self._executor

    def restore_rng(self, checkpoint_dir: str) -> None:
        """Set the generators from this rank's RNG file of the checkpoint (read when it was opened)."""
        trainer = self.flow._module.trainer if self.flow is not None and self.flow._module is not None else None
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        name = hf_format.rng_file_name(world, rank)
        states = self._resume_rng.get(name)
        if states is None:
            # transformers: an info log, and the run goes on (its data order is still exact: it depends on seed and epoch).
            log.info("No RNG file %s; reproducibility of the resumed run is not guaranteed.", os.path.join(checkpoint_dir, name))
            return
        hf_format.apply_rng_state(states, distributed=world > 1)

    # -------------------------------------------------------------------------- end of train

    def finish_training(self, trainer: pl.Trainer, pl_module: Any, state: TrainerState) -> None:
        """After the summary log: load the best model, then the ``save_total_limit=1`` rule (§1.7)."""
        self.wait()
        if self.args.load_best_model_at_end and state.best_model_checkpoint is not None:
            load_weights_into(trainer, pl_module, state.best_model_checkpoint)
        if trainer.is_global_zero and state.best_model_checkpoint is not None and self.args.save_total_limit == 1:
            for checkpoint in hf_format.sort_checkpoints(self.output_dir, best_model_checkpoint=state.best_model_checkpoint):
                if not os.path.samefile(checkpoint, state.best_model_checkpoint):
                    hf_format.delete_checkpoint(checkpoint)
        trainer.strategy.barrier("hf_finish_training")


def saves_model_itself(host: Any) -> bool:
    """The host overrides ``save_model`` (transformers' or hf_lightning's own are written by ``HFCheckpointIO``)."""
    import transformers

    from ..loops import LightningHooks
    from ..trainer import Trainer

    return type(host).save_model not in (transformers.Trainer.save_model, Trainer.save_model, LightningHooks.save_model)


def load_weights_into(trainer: pl.Trainer | None, pl_module: Any, checkpoint_dir: str) -> None:
    """Load a checkpoint's weights (or PEFT adapter) into the module's model, like ``_load_best_model``."""
    if trainer is not None and distributed.is_sharded(trainer.strategy):
        distributed.load_full_weights(trainer.strategy, checkpoint_dir)  # collective, into the shards
        return
    hf_format.load_weights_into_model(pl_module.model, hf_format.read_weights(checkpoint_dir))


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


class _Publish:
    """The end of a save on rank 0: (write the files,) ``trainer_state.json``, rename into place, rotate.

    A callable so the same code runs inline (synchronous saves) and on the background thread.
    """

    def __init__(self, *, io: Any, tmp: str, final: str, output_dir: str, save_total_limit: int | None,
                 best_model_checkpoint: str | None, state_json: str) -> None:
        self.io, self.tmp, self.final, self.output_dir = io, tmp, final, output_dir
        self.save_total_limit, self.best_model_checkpoint, self.state_json = save_total_limit, best_model_checkpoint, state_json

    def __call__(self, snapshot: dict[str, Any] | None) -> str:
        if snapshot is not None:
            self.io.save_checkpoint(snapshot, self.tmp)
        hf_format.write_trainer_state_json(self.state_json, self.tmp)
        hf_format.publish_checkpoint(self.tmp, self.final)
        hf_format.rotate_checkpoints(
            output_dir=self.output_dir,
            save_total_limit=self.save_total_limit,
            best_model_checkpoint=self.best_model_checkpoint,
            use_mtime=True,
        )
        return self.final


def snapshot_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A point-in-time copy of a Lightning checkpoint dict that training can no longer change.

    Tensors are copied to CPU memory storage by storage, so tensors that share memory (tied
    weights) still share it in the copy: ``save_pretrained`` finds tied weights that way. The
    tokenizer is deep-copied (its padding settings change while batches are collated); the model
    object (config, generation config, class) and the TrainingArguments are kept by reference.
    """
    copies: dict[tuple[int, int, str], torch.UntypedStorage] = {}

    def copy_tensor(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            return tensor
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes(), str(tensor.device))
        copied = copies.get(key)
        if copied is None:
            copied = copies[key] = storage.clone() if tensor.device.type == "cpu" else storage.cpu()
        return torch.empty((), dtype=tensor.dtype).set_(copied, tensor.storage_offset(), tensor.size(), tensor.stride())

    extras = checkpoint.get(EXTRAS_KEY)
    plain = {k: v for k, v in checkpoint.items() if k != EXTRAS_KEY}
    result = apply_to_collection(plain, torch.Tensor, copy_tensor)
    if extras is not None:
        extras = dict(extras)
        for key in ("processing_class", "data_collator"):
            if extras.get(key) is not None:
                extras[key] = copy.deepcopy(extras[key])
        result[EXTRAS_KEY] = extras
    return result


def _state_json(state: TrainerState) -> str:
    return hf_format.trainer_state_json(state)


def _rank_zero_writes(strategy: Strategy) -> bool:
    """Strategies that keep Lightning's default save: rank 0 hands the whole dict to the CheckpointIO."""
    return type(strategy).save_checkpoint is Strategy.save_checkpoint


class _HFCheckpointConnector(_CheckpointConnector):
    """Lightning's checkpoint connector, resolving ``ckpt_path="last"`` to the highest ``checkpoint-N``.

    Lightning looks for "last" only among ``ModelCheckpoint`` callbacks; an ``HFCheckpoint`` answers
    with transformers' rule (``get_last_checkpoint`` of ``output_dir``). Other values go to Lightning.
    """

    @override
    def _parse_ckpt_path(self, state_fn: Any, ckpt_path: Any, model_provided: bool, model_connected: bool) -> Any:
        if ckpt_path == "last":
            found = [cb.last_model_path for cb in self.trainer.callbacks if isinstance(cb, HFCheckpoint)]
            found = [path for path in found if path]
            if found:
                return max(found, key=lambda path: int(os.path.basename(path).rsplit("-", 1)[1]))
        return super()._parse_ckpt_path(state_fn, ckpt_path, model_provided=model_provided, model_connected=model_connected)


def install_checkpoint_connector(trainer: pl.Trainer) -> None:
    """Let ``trainer.fit(ckpt_path="last")`` find the highest ``checkpoint-N`` of an ``HFCheckpoint``."""
    connector = trainer._checkpoint_connector
    if type(connector) is _CheckpointConnector:
        connector.__class__ = _HFCheckpointConnector


def _warn_on_changed_args(args: TrainingArguments, state: TrainerState) -> None:
    from transformers.trainer_utils import compare_trainer_and_checkpoint_args

    compare_trainer_and_checkpoint_args(args, state)
