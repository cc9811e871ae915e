"""``HFCheckpoint``: transformers' ``_save_checkpoint`` on Lightning, atomically, optionally in the background.

The flow callback decides *when*; this callback writes ``checkpoint-{global_step}``:
Lightning gathers and ``HFCheckpointIO`` writes the rank-0 files into a hidden temporary folder,
every rank adds its RNG file, rank 0 writes ``trainer_state.json``, and only then is the folder
renamed into place and older ones rotated. A kill at any instant leaves either no new folder or
a complete one; the leftovers of a killed save are removed at the next start.

One writer per ``output_dir``: training starts by taking the folder's lock (``run_lock``; rank 0
holds it for the job), which also proves the folder writable before the first step. Temporary
folders carry this run's id, so a cleanup removes only this run's leftovers or abandoned ones.
A save that fails (disk full, permission denied) raises a ``CheckpointSaveError`` on every rank,
naming the checkpoint, the file, the cause and the free space; nothing is published, so the
previous checkpoint stays the newest complete one.

Resuming checks every file of the checkpoint before the first step (``checkpoint_io``), then,
once the optimizer exists, that the saved optimizer and scheduler fit it (``on_fit_start``).

With ``async_save=True`` training is blocked only while the state is copied to CPU memory; a
background thread writes the files, publishes the folder and rotates, in that order, one save at a
time.
"""

from __future__ import annotations

import copy
import functools
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

