"""Shared pieces of the hardening tests (issue 13): planted payloads, tiny runs, DCP surgery."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from helpers import LIGHTNING_QUIET, build, make_args
from tiny import RegressionDataset, TinyReg
from transformers import TrainerCallback

import hf_lightning

ARGS = dict(per_device_train_batch_size=8, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1)


class Payload:
    """Unpickling this runs ``touch <marker>`` (with any unpickler that resolves globals freely)."""

    def __init__(self, marker: str | os.PathLike) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_pickle(marker: str | os.PathLike) -> bytes:
    """A plain pickle that runs code when loaded."""
    return pickle.dumps({"payload": Payload(marker)})


def payload_torch(marker: str | os.PathLike, around: Any = None) -> bytes:
    """``torch.save`` of a dict carrying the payload (next to ``around``'s keys, when a dict)."""
    value = {**around, "payload": Payload(marker)} if isinstance(around, dict) else {"payload": Payload(marker)}
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def copy_checkpoint(source: Path, tmp_path: Path, name: str | None = None) -> Path:
    target = tmp_path / (name or source.name)
    shutil.copytree(source, target)
    return target


def tiny_trainer(output_dir: Path, *, callbacks: list | None = None, dataset_size: int = 32, lightning: dict | None = None, **args: Any):
    """The facade over TinyReg (regression, 4 features) with ``ARGS`` overridden by ``args``."""
    kwargs = dict(train_dataset=RegressionDataset(dataset_size), callbacks=list(callbacks or []), **(lightning or {}))
    return build("hl", TinyReg, output_dir, trainer_kwargs=kwargs, **{**ARGS, **args})


def fit_path(output_dir: Path, checkpoint: str | os.PathLike | None, *, callbacks: list | None = None, **args: Any) -> None:
    """Resume with ``build_trainer`` + ``trainer.fit`` (the Lightning path)."""
    run_args = make_args(output_dir, **{**ARGS, **args})
    module = hf_lightning.HFModule(TinyReg(), run_args)
    datamodule = hf_lightning.HFDataModule(run_args, train_dataset=RegressionDataset(32))
    trainer = hf_lightning.build_trainer(run_args, callbacks=list(callbacks or []), **LIGHTNING_QUIET)
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if checkpoint is None else str(checkpoint))


def repoint_dcp_entry(folder: Path, fqn: str, data: bytes) -> None:
    """Make the DCP entry ``fqn`` of ``folder`` read ``data`` (appended to its shard file). Test-side surgery."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    with open(folder / ".metadata", "rb") as f:
        metadata = pickle.load(f)  # our own, trusted file
    keys = [index for index in metadata.storage_data if index.fqn == fqn]
    assert keys, f"{fqn} not in {sorted({i.fqn for i in metadata.storage_data})}"
    for index in keys:
        info = metadata.storage_data[index]
        shard = folder / info.relative_path
        offset = shard.stat().st_size
        with open(shard, "ab") as f:
            f.write(data)
        metadata.storage_data[index] = _StorageInfo(info.relative_path, offset, len(data), getattr(info, "transform_descriptors", None))
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
