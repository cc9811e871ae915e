"""Differential runs against transformers.Trainer: accumulation, step/epoch/ratio schedules, first-step
logging, drop_last, eval_delay and eval_on_start (golden facts 1-9 and 19).

Every run trains the same TinyReg from the same seed with both trainers and compares the whole
``log_history`` (keys, order, steps, floats within 1e-4) and the final weights (within 1e-4).
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_same_history, assert_same_weights, run_both
from tiny import RegressionDataset, TinyReg


def _compare(tmp_path, train=50, evaluation=None, **args):
    kwargs = dict(train_dataset=RegressionDataset(train))
    if evaluation is not None:
        kwargs["eval_dataset"] = RegressionDataset(evaluation, seed=1)
    args.setdefault("per_device_train_batch_size", 8)
    args.setdefault("learning_rate", 1e-2)
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=kwargs, **args)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    for field in ("global_step", "max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps", "epoch"):
        assert getattr(hl.state, field) == pytest.approx(getattr(hf.state, field)), field
    return hf, hl


def _steps(history, key):
    return [e["step"] for e in history if key in e]


@pytest.mark.parametrize("ga", [1, 2, 3])
def test_accumulation_with_uneven_last_group(tmp_path, ga):
    # 50 samples at batch 8: 7 micro-batches, so GA 2 and 3 end each epoch with a short group.
    _, hl = _compare(tmp_path, gradient_accumulation_steps=ga, num_train_epochs=2, logging_steps=1)
    assert hl.state.max_steps == 2 * -(-7 // ga)


def test_golden_fact_3_epoch_floats_ga3(tmp_path):
    _, hl = _compare(tmp_path, gradient_accumulation_steps=3, num_train_epochs=2, logging_steps=1)
    assert [round(e["epoch"], 4) for e in hl.state.log_history if "loss" in e] == [0.4286, 0.8571, 1.0, 1.4286, 1.8571, 2.0]


def test_golden_fact_3_drop_last(tmp_path):
    _, hl = _compare(tmp_path, gradient_accumulation_steps=3, num_train_epochs=2, logging_steps=1, dataloader_drop_last=True)
    assert [e["epoch"] for e in hl.state.log_history if "loss" in e] == [0.5, 1.0, 1.5, 2.0]


def test_golden_fact_4_ratio_schedules(tmp_path):
    _, hl = _compare(
        tmp_path, evaluation=12, num_train_epochs=2, logging_steps=0.25, eval_strategy="steps", eval_steps=0.4,
        save_strategy="steps", save_steps=0.5,
    )
    history = hl.state.log_history
    assert (hl.state.logging_steps, hl.state.eval_steps, hl.state.save_steps) == (4, 6, 7)
    assert _steps(history, "loss") == [4, 8, 12]
    assert _steps(history, "eval_loss") == [6, 12, 14]
    assert sorted(p.name for p in (tmp_path / "hl").iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-14", "checkpoint-7"]


def test_golden_facts_5_and_6_step_schedules(tmp_path):
    _, hl = _compare(tmp_path, evaluation=12, num_train_epochs=2, logging_steps=5, eval_strategy="steps", eval_steps=4)
    assert _steps(hl.state.log_history, "eval_loss") == [4, 8, 12, 14]
    assert _steps(hl.state.log_history, "loss") == [5, 10]
    _, hl = _compare(tmp_path, evaluation=12, num_train_epochs=2, logging_steps=3, eval_strategy="steps")
    assert _steps(hl.state.log_history, "eval_loss") == [3, 6, 9, 12, 14]


def test_golden_fact_7_logging_first_step(tmp_path):
    _, hl = _compare(tmp_path, num_train_epochs=1, logging_steps=5, logging_first_step=True)
    assert _steps(hl.state.log_history, "loss") == [1, 5]
    assert "train_loss" in hl.state.log_history[-1] and hl.state.log_history[-1]["step"] == 7


def test_golden_fact_8_max_steps_and_fractional_epochs(tmp_path):
    _, hl = _compare(tmp_path, max_steps=10, logging_steps=3)
    assert hl.state.num_train_epochs == 2 and hl.state.epoch == pytest.approx(1.4285714, rel=1e-6)
    _, hl = _compare(tmp_path, num_train_epochs=1.5, logging_steps=4)
    assert hl.state.max_steps == 11 and round(hl.state.epoch, 4) == 1.5714


def test_golden_fact_9_eval_delay(tmp_path):
    _, hl = _compare(tmp_path, evaluation=8, num_train_epochs=2, eval_strategy="steps", eval_steps=2, eval_delay=5, logging_steps=4)
    assert _steps(hl.state.log_history, "eval_loss")[0] == 6


def test_epoch_strategies_with_eval_delay_in_epochs(tmp_path):
    _, hl = _compare(
        tmp_path, evaluation=8, num_train_epochs=3, logging_strategy="epoch", eval_strategy="epoch", eval_delay=1.5,
        save_strategy="epoch", gradient_accumulation_steps=2,
    )
    assert _steps(hl.state.log_history, "eval_loss") == [8, 12]


def test_golden_fact_19_epoch_strategies_with_eval_on_start(tmp_path):
    _, hl = _compare(
        tmp_path, train=16, evaluation=8, num_train_epochs=2, logging_strategy="epoch", eval_strategy="epoch",
        eval_on_start=True,
    )
    history = hl.state.log_history
    assert history[0]["step"] == 0 and history[0]["epoch"] == 0 and "eval_loss" in history[0]
    assert _steps(history, "eval_loss") == [0, 2, 4]


def test_eval_on_start_with_steps(tmp_path):
    _compare(tmp_path, evaluation=8, max_steps=5, eval_strategy="steps", eval_steps=2, logging_steps=2, eval_on_start=True)


def test_no_logging_strategy_still_writes_summary(tmp_path):
    _, hl = _compare(tmp_path, num_train_epochs=1, logging_strategy="no")
    assert len(hl.state.log_history) == 1 and "train_loss" in hl.state.log_history[0]


def test_sequential_sampling_and_max_grad_norm_off(tmp_path):
    _compare(tmp_path, num_train_epochs=2, logging_steps=2, train_sampling_strategy="sequential", max_grad_norm=0)


def test_data_seed_changes_order_like_transformers(tmp_path):
    _compare(tmp_path, num_train_epochs=2, logging_steps=2, data_seed=7, seed=3)


def test_train_summary_after_resume_counts_only_this_call(tmp_path):
    """After a resume, ``train_loss`` and the speed keys cover the steps run in that ``train()`` call (v5)."""
    from helpers import act_both

    def resume(trainer):
        trainer.train()
        output = trainer.train(resume_from_checkpoint=str(trainer.args.output_dir) + "/checkpoint-4")
        return output

    kwargs = dict(train_dataset=RegressionDataset(48))
    hf, hl, expected, actual = act_both(TinyReg, tmp_path, resume, trainer_kwargs=kwargs, per_device_train_batch_size=8,
                                        gradient_accumulation_steps=2, num_train_epochs=3, logging_steps=3, save_strategy="steps",
                                        save_steps=4, learning_rate=1e-2)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert actual.training_loss == pytest.approx(expected.training_loss, rel=1e-5)
    assert actual.metrics.keys() == expected.metrics.keys()


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, n):
        self.data = RegressionDataset(n)

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


@pytest.mark.parametrize("samples", [80, 36])  # 36: the stream runs out before max_steps (several passes)
def test_unsized_dataset_with_max_steps(tmp_path, samples):
    kwargs = dict(train_dataset=_Stream(samples))
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=kwargs, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=6,
                      logging_steps=2, learning_rate=1e-2)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


@pytest.mark.parametrize("samples", [40, 36])
def test_unsized_dataset_with_epoch_strategies(tmp_path, samples):
    kwargs = dict(train_dataset=_Stream(samples), eval_dataset=RegressionDataset(8, seed=1))
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=kwargs, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=12,
                      logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch", learning_rate=1e-2)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert sorted(p.name for p in (tmp_path / "hl").iterdir() if p.name.startswith("checkpoint-")) == sorted(
        p.name for p in (tmp_path / "hf").iterdir() if p.name.startswith("checkpoint-"))


@pytest.mark.parametrize("limits", [dict(max_steps=3), dict(num_train_epochs=1.5)], ids=["max_steps", "fractional_epochs"])
def test_epoch_strategies_on_a_partial_last_epoch(tmp_path, limits):
    """Training stops mid-epoch: transformers still runs on_epoch_end, so epoch logging/eval/save happen there."""
    _, hl = _compare(tmp_path, evaluation=8, logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch", **limits)
    assert hl.state.log_history[-2]["step"] == hl.state.max_steps and "eval_loss" in hl.state.log_history[-2]


def test_train_twice(tmp_path):
    """A second ``train()`` starts a fresh state from the current weights (transformers keeps its optimizer)."""
    from helpers import act_both

    def twice(trainer):
        first = trainer.train()
        second = trainer.train()
        return first.training_loss, second.training_loss

    hf, hl, expected, actual = act_both(TinyReg, tmp_path, twice, trainer_kwargs=dict(train_dataset=RegressionDataset(32)),
                                        per_device_train_batch_size=8, max_steps=4, logging_steps=1, learning_rate=1e-2)
    assert actual == pytest.approx(expected, rel=1e-5)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
