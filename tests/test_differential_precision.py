"""Precision and compilation against transformers.Trainer: bf16 on CPU and torch_compile."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_same_history, assert_same_weights, run_both
from lm import VariableLMDataset, pad_collate, tiny_llama
from tiny import RegressionDataset, TinyReg


def test_bf16_mixed_on_cpu_matches_transformers_bf16(tmp_path):
    """transformers' bf16 on CPU is accelerate's CPU autocast; Lightning's ``bf16-mixed`` is the same autocast
    around the same fp32 master weights. The runs agree bit for bit here, so the usual tolerances apply.
    """
    kwargs = dict(train_dataset=VariableLMDataset(12), eval_dataset=VariableLMDataset(4, seed=1), data_collator=pad_collate)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, bf16=True, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                      max_steps=3, logging_steps=1, eval_strategy="steps", eval_steps=3, learning_rate=1e-3)
    assert hl.lightning_trainer.precision == "bf16-mixed"
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert next(hl.model.parameters()).dtype == torch.float32  # master weights stay fp32


@pytest.mark.slow
def test_torch_compile_is_honoured(tmp_path):
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=RegressionDataset(32)), torch_compile=True,
                      torch_compile_backend="aot_eager", max_steps=4, logging_steps=1)
    assert getattr(hl.model, "_compiled_call_impl", None) is not None  # compiled in place
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert set(hl.model.state_dict()) == set(TinyReg().state_dict())  # no `_orig_mod.` prefixes
