"""hf_lightning: train any transformers PreTrainedModel with PyTorch Lightning, with transformers.Trainer's semantics."""

from .builder import build_trainer
from .callbacks import HFCheckpoint, HFFlowCallback
from .checkpoint_io import HFCheckpointIO
from .data import HFDataModule
from .module import HFModule
from .trainer import Seq2SeqTrainer, Trainer, on_lightning

__version__ = "0.1.0"

__all__ = [
    "Trainer",
    "Seq2SeqTrainer",
    "on_lightning",
    "HFModule",
    "HFDataModule",
    "build_trainer",
    "HFFlowCallback",
    "HFCheckpoint",
    "HFCheckpointIO",
    "__version__",
]
