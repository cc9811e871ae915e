"""The ``hf-lightning`` command: configs, overrides, help, errors naming the key, resume, subcommands, tasks."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from cli_data import (
    TINY_BERT,
    TINY_LLAMA,
    TINY_T5,
    accuracy,
    classification_csv,
    qa_json,
    seq2seq_jsonl,
    text_lines,
    token_classification_jsonl,
    tokenizer_folder,
)
from helpers import assert_same_history, assert_same_weights
from transformers import TrainingArguments

from hf_lightning import cli as hl_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET_ARGS = dict(report_to="none", disable_tqdm=True, use_cpu=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    tokenizer_folder(folder / "tok")
    classification_csv(folder / "cls")
    return folder


def write_config(path, config) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return str(path)


def classification_config(workdir, output_dir, **args):
    return {
        "model": {"task": "sequence-classification", "config": TINY_BERT,
                  "metrics": {"accuracy": {"class_path": "torchmetrics.classification.MulticlassAccuracy", "init_args": {"num_classes": 2, "average": "micro"}}}},
        "data": {"data_files": {"train": "cls/train.csv", "validation": "cls/validation.csv", "test": "cls/test.csv"},
                 "tokenizer": "tok", "max_length": 16},
        "args": {"output_dir": str(output_dir), **QUIET_ARGS, **args},
        "trainer": {"enable_model_summary": False},
    }


def cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        hl_cli.run(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------ YAML == Python

YAML_VS_PYTHON_ARGS = dict(
    per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=2, logging_steps=2,
    eval_strategy="steps", eval_steps=3, save_steps=3, learning_rate=1e-3, warmup_steps=0.1, weight_decay=0.01,
    metric_for_best_model="accuracy", load_best_model_at_end=True, seed=7,
)


def test_yaml_config_gives_the_same_run_as_python(workdir, tmp_path):
    """The same TrainingArguments: a YAML run of hf-lightning and a transformers.Trainer script agree step by step."""
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, EarlyStoppingCallback, set_seed
    from transformers import Trainer as HFTrainer

    config = classification_config(workdir, tmp_path / "yaml", **YAML_VS_PYTHON_ARGS)
    config["trainer"]["callbacks"] = [{"class_path": "transformers.EarlyStoppingCallback", "init_args": {"early_stopping_patience": 10}}]
    cli = hl_cli.run(["fit", "--config", write_config(workdir / "same.yaml", config)])

    args = TrainingArguments(output_dir=str(tmp_path / "python"), **QUIET_ARGS, **YAML_VS_PYTHON_ARGS)
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "tok"))
    raw = load_dataset("csv", data_files={s: str(workdir / "cls" / f"{s}.csv") for s in ("train", "validation")})
    labels = sorted(set(raw["train"]["label"]))
    set_seed(args.seed)
    model_config = BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(model_config)
    data = raw.map(
        lambda b: {**tokenizer(b["text"], truncation=True, max_length=16), "labels": [labels.index(x) for x in b["label"]]},
        batched=True, remove_columns=["text", "label"],
    )
    hf = HFTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"], processing_class=tokenizer,
                   compute_metrics=accuracy, callbacks=[EarlyStoppingCallback(early_stopping_patience=10)])
    hf.train()

    assert_same_history(hf.state.log_history, cli.flow.state.log_history, rel=1e-5)
    assert_same_weights(hf.model, cli.model.model)
    checkpoints = sorted(d for d in os.listdir(tmp_path / "python") if d.startswith("checkpoint-"))
    assert checkpoints == sorted(d for d in os.listdir(tmp_path / "yaml") if d.startswith("checkpoint-"))
    assert cli.flow.state.best_model_checkpoint.endswith(hf.state.best_model_checkpoint.rsplit(os.sep, 1)[-1])
    # fit also writes the final model and the results, like transformers' example scripts
    from transformers import AutoModelForSequenceClassification as Auto

    reloaded = Auto.from_pretrained(str(tmp_path / "yaml"))
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}
    assert json.load(open(tmp_path / "yaml" / "eval_results.json"))["eval_accuracy"] == cli.flow.state.log_history[-2]["eval_accuracy"]


# ------------------------------------------------------------------------- help and overrides


def cli_help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        hl_cli.run(argv)
    assert raised.value.code == 0
    return capsys.readouterr().out


def test_fit_help_is_short_and_names_every_option(capsys):
    """``fit --help``: our groups in full, the TrainingArguments fields by name, no list of every importable class."""
    out = cli_help(["fit", "--help"], capsys)
    lines = out.splitlines()
    assert len(lines) < 300, len(lines)  # was 1,205
    assert lines[0].startswith("usage: hf-lightning fit ") and len(lines[0]) < 130
    text = " ".join(out.split())
    assert hl_cli.SUBCOMMANDS["fit"].summary in text
    for field in dataclasses.fields(TrainingArguments):
        if field.init:
            assert re.search(rf"[ ,]{field.name}[,. ]", text), field.name
    for key in ("--model.task", "--model.config", "--data.text_column", "--trainer.strategy", "--trainer.callbacks",
                "--ckpt_path", "--print_config", "--args.help [FIELD]", "--model.metrics.help [CLASS_PATH_OR_NAME]"):
        assert key in text, key
    assert text.count("torchmetrics.") <= 2  # the 150 metric classes are behind --model.metrics.help
    assert "lightning.pytorch.callbacks.ModelCheckpoint" not in text
    assert "weights_only" not in text  # checkpoint-N folders are always read with weights_only=True
    assert "registry" not in text and "hpc" not in text  # Lightning's ckpt_path keywords


def test_args_help_shows_every_training_argument_with_its_help(capsys):
    text = " ".join(cli_help(["fit", "--args.help"], capsys).split())
    for field in dataclasses.fields(TrainingArguments):
        if not field.init:
            continue
        assert f"--args.{field.name} " in text, field.name
        words = " ".join(str(field.metadata.get("help", "")).split()[:5])
        assert words in text, f"help of args.{field.name} missing: {words!r}"
    assert "The initial learning rate for the optimizer. (type: float, default: 5e-05)" in text


def test_args_help_of_one_field(capsys):
    out = cli_help(["validate", "--args.help", "learning_rate"], capsys)
    assert "--args.learning_rate" in out and "--args.weight_decay" not in out
    assert out.splitlines()[0] == "usage: hf-lightning validate [--args.FIELD VALUE ...]"
    message = cli_error(["fit", "--args.help", "learning_rat"], capsys)
    assert "'learning_rat' is not a TrainingArguments field; did you mean learning_rate?" in message


def test_class_lists_are_behind_a_sub_help(capsys):
    listed = cli_help(["fit", "--model.metrics.help"], capsys)
    assert "  torchmetrics.classification.MulticlassAccuracy" in listed.splitlines()
    assert len(listed.splitlines()) > 50
    assert "hf-lightning fit --model.metrics.help " in listed  # how to see one class's arguments
    one = cli_help(["fit", "--model.metrics.help", "MulticlassAccuracy"], capsys)
    assert "--model.metrics.num_classes" in one
    callbacks = cli_help(["fit", "--trainer.callbacks.help"], capsys).splitlines()
    assert "  transformers.EarlyStoppingCallback" in callbacks and "  lightning.pytorch.callbacks.LearningRateMonitor" in callbacks


@pytest.mark.parametrize("subcommand", hl_cli.CONFIG_SUBCOMMANDS)
def test_each_subcommand_has_its_own_help_and_ckpt_path_help(subcommand, capsys):
    out = cli_help([subcommand, "--help"], capsys)
    text = " ".join(out.split())
    assert out.startswith(f"usage: hf-lightning {subcommand} ")
    assert hl_cli.SUBCOMMANDS[subcommand].summary in text
    ckpt = " ".join(text.split("--ckpt_path CKPT_PATH ", 1)[1].split()[:80])
    assert ckpt.startswith(hl_cli.SUBCOMMANDS[subcommand].ckpt_path), ckpt
    for words in ("checkpoint-N folder", "`last`: the newest checkpoint-N in args.output_dir", "`best`"):
        assert words in ckpt


def test_top_level_help_lists_every_subcommand_without_importing_lightning():
    """``hf-lightning --help`` answers from the subcommand table, in a process that never imports torch."""
    code = ("import sys, resource\n"
            "from hf_lightning.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'transformers', 'jsonargparse', 'torchmetrics') if m in sys.modules)\n"
            "print('heavy modules:', heavy)\n")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = os.times()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    after = os.times()
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "heavy modules: []" in done.stdout
    for name, command in hl_cli.SUBCOMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(command.summary.split()[0])}", done.stdout, re.M), name
    assert "consolidate" in done.stdout.splitlines()[0]
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    assert cpu < 3.0, f"hf-lightning --help took {cpu:.1f} s of CPU"


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "error: choose a subcommand: fit, validate, test, predict, consolidate"),
        (["fitt"], "error: unknown subcommand 'fitt': choose one of fit, validate, test, predict, consolidate; did you mean 'fit'?"),
    ],
)
def test_top_level_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        hl_cli.main(argv)
    assert raised.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "usage: hf-lightning {fit,validate,test,predict,consolidate} ...", message,
        "For the options and their help: hf-lightning --help",
    ]


def test_overrides_and_print_config(workdir, tmp_path, capsys):
    path = write_config(workdir / "print.yaml", classification_config(workdir, tmp_path, max_steps=3))
    with pytest.raises(SystemExit) as raised:
        hl_cli.run(["fit", "--config", path, "--args.learning_rate", "1e-4", "--data.max_length", "12", "--print_config"])
    assert raised.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["args"]["learning_rate"] == 1e-4 and printed["args"]["max_steps"] == 3
    assert printed["args"]["weight_decay"] == 0.0 and printed["args"]["lr_scheduler_type"] == "linear"  # HF defaults
    assert printed["data"]["max_length"] == 12
    assert printed["model"]["metrics"]["accuracy"]["class_path"].endswith("MulticlassAccuracy")


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["--args.learning_rate", "fast"], "args.learning_rate"),
        (["--args.eval_strategy", "sometimes"], "args.eval_strategy"),
        (["--args.lr_scheduler_type", "wobbly"], "args.lr_scheduler_type"),
        (["--args", '{"learning_rat": 1}'], "learning_rat"),
        (["--model.task", "translation"], "model.task"),
        (["--data.text_column", "sentence"], "data.text_column"),
        (["--data.collator", "magic"], "data.collator"),
        (["--data.eval_split", "dev"], "data.eval_split"),
        (["--args.eval_strategy", "steps", "--data.data_files", "cls/train.csv"], "eval_strategy"),
        (["--args.load_best_model_at_end", "true"], "load_best_model_at_end"),
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--ckpt_path", "/no/such/checkpoint-3"], "ckpt_path: '/no/such/checkpoint-3' does not exist"),
        (["--model.config", '{"model_type": "bert", "hiden_size": 16}'], "model.config.hiden_size"),
        (["--trainer.max_epochs", "3"], "`trainer.max_epochs` is a TrainingArguments setting in hf-lightning: set `args.num_train_epochs` instead."),
        (["--trainer", '{"accumulate_grad_batches": 2}'], "set `args.gradient_accumulation_steps` instead"),
        (["--trainer.limit_train_batches", "2"], "`trainer.limit_train_batches` is not supported: the training length comes from"),
    ],
)
def test_config_errors_name_the_key(workdir, tmp_path, capsys, overrides, key):
    """Every error: a short usage line, the error naming the key, the help command; no usage dump."""
    path = write_config(workdir / "errors.yaml", classification_config(workdir, tmp_path, max_steps=2))
    message = cli_error(["fit", "--config", path, *overrides], capsys)
    lines = message[message.index("usage: "):].splitlines()  # before it: the datasets' own progress bars, if any
    assert lines[0].startswith("usage: hf-lightning fit [-h] [-c CONFIG]") and len(lines[0]) < 130, message
    assert lines[1].startswith("error: ")
    assert lines[-1] == "For the options and their help: hf-lightning fit --help"
    assert len(lines) <= 12, message  # the usage dump alone was ~165 lines
    assert key in "\n".join(lines[1:-1]), message[-500:]


def test_typo_in_model_config_is_refused_with_the_valid_fields(workdir, tmp_path, capsys):
    """transformers keeps ``hiden_size`` as a stray attribute and builds a 768-wide BERT; the CLI refuses it first."""
    config = classification_config(workdir, tmp_path, max_steps=2)
    config["model"]["config"] = {**TINY_BERT, "hiden_size": 16, "num_beams": 2}
    message = cli_error(["fit", "--config", write_config(workdir / "typo.yaml", config)], capsys)
    assert "model.config.hiden_size: BertConfig (model_type 'bert') has no field 'hiden_size'; did you mean 'hidden_size'?" in message
    assert "model.config.num_beams: a generation setting" in message
    fields = message.split("BertConfig's fields: ", 1)[1]
    assert all(name in fields for name in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    assert "Generating" not in message  # refused before any data is read


@pytest.mark.parametrize(
    "config,problems",
    [
        (TINY_BERT, []),
        (TINY_LLAMA, []),
        (TINY_T5, []),  # decoder_start_token_id: not a T5Config field, but a key every config accepts
        ({**TINY_BERT, "hiden_size": 16}, ["model.config.hiden_size: BertConfig (model_type 'bert') has no field 'hiden_size'; did you mean 'hidden_size'?"]),
        ({**TINY_T5, "hidden_size": 16}, []),  # T5Config.attribute_map: hidden_size -> d_model
        ({**TINY_LLAMA, "num_kv_heads": 2}, ["model.config.num_kv_heads: LlamaConfig (model_type 'llama') has no field 'num_kv_heads'; did you mean 'num_key_value_heads'?"]),
        ({**TINY_T5, "num_beams": 4}, ["model.config.num_beams: a generation setting, which transformers drops from a model config (it belongs to the model's GenerationConfig)."]),
        ({"model_type": "bertt"}, ["model.config.model_type: 'bertt' is not a transformers model type; did you mean 'bert', 'ibert', 'hubert'?"]),
    ],
)
def test_config_problems(config, problems):
    from hf_lightning.specs import config_problems

    found = config_problems(config)
    assert [p for p in found if not p.startswith("  ")] == problems
    if problems and "model_type" not in problems[0]:
        assert found[-1].startswith(f"  {'T5' if config['model_type'] == 't5' else config['model_type'].capitalize()}Config's fields: ")


def test_missing_model_is_reported_with_every_problem(workdir, tmp_path, capsys):
    config = classification_config(workdir, tmp_path, max_steps=2)
    config["model"] = {"metrics": None}
    message = cli_error(["fit", "--config", write_config(workdir / "nomodel.yaml", config)], capsys)
    assert "model.name_or_path" in message and "model.task" in message


# ---------------------------------------------------------------------- resume and subcommands


def test_resume_last_and_explicit_folder(workdir, tmp_path):
    """``--ckpt_path last`` resumes the newest checkpoint-N and ends with the uninterrupted run's log_history."""
    import shutil

    args = dict(max_steps=6, save_steps=2, logging_steps=1, per_device_train_batch_size=8, learning_rate=1e-3)
    path = write_config(workdir / "resume.yaml", classification_config(workdir, tmp_path / "run", **args))
    full = hl_cli.run(["fit", "--config", path]).flow.state.log_history
    shutil.rmtree(tmp_path / "run" / "checkpoint-6")
    resumed = hl_cli.run(["fit", "--config", path, "--ckpt_path", "last"])
    assert resumed.flow.state.global_step == 6
    # entries read back from trainer_state.json have sorted keys, in transformers too
    assert _values(resumed.flow.state.log_history[:-1]) == _values(full[:-1])
    resumed = hl_cli.run(["fit", "--config", path, "--ckpt_path", str(tmp_path / "run" / "checkpoint-2")])
    assert _values(resumed.flow.state.log_history[:-1]) == _values(full[:-1])
    fresh = hl_cli.run(["fit", "--config", path, "--ckpt_path", "last", "--args.output_dir", str(tmp_path / "new")])
    assert fresh.flow.state.global_step == 6  # nothing to resume: a fresh start, as Lightning's "last"


