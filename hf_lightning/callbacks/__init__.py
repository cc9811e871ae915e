"""Lightning callbacks that carry transformers.Trainer's schedules, logs and checkpoints."""

from .checkpoint import HFCheckpoint
from .flow import FlowDecisions, HFFlowCallback
from .nonfinite import NonFiniteGuard
from .progress import HFProgressBar
from .signals import HFSignalHandler, TrainingInterrupted

__all__ = ["HFFlowCallback", "HFCheckpoint", "FlowDecisions", "HFProgressBar", "HFSignalHandler", "NonFiniteGuard", "TrainingInterrupted"]
