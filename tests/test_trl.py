"""TRL's ``SFTTrainer`` and ``DPOTrainer`` on Lightning through ``on_lightning``: the same runs as TRL's own.

TRL's trainers subclass transformers.Trainer and override its points (``compute_loss`` with token accuracy and
entropy, ``log``, ``_prepare_dataset``, their own collator, the signature columns); ``on_lightning(SFTTrainer)``
puts hf_lightning.Trainer under them. DPO also prepares a reference model with ``accelerator.prepare_model``.
TRL's configs default to ``bf16=True``, so these runs are bf16 on CPU, on both sides. Skipped when TRL is not
installed (``pip install "hf_lightning[trl]"``).
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights
from tiny import write_tokenizer

trl = pytest.importorskip("trl")

RUN = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4, logging_steps=1, eval_strategy="steps",
           eval_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3, max_length=32, report_to="none",
           use_cpu=True, disable_tqdm=True, seed=0)
"""The arguments both TRL configs get: 4 optimizer steps of 2 micro-batches, evaluated and saved every 2."""


def _tiny_llama(tokenizer) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.LlamaForCausalLM(config)


def _run(trainer_class, out, tokenizer, **trainer_kwargs):
    import datasets

    texts = [f"the cat sat on the mat {i} times" for i in range(24)]
    train = datasets.Dataset.from_dict({"text": texts})
    dev = datasets.Dataset.from_dict({"text": texts[:8]})
    model = _tiny_llama(tokenizer)
    args = trl.SFTConfig(output_dir=str(out), **RUN)
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer,
                            **trainer_kwargs)
    trainer.train()
    return trainer


def test_sft_trainer_on_lightning_equals_trl(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    lightning_sft = hf_lightning.on_lightning(trl.SFTTrainer)
    assert issubclass(lightning_sft, trl.SFTTrainer) and issubclass(lightning_sft, hf_lightning.Trainer)

    stock = _run(trl.SFTTrainer, tmp_path / "trl", tokenizer)
    ours = _run(lightning_sft, tmp_path / "hl", tokenizer, **LIGHTNING_QUIET)

    history = ours.state.log_history
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(history[0])  # TRL's own log keys came through
    assert any("eval_mean_token_accuracy" in entry for entry in history)
    assert_same_history(stock.state.log_history, history)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    for step in ("checkpoint-2", "checkpoint-4"):
        assert sorted(os.listdir(tmp_path / "trl" / step)) == sorted(os.listdir(tmp_path / "hl" / step))


def _dpo(trainer_class, out, tokenizer, **trainer_kwargs):
    import copy

    import datasets

    rows = {
        "prompt": [f"w1 w2 w{10 + i}" for i in range(16)],
        "chosen": [f" w{30 + i % 5} w40" for i in range(16)],
        "rejected": [f" w{50 + i % 7} w60 w61" for i in range(16)],
    }
    train = datasets.Dataset.from_dict(rows)
    model = _tiny_llama(tokenizer)
    args = trl.DPOConfig(output_dir=str(out), **RUN)
    trainer = trainer_class(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=train,
                            eval_dataset=train.select(range(8)), processing_class=tokenizer, **trainer_kwargs)
    trainer.train()
    return trainer


def test_dpo_trainer_on_lightning_equals_trl(tmp_path):
    """DPO's batches keep TRL's own columns (its ``_set_signature_columns_if_needed``), and its reference model runs in
    the bf16 autocast that accelerate's ``prepare_model`` gives it: the rewards, losses and weights are TRL's."""
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    stock = _dpo(trl.DPOTrainer, tmp_path / "trl", tokenizer)
    ours = _dpo(hf_lightning.on_lightning(trl.DPOTrainer), tmp_path / "hl", tokenizer, **LIGHTNING_QUIET)

    history = ours.state.log_history
    assert {"rewards/chosen", "rewards/margins", "logps/rejected"} <= set(history[0])
    assert history[0]["rewards/chosen"] == 0.0  # the policy is its reference at the first step, to the last bit
    assert history[1]["loss"] < history[0]["loss"]  # and it learns
    assert_same_history(stock.state.log_history, history)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    for step in ("checkpoint-2", "checkpoint-4"):
        assert sorted(os.listdir(tmp_path / "trl" / step)) == sorted(os.listdir(tmp_path / "hl" / step))