def _values(history):
    return [{k: pytest.approx(v, rel=1e-5) for k, v in sorted(e.items())} for e in history]


def test_validate_test_predict_subcommands(workdir, tmp_path):
    args = dict(max_steps=4, save_steps=2, eval_strategy="steps", eval_steps=2, metric_for_best_model="accuracy", learning_rate=1e-3)
    path = write_config(workdir / "sub.yaml", classification_config(workdir, tmp_path, **args))
    fit = hl_cli.run(["fit", "--config", path])
    best = fit.flow.state.best_model_checkpoint
    validate = hl_cli.run(["validate", "--config", path, "--ckpt_path", "best"])
    metrics = json.load(open(tmp_path / "eval_results.json"))
    assert metrics["eval_accuracy"] == pytest.approx(fit.flow.state.best_metric)
    assert metrics["eval_loss"] == pytest.approx(validate.flow.last_eval_metrics["eval_loss"])
    hl_cli.run(["test", "--config", path, "--ckpt_path", best])
    assert "test_accuracy" in json.load(open(tmp_path / "test_results.json"))
    hl_cli.run(["predict", "--config", path, "--ckpt_path", best])
    import numpy as np

    predictions = np.load(tmp_path / "predictions.npy")
    assert predictions.shape == (24, 2)
    labels = open(tmp_path / "predicted_labels.txt").read().split()
    assert len(labels) == 24 and set(labels) <= {"neg", "pos"}
    assert "predict_accuracy" in json.load(open(tmp_path / "predict_results.json"))


