"""Run transformers' own ``examples/pytorch`` scripts on transformers.Trainer and on hf_lightning, and compare.

Each script runs twice, on CPU and offline, over tiny models and data that scripts/example_fixtures.py builds:
once as it is (stock ``transformers.Trainer``), once with only its ``Trainer``/``Seq2SeqTrainer`` import switched
to ``hf_lightning`` (for run_qa.py the import in trainer_qa.py, where its trainer subclass lives). Both runs use
the same paths, one after the other, and train 6 optimizer steps with an evaluation and a checkpoint every 3,
``--do_predict`` where the script has it and ``--predict_with_generate`` for the seq2seq scripts. Then every file
the two runs wrote is compared bit for bit (scripts/example_compare.py): metrics, ``log_history`` and the rest of
``trainer_state.json``, the file list, weights, optimizer/scheduler/RNG states, predictions, the model card.

The scripts are not part of this project: point ``--scripts`` at a transformers checkout (or any folder with
its ``examples/pytorch/<task>/`` layout). ``evaluate`` and ``nltk`` are replaced for both runs by the offline
stand-ins in scripts/example_shims/.

    python scripts/example_scripts.py --scripts ~/transformers
    python scripts/example_scripts.py --scripts ~/transformers --only run_glue --keep /tmp/glue
    python scripts/example_scripts.py --scripts ~/transformers --extra "--use_cpu true --bf16 true"
    python scripts/example_scripts.py --scripts ~/transformers --resume

With ``--resume``, each script then runs twice more, as a run killed after its first checkpoint and restarted:
stock and switched, each with ``--resume_from_checkpoint`` pointing at a copy of the stock run's ``checkpoint-3``
(transformers' own checkpoint, resumed by hf_lightning), and those two outputs are compared the same way.

It prints one table and exits with status 1 when a script fails or its two runs differ.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from example_compare import compare_folders, count_files  # noqa: E402
from example_fixtures import Fixtures, build_fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIMS = Path(__file__).resolve().parent / "example_shims"
SWITCHED_NAMES = ("Trainer", "Seq2SeqTrainer")
SWITCH_MARK = "# switched to hf_lightning by scripts/example_scripts.py"
RESUME_FROM = "checkpoint-3"  # the first of the two checkpoints STEPS writes
STEPS = ["--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1"]
COMMON = [
    "--do_train", "--do_eval", *STEPS, "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
    "--learning_rate", "1e-3", "--seed", "42", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
]


@dataclass(frozen=True)
class ScriptSpec:
    """One example script, and how to run it on the tiny fixtures."""

    name: str
    """The script's name, as ``--only`` takes it (``run_glue``)."""
    folder: str
    """Its task folder under ``examples/pytorch/`` (``text-classification``)."""
    arguments: Callable[[Fixtures], list[str]]
    """Its own arguments (model, data files, lengths), given where the fixtures were written."""
    switch_in: str = ""
    """The file, in the same folder, whose transformers Trainer import is switched; the script itself when empty."""

    @property
    def file(self) -> str:
        return f"{self.name}.py"

    @property
    def switched_file(self) -> str:
        return self.switch_in or self.file


def _files(fixtures: Fixtures, stem: str, *splits: str, ext: str = "json") -> list[str]:
    flags = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}
    return [arg for split in splits for arg in (flags[split], str(fixtures.data / f"{stem}_{split}.{ext}"))]


def _model(fixtures: Fixtures, kind: str) -> list[str]:
    return ["--model_name_or_path", str(fixtures.model(kind))]


SEQ2SEQ = ["--do_predict", "--predict_with_generate", "--max_source_length", "32", "--max_target_length", "16"]

SPECS = (
    ScriptSpec("run_glue", "text-classification", lambda f: [
        *_model(f, "bert"), *_files(f, "glue", "train", "validation", "test"), "--do_predict", "--max_seq_length", "32"]),
    ScriptSpec("run_clm", "language-modeling", lambda f: [
        *_model(f, "gpt2"), *_files(f, "text", "train", "validation", ext="txt"), "--block_size", "16"]),
    ScriptSpec("run_mlm", "language-modeling", lambda f: [
        *_model(f, "bert"), *_files(f, "text", "train", "validation", ext="txt"), "--max_seq_length", "16"]),
    ScriptSpec("run_ner", "token-classification", lambda f: [
        *_model(f, "bert"), *_files(f, "ner", "train", "validation", "test"), "--do_predict"]),
    ScriptSpec("run_swag", "multiple-choice", lambda f: [
        *_model(f, "bert"), *_files(f, "swag", "train", "validation"), "--max_seq_length", "32"]),
    ScriptSpec("run_qa", "question-answering", lambda f: [
        *_model(f, "bert"), *_files(f, "squad", "train", "validation", "test"), "--do_predict",
        "--max_seq_length", "48", "--doc_stride", "16"], switch_in="trainer_qa.py"),
    ScriptSpec("run_summarization", "summarization", lambda f: [
        *_model(f, "t5"), *_files(f, "summaries", "train", "validation", "test"), *SEQ2SEQ,
        "--text_column", "text", "--summary_column", "summary"]),
    ScriptSpec("run_translation", "translation", lambda f: [
        *_model(f, "t5"), *_files(f, "translation", "train", "validation", "test"), *SEQ2SEQ,
        "--source_lang", "en", "--target_lang", "de"]),
)


