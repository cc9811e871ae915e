"""A loss or gradient norm that goes NaN is said at the logging step, and can stop the run (issue 13)."""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from hardening_helpers import tiny_trainer
from helpers import build
from tiny import RegressionDataset, TinyReg

from hf_lightning import NonFiniteGuard, hf_format
from hf_lightning.callbacks.nonfinite import nonfinite_message, nonfinite_values


class NaNFrom(TinyReg):
    """TinyReg whose loss is NaN from its ``start``-th training forward on (the weights then turn NaN too)."""

    def __init__(self, start: int = 3) -> None:
        super().__init__()
        self.start, self.calls = start, 0

    def forward(self, input_x, labels=None):
        out = super().forward(input_x, labels)
        if self.training and labels is not None:
            self.calls += 1
            if self.calls == self.start:
                out["loss"] = out["loss"] * float("nan")
        return out


def nan_trainer(out, **kwargs):
    lightning = kwargs.pop("lightning", {})
    args = dict(per_device_train_batch_size=8, max_steps=4, save_strategy="steps", save_steps=1, logging_steps=1)
    args.update(kwargs)
    return build("hl", NaNFrom, out, trainer_kwargs=dict(train_dataset=RegressionDataset(32), **lightning), **args)


@pytest.mark.parametrize(
    "logs, expected",
    [
        ({"loss": 1.0, "grad_norm": 2.0, "learning_rate": 0.1}, {}),
        ({"loss": float("nan"), "grad_norm": 2.0}, {"loss": float("nan")}),
        ({"loss": 0.0, "grad_norm": float("inf")}, {"grad_norm": float("inf")}),
        ({"eval_loss": float("nan")}, {}),  # evaluation logs are not training divergence
        ({"loss": True}, {}),
    ],
)
def test_nonfinite_values_table(logs, expected):
    found = nonfinite_values(logs)
    assert list(found) == list(expected)
    assert all(math.isnan(v) if math.isnan(expected[k]) else v == expected[k] for k, v in found.items())


def test_message_says_a_filtered_loss_is_not_the_loss():
    text = nonfinite_message(7, {"loss": 0.0, "grad_norm": float("nan")}, {"grad_norm": float("nan")}, nan_inf_filter=True, stopping=False)
    assert text.startswith("Training went non-finite at step 7: grad_norm=nan.")
    assert "The logged loss (0.0) leaves out the non-finite step losses" in text and "on_nonfinite='stop'" in text
    text = nonfinite_message(7, {"loss": float("nan")}, {"loss": float("nan")}, nan_inf_filter=False, stopping=True)
    assert "leaves out" not in text and "Stopping here" in text
    with pytest.raises(ValueError, match=r"`on_nonfinite='halt'` is not valid; use one of \['warn', 'stop'\]"):
        NonFiniteGuard("halt")


def test_warns_at_the_logging_step_and_explains_the_zero_loss(tmp_path, caplog):
    trainer = nan_trainer(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="hf_lightning.callbacks.nonfinite"):
        trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[2]["loss"] == 0.0 and math.isnan(history[2]["grad_norm"])  # transformers' filter, as transformers logs it
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("Training went non-finite at step 3: grad_norm=nan.") and "logged loss (0.0)" in messages[0]
    assert any(m.startswith("Training went non-finite at step 4:") for m in messages)


def test_without_the_filter_the_nan_loss_is_named(tmp_path, caplog):
    trainer = nan_trainer(tmp_path / "out", logging_nan_inf_filter=False)
    with caplog.at_level(logging.WARNING, logger="hf_lightning.callbacks.nonfinite"):
        trainer.train()
    assert caplog.records[0].getMessage().startswith("Training went non-finite at step 3: loss=nan, grad_norm=nan.")


@pytest.mark.parametrize("strategy", ["steps", "epoch"])
def test_stop_before_a_nonfinite_checkpoint_is_written(tmp_path, caplog, strategy):
    out = tmp_path / "out"
    kwargs = dict(save_strategy=strategy)
    if strategy == "epoch":
        kwargs.update(max_steps=-1, num_train_epochs=1, per_device_train_batch_size=8)  # 4 steps: the epoch ends at the stop
    trainer = nan_trainer(out, lightning=dict(on_nonfinite="stop"), **kwargs)
    with caplog.at_level(logging.WARNING, logger="hf_lightning.callbacks.nonfinite"):
        output = trainer.train()
    assert output.global_step == 3 and trainer.state.global_step == 3
    assert "Stopping here" in caplog.records[0].getMessage()
    names = sorted(n for n in os.listdir(out) if n.startswith("checkpoint-"))
    assert "checkpoint-3" not in names
    for name in names:
        weights = hf_format.load_model_state_dict(out / name)
        assert all(torch.isfinite(t).all() for t in weights.values()), name


def test_finite_runs_are_untouched(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_lightning.callbacks.nonfinite"):
        tiny_trainer(tmp_path / "out", lightning=dict(on_nonfinite="stop")).train()
    assert not caplog.records
