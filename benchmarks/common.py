"""What the benchmark scripts share: workloads, datasets, the timing callback, process plumbing, reports.

Every measured run happens in a fresh Python process (``python <script> --worker ...``) so that
imports, allocator state and compiled kernels of one runner never help or hurt another. The parent
alternates the runners round by round and reports medians.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
SEED = 42
MODEL_SEED = 0


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark setting, identical for every runner."""

    name: str
    model: str  # "tiny-bert" | "gpt2"
    device: str  # "cpu" | "cuda"
    batch_size: int
    seq_len: int
    warmup_steps: int
    timed_steps: int
    logging_steps: int = 10
    bf16: bool = False
    compile: bool = False
    fused_adamw: bool = False
    max_grad_norm: float = 1.0
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress_bar: bool = False  # transformers' default is a tqdm bar (disable_tqdm=False); off, both print the logs
    description: str = ""

    @property
    def max_steps(self) -> int:
        return self.warmup_steps + self.timed_steps

    @property
    def optim(self) -> str:
        return "adamw_torch_fused" if self.fused_adamw else "adamw_torch"


def build_model(workload: Workload) -> torch.nn.Module:
    """The model, from its config (nothing downloaded), with the same seed for every runner."""
    torch.manual_seed(MODEL_SEED)
    if workload.model == "tiny-bert":
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99,
            max_position_embeddings=64, num_labels=2,
        )
        return BertForSequenceClassification(config)
    if workload.model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config())
    raise ValueError(f"unknown model {workload.model!r}")


class TokenDataset(torch.utils.data.Dataset):
    """``n`` fixed-length random token sequences (classification labels or causal-LM labels)."""

    def __init__(self, n: int, seq_len: int, vocab: int, *, causal_lm: bool, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, vocab, (n, seq_len), generator=g)
        self.attention_mask = torch.ones(n, seq_len, dtype=torch.long)
        self.labels = self.input_ids.clone() if causal_lm else torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def build_dataset(workload: Workload, steps: int | None = None) -> TokenDataset:
    """Exactly one epoch of ``steps`` (default ``max_steps``) batches."""
    n = workload.batch_size * (steps if steps is not None else workload.max_steps)
    vocab = 99 if workload.model == "tiny-bert" else 50257
    return TokenDataset(n, workload.seq_len, vocab, causal_lm=workload.model == "gpt2")