from .. import checkpoint_folders, distributed, hf_format, run_lock
from ..checkpoint_io import EXTRAS_KEY
from ..save_errors import CheckpointSaveError, writing
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
        self._resume_checkpoint: dict[str, Any] | None = None
        self.run_id: str | None = None
        """This run's id (``{host}-{pid}-{8 hex}`` of rank 0), the suffix of its temporary folders."""
        self._lock: run_lock.OutputDirLock | None = None

    @property
    def state_key(self) -> str:
        return "HFCheckpoint"

    @property
    def output_dir(self) -> str:
        return str(self.args.output_dir)

    @property
    def last_model_path(self) -> str | None:
        """The newest complete ``checkpoint-N`` in ``output_dir``; what ``ckpt_path="last"`` resumes from."""
        return checkpoint_folders.find_last_checkpoint(self.output_dir)

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
        if stage == "fit":
            self._begin_run(trainer)

    def _begin_run(self, trainer: pl.Trainer) -> None:
        """Rank 0 takes the output_dir lock (which proves the folder writable) and removes abandoned leftovers.

        The outcome is broadcast, so a refused lock stops every rank with the same error.
        """
        error: BaseException | None = None
        run_id = None
        if trainer.is_global_zero:
            run_id = checkpoint_folders.new_owner_id()
            try:
                self._lock, _ = run_lock.acquire(self.output_dir, run_id)
            except (run_lock.OutputDirLockedError, run_lock.OutputDirNotWritableError) as caught:
                error = caught
        failure = None if error is None else (isinstance(error, run_lock.OutputDirLockedError), str(error))
        self.run_id, failure = trainer.strategy.broadcast((run_id, failure))
        if failure is not None:
            if error is not None:
                raise error
            locked, message = failure
            raise run_lock.OutputDirLockedError(message, None) if locked else run_lock.OutputDirNotWritableError(message)
        if trainer.is_global_zero:
            removed, kept = checkpoint_folders.remove_leftovers(self.output_dir, current=self.run_id)
            if removed:
                log.warning("Removed the unfinished saves of interrupted runs: %s", removed)
            if kept:
                log.warning("Kept the unfinished saves of processes still running on this host: %s", kept)

    def _end_run(self) -> None:
        """Remove this run's own temporary folders (of a failed or interrupted save) and release the lock."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            checkpoint_folders.remove_leftovers(self.output_dir, current=self.run_id, only_own=True)
        finally:
            lock.release()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if stage == "fit":
                self._end_run()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Let an asynchronous save that is under way finish (it was complete in memory), but do not mask `exception`.
        try:
            self.wait()
        except Exception as error:  # noqa: BLE001
            log.error("The asynchronous checkpoint save failed too: %s", error)
        finally:
            self._resume_checkpoint = None
            self._end_run()  # Lightning calls no teardown hook after an exception

    # ------------------------------------------------------------------------------ resuming

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        extras = checkpoint.get(EXTRAS_KEY) or {}
        if self.flow is None or "source_dir" not in extras:
            return
        source = extras["source_dir"]
        state: TrainerState | None = extras.get("trainer_state")
        if state is not None:
            problems = _step_interval_problems(self.args, state, os.path.join(source, hf_format.TRAINER_STATE_NAME))
            if problems:
                raise hf_format.problems_error(source, problems)
        distributed.warn_on_world_size_change(source, trainer.world_size)
        if trainer.is_global_zero:
            _warn_on_fresh_parts(source, extras, trainer.world_size)
        if state is not None:
            self.flow.resume = {"state": state, "dir": source}
            self._resume_rng = dict(extras.get("rng_states") or {})
            _warn_on_changed_args(self.args, state)
            best = state.best_model_checkpoint
            if best is not None and not os.path.isdir(best) and trainer.is_global_zero:
                log.warning(
                    "%s names `best_model_checkpoint` %s, which no longer exists: the best model is forgotten, so "
                    "`load_best_model_at_end` will load the best checkpoint saved from now on, or keep the last weights "
                    "if none is saved, and `save_total_limit` no longer protects it.",
                    os.path.join(source, hf_format.TRAINER_STATE_NAME), best,
                )
        else:
            log.warning(
                "%s has no %s: training starts at step 0 from its weights (and optimizer/scheduler, if present), "
                "as transformers does.", source, hf_format.TRAINER_STATE_NAME,
            )
        self._resume_checkpoint = checkpoint
        if trainer.optimizers:  # strategies that restore after setup: the optimizer exists already
            self._check_training_state_fits(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the optimizer and scheduler exist, before Lightning restores them: do the saved ones fit?
        self._check_training_state_fits(trainer)

    def _check_training_state_fits(self, trainer: pl.Trainer) -> None:
        from ..checkpoint_checks import optimizer_fit_problems, scheduler_fit_problems

        checkpoint, self._resume_checkpoint = self._resume_checkpoint, None
        if checkpoint is None or not trainer.optimizers:
            return
        extras = checkpoint.get(EXTRAS_KEY) or {}
        problems: list[str] = []
        optimizer_file, scheduler_file = extras.get("optimizer_file"), extras.get("scheduler_file")
        optimizer = trainer.optimizers[0]
        inner = getattr(optimizer, "_optimizer", optimizer)
        if optimizer_file and checkpoint.get("optimizer_states"):
            names = _parameter_names(trainer.lightning_module, inner)
            problems += optimizer_fit_problems(checkpoint["optimizer_states"][0], inner.param_groups, optimizer_file, names)
        configs = trainer.lr_scheduler_configs
        if scheduler_file and checkpoint.get("lr_schedulers") and configs:
            scheduler = configs[0].scheduler
            problems += scheduler_fit_problems(checkpoint["lr_schedulers"][0], scheduler.state_dict(), scheduler_file, type(scheduler).__name__)
        if problems:
            raise hf_format.problems_error(extras.get("source_dir", ""), problems)

    # ------------------------------------------------------------------------------- saving

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """``Trainer._save_checkpoint``. Call on every rank; returns the final folder.

        Steps: (1) the rank-0 files (model, tokenizer, training_args, optimizer, scheduler, scaler) go
        to ``.tmp-checkpoint-N.<run id>`` through Lightning and ``HFCheckpointIO``; (2)
        ``best_model_checkpoint`` is updated; (3) every rank writes its RNG file; (4) rank 0 writes
        ``trainer_state.json``; (5) rank 0 renames the folder to ``checkpoint-N`` and rotates. With
        ``async_save``, (1), (4) and (5) run in the background on a copy of the state.

        A failure at any step, on any rank, raises a ``CheckpointSaveError`` on every rank (naming the
        checkpoint, the file, the cause and the free space) after this run's temporary folder is removed.
        """
        strategy = trainer.strategy
        self._agree(trainer, _attempt(self.wait), None)  # the previous save is published first (rotation, best-model order)
        args = self.args
        step = trainer.global_step
        final = os.path.join(self.output_dir, hf_format.checkpoint_name(step))
        tmp = os.path.join(self.output_dir, checkpoint_folders.temporary_name(step, self.run_id))

        def make_tmp() -> None:
            with writing(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp, exist_ok=True)

        self._agree(trainer, _attempt(make_tmp) if trainer.is_global_zero else None, final)
        weights_only = bool(args.save_only_model)
        host = getattr(pl_module, "hooks", None)
        error = None
        if not self.async_save and host is not None and saves_model_itself(host):
            # transformers' _save_checkpoint writes the model through save_model(output_dir, _internal_call=True);
            # a subclass's override does it here too (on every rank), into the folder being written.
            error = _attempt(lambda: _written(tmp, lambda: host.save_model(tmp, _internal_call=True)))
            pl_module.model_written = True
        try:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only)  # what trainer.save_checkpoint does
        finally:
            pl_module.model_written = False
        snapshot = None
        if self.async_save:
            snapshot = snapshot_state(checkpoint) if trainer.is_global_zero else None  # written in the background
        else:
            write = functools.partial(strategy.save_checkpoint, checkpoint, tmp)
            written = _attempt(functools.partial(_written, tmp, write))  # on every rank even after an error: collectives
            del write
            error = error or written
        del checkpoint
        state = self.flow.state
        if strategy_name(args.save_strategy) in ("steps", "epoch", "best") and state.best_global_step:
            best = os.path.join(self.output_dir, hf_format.checkpoint_name(state.best_global_step))
            if state.best_global_step == step or os.path.exists(best):
                state.best_model_checkpoint = best
        if not args.save_only_model and error is None:

            def write_rng() -> None:
                os.makedirs(tmp, exist_ok=True)
                hf_format.save_torch(
                    hf_format.capture_rng_state(trainer.world_size > 1),
                    os.path.join(tmp, hf_format.rng_file_name(trainer.world_size, trainer.global_rank)),
                )

            error = _attempt(write_rng)
        state_json = _state_json(self.flow.snapshot_state()) if trainer.is_global_zero else ""
        self._agree(trainer, error, final)  # every rank's files are written (or every rank raises)
        error = None
        if trainer.is_global_zero:
            finish = _Publish(
                io=strategy.checkpoint_io,
                tmp=tmp,
                final=final,
                output_dir=self.output_dir,
                save_total_limit=args.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                state_json=state_json,
                owner=self.run_id,
            )
            if self.async_save:
                self._pending = self._background().submit(_named_failure(finish, final, self.output_dir), snapshot)
            else:
                error = _attempt(lambda: finish(None))
        if not self.async_save:
            self._agree(trainer, error, final)  # published on rank 0 before any rank goes on
        return final

    def _agree(self, trainer: pl.Trainer, error: BaseException | None, checkpoint: str | None) -> None:
        """A collective: every rank learns whether any rank failed, and then all raise together.

        The failing rank raises its own error (naming the checkpoint and the newest complete one);
        the others a ``CheckpointSaveError`` quoting it. This run's temporary folder is removed first.
        """
        failures = _gather_errors(trainer.strategy, error)
        if not failures:
            return
        if trainer.is_global_zero:
            checkpoint_folders.remove_leftovers(self.output_dir, current=self.run_id, only_own=True)
        newest = checkpoint_folders.find_last_checkpoint(self.output_dir)
        if error is not None:
            if isinstance(error, CheckpointSaveError) and checkpoint is not None:
                raise error.for_checkpoint(checkpoint, newest) from error.cause
            raise error
        rank, message = failures[0]
        raise CheckpointSaveError(self.output_dir, RuntimeError(f"rank {rank} failed: {message}"), checkpoint=checkpoint, newest=newest)

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
        """Set the generators from this rank's RNG file of the checkpoint (read when it was opened).

        A missing file was reported when the checkpoint was opened (the random streams start from this run's seed).
        """
        trainer = self.flow._module.trainer if self.flow is not None and self.flow._module is not None else None
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        states = self._resume_rng.get(hf_format.rng_file_name(world, rank))
        if states is not None:
            hf_format.apply_rng_state(states, distributed=world > 1)

    # -------------------------------------------------------------------------- end of train

    def finish_training(self, trainer: pl.Trainer, pl_module: Any, state: TrainerState) -> None:
        """After the summary log: load the best model, then the ``save_total_limit=1`` rule (§1.7)."""
        self._agree(trainer, _attempt(self.wait), None)
        if self.args.load_best_model_at_end and state.best_model_checkpoint is not None:
            from ..private_overrides import TransformersTrainer

            host = self.flow.host if self.flow is not None else None
            if isinstance(host, TransformersTrainer):
                host._load_best_model()  # the facade's, or a subclass's override (sentence-transformers')
            else:
                load_weights_into(trainer, pl_module, state.best_model_checkpoint)
        if trainer.is_global_zero and state.best_model_checkpoint is not None and self.args.save_total_limit == 1:
            for checkpoint in hf_format.sort_checkpoints(self.output_dir, best_model_checkpoint=state.best_model_checkpoint):
                if not os.path.samefile(checkpoint, state.best_model_checkpoint):
                    checkpoint_folders.delete_checkpoint(checkpoint, self.run_id)
        trainer.strategy.barrier("hf_finish_training")


def _attempt(fn: Any) -> BaseException | None:
    """Run ``fn``; return its exception instead of raising it (raised after the ranks agree)."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - every failure is raised again by HFCheckpoint._agree
        return error
    return None


def _written(folder: str, fn: Any) -> None:
    """Run a write into ``folder``; a failure that names no file is reported as one in ``folder``."""
    with writing(folder):
        fn()


def _named_failure(finish: Any, checkpoint: str, output_dir: str) -> Any:
    """The background part of an async save, its failures naming the checkpoint (raised at the next ``wait``)."""

    def run(snapshot: Any) -> str:
        try:
            return finish(snapshot)
        except CheckpointSaveError as error:
            checkpoint_folders.remove_leftovers(output_dir, current=finish.owner, only_own=True)
            raise error.for_checkpoint(checkpoint, checkpoint_folders.find_last_checkpoint(output_dir)) from error.cause
        except Exception as error:
            checkpoint_folders.remove_leftovers(output_dir, current=finish.owner, only_own=True)
            raise CheckpointSaveError(finish.tmp, error, checkpoint=checkpoint, newest=checkpoint_folders.find_last_checkpoint(output_dir)) from error

    return run


def _gather_errors(strategy: Strategy, error: BaseException | None) -> list[tuple[int, str]]:
    """``[(rank, message)]`` of the ranks whose step failed. A collective under several processes."""
    if not distributed.is_distributed(strategy):
        return [] if error is None else [(0, str(error))]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, None if error is None else f"{type(error).__name__}: {error}")
    return [(rank, message) for rank, message in enumerate(gathered) if message is not None]


