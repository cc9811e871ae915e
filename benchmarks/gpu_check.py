"""The Python half of ``benchmarks/gpu_check.sh``: the benchmark steps with few rounds, and the summary table.

    python benchmarks/gpu_check.py step gpt2-bf16 --rounds 1 --json OUT/step-gpt2-bf16.json
    python benchmarks/gpu_check.py checkpoint gpt2-124m-bf16-cuda --rounds 1 --json OUT/checkpoint.json
    python benchmarks/gpu_check.py summary OUT          # OUT/status.tsv + OUT/*.json -> one table of ratios

``step`` and ``checkpoint`` run ``bench_step.benchmark`` / ``bench_checkpoint.benchmark`` (one fresh process per
runner and round, as those scripts do) and write the payload to ``--json``; ``--save-results`` also stores it
under ``benchmarks/results/`` (where ``bench_step.py --markdown`` finds it). ``--cpu-smoke`` swaps the workload
for a tiny CPU one with a few steps: it checks the plumbing on a machine without a GPU, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# (workload, what, hf_lightning ÷ transformers target, hf_lightning ÷ loop target): issue 6's targets, None = none set.
STEP_TARGETS = {
    "gpt2-bf16": {"samples/s": (1.1, 0.97), "peak memory": (1.02, None)},
    "gpt2-bf16-compile": {"samples/s": (1.2, 0.95), "peak memory": (1.02, None)},
}
CHECKPOINT_TARGET = 1.0  # issue 12: a save blocks no longer than transformers'

SMOKE_STEP = dict(model="tiny-bert", device="cpu", batch_size=4, seq_len=16, warmup_steps=2, timed_steps=10, logging_steps=5,
                  bf16=False, compile=False, fused_adamw=False, threads=1)
SMOKE_CHECKPOINT = dict(model="tiny-bert", device="cpu", batch_size=2, seq_len=16, warmup_steps=0, timed_steps=4, threads=1,
                        bf16=False, fused_adamw=False)


def _workload(module: Any, name: str, cpu_smoke: bool, overrides: dict[str, Any], smoke: dict[str, Any]) -> common.Workload:
    if name not in module.WORKLOADS:
        raise SystemExit(f"unknown workload {name!r}; valid: {sorted(module.WORKLOADS)}")
    workload = module.WORKLOADS[name]
    if cpu_smoke:
        workload = dataclasses.replace(workload, **smoke, description=f"CPU smoke test of {name}'s plumbing (numbers mean nothing)")
    return dataclasses.replace(workload, **{k: v for k, v in overrides.items() if v is not None})


def _write(payload: dict[str, Any], path: str | None, save_as: str | None) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
    if save_as:
        print(f"saved {common.save_results(save_as, payload)}", file=sys.stderr)


def run_step(opts: argparse.Namespace) -> None:
    import bench_step

    workload = _workload(bench_step, opts.workload, opts.cpu_smoke, {"warmup_steps": opts.warmup_steps, "timed_steps": opts.timed_steps}, SMOKE_STEP)
    if workload.device == "cuda":
        _require_cuda(workload.name)
    payload = bench_step.benchmark(workload, opts.rounds, list(bench_step.RUNNERS), count_calls=False)
    print(bench_step.step_table(payload))
    _write(payload, opts.json, workload.name if opts.save_results and not opts.cpu_smoke else None)


def run_checkpoint(opts: argparse.Namespace) -> None:
    import bench_checkpoint

    workload = _workload(bench_checkpoint, opts.workload, opts.cpu_smoke, {}, SMOKE_CHECKPOINT)
    if workload.device == "cuda":
        _require_cuda(workload.name)
    payload = bench_checkpoint.benchmark(workload, opts.rounds, list(bench_checkpoint.RUNNERS))
    print(bench_checkpoint.checkpoint_table(payload))
    _write(payload, opts.json, "checkpoint-" + workload.name if opts.save_results and not opts.cpu_smoke else None)


def _require_cuda(name: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"workload {name} needs a CUDA device; this machine has none (try --cpu-smoke)")


# -------------------------------------------------------------------------------------- summary


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def _cell(value: float | None, target: float | None, higher_is_better: bool) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}×"
    if target is None:
        return text
    met = value >= target if higher_is_better else value <= target
    return f"{text} ({'≥' if higher_is_better else '≤'} {target:g}: {'met' if met else 'NOT met'})"


def summary_rows(payloads: dict[str, dict[str, Any]], status: dict[str, str]) -> list[list[str]]:
    """One row per measurement: [measurement, hf_lightning ÷ transformers.Trainer, hf_lightning ÷ loop]."""
    rows: list[list[str]] = []
    for name in ("gpt2-bf16", "gpt2-bf16-compile"):
        payload = payloads.get(f"step-{name}")
        if payload is None:
            why = status.get(f"step-{name}", "not run")
            rows.append([f"`{name}` samples/s", f"– ({why})", "–"])
            rows.append([f"`{name}` peak GPU memory", f"– ({why})", "–"])
            continue
        summary = payload["summary"]
        hl, hf, loop = summary.get("hf_lightning", {}), summary.get("transformers", {}), summary.get("loop", {})
        (sps_hf, sps_loop), (mem_hf, mem_loop) = STEP_TARGETS.get(name, {}).get("samples/s", (None, None)), STEP_TARGETS.get(name, {}).get("peak memory", (None, None))
        rows.append([
            f"`{name}` samples/s (median of {payload['rounds']} round(s))",
            _cell(_ratio(hl.get("samples_per_s"), hf.get("samples_per_s")), sps_hf, True),
            _cell(_ratio(hl.get("samples_per_s"), loop.get("samples_per_s")), sps_loop, True),
        ])
        rows.append([
            f"`{name}` peak GPU memory",
            _cell(_ratio(hl.get("peak_mib"), hf.get("peak_mib")), mem_hf, False),
            _cell(_ratio(hl.get("peak_mib"), loop.get("peak_mib")), mem_loop, False),
        ])
    payload = next((p for key, p in payloads.items() if key.startswith("checkpoint-")), None)
    if payload is None:
        why = next((s for key, s in status.items() if key.startswith("checkpoint")), "not run")
        rows.append(["checkpoint save blocks training", f"– ({why})", "n/a (the loop saves nothing)"])
        return rows
    summary = payload["summary"]
    hf, hl, hla = summary.get("transformers", {}), summary.get("hf_lightning", {}), summary.get("hf_lightning_async", {})
    label = f"`{payload['workload']}`"
    rows.append([f"{label} save blocks training", _cell(_ratio(hl.get("blocking_s"), hf.get("blocking_s")), CHECKPOINT_TARGET, False),
                 "n/a (the loop saves nothing)"])
    if hla:
        rows.append([f"{label} save blocks training, `async_save=True`", _cell(_ratio(hla.get("blocking_s"), hf.get("blocking_s")), CHECKPOINT_TARGET, False),
                     "n/a"])
    rows.append([f"{label} resume: train() to first step", _cell(_ratio(hl.get("resume_to_first_step_s"), hf.get("resume_to_first_step_s")), None, False),
                 "n/a"])
    return rows


def read_status(folder: str) -> dict[str, str]:
    """``status.tsv``: one ``step<TAB>outcome`` line per step that gpu_check.sh ran."""
    path = os.path.join(folder, "status.tsv")
    status: dict[str, str] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "\t" in line:
                    step, outcome = line.rstrip("\n").split("\t", 1)
                    status[step] = outcome
    return status


def read_payloads(folder: str) -> dict[str, dict[str, Any]]:
    payloads = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                payloads[name[: -len(".json")]] = json.load(f)
    return payloads


def summary(folder: str) -> str:
    status = read_status(folder)
    payloads = read_payloads(folder)
    env = next((p["environment"] for p in payloads.values() if p.get("environment")), None)
    lines = []
    if any(p.get("settings", {}).get("device") == "cpu" for p in payloads.values()):
        lines.append("CPU SMOKE TEST (--cpu-smoke): tiny CPU workloads under the GPU workloads' names; the numbers mean nothing.")
    if env:
        lines.append(f"{env['device']}; {env['date']}; torch {env['torch']}, transformers {env['transformers']}, lightning {env['lightning']}, "
                     f"hf_lightning @ {env['hf_lightning']}")
    lines.append("")
    lines.append(common.markdown_table(["measurement", "hf_lightning ÷ transformers.Trainer", "hf_lightning ÷ hand-written loop"],
                                       summary_rows(payloads, status)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="bench_step.py on one workload, all three runners")
    step.add_argument("workload")
    step.add_argument("--rounds", type=int, default=1)
    step.add_argument("--warmup-steps", type=int)
    step.add_argument("--timed-steps", type=int)
    checkpoint = sub.add_parser("checkpoint", help="bench_checkpoint.py on one workload, every runner")
    checkpoint.add_argument("workload")
    checkpoint.add_argument("--rounds", type=int, default=1)
    for p in (step, checkpoint):
        p.add_argument("--json", help="write the payload here")
        p.add_argument("--save-results", action="store_true", help="also save it under benchmarks/results/ (for the docs)")
        p.add_argument("--cpu-smoke", action="store_true", help="a tiny CPU workload instead: checks the plumbing only")
    report = sub.add_parser("summary", help="the table of ratios of a gpu_check.sh output folder")
    report.add_argument("folder")
    opts = parser.parse_args(argv)
    if opts.command == "step":
        run_step(opts)
    elif opts.command == "checkpoint":
        run_checkpoint(opts)
    else:
        print(summary(opts.folder))


if __name__ == "__main__":
    main()
