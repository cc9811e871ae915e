"""Profile the training step of one runner with torch.profiler (and say how to get a py-spy flame graph).

Prints, per optimizer step: the number of aten operators each runner dispatches (what the accelerator
is asked to do, on top of the model), the profiler's table sorted by self CPU time, and optionally
writes a Chrome trace. The same workloads and runners as ``bench_step.py``.

Usage::

    python benchmarks/profile_step.py --runner hf_lightning --workload tiny-bert-cpu
    python benchmarks/profile_step.py --runner all --workload tiny-bert-cpu --ops-only   # aten ops per step, all runners
    python benchmarks/profile_step.py --runner hf_lightning --trace /tmp/hl_trace.json
    python benchmarks/profile_step.py --runner all --phases --steps 1500     # ms per step in forward/backward/clip/optimizer/rest
    py-spy record -r 250 -o hl.svg -- python benchmarks/profile_step.py --runner hf_lightning --no-profiler --steps 1000
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_step  # noqa: E402
import common  # noqa: E402


class WindowClock(common.StepClock):
    """Calls ``start()`` after the warm-up steps and ``stop()`` at the end of the timed window."""

    def __init__(self, workload: common.Workload, start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        super().__init__(workload)
        self._start, self._stop = start, stop

    def end(self, step: int) -> None:
        super().end(step)
        if step == self.workload.warmup_steps:
            self._start()
        elif step == self.workload.max_steps:
            self._stop()


class PhaseTimer:
    """Wall time per optimizer step in the model's forward, ``backward``, gradient clipping and ``optimizer.step``, each
    exclusive of the others (Lightning clips inside the optimizer's closure), and the rest: what the loop around them costs.

    Wraps the entry points every runner goes through; only the timed window (after the warm-up steps) is counted.
    """

    PHASES = ("forward", "backward", "clip", "optimizer")

    def __init__(self) -> None:
        self.on = False
        self.total = dict.fromkeys(self.PHASES, 0.0)
        self._stack: list[float] = []  # time spent in nested timed calls, per open call

    def wrap(self, phase: str, fn: Any) -> Any:
        import functools
        import time

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                nested = self._stack.pop()
                self.total[phase] += elapsed - nested
                if self._stack:
                    self._stack[-1] += elapsed

        return timed

    def install(self) -> None:
        import torch
        from transformers import Trainer

        build = common.build_model

        def build_model(workload: common.Workload) -> Any:
            model = build(workload)
            model.forward = self.wrap("forward", model.forward)
            return model

        common.build_model = build_model
        torch.Tensor.backward = self.wrap("backward", torch.Tensor.backward)
        torch.nn.utils.clip_grad_norm_ = self.wrap("clip", torch.nn.utils.clip_grad_norm_)  # the loop, hf_lightning
        Trainer._clip_grad_norm = self.wrap("clip", Trainer._clip_grad_norm)  # transformers (through accelerate)
        torch.optim.AdamW.step = self.wrap("optimizer", torch.optim.AdamW.step)


def phases(runner: str, workload: common.Workload) -> str:
    """One line: ms per step in each phase and the rest, for ``runner``."""
    import tempfile

    import torch

    if workload.threads:
        torch.set_num_threads(workload.threads)
    timer = PhaseTimer()
    timer.install()
    clock = WindowClock(workload, start=lambda: setattr(timer, "on", True), stop=lambda: setattr(timer, "on", False))
    with tempfile.TemporaryDirectory() as tmp:
        if runner == "loop":
            bench_step.run_loop(workload, tmp, clock)
        else:
            bench_step.run_trainer(workload, tmp, runner, clock)
    steps = workload.timed_steps
    step_ms = 1000 * (clock.step_end[workload.max_steps] - clock.step_end[workload.warmup_steps]) / steps
    parts = {phase: 1000 * seconds / steps for phase, seconds in timer.total.items()}
    rest = step_ms - sum(parts.values())
    return f"{runner:>12}: step {step_ms:.3f} ms = " + " + ".join(f"{phase} {ms:.3f}" for phase, ms in parts.items()) + f" + rest {rest:.3f}"


def profile(runner: str, workload: common.Workload, *, use_profiler: bool, trace: str | None, rows: int) -> dict[str, Any]:
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity

    if workload.threads:
        torch.set_num_threads(workload.threads)
    profiler = None
    if use_profiler:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if workload.device == "cuda" else [])
        profiler = torch.profiler.profile(activities=activities)
    clock = WindowClock(workload, start=profiler.start if profiler else lambda: None, stop=profiler.stop if profiler else lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        if runner == "loop":
            bench_step.run_loop(workload, tmp, clock)
        else:
            bench_step.run_trainer(workload, tmp, runner, clock)
    out: dict[str, Any] = {"runner": runner}
    if profiler is None:
        return out
    events = profiler.key_averages()
    ops = collections.Counter({e.key: e.count for e in events if e.key.startswith("aten::")})
    out["aten_ops_per_step"] = sum(ops.values()) / workload.timed_steps
    out["ops"] = {k: v / workload.timed_steps for k, v in ops.items()}
    sort = "self_cuda_time_total" if workload.device == "cuda" else "self_cpu_time_total"
    out["table"] = events.table(sort_by=sort, row_limit=rows)
    if trace:
        profiler.export_chrome_trace(trace)
        out["trace"] = trace
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(bench_step.WORKLOADS), default="tiny-bert-cpu")
    parser.add_argument("--runner", choices=[*bench_step.RUNNERS, "all"], default="hf_lightning")
    parser.add_argument("--steps", type=int, default=50, help="profiled steps (after the workload's warm-up)")
    parser.add_argument("--rows", type=int, default=25, help="rows of the profiler table")
    parser.add_argument("--trace", help="write a Chrome trace (chrome://tracing, Perfetto) to this file")
    parser.add_argument("--ops-only", action="store_true", help="print only aten operators per step and their difference")
    parser.add_argument("--no-profiler", action="store_true", help="just run the steps (to sample with py-spy)")
    parser.add_argument("--phases", action="store_true", help="print ms per step in forward, backward, clipping, optimizer.step and the rest")
    opts = parser.parse_args(argv)
    workload = dataclasses.replace(bench_step.WORKLOADS[opts.workload], timed_steps=opts.steps)
    if opts.runner == "all":
        # One process per runner, like the benchmark.
        for runner in bench_step.RUNNERS:
            cmd = [sys.executable, os.path.abspath(__file__), "--workload", opts.workload, "--runner", runner, "--steps", str(opts.steps)]
            if opts.ops_only:
                cmd.append("--ops-only")
            if opts.phases:
                cmd.append("--phases")
            env = dict(os.environ, PYTHONPATH=common.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
            stdout = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            print(stdout.strip().splitlines()[-1] if opts.ops_only or opts.phases else stdout)
        return
    if opts.phases:
        print(phases(opts.runner, workload))
        return
    result = profile(opts.runner, workload, use_profiler=not opts.no_profiler, trace=opts.trace, rows=opts.rows)
    if opts.no_profiler:
        return
    if opts.ops_only:
        top = sorted(result["ops"].items(), key=lambda kv: -kv[1])
        print(f"{opts.runner}: {result['aten_ops_per_step']:.1f} aten ops/step; " + ", ".join(f"{k.removeprefix('aten::')} {v:g}" for k, v in top[:60]))
        return
    print(f"== {opts.runner} on {opts.workload}: {result['aten_ops_per_step']:.1f} aten operators per step")
    print(result["table"])
    if opts.trace:
        print(f"trace written to {opts.trace}")


if __name__ == "__main__":
    main()
