"""A model from ``from_pretrained`` (returned in eval mode) trains with dropout on, as under transformers."""

from __future__ import annotations

import torch
from helpers import assert_same_history, assert_same_weights, run_both
from tiny import tiny_bert_config
from transformers import BertForSequenceClassification


def test_from_pretrained_model_is_trained_in_train_mode(tmp_path):
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(hidden_dropout_prob=0.3)).save_pretrained(tmp_path / "pretrained")

    def model():
        loaded = BertForSequenceClassification.from_pretrained(tmp_path / "pretrained")
        assert not loaded.training  # what from_pretrained returns
        return loaded

    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(5, 99, (10,), generator=g), "labels": i % 2} for i in range(32)]
    hf, hl = run_both(model, tmp_path, trainer_kwargs=dict(train_dataset=data), max_steps=4, logging_steps=1,
                      per_device_train_batch_size=8, learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
