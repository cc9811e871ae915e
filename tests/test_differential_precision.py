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


def test_fp16_on_cpu_trains_in_fp32_like_transformers(tmp_path):
    """accelerate has no fp16 autocast on CPU, so transformers' fp16=True trains in fp32 there; Lightning
    would silently switch to bf16-mixed, which would not be the same run."""
    kwargs = dict(train_dataset=VariableLMDataset(8), data_collator=pad_collate)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, fp16=True, per_device_train_batch_size=2, max_steps=2,
                      logging_steps=1, learning_rate=1e-3, max_grad_norm=0.5)
    assert hl.lightning_trainer.precision == "32-true"
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


@pytest.mark.gpu
@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])
def test_fp16_clipping_with_fused_adamw_on_gpu(tmp_path, optim):
    """fp16 + fused AdamW + max_grad_norm: Lightning's own gradient_clip_val refuses this combination;
    HFModule unscales first and clips itself, like accelerate does. fp16 autocast rounds differently
    from run to run only through kernel choice, so the tolerance is fp16's."""
    kwargs = dict(train_dataset=VariableLMDataset(12), data_collator=pad_collate)
    hf, hl = _gpu_run(tmp_path, kwargs, optim)
    assert hl.lightning_trainer.precision == "16-mixed"
    assert_same_history(hf.state.log_history, hl.state.log_history, rel=1e-3)
    assert_same_weights(hf.model, hl.model, atol=1e-3)


def _gpu_run(tmp_path, kwargs, optim):
    from helpers import build

    trainers = []
    for side in ("hf", "hl"):
        extra = {} if side == "hf" else {"accelerator": "gpu", "devices": 1}
        trainer = build(side, tiny_llama, tmp_path / side, trainer_kwargs={**kwargs, **extra}, fp16=True, use_cpu=False, optim=optim,
                        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, logging_steps=1, learning_rate=1e-3,
                        max_grad_norm=0.5)
        trainer.train()
        trainers.append(trainer)
    return tuple(trainers)
