"""TensorBoard event files, read back with tensorboard's own reader, hold what transformers would log."""

from __future__ import annotations

import glob
import os

import pytest
from helpers import build
from tiny import RegressionDataset, TinyReg
from transformers.integrations import TensorBoardCallback

TIMING = ("runtime", "per_second")


def read_scalars(output_dir) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the one run folder under ``output_dir/runs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [d for d in glob.glob(os.path.join(str(output_dir), "runs", "*")) if os.path.isdir(d)]
    assert len(runs) == 1, runs
    accumulator = EventAccumulator(runs[0], size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


ARGS = dict(
    per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=2, logging_steps=2,
    eval_strategy="steps", eval_steps=3, learning_rate=1e-2,
)


def assert_same_scalars(expected: dict, actual: dict, tags=None) -> None:
    for tag in tags or expected:
        assert tag in actual, f"{tag} missing; hf_lightning wrote {sorted(actual)}"
        assert [s for s, _ in actual[tag]] == [s for s, _ in expected[tag]], tag
        if not any(t in tag for t in TIMING):
            assert [v for _, v in actual[tag]] == pytest.approx([v for _, v in expected[tag]], rel=1e-5), tag


@pytest.fixture(scope="module")
def transformers_scalars(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "hf"
    build("hf", TinyReg, out, trainer_kwargs=dict(train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1)),
          report_to="tensorboard", **ARGS).train()
    return read_scalars(out)


def test_report_to_tensorboard_logs_what_transformers_logs(tmp_path, transformers_scalars):
    """``report_to="tensorboard"`` (Lightning's TensorBoardLogger) vs transformers' TensorBoardCallback."""
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs=dict(
        train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1)), report_to="tensorboard", **ARGS)
    trainer.train()
    ours = read_scalars(tmp_path)
    train_steps = [e["step"] for e in trainer.state.log_history if "loss" in e]
    eval_steps = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    assert train_steps == [2, 4, 6, 8] and eval_steps == [3, 6, 8]
    assert [s for s, _ in ours["train/loss"]] == train_steps
    assert [s for s, _ in ours["train/learning_rate"]] == train_steps
    assert [s for s, _ in ours["eval/loss"]] == eval_steps
    assert_same_scalars(transformers_scalars, ours, tags=["train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "train/epoch"])


def test_transformers_tensorboard_callback_runs_unmodified(tmp_path, transformers_scalars):
    """transformers' own TensorBoardCallback, passed as a callback, writes the same event files as under transformers."""
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs=dict(
        train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1), callbacks=[TensorBoardCallback()]), **ARGS)
    trainer.train()
    ours = read_scalars(tmp_path)
    assert sorted(ours) == sorted(transformers_scalars)
    assert_same_scalars(transformers_scalars, ours)
