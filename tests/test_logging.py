"""Logging out: report_to -> Lightning loggers (TensorBoard with transformers' tags and steps, CSV), the
progress bar's loss/lr, and the console lines transformers prints (PrinterCallback / ProgressCallback).
"""

from __future__ import annotations

import ast
import csv
import glob
import os
import re

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from helpers import TIMING, act_both, assert_same_history, build
from tiny import RegressionDataset, TinyReg

DATA = dict(train_dataset=RegressionDataset(32), eval_dataset=RegressionDataset(8, seed=1))
SCHEDULE = dict(per_device_train_batch_size=8, num_train_epochs=2, logging_steps=3, eval_strategy="steps", eval_steps=3, learning_rate=1e-2)


def _scalars(output_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(str(output_dir), "runs", "*", "events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {output_dir}/runs"
    scalars: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({os.path.dirname(f) for f in files}):
        accumulator = EventAccumulator(folder)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def _texts(output_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for folder in {os.path.dirname(f) for f in glob.glob(os.path.join(str(output_dir), "runs", "*", "events.out.tfevents.*"))}:
        accumulator = EventAccumulator(folder)
        accumulator.Reload()
        tags |= {tag.split("/")[0] for tag in accumulator.Tags()["tensors"]}
    return tags


def test_tensorboard_scalars_match_transformers(tmp_path):
    hf, hl, _, _ = act_both(TinyReg, tmp_path, lambda t: t.train(), trainer_kwargs=DATA, report_to="tensorboard", **SCHEDULE)
    assert any(isinstance(lg, TensorBoardLogger) for lg in hl.lightning_trainer.loggers)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    expected, actual = _scalars(tmp_path / "hf"), _scalars(tmp_path / "hl")
    assert sorted(actual) == sorted(expected)
    assert _texts(tmp_path / "hl") == _texts(tmp_path / "hf") == {"args", "model_config"} - ({"model_config"} if not hasattr(hl.model, "config") else set())
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "eval/loss", "train/train_loss"} <= set(actual)
    for tag, points in expected.items():
        assert [s for s, _ in actual[tag]] == [s for s, _ in points], tag
        if not any(t in tag for t in TIMING):
            assert [v for _, v in actual[tag]] == pytest.approx([v for _, v in points], rel=1e-4), tag


def test_tensorboard_logging_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = build("hl", TinyReg, tmp_path / "out", trainer_kwargs=dict(train_dataset=RegressionDataset(16)), report_to="tensorboard",
                    max_steps=2, logging_steps=1)
    trainer.train()
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))


def test_csv_logger_rows_follow_log_history(tmp_path):
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs=DATA, report_to=["csv"], run_name="run1", **SCHEDULE)
    trainer.train()
    logger = next(lg for lg in trainer.lightning_trainer.loggers if isinstance(lg, CSVLogger))
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert logger.log_dir == os.path.join(str(tmp_path), "csv_logs", "run1")
    history = trainer.state.log_history
    assert [int(r["step"]) for r in rows] == [e["step"] for e in history]
    for row, entry in zip(rows, history):
        for key in ("loss", "eval_loss", "train_loss"):
            if key in entry:
                column = {"loss": "train/loss", "eval_loss": "eval/loss", "train_loss": "train/train_loss"}[key]
                assert float(row[column]) == pytest.approx(entry[key], rel=1e-6)


def _printed_dicts(text: str) -> list[dict]:
    # log dicts printed between tqdm's carriage returns and cursor moves
    return [ast.literal_eval(m.group(0)) for m in re.finditer(r"\{'[^{}\n]*\}", text)]


def _same_printed(expected: list[dict], actual: list[dict]) -> None:
    assert len(expected) == len(actual), (expected, actual)
    for e, a in zip(expected, actual):
        assert list(e) == list(a)
        for key in e:
            if not any(t in key for t in TIMING):
                assert e[key] == a[key], key


