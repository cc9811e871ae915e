"""hf_lightning: train any transformers PreTrainedModel with PyTorch Lightning, with transformers.Trainer's semantics."""

from .callbacks import HFCheckpoint, HFFlowCallback
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
    "__version__",
]
