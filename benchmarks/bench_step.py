"""Training-step speed: a hand-written PyTorch loop vs transformers.Trainer vs hf_lightning, same work.

Each run is a fresh process; runners alternate over ``--rounds`` rounds (the order rotates every
round) and the medians are reported. All three runners train the same model (built from its config
with the same seed) on the same data in the same order (accelerate's ``SeedableRandomSampler``, the
sampler transformers.Trainer iterates), with the same AdamW, linear schedule, clipping at
``max_grad_norm`` and a loss/grad-norm/lr log every ``logging_steps`` steps. The first
``warmup_steps`` steps are not timed. The time is taken at the end of every optimizer step (with a
GPU synchronisation at the two ends of the timed window only), through transformers' own
``on_step_end`` event for both Trainers and at the same point of the hand-written loop.

Usage::

    python benchmarks/bench_step.py --workload tiny-bert-cpu            # CPU, overhead-bound
    python benchmarks/bench_step.py --workload gpt2-bf16                # GPU, eager
    python benchmarks/bench_step.py --workload gpt2-bf16-compile        # GPU, torch.compile
    python benchmarks/bench_step.py --markdown                          # the results table (all saved results)
    python benchmarks/bench_step.py --markdown --write-docs             # ... written to docs/benchmarks.md

Results are saved as ``benchmarks/results/<workload>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import Workload  # noqa: E402

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            name="tiny-bert-cpu", model="tiny-bert", device="cpu", batch_size=16, seq_len=32,
            warmup_steps=30, timed_steps=400, threads=1,
            description="BertForSequenceClassification (hidden 32, 2 layers, vocab 99), fp32, batches of 16 x 32 tokens, AdamW, 1 intra-op thread",
        ),
        Workload(
            name="tiny-bert-cpu-progress-bar", model="tiny-bert", device="cpu", batch_size=16, seq_len=32,
            warmup_steps=30, timed_steps=400, threads=1, progress_bar=True,
            description="as tiny-bert-cpu, with the tqdm progress bar on (transformers' default, disable_tqdm=False)",
        ),
        Workload(
            name="gpt2-bf16", model="gpt2", device="cuda", batch_size=16, seq_len=512,
            warmup_steps=10, timed_steps=50, bf16=True, fused_adamw=True,
            description="GPT-2 124M from GPT2Config(), bf16 autocast, batches of 16 x 512 tokens, fused AdamW",
        ),
        Workload(
            name="gpt2-bf16-compile", model="gpt2", device="cuda", batch_size=16, seq_len=512,
            warmup_steps=15, timed_steps=50, bf16=True, fused_adamw=True, compile=True,
            description="as gpt2-bf16, with torch_compile=True (torch.compile, inductor)",
        ),
    ]
}
RUNNERS = ("loop", "transformers", "hf_lightning")


# ------------------------------------------------------------------------------------- runners


def run_loop(workload: Workload, tmp: str, clock: common.StepClock) -> dict[str, Any]:
    """The hand-written PyTorch loop: what a careful engineer writes without a framework."""
    import torch
    from accelerate.data_loader import SeedableRandomSampler
    from transformers import default_data_collator, get_scheduler, set_seed
    from transformers.trainer_pt_utils import get_parameter_names

    device = workload.device
    model = common.build_model(workload).to(device)
    set_seed(common.SEED)
    dataset = common.build_dataset(workload)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=workload.batch_size,
        sampler=SeedableRandomSampler(dataset, data_seed=common.SEED),
        collate_fn=default_data_collator,
        pin_memory=device == "cuda",
    )
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": workload.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=workload.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=workload.fused_adamw or None)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=workload.max_steps)
    forward = torch.compile(model) if workload.compile else model
    bar = None
    if workload.progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=workload.max_steps)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=workload.bf16)
    model.train()
    tr_loss = torch.zeros((), device=device)
    step = 0
    for batch in loader:
        clock.begin(step + 1)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = forward(**batch).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), workload.max_grad_norm)
        optimizer.step()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tr_loss += loss.detach()
        step += 1
        if step % workload.logging_steps == 0:
            logs = {"loss": tr_loss.item() / workload.logging_steps, "grad_norm": grad_norm.item(), "learning_rate": learning_rate}
            tr_loss.zero_()
            clock.losses.append(logs["loss"])
            (bar.write if bar is not None else print)(str(logs))
        if bar is not None:
            bar.update(1)
        clock.end(step)
        if step == workload.max_steps:
            break
    return clock.summary()


def run_trainer(workload: Workload, tmp: str, framework: str, clock: common.StepClock) -> dict[str, Any]:
    """transformers.Trainer or hf_lightning.Trainer, with the same arguments and data."""
    from transformers import Trainer

    import hf_lightning

    model = common.build_model(workload)
    args = common.training_arguments(workload, os.path.join(tmp, framework))
    kwargs: dict[str, Any] = dict(model=model, args=args, train_dataset=common.build_dataset(workload), callbacks=[common.timing_callback(clock)])
    if framework == "hf_lightning":
        trainer = hf_lightning.Trainer(**kwargs)  # the defaults a user gets
    else:
        trainer = Trainer(**kwargs)
    trainer.train()
    return clock.summary()


def worker(runner: str, workload: Workload, tmp: str, count_calls: bool = False) -> dict[str, Any]:
    import torch

    if workload.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"workload {workload.name} needs a CUDA device")
    if workload.threads:
        torch.set_num_threads(workload.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    clock = common.StepClock(workload, count_calls=count_calls)
    if runner == "loop":
        out = run_loop(workload, tmp, clock)
    else:
        out = run_trainer(workload, tmp, runner, clock)
    out.update(common.peak_memory(workload.device))
    out["process_seconds"] = time.perf_counter() - started
    out["load_before"] = load_before
    return out


# --------------------------------------------------------------------------------------- parent


def benchmark(workload: Workload, rounds: int, runners: list[str], count_calls: bool = True) -> dict[str, Any]:
    script = os.path.abspath(__file__)
    settings = ["--workload", workload.name, "--settings", json.dumps(dataclasses.asdict(workload))]
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
    for round_index in range(rounds):
        for runner in common.rotated(runners, round_index):
            result = common.run_worker_process(script, ["--worker", runner, *settings], timeout=3600)
            runs[runner].append(result)
            print(
                f"round {round_index + 1}/{rounds} {runner:>13}: {result['samples_per_s']:9.1f} samples/s, "
                f"{result['step_ms']:7.3f} ms/step, {result['cpu_step_ms']:7.3f} CPU ms/step, peak {_memory(result):.0f} MiB, "
                f"load {result['load_before']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    calls: dict[str, float] = {}
    if count_calls:
        short = dataclasses.replace(workload, timed_steps=min(workload.timed_steps, 50))
        short_settings = ["--workload", workload.name, "--settings", json.dumps(dataclasses.asdict(short))]
        for runner in runners:
            calls[runner] = common.run_worker_process(script, ["--worker", runner, *short_settings, "--count-calls"], timeout=3600)["calls_per_step"]
            print(f"{runner:>13}: {calls[runner]:.0f} Python calls per step", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for runner, results in runs.items():
        rates = [r["samples_per_s"] for r in results]
        summary[runner] = {
            "samples_per_s": common.median(rates),
            "best_samples_per_s": max(rates),
            "step_ms": common.median([r["step_ms"] for r in results]),
            "best_step_ms": min(r["step_ms"] for r in results),
            "cpu_step_ms": common.median([r["cpu_step_ms"] for r in results]),
            "mean_step_ms": common.median([r["mean_step_ms"] for r in results]),
            "spread_pct": common.spread(rates),
            "peak_mib": common.median([_memory(r) for r in results]),
            "calls_per_step": calls.get(runner),
            "last_loss": results[0]["losses"][-1] if results[0]["losses"] else None,
            "rounds": rates,
            "cpu_rounds": [r["cpu_step_ms"] for r in results],
            "load": [r["load_before"] for r in results],
        }
    return {
        "kind": "step",
        "workload": workload.name,
        "description": workload.description,
        "settings": {k: v for k, v in dataclasses.asdict(workload).items() if k not in ("name", "description")},
        "rounds": rounds,
        "environment": common.environment(workload.threads),
        "summary": summary,
    }


def _memory(result: dict[str, Any]) -> float:
    return result.get("peak_gpu_mib", result["peak_rss_mib"])


RATIO_KEYS = (
    ("samples/s (median)", "samples_per_s", False),
    ("samples/s (best round)", "best_samples_per_s", False),
    ("CPU time per step", "cpu_step_ms", True),
    ("Python calls per step", "calls_per_step", True),
    ("peak memory", "peak_mib", True),
)


def ratios(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """hf_lightning against each other runner; for costs (time, calls, memory) the ratio is hf_lightning/other."""
    hl = summary.get("hf_lightning")
    out: dict[str, dict[str, float]] = {}
    if hl is None:
        return out
    for other in ("loop", "transformers"):
        if other not in summary:
            continue
        out[other] = {}
        for label, key, _ in RATIO_KEYS:
            if hl.get(key) and summary[other].get(key):
                out[other][label] = hl[key] / summary[other][key]
        # Rounds pair the runners in time: the median of per-round ratios cancels slow changes in machine load.
        pairs = list(zip(hl.get("rounds", []), summary[other].get("rounds", [])))
        if pairs:
            out[other]["samples/s (median of per-round ratios)"] = common.median([a / b for a, b in pairs])
        cpu_pairs = list(zip(hl.get("cpu_rounds", []), summary[other].get("cpu_rounds", [])))
        if cpu_pairs:
            out[other]["CPU time per step (median of per-round ratios)"] = common.median([a / b for a, b in cpu_pairs])
    return out


def step_table(payload: dict[str, Any]) -> str:
    summary = payload["summary"]
    loop = summary.get("loop")
    cuda = payload["settings"]["device"] == "cuda"
    memory = "peak GPU MiB" if cuda else "peak RSS MiB"
    rows = []
    for runner in RUNNERS:
        if runner not in summary:
            continue
        s = summary[runner]
        overhead = (s["step_ms"] - loop["step_ms"]) if loop and runner != "loop" else (0.0 if runner == "loop" else None)
        rows.append(
            [
                runner,
                common.fmt(s["samples_per_s"], 1),
                common.fmt(s["best_samples_per_s"], 1),
                common.fmt(s["step_ms"], 3),
                common.fmt(overhead, 3),
                common.fmt(s["cpu_step_ms"], 3),
                common.fmt(s.get("calls_per_step"), 0),
                f"{s['spread_pct']:.0f}%",
                common.fmt(s["peak_mib"], 0),
                common.fmt(s["samples_per_s"] / loop["samples_per_s"], 3) if loop else "–",
                common.fmt(s["last_loss"], 4),
            ]
        )
    header = [
        "runner", "samples/s (median)", "samples/s (best)", "ms/step", "overhead ms/step vs loop", "CPU ms/step",
        "Python calls/step", "spread", memory, "× loop (median)", "last logged loss",
    ]
    lines = [markdown_heading(payload), common.markdown_table(header, rows), ""]
    for other, values in ratios(summary).items():
        lines.append(f"- hf_lightning / {other}: " + ", ".join(f"{label} **{value:.3f}×**" for label, value in values.items()))
    return "\n".join(lines)


def _load_note(payload: dict[str, Any]) -> str:
    loads = [x for s in payload["summary"].values() for x in s.get("load", [])]
    if not loads:
        return ""
    return (
        f"Load average when runs started: median {common.median(loads):.1f}, max {max(loads):.1f} "
        f"(other processes shared the machine; compare the CPU-time and call columns, and the paired ratios)."
    )


def markdown_heading(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    return (
        f"### `{payload['workload']}`: {payload['description']}\n\n"
        f"{env['device']}; {env['date']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"lightning {env['lightning']}, accelerate {env['accelerate']}, Python {env['python']}, hf_lightning @ {env['hf_lightning']}. "
        f"{payload['settings'].get('timed_steps', '')} timed steps after {payload['settings'].get('warmup_steps', '')} warm-up steps, "
        f"median of {payload['rounds']} alternating rounds, one process per run. {_load_note(payload)}\n"
    )


METHOD = """\
How the numbers are taken (`benchmarks/bench_step.py`):

