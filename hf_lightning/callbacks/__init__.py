"""Lightning callbacks that carry transformers.Trainer's schedules, logs and checkpoints."""

from .checkpoint import HFCheckpoint
from .flow import FlowDecisions, HFFlowCallback
from .progress import HFProgressBar

__all__ = ["HFFlowCallback", "HFCheckpoint", "FlowDecisions", "HFProgressBar"]