# ------------------------------------------------------------------------------------- tasks

TASK_CASES = {
    "token-classification": (dict(task="token-classification", config=TINY_BERT), token_classification_jsonl, dict(label_column="tags")),
    "causal-lm": (dict(task="causal-lm", config=TINY_LLAMA), text_lines, dict(max_length=16)),
    "masked-lm": (dict(task="masked-lm", config=TINY_BERT), text_lines, dict(max_length=16)),
    "seq2seq": (dict(task="seq2seq", config=TINY_T5), seq2seq_jsonl, dict(text_column="source", target_column="target", max_length=16)),
    "question-answering": (dict(task="question-answering", config=TINY_BERT), qa_json, dict(max_length=48, doc_stride=16)),
}


@pytest.mark.parametrize("task", list(TASK_CASES))
def test_every_task_trains_and_saves(workdir, tmp_path, task):
    model, writer, data = TASK_CASES[task]
    files = writer(tmp_path / "data")
    config = {
        "model": model,
        "data": {"data_files": files, "tokenizer": str(workdir / "tok"), **data},
        "args": {"output_dir": str(tmp_path / "out"), **QUIET_ARGS, "max_steps": 2, "per_device_train_batch_size": 4,
                 "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2},
        "trainer": {"enable_model_summary": False},
    }
    cli = hl_cli.run(["fit", "--config", write_config(tmp_path / "task.yaml", config)])
    history = cli.flow.state.log_history
    assert history[-2]["step"] == 2 and history[-2]["eval_loss"] > 0
    assert os.path.isdir(tmp_path / "out" / "checkpoint-2")
    assert os.path.exists(tmp_path / "out" / "config.json")


def test_python_dash_m_entry_point(workdir, tmp_path):
    """``python -m hf_lightning`` is the CLI (the ``hf-lightning`` script calls the same ``main``)."""
    import tomllib

    scripts = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["scripts"]
    assert scripts["hf-lightning"] == "hf_lightning.cli:main"
    path = write_config(workdir / "entry.yaml", classification_config(workdir, tmp_path, max_steps=2))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "hf_lightning", "fit", "--config", path, "--print_config"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert yaml.safe_load(done.stdout)["args"]["max_steps"] == 2
    assert "intended to run from within Python" not in done.stderr  # LightningCLI's warning about args + sys.argv


def test_a_cli_run_is_quiet(workdir, tmp_path):
    """``hf-lightning fit`` in a fresh process: none of Lightning's warnings and banners no user can act on."""
    config = classification_config(workdir, tmp_path / "out", max_steps=2, logging_steps=1, disable_tqdm=False)
    config["data"]["data_files"] = {"train": "cls/train.csv"}  # no eval set
    config["trainer"] = {}  # the defaults: no model summary
    path = write_config(workdir / "quiet.yaml", config)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-m", "hf_lightning", "fit", "--config", path],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    noise = ["intended to run from within Python", "LeafSpec", "Total length of", "GPU available", "TPU available", "Tip:",
             "Trainable params", "`Trainer.fit` stopped"]
    assert [text for text in noise if text in console] == [], console[-3000:]
    assert "hf-lightning fit: 2 optimizer steps" in done.stdout


