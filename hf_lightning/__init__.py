"""hf_lightning: train any transformers PreTrainedModel with PyTorch Lightning, with transformers.Trainer's semantics."""

from ._versions import check_versions as _check_versions

_check_versions()  # before anything imports transformers or lightning: an unsupported version is named, not a late AttributeError

from .callbacks import HFCheckpoint, HFFlowCallback, HFSignalHandler, NonFiniteGuard, TrainingInterrupted
from .checkpoint_io import HFCheckpointIO
from .data import HFDataModule
from .module import HFModule
from .builder import build_trainer
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
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
