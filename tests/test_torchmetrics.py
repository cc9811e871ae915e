"""torchmetrics ``metrics=``: the same values and names as the equivalent ``compute_metrics``, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_history, build, run_both
from tiny import RegressionDataset, TinyReg, make_model, tiny_bert_config
from torchmetrics import MeanAbsoluteError, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

import hf_lightning
from hf_lightning.evaluation import EvalAccumulator


def regression_metrics(eval_pred):
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    return {"mse": float(((preds - labels) ** 2).mean()), "mae": float(np.abs(preds - labels).mean())}


def test_same_values_and_names_as_compute_metrics(tmp_path):
    """transformers with ``compute_metrics`` vs hf_lightning with torchmetrics: same log_history, same best metric."""
    eval_sets = {"a": RegressionDataset(20, seed=1), "b": RegressionDataset(12, seed=2)}
    args = dict(
        per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=2, logging_steps=4,
        eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4, learning_rate=1e-2,
        metric_for_best_model="b_mae", load_best_model_at_end=True,
    )
    hf = build("hf", TinyReg, tmp_path / "hf", trainer_kwargs=dict(
        train_dataset=RegressionDataset(64), eval_dataset=eval_sets, compute_metrics=regression_metrics), **args)
    hf.train()
    hl = build("hl", TinyReg, tmp_path / "hl", trainer_kwargs=dict(
        train_dataset=RegressionDataset(64), eval_dataset=eval_sets, metrics={"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}), **args)
    hl.train()
    assert_same_history(hf.state.log_history, hl.state.log_history, rel=1e-5)
    assert "eval_a_mse" in hl.state.log_history[1] and "eval_b_mae" in hl.state.log_history[-2]
    assert hl.state.best_metric == pytest.approx(hf.state.best_metric, rel=1e-6)
    assert hl.state.best_model_checkpoint.endswith(hf.state.best_model_checkpoint.rsplit("/", 1)[-1])


def test_classification_metrics_match_compute_metrics(tmp_path):
    """A tiny BERT classifier: MulticlassAccuracy/F1 equal numpy accuracy/macro-F1 from compute_metrics."""
    from transformers import BertForSequenceClassification

    def f1_score(labels, preds, average="macro"):  # macro F1 in numpy (scikit-learn is not a test dependency)
        scores = []
        for c in range(3):
            tp = np.sum((preds == c) & (labels == c))
            precision = tp / max(np.sum(preds == c), 1)
            recall = tp / max(np.sum(labels == c), 1)
            scores.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
        return float(np.mean(scores))

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 99, (12,), generator=g), "labels": int(i % 3)} for i in range(40)]

    def compute_metrics(eval_pred):
        preds = eval_pred.predictions.argmax(-1)
        return {"accuracy": float((preds == eval_pred.label_ids).mean()),
                "f1": float(f1_score(eval_pred.label_ids, preds, average="macro"))}

    def model():
        return BertForSequenceClassification(tiny_bert_config(num_labels=3))

    results = {}
    for name, kwargs in {
        "compute_metrics": dict(compute_metrics=compute_metrics),
        "torchmetrics": dict(metrics={"accuracy": MulticlassAccuracy(num_classes=3, average="micro"),
                                      "f1": MulticlassF1Score(num_classes=3, average="macro")}),
    }.items():
        trainer = build("hl", model, tmp_path / name, trainer_kwargs=dict(train_dataset=data, eval_dataset=data[:30], **kwargs),
                        per_device_eval_batch_size=7, max_steps=3, eval_strategy="steps", eval_steps=3)
        trainer.train()
        results[name] = trainer.state.log_history
    assert_same_history(results["compute_metrics"], results["torchmetrics"], rel=1e-5)
    assert 0 <= results["torchmetrics"][0]["eval_accuracy"] <= 1


def test_predict_gives_test_metrics_and_predictions(tmp_path):
    """``predict()``: ``test_*`` torchmetrics in the place transformers puts the equivalent compute_metrics keys."""
    def mse(eval_pred):
        return {"mse": float(((eval_pred.predictions - eval_pred.label_ids) ** 2).mean())}

    hf = build("hf", TinyReg, tmp_path / "hf", trainer_kwargs=dict(compute_metrics=mse)).predict(RegressionDataset(20, seed=3))
    hl = build("hl", TinyReg, tmp_path / "hl", trainer_kwargs=dict(metrics={"mse": MeanSquaredError()})).predict(RegressionDataset(20, seed=3))
    assert hl.predictions.shape == (20,)
    assert list(hl.metrics) == list(hf.metrics)
    assert hl.metrics["test_mse"] == pytest.approx(hf.metrics["test_mse"], rel=1e-5)


def test_torchmetrics_only_keeps_no_predictions(tmp_path, monkeypatch):
    """With torchmetrics alone nothing per sample is gathered or kept; with compute_metrics everything is."""
    kept: list[tuple] = []
    original = EvalAccumulator.finish

    def spy(self, *args, **kwargs):
        kept.append((self._preds.get_arrays(), self._labels.get_arrays()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EvalAccumulator, "finish", spy)
    big = RegressionDataset(4096, seed=5)
    torch_only = build("hl", TinyReg, tmp_path / "t", trainer_kwargs=dict(metrics={"mse": MeanSquaredError()}), per_device_eval_batch_size=64)
    metrics = torch_only.evaluate(big)
    assert kept[-1] == (None, None)
    with torch.no_grad():
        direct = torch.nn.functional.mse_loss(torch_only.model(big.x)["logits"], big.y).item()
    assert metrics["eval_mse"] == pytest.approx(direct, rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(direct, rel=1e-5)

    with_compute = build("hl", TinyReg, tmp_path / "c", trainer_kwargs=dict(compute_metrics=regression_metrics), per_device_eval_batch_size=64)
    with_compute.evaluate(big)
    preds, labels = kept[-1]
    assert preds.shape == labels.shape == (4096,)


def test_metrics_argument_is_checked():
    args = hf_lightning.trainer.TrainingArguments(output_dir="unused", report_to="none")
    with pytest.raises(TypeError, match="torchmetrics"):
        hf_lightning.HFModule(make_model(TinyReg), args, metrics={"mse": "not a metric"})
    with pytest.raises(TypeError, match="torchmetrics"):
        hf_lightning.HFModule(make_model(TinyReg), args, metrics=[MeanSquaredError()])


def test_run_both_with_compute_metrics_still_matches(tmp_path):
    """Sanity: adding torchmetrics support left compute_metrics runs identical to transformers."""
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=dict(
        train_dataset=RegressionDataset(32), eval_dataset=RegressionDataset(16, seed=1), compute_metrics=regression_metrics),
        max_steps=4, eval_strategy="steps", eval_steps=2, logging_steps=2)
    assert_same_history(hf.state.log_history, hl.state.log_history)
