"""Checkpoint cost for a 124M model: how long a save blocks training, and how long a resume takes.

transformers.Trainer and hf_lightning (and hf_lightning with ``async_save=True`` where the installed
hf_lightning has it) train GPT-2 124M (``GPT2Config()``) for ``max_steps`` steps with
``save_strategy="steps"``, each run in a fresh process, alternating over ``--rounds`` rounds:

- **save blocking**: the time between the end of the saving step and the start of the next step,
  minus the same gap on steps that do not save (both taken from transformers' own ``on_step_end``
  and ``on_step_begin`` events, so the two frameworks are timed at the same points);
- **resume**: in a new process, ``trainer.train(resume_from_checkpoint=<checkpoint-N>)`` until the
  first resumed step begins, against the same from ``train()`` without a checkpoint.

Usage::

    python benchmarks/bench_checkpoint.py                         # GPT-2 124M fp32 on CPU
    python benchmarks/bench_checkpoint.py --workload gpt2-124m-bf16-cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import Workload  # noqa: E402

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            name="gpt2-124m-cpu", model="gpt2", device="cpu", batch_size=1, seq_len=32, warmup_steps=0, timed_steps=4, threads=1,
            description="GPT-2 124M from GPT2Config(), fp32 on CPU (1 torch thread), batches of 1 x 32 tokens, AdamW; saves at steps 2 and 4",
        ),
        Workload(
            name="gpt2-124m-bf16-cuda", model="gpt2", device="cuda", batch_size=16, seq_len=512, warmup_steps=0, timed_steps=4,
            bf16=True, fused_adamw=True,
            description="GPT-2 124M from GPT2Config(), bf16 autocast, batches of 16 x 512 tokens, fused AdamW; saves at steps 2 and 4",
        ),
    ]
}
SAVE_STEP = 2
RUNNERS = ("transformers", "hf_lightning", "hf_lightning_async")


class _Unsupported(Exception):
    pass


def _events_callback(events: dict[str, float]):
    from transformers import TrainerCallback

    class _Events(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            events.setdefault(f"begin_{state.global_step + 1}", time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            common.sync(args.device.type if hasattr(args.device, "type") else "cpu")
            events[f"end_{state.global_step}"] = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            events[f"save_{state.global_step}"] = time.perf_counter()

    return _Events()


def _trainer(runner: str, workload: Workload, output_dir: str, events: dict[str, float]):
    from transformers import Trainer

    import hf_lightning

    args = common.training_arguments(
        workload, output_dir, save_strategy="steps", save_steps=SAVE_STEP, logging_steps=10_000, save_total_limit=None
    )
    kwargs: dict[str, Any] = dict(
        model=common.build_model(workload), args=args, train_dataset=common.build_dataset(workload), callbacks=[_events_callback(events)]
    )
    if runner == "transformers":
        return Trainer(**kwargs)
    extra: dict[str, Any] = {}
    if runner == "hf_lightning_async":
        extra["async_save"] = True
    try:
        return hf_lightning.Trainer(**kwargs, **extra)
    except TypeError as error:
        if "async_save" in str(error):
            raise _Unsupported("this hf_lightning has no async_save") from error
        raise


def worker(runner: str, workload: Workload, phase: str, output_dir: str, resume_from: str | None) -> dict[str, Any]:
    events: dict[str, float] = {}
    try:
        trainer = _trainer(runner, workload, output_dir, events)
    except _Unsupported as error:
        return {"unsupported": str(error)}
    called = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    finished = time.perf_counter()
    first = min(int(k.split("_")[1]) for k in events if k.startswith("begin_"))
    out: dict[str, Any] = {"to_first_step_s": events[f"begin_{first}"] - called, "train_call_s": finished - called}
    if phase == "save":
        gaps = {s: events[f"begin_{s + 1}"] - events[f"end_{s}"] for s in range(1, workload.max_steps) if f"begin_{s + 1}" in events}
        normal = statistics.median([g for s, g in gaps.items() if s != SAVE_STEP])
        out["blocking_s"] = gaps[SAVE_STEP] - normal
        out["save_call_s"] = events[f"save_{SAVE_STEP}"] - events[f"end_{SAVE_STEP}"]
        out["normal_gap_s"] = normal
        out["step_s"] = statistics.median([events[f"end_{s}"] - events[f"begin_{s}"] for s in range(2, workload.max_steps + 1)])
        folder = os.path.join(output_dir, f"checkpoint-{SAVE_STEP}")
        out["files"] = sorted(os.listdir(folder))
        out["checkpoint_mib"] = sum(os.path.getsize(os.path.join(folder, f)) for f in out["files"]) / 2**20
    out.update(common.peak_memory(workload.device))
    return out


def benchmark(workload: Workload, rounds: int, runners: list[str]) -> dict[str, Any]:
    script = os.path.abspath(__file__)
    settings = ["--workload", workload.name, "--settings", json.dumps(dataclasses.asdict(workload))]
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
    unsupported: dict[str, str] = {}
    for round_index in range(rounds):
        for runner in common.rotated(runners, round_index):
            if runner in unsupported:
                continue
            root = tempfile.mkdtemp(prefix="hfl_ckpt_bench_")
            try:
                saved = common.run_worker_process(
                    script, ["--worker", runner, "--phase", "save", "--output", os.path.join(root, "a"), *settings], timeout=3600
                )
                if "unsupported" in saved:
                    unsupported[runner] = saved["unsupported"]
                    print(f"{runner}: skipped ({saved['unsupported']})", file=sys.stderr)
                    continue
                resumed = common.run_worker_process(
                    script,
                    ["--worker", runner, "--phase", "resume", "--output", os.path.join(root, "b"),
                     "--resume-from", os.path.join(root, "a", f"checkpoint-{SAVE_STEP}"), *settings],
                    timeout=3600,
                )
            finally:
                shutil.rmtree(root, ignore_errors=True)
            saved["resume_to_first_step_s"] = resumed["to_first_step_s"]
            runs[runner].append(saved)
            print(
                f"round {round_index + 1}/{rounds} {runner:>18}: save blocks {saved['blocking_s']:.3f} s "
                f"(save call {saved['save_call_s']:.3f} s, step {saved['step_s']:.3f} s); first step after "
                f"{saved['to_first_step_s']:.2f} s fresh, {saved['resume_to_first_step_s']:.2f} s resumed",
                file=sys.stderr,
                flush=True,
            )
    summary = {}
    for runner, results in runs.items():
        if not results:
            continue
        summary[runner] = {
            key: common.median([r[key] for r in results])
            for key in ("blocking_s", "save_call_s", "step_s", "to_first_step_s", "resume_to_first_step_s", "checkpoint_mib", "peak_rss_mib")
        }
        summary[runner]["files"] = results[0]["files"]
        summary[runner]["blocking_rounds"] = [r["blocking_s"] for r in results]
    return {
        "kind": "checkpoint",
        "workload": workload.name,
        "description": workload.description,
        "settings": {k: v for k, v in dataclasses.asdict(workload).items() if k not in ("name", "description")},
        "rounds": rounds,
        "environment": common.environment(workload.threads),
        "summary": summary,
        "unsupported": unsupported,
    }


def checkpoint_table(payload: dict[str, Any]) -> str:
    summary = payload["summary"]
    env = payload["environment"]
    rows = []
    for runner in RUNNERS:
        s = summary.get(runner)
        if s is None:
            continue
        rows.append(
            [
                runner,
                common.fmt(s["blocking_s"], 3),
                common.fmt(s["save_call_s"], 3),
                common.fmt(s["step_s"], 3),
                common.fmt(s["to_first_step_s"], 2),
                common.fmt(s["resume_to_first_step_s"], 2),
                common.fmt(s["resume_to_first_step_s"] - s["to_first_step_s"], 2),
                common.fmt(s["checkpoint_mib"], 0),
            ]
        )
    header = [
        "runner", "save blocks training (s)", "save call (s)", "step (s)", "train() to first step, fresh (s)",
        "train() to first step, resumed (s)", "resume cost (s)", "checkpoint MiB",
    ]
    lines = [
        f"### `{payload['workload']}`: {payload['description']}\n",
        f"{env['device']}; {env['date']}; torch {env['torch']}, transformers {env['transformers']}, lightning {env['lightning']}, "
        f"hf_lightning @ {env['hf_lightning']}. Median of {payload['rounds']} alternating rounds, one process per run.\n",
        common.markdown_table(header, rows),
        "",
    ]
    hf, hl = summary.get("transformers"), summary.get("hf_lightning")
    if hf and hl:
        lines.append(
            f"- hf_lightning / transformers: save blocking **{hl['blocking_s'] / hf['blocking_s']:.3f}×**, "
            f"resume to first step **{hl['resume_to_first_step_s'] / hf['resume_to_first_step_s']:.3f}×**"
        )
    hla = summary.get("hf_lightning_async")
    if hf and hla:
        lines.append(f"- hf_lightning async_save / transformers: save blocking **{hla['blocking_s'] / hf['blocking_s']:.3f}×**")
    for runner, why in payload.get("unsupported", {}).items():
        lines.append(f"- {runner}: not measured ({why}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="gpt2-124m-cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated subset of {','.join(RUNNERS)}")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/checkpoint-<workload>.json")
    parser.add_argument("--package", help="measure the hf_lightning in this folder instead of this checkout's")
    parser.add_argument("--package-label", help="how to name --package in the results (e.g. main@abc1234)")
    parser.add_argument("--worker", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("save", "resume"), help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--resume-from", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    common.use_package(opts.package, opts.package_label)
    workload = Workload(**json.loads(opts.settings)) if opts.settings else WORKLOADS[opts.workload]
    if opts.worker:
        import torch

        if workload.threads:
            torch.set_num_threads(workload.threads)
        common.write_result(opts.result, worker(opts.worker, workload, opts.phase, opts.output, opts.resume_from))
        return
    runners = common.check_run_options(parser, opts.runners, RUNNERS, workload, cpu_workload="gpt2-124m-cpu")
    payload = benchmark(workload, opts.rounds, runners)
    print(checkpoint_table(payload))
    if not opts.no_save:
        print(f"\nsaved {common.save_results('checkpoint-' + workload.name, payload)}", file=sys.stderr)


if __name__ == "__main__":
    main()