- Three runners do the same work: the same model built from its config with the same seed, the same data in the
  same order (accelerate's `SeedableRandomSampler`, which transformers.Trainer iterates), the same AdamW and
  parameter groups, a linear schedule, clipping at `max_grad_norm=1.0`, and a loss/grad-norm/lr log every 10 steps
  (the hand-written loop reads the loss with `.item()` only then). The "last logged loss" column shows they
  computed the same thing.
- Each run is a fresh process; the runners alternate round by round (the order rotates) and the tables give medians
  over rounds. Warm-up steps are not timed. Time is read at the end of every optimizer step (transformers'
  `on_step_end` event for both Trainers, the same point in the loop), synchronising the GPU only at the two ends of
  the timed window. ms/step is the median over windows of 10 steps (each holds one logging step), which keeps
  the logging cost in and bursts of other processes out.
- CPU ms/step is the process CPU time per step (all threads); Python calls/step counts every Python function and
  builtin call during the timed window (`sys.setprofile`, in a separate short run). Both are far less sensitive
  than wall-clock time to other processes sharing the machine.
- Peak memory: `torch.cuda.max_memory_allocated()` on a GPU, the process's peak RSS on CPU.
"""


def _status(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured here (needs a GPU)"
    met = value >= target if higher_is_better else value <= target
    return f"{value:.3f}× ({'met' if met else 'not met'})"


def targets_table(results: list[dict[str, Any]]) -> str:
    """Issues 6 and 12's targets against the saved results."""
    by_name = {r["workload"]: r for r in results if r.get("kind") == "step"}
    ckpt = {r["workload"]: r for r in results if r.get("kind") == "checkpoint"}

    def ratio(workload: str, other: str, label: str = "samples/s (median)") -> float | None:
        payload = by_name.get(workload)
        return ratios(payload["summary"]).get(other, {}).get(label) if payload else None

    rows = [
        ["CPU, tiny BERT: hf_lightning ≥ 1.0× transformers.Trainer (samples/s)", _status(ratio("tiny-bert-cpu", "transformers"), 1.0, True)],
        ["CPU, tiny BERT: same, median of per-round ratios (samples/s)", _status(ratio("tiny-bert-cpu", "transformers", "samples/s (median of per-round ratios)"), 1.0, True)],
        ["CPU, tiny BERT: CPU time per step ≤ transformers.Trainer's", _status(ratio("tiny-bert-cpu", "transformers", "CPU time per step"), 1.0, False)],
        ["CPU, tiny BERT: Python calls per step ≤ transformers.Trainer's", _status(ratio("tiny-bert-cpu", "transformers", "Python calls per step"), 1.0, False)],
        ["CPU, tiny BERT: ≥ 0.97× hand-written loop, median of per-round ratios (issue 12)", _status(ratio("tiny-bert-cpu", "loop", "samples/s (median of per-round ratios)"), 0.97, True)],
        ["GPU, GPT-2 bf16 eager: ≥ 0.97× hand-written loop", _status(ratio("gpt2-bf16", "loop"), 0.97, True)],
        ["GPU, GPT-2 bf16 eager: ≥ 1.1× transformers.Trainer", _status(ratio("gpt2-bf16", "transformers"), 1.1, True)],
        ["GPU, GPT-2 bf16 compiled: ≥ 0.95× hand-written loop", _status(ratio("gpt2-bf16-compile", "loop"), 0.95, True)],
        ["GPU, GPT-2 bf16 compiled: ≥ 1.2× transformers.Trainer", _status(ratio("gpt2-bf16-compile", "transformers"), 1.2, True)],
        ["GPU peak memory ≤ 1.02× transformers.Trainer (eager)", _status(ratio("gpt2-bf16", "transformers", "peak memory"), 1.02, False)],
        ["GPU peak memory ≤ 1.02× transformers.Trainer (compiled)", _status(ratio("gpt2-bf16-compile", "transformers", "peak memory"), 1.02, False)],
        ["No host-device synchronisation per step except at logging steps", "checked by `tests/test_host_sync.py` (CPU; the CUDA variant runs where a GPU is present)"],
    ]
    for name, payload in sorted(ckpt.items()):
        summary = payload["summary"]
        hf, hl, hla = summary.get("transformers"), summary.get("hf_lightning"), summary.get("hf_lightning_async")
        if hf and hl:
            rows.append([f"{name}: checkpoint blocking ≤ transformers.Trainer", _status(hl["blocking_s"] / hf["blocking_s"], 1.0, False)])
        if hf and hla:
            rows.append([f"{name}: blocking with async_save < transformers.Trainer", _status(hla["blocking_s"] / hf["blocking_s"], 1.0, False)])
        elif hf:
            rows.append([f"{name}: blocking with async_save < transformers.Trainer", "not measured (async_save not in this build)"])
    return common.markdown_table(["target", "measured (hf_lightning ÷ other)"], rows)


def markdown_document() -> str:
    import bench_checkpoint

    results = common.load_results()
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/bench_step.py --markdown --write-docs` from `benchmarks/results/*.json`;",
        "each table comes from `benchmarks/bench_step.py --workload NAME` or `benchmarks/bench_checkpoint.py` run on the",
        "device named under it. Workloads that need a GPU appear only once they were run on one.",
        "",
        "## Targets (issues 6 and 12)",
        "",
        targets_table(results),
        "",
        "## Training step: hand-written loop vs transformers.Trainer vs hf_lightning",
        "",
        METHOD,
    ]
    steps = [r for r in results if r.get("kind") == "step"]
    parts += [step_table(r) + "\n" for r in steps] or ["No step results saved yet.\n"]
    checkpoints = [r for r in results if r.get("kind") == "checkpoint"]
    if checkpoints:
        parts += ["## Checkpoints: time a save blocks training, and resume time", "", bench_checkpoint.__doc__.split("Usage::")[0].split("\n", 2)[2].strip(), ""]
        parts += [bench_checkpoint.checkpoint_table(r) + "\n" for r in checkpoints]
    return "\n".join(parts)


README_START, README_END = "<!-- benchmark-results:start -->", "<!-- benchmark-results:end -->"


def readme_table() -> str:
    """The short results table of the README: one row per saved result, with its device, date and versions."""
    rows = []
    for payload in common.load_results():
        env, summary = payload["environment"], payload["summary"]
        where = f"{env['device']}; {env['date']}; torch {env['torch']}, transformers {env['transformers']}, lightning {env['lightning']}"
        if payload.get("kind") == "step":
            r = ratios(summary)
            sps = " / ".join(f"{summary[k]['samples_per_s']:.0f}" if k in summary else "–" for k in RUNNERS)
            rows.append([f"`{payload['workload']}` samples/s (loop / transformers / hf_lightning)", sps,
                         f"{r.get('loop', {}).get('samples/s (median)', float('nan')):.2f}×",
                         f"{r.get('transformers', {}).get('samples/s (median)', float('nan')):.2f}×", where])
        elif payload.get("kind") == "checkpoint":
            hf, hl, hla = (summary.get(k) for k in ("transformers", "hf_lightning", "hf_lightning_async"))
            if hf and hl:
                blocking = f"{hf['blocking_s']:.2f} / {hl['blocking_s']:.2f}" + (f" / {hla['blocking_s']:.2f} async" if hla else "")
                rows.append([f"`{payload['workload']}` seconds a save blocks training (transformers / hf_lightning)", blocking, "–",
                             f"{hl['blocking_s'] / hf['blocking_s']:.2f}×" + (f" ({hla['blocking_s'] / hf['blocking_s']:.2f}× async)" if hla else ""), where])
    table = common.markdown_table(["benchmark", "measured", "hf_lightning ÷ loop", "hf_lightning ÷ transformers", "device, date, versions"], rows)
    return f"{README_START}\n{table}\n{README_END}"


def write_readme_table(path: str) -> bool:
    """Replace the table between the README's markers; False when the README has no markers."""
    with open(path) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    with open(path, "w") as f:
        f.write(head + readme_table() + rest.split(README_END, 1)[1])
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), help="the workload to run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (one process per runner per round)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated subset of {','.join(RUNNERS)}")
    parser.add_argument("--warmup-steps", type=int, help="override the workload's warm-up steps")
    parser.add_argument("--timed-steps", type=int, help="override the workload's timed steps")
    parser.add_argument("--no-count-calls", action="store_true", help="skip the extra run per runner that counts Python calls per step")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/<workload>.json")
    parser.add_argument("--markdown", action="store_true", help="print the markdown results table of all saved results")
    parser.add_argument("--write-docs", action="store_true", help="with --markdown: write it to docs/benchmarks.md and the README's results table")
    parser.add_argument("--package", help="measure the hf_lightning in this folder instead of this checkout's")
    parser.add_argument("--package-label", help="how to name --package in the results (e.g. main@abc1234)")
    parser.add_argument("--worker", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--count-calls", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    common.use_package(opts.package, opts.package_label)

    if opts.worker:
        workload = Workload(**json.loads(opts.settings)) if opts.settings else WORKLOADS[opts.workload]
        common.write_result(opts.result, worker(opts.worker, workload, opts.tmp, count_calls=opts.count_calls))
        return
    if opts.workload:
        workload = WORKLOADS[opts.workload]
        overrides = {k: v for k, v in (("warmup_steps", opts.warmup_steps), ("timed_steps", opts.timed_steps)) if v is not None}
        if overrides:
            workload = dataclasses.replace(workload, **overrides)
        runners = common.check_run_options(parser, opts.runners, RUNNERS, workload, cpu_workload="tiny-bert-cpu")
        payload = benchmark(workload, opts.rounds, runners, count_calls=not opts.no_count_calls)
        print(step_table(payload))
        if not opts.no_save:
            print(f"\nsaved {common.save_results(workload.name, payload)}", file=sys.stderr)
    if opts.markdown:
        document = markdown_document()
        if opts.write_docs:
            path = os.path.join(common.REPO, "docs", "benchmarks.md")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(document + "\n")
            print(f"wrote {path}", file=sys.stderr)
            readme = os.path.join(common.REPO, "README.md")
            if write_readme_table(readme):
                print(f"wrote the results table of {readme}", file=sys.stderr)
        else:
            print(document)
    if not opts.workload and not opts.markdown:
        parser.error("give --workload NAME and/or --markdown")


if __name__ == "__main__":
    main()
