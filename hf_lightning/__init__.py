"""hf_lightning: train any transformers PreTrainedModel with PyTorch Lightning, with transformers.Trainer's semantics."""

from . import console

console.install_warning_filters()

from .callbacks import HFCheckpoint, HFFlowCallback  # noqa: E402
from .checkpoint_io import HFCheckpointIO  # noqa: E402
from .data import HFDataModule  # noqa: E402
from .module import HFModule  # noqa: E402
from .builder import build_trainer  # noqa: E402
from .trainer import Trainer  # noqa: E402

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
