"""``HFCheckpointIO``: Lightning's CheckpointIO for transformers' ``checkpoint-N`` folders.

Lightning gathers the state (model, optimizer, schedulers, precision, callbacks) through its
strategy and hands this plugin one dict; this plugin writes it in transformers' layout, and reads
a transformers folder back into the dict Lightning restores from. So ``trainer.save_checkpoint(dir)``
and ``trainer.fit(ckpt_path=dir)`` speak the transformers format, including folders written by
transformers.Trainer itself. Plain Lightning ``.ckpt`` files still load through torch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io import CheckpointIO
from typing_extensions import override

from . import checkpoint_folders, hf_format
from .hf_format import CheckpointError

__all__ = ["HFCheckpointIO", "MODEL_PREFIX", "EXTRAS_KEY", "is_hf_checkpoint"]

MODEL_PREFIX = "model."
EXTRAS_KEY = "hf_lightning"
_PRECISION_KEYS = ("MixedPrecision", "ForwardAutocastPrecision", "FSDPPrecision", "HalfPrecision")  # Lightning's key: the plugin's class name


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """A folder (rather than a Lightning ``.ckpt`` file)."""
    return os.path.isdir(path)


class HFCheckpointIO(CheckpointIO):
    """Write and read transformers checkpoint folders from Lightning's checkpoint dict."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        extras = checkpoint.get(EXTRAS_KEY) or {}
        model = extras.get("model")
        if model is None:
            raise CheckpointError(
                f"{path}: HFCheckpointIO writes transformers folders and needs the model object, which HFModule adds "
                "to the checkpoint; this LightningModule is not an HFModule."
            )
        os.makedirs(path, exist_ok=True)
        # The optimizer state (twice the weights, for Adam) is written by a second thread while the model files are
        # written here, and every file is flushed to disk as soon as it is complete: the save blocks training for
        # about the time of its largest file instead of the sum. Errors surface from result() below.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hf_checkpoint_write") as pool:
            pending = []
            if checkpoint.get("optimizer_states"):
                optimizer_file = os.path.join(path, hf_format.OPTIMIZER_NAME)
                pending.append(pool.submit(_write_and_flush, checkpoint["optimizer_states"][0], optimizer_file))
            self._write_rest(checkpoint, extras, model, path, pool, pending)
            for future in pending:
                future.result()

    def _write_rest(self, checkpoint: dict[str, Any], extras: dict[str, Any], model: Any, path: Any, pool: Any, pending: list) -> None:
        if "state_dict" in checkpoint and not extras.get("model_written"):  # absent: a sharded strategy (fsdp_strategies.py)
            # or the host's own save_model wrote the weights
            state_dict = {k[len(MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
            hf_format.save_model_files(
                path,
                model,
                state_dict=state_dict,
                processing_class=extras.get("processing_class"),
                data_collator=extras.get("data_collator"),
                args=extras.get("args"),
            )
            pending.extend(pool.submit(checkpoint_folders.flush_file, os.path.join(path, name)) for name in os.listdir(path)
                           if name != hf_format.OPTIMIZER_NAME and os.path.isfile(os.path.join(path, name)))
        if checkpoint.get("lr_schedulers"):
            hf_format.save_torch(checkpoint["lr_schedulers"][0], os.path.join(path, hf_format.SCHEDULER_NAME))
        for key in _PRECISION_KEYS:
            if checkpoint.get(key):
                hf_format.save_torch(checkpoint[key], os.path.join(path, hf_format.SCALER_NAME))
                break
        flow_state = (checkpoint.get("callbacks") or {}).get("HFFlowCallback")
        if flow_state and "trainer_state" in flow_state:
            from transformers import TrainerState

            hf_format.write_trainer_state(TrainerState(**flow_state["trainer_state"]), path)

    @override
    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = str(path)
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: checkpoint not found (neither a checkpoint-N folder nor a file).")
        if not is_hf_checkpoint(path):
            # A Lightning .ckpt: weights-only unless the caller explicitly asks for more (torch's default since 2.6).
            try:
                return TorchCheckpointIO().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
            except Exception as error:
                if weights_only is False:
                    raise
                raise CheckpointError(f"{path}: {hf_format.describe_load_error(error)}") from error
        return load_hf_checkpoint(path)

    @override
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        if os.path.isdir(path):
            checkpoint_folders.delete_checkpoint(path)
        elif os.path.exists(path):
            os.remove(path)


def _write_and_flush(obj: Any, path: str) -> None:
    hf_format.save_torch(obj, path)
    checkpoint_folders.flush_file(path)


def load_hf_checkpoint(path: str, *, with_weights: bool = True, steps_in_use: Any = ()) -> dict[str, Any]:
    """A transformers ``checkpoint-N`` folder as the dict Lightning restores from, every file checked first.

    Every file is read (without running code from it) and checked for structure and types before
    anything is restored; all problems are raised together in one ``CheckpointError`` that names
    each file and field. A missing ``optimizer.pt``/``scheduler.pt`` is not an error: that part
    starts fresh (``extras["fresh"]`` says which; ``HFCheckpoint`` warns) and the intact files are
    still loaded. ``with_weights=False`` leaves out the weights and the optimizer, for strategies
    that load them in place (the FSDP layouts, ``fsdp_strategies.py``). ``steps_in_use``: the
    ``*_steps`` fields of ``trainer_state.json`` that must be positive (``HFCheckpoint`` checks them
    against the run's strategies; negative values are always refused).
    """
    from .checkpoint_checks import optimizer_problems, scaler_problems, scheduler_problems

    problems: list[str] = []
    weights = None
    if with_weights:
        try:
            weights = hf_format.read_weights(path)
        except CheckpointError as error:
            problems.append(str(error))
    state, found = hf_format.read_trainer_state_checked(path, steps_in_use=steps_in_use)
    problems += found
    rng_states, found = hf_format.read_rng_states_checked(path)
    problems += found
    loaded: dict[str, Any] = {}
    fresh: list[str] = []
    files = [(hf_format.SCALER_NAME, scaler_problems)]
    if with_weights:
        files = [(hf_format.OPTIMIZER_NAME, optimizer_problems), (hf_format.SCHEDULER_NAME, scheduler_problems), *files]
        if not os.path.isfile(os.path.join(path, hf_format.OPTIMIZER_NAME)) and os.path.isfile(os.path.join(path, hf_format.OPTIMIZER_NAME_BIN)):
            problems.append(
                f"{os.path.join(path, hf_format.OPTIMIZER_NAME_BIN)}: an FSDP optimizer state (keyed by parameter names), written "
                f"by a sharded run; it cannot be loaded into this run's optimizer. Resume with the FSDP strategy that wrote it, "
                f"or remove the file to start with a fresh optimizer."
            )
    for name, check in files:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            if name != hf_format.SCALER_NAME:  # scaler.pt exists only for fp16 runs
                fresh.append(name)
            continue
        try:
            value = hf_format.load_torch(file)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        found = check(value, file)
        problems += found
        if not found:
            loaded[name] = value
    if problems:
        raise hf_format.problems_error(path, problems)
    checkpoint: dict[str, Any] = {
        # An adapter's tensors are loaded by HFModule.on_load_checkpoint through peft, not by key.
        "state_dict": {} if weights is None or weights.adapter else {MODEL_PREFIX + k: v for k, v in weights.state_dict.items()},
        "epoch": 0,
        "global_step": state.global_step if state is not None else 0,
        "pytorch-lightning_version": pl.__version__,
        "callbacks": {},  # without it Lightning skips the callbacks' on_load_checkpoint
        EXTRAS_KEY: {
            "source_dir": path,
            "trainer_state": state,
            "weights_file": weights.path if weights is not None else path,
            "adapter_weights": weights if weights is not None and weights.adapter else None,
            "rng_states": rng_states,
            "fresh": fresh,
            "optimizer_file": os.path.join(path, hf_format.OPTIMIZER_NAME) if hf_format.OPTIMIZER_NAME in loaded else None,
            "scheduler_file": os.path.join(path, hf_format.SCHEDULER_NAME) if hf_format.SCHEDULER_NAME in loaded else None,
        },
    }
    # Whatever is intact is restored; HFModule fills a missing optimizer or scheduler with a fresh one.
    if hf_format.OPTIMIZER_NAME in loaded:
        checkpoint["optimizer_states"] = [loaded[hf_format.OPTIMIZER_NAME]]
    if hf_format.SCHEDULER_NAME in loaded:
        checkpoint["lr_schedulers"] = [loaded[hf_format.SCHEDULER_NAME]]
    if hf_format.SCALER_NAME in loaded:
        for key in _PRECISION_KEYS:
            checkpoint[key] = loaded[hf_format.SCALER_NAME]
    return checkpoint
