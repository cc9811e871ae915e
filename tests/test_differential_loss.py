"""Loss semantics against transformers.Trainer: compute_loss_func (fact 18), label smoothing (with the
causal-LM shift), the NaN/Inf filter, num_input_tokens_seen (fact 19 keys), and the summary's
train_loss and total_flos.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import act_both, assert_same_history, assert_same_metrics, assert_same_weights, run_both
from lm import ClassificationDataset, VariableLMDataset, pad_collate, tiny_bert_classifier, tiny_llama
from tiny import RegressionDataset, TinyReg


def _mse_mean(outputs, labels, num_items_in_batch=None):
    return nn.functional.mse_loss(outputs["logits"], labels)


def test_golden_fact_18_compute_loss_func_is_not_divided_by_accumulation(tmp_path):
    kwargs = dict(train_dataset=RegressionDataset(32), compute_loss_func=_mse_mean)
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=kwargs, gradient_accumulation_steps=2, per_device_train_batch_size=4,
                      max_steps=3, logging_steps=1, learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    default_hf, default_hl = run_both(TinyReg, tmp_path / "default", trainer_kwargs=dict(train_dataset=RegressionDataset(32)),
                                      gradient_accumulation_steps=2, per_device_train_batch_size=4, max_steps=3, logging_steps=1,
                                      learning_rate=1e-3)
    first, default_first = hl.state.log_history[0]["loss"], default_hl.state.log_history[0]["loss"]
    assert first == pytest.approx(2 * default_first, rel=1e-5)  # GA x the default path, as transformers logs it


def test_compute_loss_func_with_token_counts_on_a_causal_lm(tmp_path):
    def token_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.size(-1))
        summed = nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        return summed / num_items_in_batch

    kwargs = dict(train_dataset=VariableLMDataset(12), data_collator=pad_collate, compute_loss_func=token_loss)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, gradient_accumulation_steps=3, per_device_train_batch_size=2,
                      max_steps=2, logging_steps=1, learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


@pytest.mark.parametrize(
    "factory,data",
    [(tiny_bert_classifier, lambda: dict(train_dataset=ClassificationDataset(16), eval_dataset=ClassificationDataset(6, seed=1))),
     (tiny_llama, lambda: dict(train_dataset=VariableLMDataset(12), eval_dataset=VariableLMDataset(6, seed=1), data_collator=pad_collate))],
    ids=["classifier", "causal_lm_shift"],
)
def test_label_smoothing(tmp_path, factory, data):
    hf, hl = run_both(factory, tmp_path, trainer_kwargs=data(), label_smoothing_factor=0.1, gradient_accumulation_steps=2,
                      per_device_train_batch_size=2, max_steps=3, logging_steps=1, eval_strategy="steps", eval_steps=3,
                      learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


class PoisonReg(TinyReg):
    """TinyReg whose loss is NaN for a batch containing a poisoned sample; gradients stay finite."""

    def forward(self, input_x, labels=None, poison=None):
        out = super().forward(input_x, labels)
        if labels is not None and poison is not None:
            out["loss"] = out["loss"] + torch.where(poison.any(), float("nan"), 0.0)
        return out


class PoisonedData(RegressionDataset):
    def __init__(self, n, poisoned, seed=0):
        super().__init__(n, seed=seed)
        self.poisoned = set(poisoned)

    def __getitem__(self, i):
        return {**super().__getitem__(i), "poison": torch.tensor(i in self.poisoned)}


@pytest.mark.parametrize("nan_filter", [True, False])
def test_nan_inf_filter(tmp_path, nan_filter):
    kwargs = dict(train_dataset=PoisonedData(48, poisoned=[5, 30]), eval_dataset=PoisonedData(12, poisoned=[2], seed=1))
    hf, hl = run_both(PoisonReg, tmp_path, trainer_kwargs=kwargs, logging_nan_inf_filter=nan_filter, gradient_accumulation_steps=2,
                      per_device_train_batch_size=4, num_train_epochs=1, logging_steps=2, eval_strategy="steps", eval_steps=3,
                      per_device_eval_batch_size=4, train_sampling_strategy="sequential")
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    losses = [e["loss"] for e in hl.state.log_history if "loss" in e]
    assert any(loss != loss for loss in losses) != nan_filter
    evals = [e["eval_loss"] for e in hl.state.log_history if "eval_loss" in e]
    assert all(v == v for v in evals) == nan_filter


@pytest.mark.parametrize("mode", ["all", "non_padding", True])
def test_golden_fact_19_num_input_tokens_seen(tmp_path, mode):
    kwargs = dict(train_dataset=VariableLMDataset(8), eval_dataset=VariableLMDataset(2, seed=1), data_collator=pad_collate)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, include_num_input_tokens_seen=mode, per_device_train_batch_size=2,
                      gradient_accumulation_steps=2, num_train_epochs=2, logging_strategy="epoch", eval_strategy="epoch",
                      learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    history = hl.state.log_history
    train_log = next(e for e in history if "loss" in e)
    assert list(train_log)[-4:] == ["num_input_tokens_seen", "train_runtime", "train_tokens_per_second", "step"]
    eval_log = next(e for e in history if "eval_loss" in e)
    assert "num_input_tokens_seen" in eval_log and "train_runtime" not in eval_log
    assert "num_input_tokens_seen" in history[-1] and "train_tokens_per_second" not in history[-1]
    assert hl.state.num_input_tokens_seen == hf.state.num_input_tokens_seen > 0


def test_non_padding_counts_with_a_tokenizer_and_no_attention_mask(tmp_path, tokenizer):
    def no_mask(features):
        batch = pad_collate(features)
        batch.pop("attention_mask")
        return batch

    kwargs = dict(train_dataset=VariableLMDataset(8), data_collator=no_mask, processing_class=tokenizer)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, include_num_input_tokens_seen="non_padding",
                      per_device_train_batch_size=2, max_steps=3, logging_steps=1)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert hl.state.num_input_tokens_seen == hf.state.num_input_tokens_seen


def test_total_flos_and_summary(tmp_path):
    kwargs = dict(train_dataset=VariableLMDataset(12), data_collator=pad_collate)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, per_device_train_batch_size=2, max_steps=4, logging_steps=3,
                      learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert hl.state.total_flos == hf.state.total_flos > 0
    summary = hl.state.log_history[-1]
    assert list(summary) == ["train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss", "epoch", "step"]


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_golden_fact_20_train_output_total_flos_quirk(tmp_path, disable_tqdm):
    hf, hl, expected, actual = act_both(
        TinyReg, tmp_path, lambda t: t.train(), trainer_kwargs=dict(train_dataset=RegressionDataset(16)), disable_tqdm=disable_tqdm,
        max_steps=2,
    )
    assert actual.global_step == expected.global_step
    assert actual.training_loss == pytest.approx(expected.training_loss, rel=1e-5)
    assert_same_metrics(expected.metrics, actual.metrics)
    assert ("total_flos" in actual.metrics) == (not disable_tqdm)
    assert "total_flos" in hl.state.log_history[-1]


def test_memory_metrics_when_not_skipped(tmp_path):
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=RegressionDataset(16)), skip_memory_metrics=False, max_steps=2)
    assert list(hl.state.log_history[-1]) == list(hf.state.log_history[-1])


def test_memory_metrics_of_evaluate_and_predict(tmp_path):
    def run(trainer):
        return trainer.evaluate(), trainer.predict(RegressionDataset(6, seed=2)).metrics

    kwargs = dict(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1))
    hf, hl, expected, actual = act_both(TinyReg, tmp_path, run, trainer_kwargs=kwargs, skip_memory_metrics=False)
    for e, a in zip(expected, actual):
        assert list(e) == list(a)
    assert "init_mem_cpu_alloc_delta" in actual[0] and "test_mem_cpu_alloc_delta" in actual[1]
    assert_same_history(hf.state.log_history, hl.state.log_history)


def test_num_items_in_batch_reaches_the_loss_as_transformers_passes_it(tmp_path):
    """transformers divides the label count by the tensor/context/sequence-parallel sizes, so the loss sees a float
    tensor (3.0, not 3): a loss function or ``compute_loss`` override that reads it sees the same value and dtype."""
    seen: list[list[tuple]] = []

    def token_loss(outputs, labels, num_items_in_batch=None):
        seen[-1].append((num_items_in_batch.dtype, tuple(num_items_in_batch.shape), num_items_in_batch.item(), outputs.logits.requires_grad))
        logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.size(-1))
        return nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum") / num_items_in_batch

    def train_and_evaluate(trainer):
        seen.append([])
        trainer.train()
        trainer.evaluate()
        return seen[-1]

    kwargs = dict(train_dataset=VariableLMDataset(8), eval_dataset=VariableLMDataset(4, seed=1), data_collator=pad_collate,
                  compute_loss_func=token_loss)
    hf, hl, hf_seen, hl_seen = act_both(tiny_llama, tmp_path, train_and_evaluate, trainer_kwargs=kwargs, gradient_accumulation_steps=2,
                                        per_device_train_batch_size=2, per_device_eval_batch_size=2, max_steps=2, logging_steps=1)
    assert hl_seen == hf_seen
    assert {dtype for dtype, *_ in hl_seen} == {torch.float32}  # transformers 5.x: count / (tp * cp * sp)
    assert [grad for *_, grad in hl_seen] == [True] * 4 + [False] * 2  # four training micro-batches, then two eval batches
    assert_same_history(hf.state.log_history, hl.state.log_history)
