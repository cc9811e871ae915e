"""hf_lightning: train any transformers PreTrainedModel with PyTorch Lightning, with transformers.Trainer's semantics.

The public names are imported on first use (PEP 562), so ``import hf_lightning`` and ``hf-lightning --help``
don't pay for torch, Lightning and transformers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._versions import check_versions as _check_versions

_check_versions()  # cheap (package metadata only): an unsupported transformers/lightning/torch is named, not a late AttributeError

from . import console  # noqa: E402

console.install_warning_filters()

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "HFModule": "module",
    "HFDataModule": "data",
    "build_trainer": "builder",
    "Trainer": "trainer",
    "Seq2SeqTrainer": "trainer",
    "on_lightning": "trainer",
    "HFFlowCallback": "callbacks",
    "HFCheckpoint": "callbacks",
    "HFCheckpointIO": "checkpoint_io",
    "HFSignalHandler": "callbacks",
    "NonFiniteGuard": "callbacks",
    "TrainingInterrupted": "callbacks",
}

__all__ = [
    "Seq2SeqTrainer",
    "on_lightning",
    "HFModule",
    "HFDataModule",
    "build_trainer",
    "Trainer",
    "HFFlowCallback",
    "HFCheckpoint",
    "HFCheckpointIO",
    "HFSignalHandler",
    "NonFiniteGuard",
    "TrainingInterrupted",
    "__version__",
]

if TYPE_CHECKING:
    from .builder import build_trainer
    from .callbacks import HFCheckpoint, HFFlowCallback, HFSignalHandler, NonFiniteGuard, TrainingInterrupted
    from .checkpoint_io import HFCheckpointIO
    from .data import HFDataModule
    from .module import HFModule
    from .trainer import Seq2SeqTrainer, Trainer, on_lightning


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:  # `hf_lightning.hf_format` etc. without importing the submodule first, as before
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