def training_arguments(workload: Workload, output_dir: str, **overrides: Any):
    """The transformers TrainingArguments both Trainers get."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=workload.batch_size,
        max_steps=workload.max_steps,
        logging_steps=workload.logging_steps,
        learning_rate=workload.learning_rate,
        weight_decay=workload.weight_decay,
        max_grad_norm=workload.max_grad_norm,
        optim=workload.optim,
        bf16=workload.bf16,
        torch_compile=workload.compile,
        use_cpu=workload.device == "cpu",
        save_strategy="no",
        report_to="none",
        disable_tqdm=not workload.progress_bar,
        dataloader_num_workers=0,
        seed=SEED,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepClock:
    """Wall-clock time at the end of each optimizer step (synchronised with the GPU at the window's ends)."""

    def __init__(self, workload: Workload, count_calls: bool = False) -> None:
        self.workload = workload
        self.count_calls = count_calls
        self.calls = 0
        self.step_end: dict[int, float] = {}
        self.cpu_end: dict[int, float] = {}
        self.step_begin: dict[int, float] = {}
        self.events: dict[str, float] = {}
        self.losses: list[float] = []

    def begin(self, step: int) -> None:
        self.step_begin[step] = time.perf_counter()

    def end(self, step: int) -> None:
        if step in (self.workload.warmup_steps, self.workload.max_steps):
            sync(self.workload.device)
            if self.count_calls:
                self._toggle_call_counting(step == self.workload.warmup_steps)
        self.step_end[step] = time.perf_counter()
        self.cpu_end[step] = time.process_time()

    def _toggle_call_counting(self, on: bool) -> None:
        """Count Python-level calls (Python functions and builtins): a measure of overhead that other processes can't disturb."""
        if not on:
            sys.setprofile(None)
            return

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call" or event == "c_call":
                self.calls += 1

        sys.setprofile(profile)

    def summary(self) -> dict[str, Any]:
        w = self.workload
        start, stop = self.step_end[w.warmup_steps], self.step_end[w.max_steps]
        seconds = stop - start
        # Windows of `logging_steps` steps hold one logging step each: their median is robust to
        # interference from other processes and still counts the logging work.
        n = w.logging_steps
        starts = range(w.warmup_steps, w.max_steps - n + 1, n)
        step = statistics.median([(self.step_end[s + n] - self.step_end[s]) / n for s in starts])
        if self.count_calls:
            return {"calls_per_step": self.calls / w.timed_steps, "losses": self.losses}
        cpu_step = statistics.median([(self.cpu_end[s + n] - self.cpu_end[s]) / n for s in starts])
        return {
            "cpu_step_ms": 1000 * cpu_step,
            "seconds": seconds,
            "samples_per_s": w.batch_size / step,
            "step_ms": 1000 * step,
            "mean_samples_per_s": w.timed_steps * w.batch_size / seconds,
            "mean_step_ms": 1000 * seconds / w.timed_steps,
            "losses": self.losses,
        }


def timing_callback(clock: StepClock):
    """A transformers TrainerCallback feeding ``clock``; hf_lightning runs it through its callback bridge."""
    from transformers import TrainerCallback

    class _Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin(state.global_step + 1)

        def on_step_end(self, args, state, control, **kwargs):
            clock.end(state.global_step)

        def on_save(self, args, state, control, **kwargs):
            clock.events[f"save_{state.global_step}"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.losses.append(float(logs["loss"]))

    return _Timing()


def peak_memory(device: str) -> dict[str, float]:
    """Peak RSS of this process in MiB; with CUDA also torch's peak allocated GPU memory."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ------------------------------------------------------------------------------------ processes


PACKAGE: dict[str, str] = {"dir": REPO, "label": ""}


def use_package(directory: str | None, label: str | None) -> None:
    """Measure the hf_lightning found in ``directory`` (e.g. ``git archive main hf_lightning | tar -x -C DIR``)."""
    if directory:
        if not os.path.isdir(os.path.join(directory, "hf_lightning")):
            raise SystemExit(f"--package {directory!r} has no hf_lightning/ folder")
        PACKAGE["dir"] = os.path.abspath(directory)
        PACKAGE["label"] = label or directory


def run_worker_process(script: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``python script --worker ... --result FILE`` in a fresh process; return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="hfl_bench_") as tmp:
        result = os.path.join(tmp, "result.json")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys([PACKAGE["dir"], REPO, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        )
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        # One GPU for every runner: Lightning would otherwise take all visible devices (DDP), transformers DataParallel.
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
        cmd = [sys.executable, script, *args, "--result", result, "--tmp", tmp]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(result):
            raise RuntimeError(f"worker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        with open(result) as f:
            return json.load(f)


def check_run_options(parser: Any, runners_option: str, known: Sequence[str], workload: Workload, cpu_workload: str) -> list[str]:
    """The runners named by ``--runners``; a parser error for an unknown one, or for a CUDA workload without a GPU."""
    runners = [r.strip() for r in runners_option.split(",") if r.strip()]
    unknown = [r for r in runners if r not in known]
    if unknown:
        parser.error(f"--runners: unknown {unknown}; valid: {list(known)}")
    if workload.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--workload {workload.name} needs a CUDA device; this machine has none (try {cpu_workload})")
    return runners


def write_result(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f)


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """``items`` rotated by the round number, so no runner always goes first."""
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median, in percent."""
    m = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / m if m else 0.0


# -------------------------------------------------------------------------------------- reports


def environment(threads: int = 0) -> dict[str, str]:
    import accelerate
    import lightning
    import transformers

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU ({_cpu_name()}, {os.cpu_count()} cores), {threads or torch.get_num_threads()} torch thread(s)"
    return {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "accelerate": accelerate.__version__,
        "hf_lightning": PACKAGE["label"] or _git_revision(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_results(name: str, payload: dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    return path


def load_results() -> list[dict[str, Any]]:
    if not os.path.isdir(RESULTS_DIR):
        return []
    out = []
    for name in sorted(os.listdir(RESULTS_DIR)):
        if name.endswith(".json"):
            with open(os.path.join(RESULTS_DIR, name)) as f:
                out.append(json.load(f))
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


Clock = Callable[[], float]