@pytest.mark.parametrize("disable_tqdm", [True, False], ids=["PrinterCallback", "ProgressCallback"])
def test_console_prints_log_dicts_like_transformers(tmp_path, capsys, disable_tqdm):
    printed = {}
    for side in ("hf", "hl"):
        kwargs = dict(trainer_kwargs=DATA, disable_tqdm=disable_tqdm, **SCHEDULE)
        if side == "hl":
            kwargs["trainer_kwargs"] = {**DATA, "enable_progress_bar": not disable_tqdm}
        trainer = build(side, TinyReg, tmp_path / side, **kwargs)
        capsys.readouterr()
        trainer.train()
        trainer.evaluate()
        out = capsys.readouterr()
        printed[side] = _printed_dicts(out.out + out.err)
    assert printed["hl"], "nothing printed"
    _same_printed(printed["hf"], printed["hl"])


def test_progress_bar_shows_loss_and_lr_also_after_an_eval(tmp_path):
    """Epoch logging after a step eval that ends the epoch: the train log comes after validation ran."""
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs={**DATA, "enable_progress_bar": True}, disable_tqdm=False,
                    per_device_train_batch_size=8, num_train_epochs=2, logging_strategy="epoch", eval_strategy="steps", eval_steps=4)
    trainer.train()
    lightning_trainer = trainer.lightning_trainer
    metrics = lightning_trainer.progress_bar_callback.get_metrics(lightning_trainer, lightning_trainer.lightning_module)
    assert {"loss", "lr"} <= set(metrics)
    last_train = [e for e in trainer.state.log_history if "loss" in e][-1]
    assert metrics["loss"] == pytest.approx(last_train["loss"]) and metrics["lr"] == pytest.approx(last_train["learning_rate"])


def test_facade_console_shows_only_what_transformers_shows(tmp_path, capfd):
    """The drop-in facade prints the log dicts and nothing of Lightning's own INFO lines or model table."""
    outputs = {}
    for side in ("hf", "hl"):
        kwargs = dict(trainer_kwargs=dict(DATA), disable_tqdm=True, **SCHEDULE)
        trainer = build(side, TinyReg, tmp_path / side, **kwargs) if side == "hf" else _bare_facade(tmp_path / side, **kwargs)
        capfd.readouterr()
        trainer.train()
        outputs[side] = capfd.readouterr().out
    strip = lambda text: [line for line in text.splitlines() if line.strip() and not re.fullmatch(r"\{.*\}", line.strip())]  # noqa: E731
    assert strip(outputs["hl"]) == strip(outputs["hf"]) == []
    assert len(_printed_dicts(outputs["hl"])) == len(_printed_dicts(outputs["hf"]))


def _bare_facade(output_dir, trainer_kwargs, **args):
    import torch

    import hf_lightning
    from helpers import make_args

    torch.manual_seed(0)
    return hf_lightning.Trainer(model=TinyReg(), args=make_args(output_dir, **args), **trainer_kwargs)  # no Lightning kwargs at all


def test_script_helpers_log_and_save_metrics_like_transformers(tmp_path, capsys):
    """``log_metrics``/``save_metrics``/``save_state``, as the transformers example scripts call them."""
    printed, files = {}, {}
    for side in ("hf", "hl"):
        trainer = build(side, TinyReg, tmp_path / side, trainer_kwargs=dict(train_dataset=RegressionDataset(16)), max_steps=2)
        metrics = {"train_loss": 1.2345678, "train_runtime": 0.5, "epoch": 1.0, "train_samples_per_second": 32.0}
        capsys.readouterr()
        trainer.log_metrics("train", metrics)
        printed[side] = capsys.readouterr().out
        trainer.save_metrics("train", metrics)
        files[side] = sorted(p.name for p in (tmp_path / side).iterdir() if p.suffix == ".json")
        assert trainer.get_num_trainable_parameters() == sum(p.numel() for p in trainer.model.parameters())
    assert printed["hl"] == printed["hf"] and "***** train metrics *****" in printed["hl"]
    assert files["hl"] == files["hf"] == ["all_results.json", "train_results.json"]
    assert (tmp_path / "hl" / "train_results.json").read_text() == (tmp_path / "hf" / "train_results.json").read_text()
