"""Seq2SeqTrainer with ``predict_with_generate``: the same generations, metrics and logs as transformers'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments, T5Config, T5ForConditionalGeneration

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_metrics, assert_same_weights
from tiny import write_tokenizer


class CopyTask(torch.utils.data.Dataset):
    """Token sequences to copy (reversed), of varying length."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            length = int(torch.randint(2, 6, (1,), generator=g))
            ids = torch.randint(5, 40, (length,), generator=g).tolist()
            self.rows.append({"input_ids": ids + [3], "labels": ids[::-1] + [3]})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def tiny_t5() -> T5ForConditionalGeneration:
    config = T5Config(vocab_size=99, d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=3)
    return T5ForConditionalGeneration(config)


def _exact_match(pred):
    predictions, labels = pred.predictions, np.where(pred.label_ids == -100, 0, pred.label_ids)
    if isinstance(predictions, tuple):  # logits (and the encoder's states) without predict_with_generate
        predictions = predictions[0].argmax(-1)
    width = min(predictions.shape[1], labels.shape[1])
    return {"exact": float((predictions[:, :width] == labels[:, :width]).all(axis=1).mean()), "width": float(predictions.shape[1])}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


def _run(cls, out, tokenizer, **args):
    torch.manual_seed(0)
    model = tiny_t5()
    arguments = Seq2SeqTrainingArguments(
        output_dir=str(out), report_to="none", disable_tqdm=True, use_cpu=True, seed=42, per_device_train_batch_size=4,
        per_device_eval_batch_size=3, num_train_epochs=2, logging_steps=2, eval_strategy="steps", eval_steps=4,
        save_strategy="no", learning_rate=5e-3, **args,
    )
    kwargs = dict(LIGHTNING_QUIET) if issubclass(cls, hf_lightning.Trainer) else {}
    trainer = cls(model=model, args=arguments, train_dataset=CopyTask(16, 0), eval_dataset=CopyTask(7, 1),
                  data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
                  compute_metrics=_exact_match, **kwargs)
    trainer.train()
    evaluated = trainer.evaluate(max_length=5, num_beams=1)
    predicted = trainer.predict(CopyTask(5, 2), max_new_tokens=4, num_beams=2)
    return trainer, evaluated, predicted


@pytest.mark.parametrize("generate", [True, False], ids=["predict_with_generate", "logits"])
def test_seq2seq_trainer_equals_transformers(tmp_path, tokenizer, generate):
    args = dict(predict_with_generate=generate, generation_max_length=6, generation_num_beams=2)
    hf, hf_eval, hf_pred = _run(transformers.Seq2SeqTrainer, tmp_path / "hf", tokenizer, **args)
    hl, hl_eval, hl_pred = _run(hf_lightning.Seq2SeqTrainer, tmp_path / "hl", tokenizer, **args)
    assert isinstance(hl, transformers.Seq2SeqTrainer) and isinstance(hl, hf_lightning.Trainer)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert_same_metrics(hf_eval, hl_eval)
    assert_same_metrics(hf_pred.metrics, hl_pred.metrics)
    expected, actual = hf_pred.predictions, hl_pred.predictions
    for e, a in zip(expected, actual) if isinstance(expected, tuple) else [(expected, actual)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)
    if generate:
        assert hl_pred.predictions.ndim == 2  # generated token ids, not logits


def test_model_returning_a_cache_evaluates(tmp_path, tokenizer):
    """T5 returns an EncoderDecoderCache under the `cache` key; transformers leaves it out of the predictions."""
    hf, hf_eval, _ = _run(transformers.Seq2SeqTrainer, tmp_path / "hf", tokenizer)
    hl, hl_eval, _ = _run(hf_lightning.Seq2SeqTrainer, tmp_path / "hl", tokenizer)
    assert_same_metrics(hf_eval, hl_eval)
    assert hf_lightning.hooks.default_ignore_keys() == ["cache"]