# ------------------------------------------------------------------------------------ preparing the copies

@dataclass(frozen=True)
class Rewrite:
    """A textual fix applied to both copies, for a file written against an older transformers."""

    file: str
    old: str
    new: str
    why: str


COMPATIBILITY = (
    Rewrite("trainer_qa.py", "self.prediction_loop if self.args.use_legacy_prediction_loop else self.evaluation_loop",
            "self.evaluation_loop", "transformers 5 removed `prediction_loop` and `use_legacy_prediction_loop`"),
    Rewrite("trainer_qa.py", "self.args.tpu_metrics_debug or self.args.debug", "self.args.debug",
            "transformers 5 removed `tpu_metrics_debug` (it is a `--debug` option)"),
)


def make_compatible(file: str, source: str) -> str:
    """``source`` of ``file`` with the ``COMPATIBILITY`` rewrites for that file applied (those whose text is there)."""
    for rewrite in COMPATIBILITY:
        if rewrite.file == file:
            source = source.replace(rewrite.old, rewrite.new)
    return source


def switch_trainer_import(source: str) -> str:
    """``source`` with ``Trainer``/``Seq2SeqTrainer`` imported from hf_lightning right after transformers' import.

    Only the names change: each ``from transformers import ... Trainer ...`` is followed by a line importing the
    same names (and ``as`` aliases) from hf_lightning, so every later use gets hf_lightning's class.
    """
    lines = source.splitlines(keepends=True)
    inserts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "transformers" and node.level == 0:
            names = [alias for alias in node.names if alias.name in SWITCHED_NAMES]
            if names:
                imported = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in names)
                inserts.append((node.end_lineno, " " * node.col_offset + f"from hf_lightning import {imported}  {SWITCH_MARK}\n"))
    if not inserts:
        raise ValueError(f"no `from transformers import {' / '.join(SWITCHED_NAMES)}` to switch")
    for line_number, text in sorted(inserts, reverse=True):
        lines.insert(line_number, text)
    return "".join(lines)


def locate(scripts: Path, spec: ScriptSpec) -> Path | None:
    """The task folder holding ``spec``'s script under ``scripts`` (a checkout, its ``examples/``, or ``examples/pytorch/``)."""
    for base in (scripts / "examples" / "pytorch", scripts / "pytorch", scripts):
        if (base / spec.folder / spec.file).is_file():
            return base / spec.folder
    return None


def prepare_copy(source_folder: Path, destination: Path, spec: ScriptSpec, switched: bool) -> Path:
    """Copy the task folder's Python files to ``destination``, made compatible and, if ``switched``, switched."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for source in sorted(source_folder.glob("*.py")):
        text = make_compatible(source.name, source.read_text())
        if switched and source.name == spec.switched_file:
            text = switch_trainer_import(text)
        (destination / source.name).write_text(text)
    return destination / spec.file


# ----------------------------------------------------------------------------------------------- running

@dataclass
class Outcome:
    """One script's two runs and their comparison."""

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    failed: str = ""
    log_tail: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    files: int = 0
    resumed: bool = False
    """Whether the resumed runs (``--resume``) were compared too."""
    resume_differences: list[str] = field(default_factory=list)
    resume_files: int = 0

    @property
    def equal(self) -> bool:
        return not self.failed and not self.differences and not self.resume_differences