@pytest.mark.distributed
def test_validate_on_two_processes_reduces_torchmetrics(workdir, tmp_path):
    """``--trainer.devices 2`` (DDP over gloo): torchmetrics reduce across ranks to the single-process values."""
    config = classification_config(workdir, tmp_path, per_device_eval_batch_size=4)
    path = write_config(workdir / "ddp.yaml", config)
    single = hl_cli.run(["validate", "--config", path]).flow.last_eval_metrics
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "hf_lightning", "validate", "--config", path, "--args.output_dir", str(tmp_path / "ddp"),
         "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.load(open(tmp_path / "ddp" / "eval_results.json"))
    assert metrics["eval_accuracy"] == pytest.approx(single["eval_accuracy"])
    assert 0 < metrics["eval_accuracy"] < 1  # not a degenerate all-right/all-wrong case
    # (eval_loss is not compared: with average_tokens_across_devices transformers scales it by the world size)


def test_load_from_disk_parquet_auto_class_and_dict_eval_sets(workdir, tmp_path):
    """``data.load_from_disk`` and parquet files, ``model.auto_class``/``dtype``, and a list of eval splits."""
    from datasets import load_dataset

    raw = load_dataset("csv", data_files={s: str(workdir / "cls" / f"{s}.csv") for s in ("train", "validation", "test")})
    raw.save_to_disk(str(tmp_path / "saved"))
    raw["train"].to_parquet(str(tmp_path / "train.parquet"))
    base = classification_config(workdir, tmp_path / "out", max_steps=2, eval_strategy="steps", eval_steps=2)
    base["model"].update(task=None, auto_class="AutoModelForSequenceClassification", dtype="float32")
    base["data"] = {"load_from_disk": str(tmp_path / "saved"), "eval_split": ["validation", "test"], "tokenizer": str(workdir / "tok")}
    cli = hl_cli.run(["fit", "--config", write_config(tmp_path / "disk.yaml", base)])
    evals = [e for e in cli.flow.state.log_history if any(k.startswith("eval_") for k in e)]
    assert [sorted(k for k in e if k.endswith("accuracy")) for e in evals] == [["eval_validation_accuracy"], ["eval_test_accuracy"]]
    assert cli.model.model.config.id2label == {0: "neg", 1: "pos"}

    base["data"] = {"data_files": {"train": str(tmp_path / "train.parquet")}, "tokenizer": str(workdir / "tok"), "eval_fraction": 0.25}
    cli = hl_cli.run(["fit", "--config", write_config(tmp_path / "parquet.yaml", base), "--args.output_dir", str(tmp_path / "pq")])
    assert len(cli.datamodule.train_dataset) == 48 and len(cli.datamodule.eval_dataset) == 16
