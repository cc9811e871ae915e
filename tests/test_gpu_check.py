"""``benchmarks/gpu_check.sh``: what can be checked without a GPU.

Without CUDA it exits at once with one line; its arguments are checked; a step that overruns is killed
together with the processes it started in sessions of their own (torchrun launches); the summary table
reads the benchmark payloads and the step outcomes. ``--cpu-smoke`` (slow) runs the whole pipeline on tiny
CPU workloads. Nothing here times anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=environment, cwd="/")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_exits_at_once_with_one_line() -> None:
    started = time.monotonic()
    done = _run()
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines() == ["gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check, skipped (exit 0)."]
    assert time.monotonic() - started < 30  # the time to import torch once


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bogus"], "unknown argument '--bogus'"), (["--skip", "everything"], "--skip 'everything': use tests, eager, compile or checkpoint")],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    done = _run(*args)
    assert done.returncode == 2 and message in done.stderr


def test_help_lists_the_steps_and_time_limits() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for text in ("-m gpu", "gpt2-bf16-compile", "gpt2-124m-bf16-cuda", "GPU_CHECK_TESTS_S=", "--cpu-smoke", "exits 0"):
        assert text in done.stdout


def test_an_overrunning_step_leaves_no_process_behind(tmp_path: Path) -> None:
    """`timeout` kills its process group; processes in sessions of their own (torchrun's) are found by the step's marker."""
    functions = subprocess.run(["sed", "-n", "/^kill_leftovers()/,/^}/p", str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    pids = tmp_path / "pids"
    harness = f"""
{functions}
GPU_CHECK_STEP="demo.$$" timeout --signal=KILL 3 bash -c 'setsid sleep 300 & echo $! >> {pids}; setsid sleep 301 & echo $! >> {pids}; sleep 100'
echo "rc=$?"
kill_leftovers "demo.$$"
"""
    done = subprocess.run(["bash", "-c", harness], capture_output=True, text=True, timeout=30)
    assert "rc=137" in done.stdout
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2 and all(f"killed left-over process {pid}" in done.stdout for pid in started)
    time.sleep(0.2)
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]


def _step_payload(name: str, hl: float, hf: float, loop: float) -> dict:
    return {
        "kind": "step", "workload": name, "rounds": 1, "settings": {"device": "cuda"},
        "environment": {"device": "NVIDIA H200", "date": "2026-12-02", "torch": "2.13.0", "transformers": "5.24.0", "lightning": "2.6.6",
                        "hf_lightning": "abc1234"},
        "summary": {"hf_lightning": {"samples_per_s": hl, "peak_mib": 1000.0}, "transformers": {"samples_per_s": hf, "peak_mib": 1000.0},
                    "loop": {"samples_per_s": loop, "peak_mib": 800.0}},
    }


def test_summary_is_one_table_of_ratios_against_the_targets(tmp_path: Path) -> None:
    import gpu_check

    (tmp_path / "step-gpt2-bf16.json").write_text(json.dumps(_step_payload("gpt2-bf16", 110.0, 100.0, 120.0)))
    (tmp_path / "checkpoint-gpt2-124m-bf16-cuda.json").write_text(json.dumps({
        "kind": "checkpoint", "workload": "gpt2-124m-bf16-cuda", "settings": {"device": "cuda"}, "rounds": 1,
        "summary": {"transformers": {"blocking_s": 2.0, "resume_to_first_step_s": 4.0},
                    "hf_lightning": {"blocking_s": 1.0, "resume_to_first_step_s": 5.0},
                    "hf_lightning_async": {"blocking_s": 0.5, "resume_to_first_step_s": 5.0}},
    }))
    (tmp_path / "status.tsv").write_text("tests\tpassed in 100s\nstep-gpt2-bf16\tpassed in 40s\nstep-gpt2-bf16-compile\tTIMED OUT after 125s\n")
    table = gpu_check.summary(str(tmp_path)).splitlines()
    assert table[0].startswith("NVIDIA H200; 2026-12-02; torch 2.13.0")
    rows = [line for line in table if line.startswith("| ")]
    assert rows[0] == "| measurement | hf_lightning ÷ transformers.Trainer | hf_lightning ÷ hand-written loop |"
    assert "| `gpt2-bf16` samples/s (median of 1 round(s)) | 1.100× (≥ 1.1: met) | 0.917× (≥ 0.97: NOT met) |" in rows
    assert "| `gpt2-bf16` peak GPU memory | 1.000× (≤ 1.02: met) | 1.250× |" in rows
    assert "| `gpt2-bf16-compile` samples/s | – (TIMED OUT after 125s) | – |" in rows
    assert "| `gpt2-124m-bf16-cuda` save blocks training | 0.500× (≤ 1: met) | n/a (the loop saves nothing) |" in rows
    assert "| `gpt2-124m-bf16-cuda` save blocks training, `async_save=True` | 0.250× (≤ 1: met) | n/a |" in rows
    assert "| `gpt2-124m-bf16-cuda` resume: train() to first step | 1.250× | n/a |" in rows
    assert len(rows) == 1 + 7 and table[-1] == rows[-1]  # header and 7 measurements; the table ends the output


@pytest.mark.slow  # about 2 minutes of CPU: the four steps on tiny CPU workloads
def test_cpu_smoke_runs_every_step_and_ends_with_the_table(tmp_path: Path) -> None:
    done = _run("--cpu-smoke", "--out", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for step in ("tests", "step-gpt2-bf16", "step-gpt2-bf16-compile", "checkpoint-gpt2-124m-bf16-cuda"):
        assert any(line.startswith(f"  {step}: passed in ") for line in lines), step
    assert "CPU SMOKE TEST" in done.stdout and lines[-1].startswith("| `gpt2-124m-bf16-cuda` resume")
    assert {p.name for p in tmp_path.glob("*.json")} == {"step-gpt2-bf16.json", "step-gpt2-bf16-compile.json", "checkpoint-gpt2-124m-bf16-cuda.json"}