def run_once(script: Path, arguments: Sequence[str], work: Path, python: str, timeout: float) -> tuple[float, str]:
    """Run ``script`` once in ``work`` (offline, stand-ins first on the path); return (seconds, error or "")."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SHIMS), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_CACHE": str(work / "datasets_cache"), "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "",
    }
    shutil.rmtree(work / "datasets_cache", ignore_errors=True)
    log = work / "log.txt"
    start = time.perf_counter()
    try:
        with open(log, "w") as out:
            done = subprocess.run([python, str(script), *arguments], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timed out after {timeout:.0f} s (log: {log})"
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return seconds, f"exit status {done.returncode}: {tail[0][:160]} (log: {log})"
    return seconds, ""


def check_script(spec: ScriptSpec, folder: Path, fixtures: Fixtures, work: Path, python: str, timeout: float,
                 extra: Sequence[str], resume: bool = False) -> Outcome:
    """Run ``spec`` stock, then switched, at the same paths under ``work``; compare what each wrote.

    With ``resume``, then run both again from a copy of the stock run's ``checkpoint-3`` and compare those outputs.
    """
    outcome = Outcome(spec.name)
    output = work / "output"
    arguments = [*COMMON, *spec.arguments(fixtures), "--output_dir", str(output), *extra]
    phases = [("", [])]
    if resume:
        phases.append(("resumed_", ["--resume_from_checkpoint", str(output / RESUME_FROM)]))
    for prefix, more in phases:
        for variant in ("stock", "hf_lightning"):
            name = prefix + variant
            script = prepare_copy(folder, work / "scripts", spec, switched=variant == "hf_lightning")
            shutil.rmtree(output, ignore_errors=True)
            if prefix:  # the output folder of a run stopped right after its first checkpoint
                output.mkdir()
                shutil.copytree(work / "stock" / RESUME_FROM, output / RESUME_FROM)
            seconds, error = run_once(script, [*arguments, *more], work, python, timeout)
            outcome.seconds[name] = seconds
            (work / "log.txt").replace(work / f"log_{name}.txt")
            if error:
                outcome.failed = f"{name}: {error.replace('log.txt', f'log_{name}.txt')}"
                outcome.log_tail = (work / f"log_{name}.txt").read_text(errors="replace").splitlines()[-25:]
                return outcome
            shutil.rmtree(work / name, ignore_errors=True)
            output.replace(work / name)
        if prefix:
            outcome.resumed = True
            outcome.resume_differences = compare_folders(work / "resumed_stock", work / "resumed_hf_lightning")
            outcome.resume_files = count_files(work / "resumed_stock")
        else:
            outcome.differences = compare_folders(work / "stock", work / "hf_lightning")
            outcome.files = count_files(work / "stock")
    return outcome


def table(outcomes: Sequence[Outcome]) -> str:
    """One line per script: wall times of both runs and the verdict."""
    rows = [("script", "stock", "hf_lightning", "result")]
    for o in outcomes:
        times = [f"{o.seconds[v]:.0f} s" if v in o.seconds else "-" for v in ("stock", "hf_lightning")]
        verdict = (f"FAILED {o.failed}" if o.failed else f"DIFFERS {o.differences[0]}" if o.differences
                   else f"bitwise equal ({o.files} files)")
        if o.resumed and not o.failed:
            verdict += (f"; resumed from {RESUME_FROM}: DIFFERS {o.resume_differences[0]}" if o.resume_differences
                        else f"; resumed from {RESUME_FROM}: bitwise equal ({o.resume_files} files)")
        rows.append((o.name, *times, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    for o in outcomes:
        lines += [f"  {o.name}: {difference}" for difference in o.differences[1:]]
        lines += [f"  {o.name} resumed: {difference}" for difference in o.resume_differences[1:]]
    for o in outcomes:
        if o.log_tail:
            lines += ["", f"{o.name}, end of the failed run's log:", *(f"  | {line}" for line in o.log_tail)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", type=Path, required=True,
                        help="a transformers checkout, or any folder with its examples/pytorch/<task>/ layout")
    parser.add_argument("--only", action="append", choices=[s.name for s in SPECS], metavar="NAME",
                        help="run only this script (repeatable); all eight when absent")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the fixtures, outputs and logs")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the scripts")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run of one script may take")
    parser.add_argument("--resume", action="store_true",
                        help=f"also resume both from the stock run's {RESUME_FROM} and compare the resumed runs")
    parser.add_argument("--extra", default="", help='more script arguments for both runs, e.g. "--use_cpu true --bf16 true"')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    specs = [s for s in SPECS if not args.only or s.name in args.only]
    folders = {s.name: locate(args.scripts, s) for s in specs}
    missing = [f"{s.folder}/{s.file}" for s in specs if folders[s.name] is None]
    if missing:
        print(f"not found under {args.scripts} (examples/pytorch/<task>/ layout): {', '.join(missing)}", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="hf_lightning_examples_"))
    work.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra)
    start = time.perf_counter()
    try:
        fixtures = build_fixtures(work / "fixtures")
        outcomes = []
        for spec in specs:
            outcomes.append(check_script(spec, folders[spec.name], fixtures, work / spec.name, args.python, args.timeout, extra,
                                         resume=args.resume))
            print(f"{spec.name}: {'equal' if outcomes[-1].equal else 'NOT equal'}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(outcomes))
    print(f"\n{sum(o.equal for o in outcomes)}/{len(outcomes)} bitwise equal in {time.perf_counter() - start:.0f} s"
          + (f" (extra arguments: {args.extra})" if args.extra else "") + (f", resumed from {RESUME_FROM} too" if args.resume else ""))
    return 0 if all(o.equal for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