def _parameter_names(pl_module: Any, optimizer: Any) -> dict[int, str]:
    """The name of each parameter in the optimizer's flat order (for messages)."""
    by_id = {id(p): name.removeprefix("model.") for name, p in pl_module.named_parameters()} if pl_module is not None else {}
    names, position = {}, 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            names[position] = by_id.get(id(param), f"parameter {position}")
            position += 1
    return names


def _step_interval_problems(args: TrainingArguments, state: TrainerState, path: str) -> list[str]:
    """A resumed state's ``*_steps`` replace the run's (§1.6): those the run divides by must be positive."""
    problems = []
    for kind in ("logging", "eval", "save"):
        value = getattr(state, f"{kind}_steps")
        if strategy_name(getattr(args, f"{kind}_strategy")) == "steps" and not (isinstance(value, (int, float)) and value > 0):
            problems.append(
                f"{path}: `{kind}_steps` is {value!r}, but this run's `{kind}_strategy='steps'` needs a positive interval "
                f"(transformers takes the interval from the checkpoint on resume)."
            )
    return problems


def _warn_on_fresh_parts(source: str, extras: dict[str, Any], world_size: int) -> None:
    """One warning naming every part of the training state that is absent and so starts fresh."""
    parts = []
    fresh = list(extras.get("fresh") or [])
    for name in fresh:
        if name.startswith("optimizer"):
            parts.append(f"{name} (the optimizer starts fresh: no momentum or Adam moments)")
    if hf_format.SCHEDULER_NAME in fresh:
        parts.append(f"{hf_format.SCHEDULER_NAME} (the learning-rate schedule restarts from its first step, warmup included)")
    rng = extras.get("rng_states") or {}
    missing_rng = [hf_format.rng_file_name(world_size, rank) for rank in range(world_size) if hf_format.rng_file_name(world_size, rank) not in rng]
    if missing_rng and not (world_size > 1 and "rng_state.pth" in rng):
        parts.append(f"{', '.join(missing_rng)} (random generators continue from this run's seed: dropout and sampling differ from an uninterrupted run)")
    if parts:
        log.warning("Resuming from %s without %s. Everything else in the checkpoint is restored.", source, "; ".join(parts))


