"""Override points: the same subclass body on transformers.Trainer and on hf_lightning.Trainer.

For each body of ``overrides.py`` both subclasses train, evaluate and predict on the same tiny case;
the log_history, the final weights, the predictions, the checkpoint files and the calls the body
recorded (arguments and order) must be the same. ``test_override_points_are_called_in_transformers_order``
wraps every override point at once and compares the sequence of calls.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import transformers

import hf_lightning
import overrides
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_metrics, assert_same_weights, make_args
from tiny import RegressionDataset, TinyReg

ARGS = dict(
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    gradient_accumulation_steps=2,
    num_train_epochs=2,
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=3,
    save_strategy="steps",
    save_steps=3,
    learning_rate=0.05,
    weight_decay=0.5,
)


def _mse(pred) -> dict[str, float]:
    return {"mse": float(((pred.predictions - pred.label_ids) ** 2).mean())}


def _run(base: type, body: type | None, out, *, train=True, **extra_args):
    """Build ``body`` on ``base``, train, evaluate, predict; return (trainer, calls, evaluate(), predict())."""
    overrides.CALLS.clear()
    shutil.rmtree(out, ignore_errors=True)
    cls = overrides.subclass(body, base) if body is not None else base
    torch.manual_seed(0)
    kwargs = dict(LIGHTNING_QUIET) if issubclass(base, hf_lightning.Trainer) else {}
    trainer = cls(
        model=TinyReg(dropout=0.1),
        args=make_args(out, **{**ARGS, **extra_args}),
        train_dataset=RegressionDataset(24),
        eval_dataset=RegressionDataset(12, seed=1),
        compute_metrics=_mse,
        **kwargs,
    )
    if train:
        trainer.train()
    evaluated = trainer.evaluate()
    predicted = trainer.predict(RegressionDataset(12, seed=2))
    return trainer, list(overrides.CALLS), evaluated, predicted


def _checkpoint_files(folder) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(os.path.join(folder, d))) for d in sorted(os.listdir(folder)) if d.startswith("checkpoint-")}


def _assert_same_run(tmp_path, body, **extra_args):
    hf, hf_calls, hf_eval, hf_pred = _run(transformers.Trainer, body, tmp_path / "hf", **extra_args)
    hl, hl_calls, hl_eval, hl_pred = _run(hf_lightning.Trainer, body, tmp_path / "hl", **extra_args)
    assert hl_calls == hf_calls, f"transformers: {hf_calls}\nhf_lightning: {hl_calls}"
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert_same_metrics(hf_eval, hl_eval)
    assert_same_metrics(hf_pred.metrics, hl_pred.metrics)
    np.testing.assert_allclose(hl_pred.predictions, hf_pred.predictions, rtol=1e-4, atol=1e-6)
    assert _checkpoint_files(tmp_path / "hl") == _checkpoint_files(tmp_path / "hf")
    return hf, hl, hf_calls


@pytest.mark.parametrize("body", sorted(overrides.BODIES))
def test_same_subclass_body_gives_the_same_run(tmp_path, body):
    hf, hl, calls = _assert_same_run(tmp_path, overrides.BODIES[body])
    assert calls, f"{body} was never called"  # the override ran (on both sides, since the calls are equal)


def test_custom_save_model_writes_into_every_checkpoint(tmp_path):
    hf, hl, calls = _assert_same_run(tmp_path, overrides.CustomSaveModel)
    assert ("save_model", True) in calls
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        assert (tmp_path / "hl" / checkpoint / "custom_save_model.txt").read_text() == checkpoint.split("-")[1]


def test_own_training_step_changes_the_gradients(tmp_path):
    """The override's own backward is what trains: the weights differ from the plain run's."""
    hf, hl, _ = _assert_same_run(tmp_path, overrides.OwnTrainingStep)
    plain, *_ = _run(hf_lightning.Trainer, None, tmp_path / "plain")
    difference = max((a - b).abs().max().item() for a, b in zip(hl.model.parameters(), plain.model.parameters()))
    assert difference > 1e-3


def _recording_body() -> type:
    """Wraps every override point: records the name at entry, then calls the base."""

    def wrap(name):
        def method(self, *args, **kwargs):
            overrides.CALLS.append((name,))
            return getattr(super(Recorder, self), name)(*args, **kwargs)

        method.__name__ = name
        return method

    names = [n for n in hf_lightning.hooks.OVERRIDE_POINTS if n != "create_optimizer_and_scheduler"]
    Recorder = type("Recorder", (), {name: wrap(name) for name in names})
    return Recorder


def test_override_points_are_called_in_transformers_order(tmp_path):
    """Every override point at once: the same calls, in the same order, in train(), evaluate() and predict()."""
    hf, hl, calls = _assert_same_run(tmp_path, _recording_body())
    names = {c[0] for c in calls}
    expected = {"training_step", "compute_loss", "prediction_step", "evaluation_loop", "evaluate", "predict", "log",
                "create_optimizer", "create_scheduler", "get_decay_parameter_names", "get_train_dataloader",
                "get_eval_dataloader", "get_test_dataloader", "compute_loss_context_manager",
                "autocast_smart_context_manager", "floating_point_ops"}
    assert expected <= names


def test_evaluate_override_runs_for_the_evaluations_during_training(tmp_path):
    hf, hl, calls = _assert_same_run(tmp_path, overrides.QuestionAnsweringStyleEvaluate)
    assert [c for c in calls if c[0] == "evaluate"][:2] == [("evaluate", "eval", 3), ("evaluate", "eval", 6)]
    assert any("eval_mean_prediction" in entry for entry in hl.state.log_history)


def test_evaluate_and_predict_before_training(tmp_path):
    """evaluate()/predict() on a fresh trainer, overridden prediction_step, no train() at all."""
    hf, hf_calls, hf_eval, hf_pred = _run(transformers.Trainer, overrides.CustomPredictionStep, tmp_path / "hf", train=False)
    hl, hl_calls, hl_eval, hl_pred = _run(hf_lightning.Trainer, overrides.CustomPredictionStep, tmp_path / "hl", train=False)
    assert hl_calls == hf_calls
    assert_same_metrics(hf_eval, hl_eval)
    np.testing.assert_allclose(hl_pred.predictions, hf_pred.predictions, rtol=1e-5)
