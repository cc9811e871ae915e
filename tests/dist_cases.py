"""Tiny cases shared by the multi-process tests: the same model, data and arguments for both frameworks.

Each case is built identically in every process (fixed seeds), so transformers.Trainer under
torchrun and hf_lightning under Lightning's launcher (or torchrun) see the same inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from tiny import RegressionDataset, TinyReg, tiny_llama_config, write_tokenizer


@dataclass
class Case:
    model_fn: Callable[[], torch.nn.Module]
    args: dict[str, Any]
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    record_key: str = "input_x"
    """The input whose first column identifies a sample (recorded per rank to compare micro-batches)."""


def _mse(pred) -> dict[str, float]:
    return {"mse": float(((pred.predictions - pred.label_ids) ** 2).mean()), "n": float(len(pred.label_ids))}


def _token_accuracy(pred) -> dict[str, float]:
    logits, labels = pred.predictions, pred.label_ids
    guesses = logits.argmax(-1)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    return {"accuracy": float((guesses[mask] == targets[mask]).mean()), "n": float(len(labels)), "width": float(labels.shape[1])}


class CausalLMData(torch.utils.data.Dataset):
    """Sequences of varying length (so token counts differ between ranks); labels = input_ids."""

    def __init__(self, n: int, seed: int, vocab: int = 99) -> None:
        g = np.random.default_rng(seed)
        self.rows = []
        for _ in range(n):
            length = int(g.integers(3, 12))
            ids = [2] + [int(t) for t in g.integers(5, vocab, size=length)]
            self.rows.append(ids)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.rows[i]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def reg_case() -> Case:
    """Plain module (no loss kwargs): mean of micro-batch means, GA=2 with a short last group, padded eval."""
    return Case(
        model_fn=lambda: TinyReg(dropout=0.1),
        args=dict(
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            gradient_accumulation_steps=2,
            num_train_epochs=2,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            learning_rate=1e-2,
            warmup_steps=1,
            max_grad_norm=0.5,
        ),
        trainer_kwargs=dict(
            train_dataset=RegressionDataset(44), eval_dataset=RegressionDataset(13, seed=1), compute_metrics=_mse
        ),
    )


def llama_case(tmp: str, *, tie: bool = False) -> Case:
    """Causal LM with -100 padding: token counts summed over ranks, logits padded across processes on dim 1."""
    from transformers import DataCollatorForSeq2Seq, LlamaForCausalLM

    tokenizer = write_tokenizer(os.path.join(tmp, "tokenizer"))
    return Case(
        model_fn=lambda: LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=tie)),
        args=dict(
            per_device_train_batch_size=2,
            per_device_eval_batch_size=2,
            gradient_accumulation_steps=2,
            num_train_epochs=2,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=3,
            save_strategy="steps",
            save_steps=3,
            learning_rate=5e-3,
            remove_unused_columns=False,
        ),
        trainer_kwargs=dict(
            train_dataset=CausalLMData(21, seed=0),
            eval_dataset=CausalLMData(7, seed=1),
            data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
            processing_class=tokenizer,
            compute_metrics=_token_accuracy,
        ),
        record_key="input_ids",
    )


def get_case(name: str, tmp: str) -> Case:
    if name == "reg":
        return reg_case()
    if name == "llama":
        return llama_case(tmp)
    if name == "llama_tied":
        return llama_case(tmp, tie=True)
    raise ValueError(f"unknown case {name!r}")
