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


def assert_same_batches(expected: list, actual: list, label: str) -> None:
    """The same micro-batches in the same order; on a difference, say where (the lists are long)."""
    if expected == actual:
        return
    first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    raise AssertionError(
        f"{label}: {len(actual)} micro-batches recorded, expected {len(expected)}; first difference at index {first}: "
        f"expected {expected[first] if first < len(expected) else None}, got {actual[first] if first < len(actual) else None}"
    )


def weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(Path(folder) / "model.safetensors"))


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert sorted(expected) == sorted(actual)
    worst = max((expected[k].float() - actual[k].float()).abs().max().item() for k in expected)
    assert worst <= atol, f"weights differ by {worst}"


TIMING = ("runtime", "per_second", "model_preparation_time")


def assert_same_checkpoint(expected: str | os.PathLike, actual: str | os.PathLike, *, atol: float = 1e-6) -> None:
    """Two ``checkpoint-N`` folders hold the same files with the same contents (timings aside).

    Weights and optimizer tensors within ``atol``; scheduler, RNG states, config, tokenizer files and
    ``trainer_state.json`` equal (log entries' floats within 1e-5 relative).
    """
    import numpy as np

    from helpers import assert_same_history
    from hf_lightning import hf_format

    expected, actual = Path(expected), Path(actual)
    assert sorted(os.listdir(expected)) == sorted(os.listdir(actual)), (expected, actual)
    for name in sorted(os.listdir(expected)):
        e, a = expected / name, actual / name
        if name == "model.safetensors":
            assert_same_tensors(weights(expected), weights(actual), atol)
        elif name in ("optimizer.pt", "optimizer.bin", "pytorch_model_fsdp.bin"):
            _assert_same_nested(hf_format.load_torch(e), hf_format.load_torch(a), atol, name)
        elif name in ("scheduler.pt", "scaler.pt"):
            assert hf_format.load_torch(e) == hf_format.load_torch(a), name
        elif name.startswith("rng_state"):
            es, as_ = hf_format.load_torch(e), hf_format.load_torch(a)
            assert sorted(es) == sorted(as_) and es["python"] == as_["python"] and torch.equal(es["cpu"], as_["cpu"]), name
            assert all(np.array_equal(x, y) for x, y in zip(es["numpy"], as_["numpy"])), name
        elif name == "trainer_state.json":
            es, as_ = (json.loads(p.read_text()) for p in (e, a))
            assert_same_history(es.pop("log_history"), as_.pop("log_history"), rel=1e-5)
            es.pop("best_model_checkpoint", None), as_.pop("best_model_checkpoint", None)  # absolute paths
            assert es == as_, (es, as_)
        elif name.endswith(".json"):
            assert json.loads(e.read_text()) == json.loads(a.read_text()), name


def _assert_same_nested(e: Any, a: Any, atol: float, where: str) -> None:
    if torch.is_tensor(e):
        assert torch.is_tensor(a) and e.shape == a.shape, where
        assert (e.float() - a.float()).abs().max().item() <= atol if e.numel() else True, where
    elif isinstance(e, dict):
        assert sorted(map(str, e)) == sorted(map(str, a)), where
        for k in e:
            _assert_same_nested(e[k], a[k], atol, f"{where}.{k}")
    elif isinstance(e, (list, tuple)):
        assert len(e) == len(a), where
        for i, (x, y) in enumerate(zip(e, a)):
            _assert_same_nested(x, y, atol, f"{where}[{i}]")
    else:
        assert e == a, (where, e, a)
