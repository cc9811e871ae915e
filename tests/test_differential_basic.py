"""Differential tests against transformers.Trainer on golden facts 1 and 2 (plain module, accumulation)."""

from __future__ import annotations

import os

from helpers import assert_same_history, assert_same_weights, checkpoint_files, run_both
from tiny import RegressionDataset, TinyReg


def test_golden_fact_1_steps_logs_evals_checkpoints(tmp_path):
    hf, hl = run_both(
        TinyReg,
        tmp_path,
        trainer_kwargs=dict(train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1)),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_train_epochs=3,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=5,
        learning_rate=1e-2,
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    history = hl.state.log_history
    assert [e["step"] for e in history if "loss" in e] == [2, 4, 6, 8, 10, 12]
    assert [e["step"] for e in history if "eval_loss" in e] == [4, 8, 12]
    assert history[0]["learning_rate"] == 0.01 * 11 / 12
    assert hl.state.max_steps == 12 and hl.state.num_train_epochs == 3
    assert sorted(d for d in os.listdir(tmp_path / "hl") if d.startswith("checkpoint")) == ["checkpoint-10", "checkpoint-12", "checkpoint-5"]
    for name in ("checkpoint-5", "checkpoint-10", "checkpoint-12"):
        assert checkpoint_files(tmp_path / "hl" / name) == checkpoint_files(tmp_path / "hf" / name)


def test_golden_fact_2_uneven_last_group(tmp_path):
    hf, hl = run_both(
        TinyReg,
        tmp_path,
        trainer_kwargs=dict(train_dataset=RegressionDataset(72)),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        logging_steps=3,
        warmup_steps=0.2,
        learning_rate=1e-2,
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    train_logs = [e for e in hl.state.log_history if "loss" in e]
    assert [e["step"] for e in train_logs] == [3, 6, 9]
    assert [round(e["epoch"], 4) for e in train_logs] == [0.6667, 1.2222, 1.8889]
    assert [e["learning_rate"] for e in train_logs] == [0.01, 0.00625, 0.0025]
