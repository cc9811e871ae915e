"""Differential evaluation against transformers.Trainer: causal-LM token weighting (fact 13),
compute_metrics, dict eval datasets, predict() and a standalone evaluate() (fact 14), -100 padding
of variable-length predictions, and the eval-loop options (batch_eval_metrics,
eval_accumulation_steps, include_for_metrics, prediction_loss_only, label_names).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import act_both, assert_same_arrays, assert_same_history, assert_same_metrics, assert_same_weights, run_both
from lm import ClassificationDataset, VariableLMDataset, accuracy, pad_collate, tiny_bert_classifier, tiny_llama
from tiny import RegressionDataset, TinyReg


def _lm_kwargs(**extra):
    kwargs = dict(train_dataset=VariableLMDataset(18), eval_dataset=VariableLMDataset(10, seed=1), data_collator=pad_collate)
    kwargs.update(extra)
    return kwargs


def test_golden_fact_13_causal_lm_token_weighted_loss(tmp_path):
    hf, hl = run_both(
        tiny_llama, tmp_path, trainer_kwargs=_lm_kwargs(), per_device_train_batch_size=2, per_device_eval_batch_size=4,
        gradient_accumulation_steps=3, num_train_epochs=2, logging_steps=1, eval_strategy="steps", eval_steps=2,
        learning_rate=1e-3, weight_decay=0.01, warmup_steps=1, lr_scheduler_type="cosine",
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert hl.state.total_flos == pytest.approx(hf.state.total_flos)


def test_causal_lm_step_loss_is_token_weighted_over_the_group(tmp_path):
    """The first logged loss is Σ token CE over the 3 micro-batches / Σ counted tokens (labels[:, 1:])."""
    data = VariableLMDataset(6)
    torch.manual_seed(0)
    reference = tiny_llama()
    total, tokens, means = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, 6, 2):
            batch = pad_collate([data[i] for i in range(start, start + 2)])
            logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1)
            total += torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum").item()
            tokens += int(shift_labels.ne(-100).sum())
            means.append(torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100).item())
    hf, hl = run_both(
        tiny_llama, tmp_path, trainer_kwargs=dict(train_dataset=data, data_collator=pad_collate),
        per_device_train_batch_size=2, gradient_accumulation_steps=3, max_steps=1, logging_steps=1,
        train_sampling_strategy="sequential",
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    logged = hl.state.log_history[0]["loss"]
    assert logged == pytest.approx(total / tokens, rel=1e-5)
    assert logged != pytest.approx(sum(means) / 3, rel=1e-6)


def test_golden_fact_13_eval_loss_is_sample_weighted(tmp_path):
    data = VariableLMDataset(10, seed=1)
    torch.manual_seed(0)
    reference = tiny_llama()
    reference.eval()
    batch_means, sizes = [], []
    with torch.no_grad():
        for start in range(0, 10, 4):
            features = [data[i] for i in range(start, min(start + 4, 10))]
            batch_means.append(reference(**pad_collate(features)).loss.item())
            sizes.append(len(features))
    _, _, hf_metrics, hl_metrics = act_both(
        tiny_llama, tmp_path, lambda t: t.evaluate(), trainer_kwargs=_lm_kwargs(), per_device_eval_batch_size=4
    )
    assert_same_metrics(hf_metrics, hl_metrics)
    weighted = float(np.dot(batch_means, sizes) / sum(sizes))
    assert hl_metrics["eval_loss"] == pytest.approx(weighted, rel=1e-5)
    assert hl_metrics["eval_loss"] != pytest.approx(float(np.mean(batch_means)), rel=1e-6)


def test_golden_fact_14_standalone_evaluate_before_training(tmp_path):
    hf, hl, hf_metrics, hl_metrics = act_both(
        TinyReg, tmp_path, lambda t: t.evaluate(),
        trainer_kwargs=dict(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(10, seed=1)),
        per_device_eval_batch_size=4,
    )
    assert_same_metrics(hf_metrics, hl_metrics)
    assert hl_metrics["epoch"] == 0 and "eval_model_preparation_time" in hl_metrics
    assert_same_history(hf.state.log_history, hl.state.log_history)


def _evaluate_then_train_then_evaluate(trainer):
    first = trainer.evaluate()
    trainer.train()
    second = trainer.evaluate()
    return first, second


def test_evaluate_train_evaluate_keeps_model_preparation_time(tmp_path):
    hf, hl, hf_results, hl_results = act_both(
        TinyReg, tmp_path, _evaluate_then_train_then_evaluate,
        trainer_kwargs=dict(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(10, seed=1)),
        per_device_eval_batch_size=4, eval_strategy="epoch", num_train_epochs=2, logging_steps=1,
    )
    for expected, actual in zip(hf_results, hl_results):
        assert_same_metrics(expected, actual)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


def _dict_eval_and_predict(trainer):
    trainer.train()
    metrics = trainer.evaluate()
    renamed = trainer.evaluate(metric_key_prefix="dev")
    prediction = trainer.predict(ClassificationDataset(7, seed=5))
    other = trainer.predict(ClassificationDataset(5, seed=6), metric_key_prefix="final")
    return metrics, renamed, prediction, other


def test_golden_fact_14_dict_eval_compute_metrics_and_predict(tmp_path):
    def metrics_with_prefix(eval_pred):
        return {**accuracy(eval_pred), "eval_already": 1.0}

    kwargs = dict(
        train_dataset=ClassificationDataset(24),
        eval_dataset={"a": ClassificationDataset(10, seed=1), "b": ClassificationDataset(6, seed=2)},
        compute_metrics=metrics_with_prefix,
    )
    hf, hl, hf_out, hl_out = act_both(
        tiny_bert_classifier, tmp_path, _dict_eval_and_predict, trainer_kwargs=kwargs, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, num_train_epochs=1, eval_strategy="steps", eval_steps=3, logging_steps=2,
        learning_rate=1e-3,
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    for expected, actual in zip(hf_out[:2], hl_out[:2]):
        assert_same_metrics(expected, actual)
    assert "eval_a_eval_already" in hl_out[0] and "eval_b_loss" in hl_out[0] and "dev_a_accuracy" in hl_out[1]
    for expected, actual in zip(hf_out[2:], hl_out[2:]):
        assert_same_arrays(expected.predictions, actual.predictions)
        assert_same_arrays(expected.label_ids, actual.label_ids)
        assert_same_metrics(expected.metrics, actual.metrics)
    assert "epoch" not in hl_out[2].metrics and "test_accuracy" in hl_out[2].metrics and "final_loss" in hl_out[3].metrics


def test_predict_pads_variable_length_outputs_with_minus_100(tmp_path):
    def predict(trainer):
        return trainer.predict(VariableLMDataset(7, seed=3))

    hf, hl, expected, actual = act_both(
        tiny_llama, tmp_path, predict, trainer_kwargs=_lm_kwargs(), per_device_eval_batch_size=3,
    )
    assert_same_arrays(expected.predictions, actual.predictions)
    assert_same_arrays(expected.label_ids, actual.label_ids)
    assert_same_metrics(expected.metrics, actual.metrics)
    assert (actual.predictions == -100).any() and (actual.label_ids == -100).any()
    assert hl.state.log_history == [] == hf.state.log_history


def test_predict_without_labels(tmp_path):
    class NoLabels(torch.utils.data.Dataset):
        def __init__(self):
            self.data = RegressionDataset(5, seed=4)

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"input_x": self.data[i]["input_x"]}

    hf, hl, expected, actual = act_both(
        TinyReg, tmp_path, lambda t: t.predict(NoLabels()), trainer_kwargs=dict(train_dataset=RegressionDataset(8)),
        per_device_eval_batch_size=2,
    )
    assert actual.label_ids is None and expected.label_ids is None
    assert_same_arrays(expected.predictions, actual.predictions)
    assert_same_metrics(expected.metrics, actual.metrics)


# ----------------------------------------------------------------------- eval-loop options


def _record(calls):
    def compute_metrics(eval_pred):
        calls.append(eval_pred)
        return accuracy(eval_pred)

    return compute_metrics


def _batch_metrics(calls):
    def compute_metrics(eval_pred, compute_result):
        calls.append((type(eval_pred.predictions).__name__, compute_result, None if eval_pred.losses is None else tuple(eval_pred.losses.shape)))
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        return {"batch_accuracy": float((logits.argmax(-1) == labels).float().mean()), "last": float(compute_result)}

    return compute_metrics


@pytest.mark.parametrize(
    "options",
    [
        dict(eval_accumulation_steps=2),
        dict(include_for_metrics=["inputs", "loss"]),
        dict(prediction_loss_only=True),
        dict(batch_eval_metrics=True, include_for_metrics=["loss"]),
        dict(eval_do_concat_batches=False),
        dict(eval_use_gather_object=True, include_for_metrics=["inputs"]),
    ],
    ids=["accumulation", "include_for_metrics", "loss_only", "batch_eval_metrics", "no_concat", "gather_object"],
)
def test_eval_loop_options(tmp_path, options):
    from helpers import build

    calls = {"hf": [], "hl": []}
    results = {}
    for side in ("hf", "hl"):
        metric_fn = _batch_metrics(calls[side]) if options.get("batch_eval_metrics") else _record(calls[side])
        if options.get("eval_do_concat_batches") is False:
            def metric_fn(eval_pred, _calls=calls[side]):  # noqa: E306 - per-side recorder
                _calls.append([p.shape for p in eval_pred.predictions])
                return {"batches": float(len(eval_pred.predictions))}
        kwargs = dict(train_dataset=ClassificationDataset(8), eval_dataset=ClassificationDataset(10, seed=1), compute_metrics=metric_fn)
        trainer = build(side, tiny_bert_classifier, tmp_path / side, trainer_kwargs=kwargs, per_device_eval_batch_size=4, **options)
        results[side] = (trainer.evaluate(), trainer.predict(ClassificationDataset(6, seed=2)), trainer.state.log_history)
    assert_same_metrics(results["hf"][0], results["hl"][0])
    assert_same_metrics(results["hf"][1].metrics, results["hl"][1].metrics)
    assert_same_arrays(results["hf"][1].predictions, results["hl"][1].predictions)
    assert_same_arrays(results["hf"][1].label_ids, results["hl"][1].label_ids)
    assert_same_history(results["hf"][2], results["hl"][2])
    hf_calls, hl_calls = calls["hf"], calls["hl"]
    assert len(hf_calls) == len(hl_calls)
    for expected, actual in zip(hf_calls, hl_calls):
        if hasattr(expected, "predictions"):
            assert_same_arrays(expected.predictions, actual.predictions)
            assert_same_arrays(expected.label_ids, actual.label_ids)
            assert_same_arrays(expected.inputs, actual.inputs)
            assert_same_arrays(expected.losses, actual.losses)
        else:
            assert expected == actual


def test_preprocess_logits_for_metrics(tmp_path):
    seen = {}

    def preprocess(logits, labels):
        seen.setdefault("shapes", []).append((tuple(logits.shape), tuple(labels.shape)))
        return logits.argmax(-1)

    def metrics(eval_pred):
        return {"accuracy": float((eval_pred.predictions == eval_pred.label_ids).mean())}

    kwargs = dict(train_dataset=ClassificationDataset(8), eval_dataset=ClassificationDataset(10, seed=1), compute_metrics=metrics,
                  preprocess_logits_for_metrics=preprocess)
    _, _, expected, actual = act_both(tiny_bert_classifier, tmp_path, lambda t: t.evaluate(), trainer_kwargs=kwargs, per_device_eval_batch_size=4)
    assert_same_metrics(expected, actual)
    assert len(seen["shapes"]) == 6


def test_label_names_question_answering(tmp_path):
    from transformers import BertForQuestionAnswering

    from tiny import tiny_bert_config

    class QA(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(5, 99, (n, 8), generator=g)
            self.start = torch.randint(0, 8, (n,), generator=g)
            self.end = torch.randint(0, 8, (n,), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "start_positions": self.start[i], "end_positions": self.end[i]}

    def metrics(eval_pred):
        start_logits, end_logits = eval_pred.predictions
        starts, ends = eval_pred.label_ids
        return {"exact": float(((start_logits.argmax(-1) == starts) & (end_logits.argmax(-1) == ends)).mean())}

    def run(trainer):
        trainer.train()
        return trainer.evaluate(), trainer.predict(QA(5, 3))

    kwargs = dict(train_dataset=QA(12, 0), eval_dataset=QA(6, 1), compute_metrics=metrics)
    hf, hl, expected, actual = act_both(
        lambda: BertForQuestionAnswering(tiny_bert_config()), tmp_path, run, trainer_kwargs=kwargs,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=3, logging_steps=1, learning_rate=1e-3,
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_metrics(expected[0], actual[0])
    assert_same_arrays(expected[1].label_ids, actual[1].label_ids)
    assert_same_arrays(expected[1].predictions, actual[1].predictions)
    assert "eval_exact" in actual[0]


def test_explicit_label_names(tmp_path):
    # label_names given explicitly: transformers' has_labels needs all of them in the batch.
    kwargs = dict(train_dataset=ClassificationDataset(8), eval_dataset=ClassificationDataset(6, seed=1), compute_metrics=accuracy)
    _, _, expected, actual = act_both(
        tiny_bert_classifier, tmp_path, lambda t: t.evaluate(), trainer_kwargs=kwargs, per_device_eval_batch_size=4,
        label_names=["labels"],
    )
    assert_same_metrics(expected, actual)


def test_evaluate_then_train_a_causal_lm(tmp_path):
    """An evaluation before training must leave the model trainable (transformers evaluates under no_grad)."""
    hf, hl, hf_results, hl_results = act_both(
        tiny_llama, tmp_path, _evaluate_then_train_then_evaluate, trainer_kwargs=_lm_kwargs(), per_device_train_batch_size=2,
        per_device_eval_batch_size=4, max_steps=3, logging_steps=1, learning_rate=1e-3,
    )
    for expected, actual in zip(hf_results, hl_results):
        assert_same_metrics(expected, actual)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
