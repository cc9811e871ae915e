"""Shared fixtures: quiet logs, offline hub, and a tiny tokenizer written to a temp folder."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
    logging.getLogger(name).setLevel(logging.ERROR)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from tiny import write_tokenizer

    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


_LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH_PREFIXES = ("ACCELERATE_", "FSDP_")
_SESSION_ENVIRONMENT = dict(os.environ)  # before any test: what every test starts from


def _is_launch_variable(name: str) -> bool:
    return name in _LAUNCH_VARIABLES or name.startswith(_LAUNCH_PREFIXES)


@pytest.fixture(autouse=True)
def _no_leaked_launch_environment():
    """A test (or a module-scoped fixture) that starts a process group in this process (one-process FSDP2, launcher
    units) leaves Lightning's and accelerate's launch variables in os.environ; a later test (or the notebook's kernel)
    would then try to join that group. After each test they are what they were when the session started."""
    yield
    for name in [name for name in os.environ if _is_launch_variable(name)]:
        if name not in _SESSION_ENVIRONMENT:
            del os.environ[name]
    for name, value in _SESSION_ENVIRONMENT.items():
        if _is_launch_variable(name):
            os.environ[name] = value
