"""Launch the multi-process scripts of the distributed tests, and read back what they wrote.

Every launch has a hard timeout: the launcher and all its children run in their own process
group, which is killed (SIGKILL; Lightning traps SIGTERM) when the time is up, so a hang fails
the test instead of stalling CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PYTHON = sys.executable
TORCHRUN = [PYTHON, "-m", "torch.distributed.run"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONWARNINGS"] = "ignore"
    return env


def launch(command: list[str], *, timeout: float, cwd: Path = ROOT) -> str:
    """Run ``command`` in a new process group; kill the group on timeout. Returns the output."""
    proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(command)}\n{output[-6000:]}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # orphaned children of a launcher that died
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        raise AssertionError(f"exit code {proc.returncode}: {' '.join(command)}\n{output[-8000:]}")
    return output


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 240) -> str:
    return launch([*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(SCRIPTS / script), *args], timeout=timeout)


def python(script: str, *args: str, timeout: float = 240) -> str:
    """Plain ``python script``: with ``devices=2`` Lightning's own launcher starts the second process."""
    return launch([PYTHON, str(SCRIPTS / script), *args], timeout=timeout)


def result(folder: str | os.PathLike) -> dict[str, Any]:
    with open(Path(folder) / "result.json") as f:
        return json.load(f)


def batches(folder: str | os.PathLike, rank: int) -> list:
    with open(Path(folder) / f"batches_rank{rank}.json") as f:
        return json.load(f)


def weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(Path(folder) / "model.safetensors"))


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert sorted(expected) == sorted(actual)
    worst = max((expected[k].float() - actual[k].float()).abs().max().item() for k in expected)
    assert worst <= atol, f"weights differ by {worst}"