def saves_model_itself(host: Any) -> bool:
    """The host overrides ``save_model``, or the ``_save`` that transformers' ``save_model`` calls (transformers' or
    hf_lightning's own are written by ``HFCheckpointIO``)."""
    from ..hooks import overrides
    from ..private_overrides import TransformersTrainer

    cls = type(host)
    return overrides(cls, "save_model") or (isinstance(host, TransformersTrainer) and overrides(cls, "_save"))


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
                 best_model_checkpoint: str | None, state_json: str, owner: str | None = None) -> None:
        self.io, self.tmp, self.final, self.output_dir = io, tmp, final, output_dir
        self.save_total_limit, self.best_model_checkpoint, self.state_json = save_total_limit, best_model_checkpoint, state_json
        self.owner = owner

    def __call__(self, snapshot: dict[str, Any] | None) -> str:
        if snapshot is not None:
            _written(self.tmp, lambda: self.io.save_checkpoint(snapshot, self.tmp))
        hf_format.write_trainer_state_json(self.state_json, self.tmp)
        checkpoint_folders.publish_checkpoint(self.tmp, self.final, self.owner)
        checkpoint_folders.rotate_checkpoints(
            output_dir=self.output_dir,
            save_total_limit=self.save_total_limit,
            best_model_checkpoint=self.best_model_checkpoint,
            use_mtime=True,
            owner=self.owner,
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
    with transformers' rule (``get_last_checkpoint`` of ``output_dir``), or, in a plain ``lightning.Trainer``
    (whose HFCheckpoint ``HFModule.configure_callbacks`` adds only after the path is chosen), the
    ``HFDataModule``'s ``output_dir``. Other values go to Lightning.
    """

    @override
    def _parse_ckpt_path(self, state_fn: Any, ckpt_path: Any, model_provided: bool, model_connected: bool) -> Any:
        if ckpt_path == "last":
            checkpointers = [cb for cb in self.trainer.callbacks if isinstance(cb, HFCheckpoint)]
            args = getattr(self.trainer.datamodule, "args", None)
            if checkpointers:
                found = [cb.last_model_path for cb in checkpointers]
            elif isinstance(args, TrainingArguments):  # a plain lightning.Trainer: HFModule adds HFCheckpoint later
                found = [checkpoint_folders.find_last_checkpoint(args.output_dir)]
            else:
                found = []
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
