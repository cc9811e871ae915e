"""The Lightning way in: ``build_trainer(args)`` + ``trainer.fit(HFModule(model, args), datamodule=HFDataModule(...))``
gives the same ``log_history`` (the flow callback's ``TrainerState``) and weights as transformers.Trainer."""

from __future__ import annotations

import pytest
import torch

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights, build, make_args
from lm import ClassificationDataset, VariableLMDataset, accuracy, pad_collate, tiny_bert_classifier, tiny_llama
from tiny import RegressionDataset, TinyReg


def _flow(trainer):
    return next(cb for cb in trainer.callbacks if isinstance(cb, hf_lightning.HFFlowCallback))


def _both(tmp_path, model_fn, data, module_kwargs=None, **args):
    hf = build("hf", model_fn, tmp_path / "hf", trainer_kwargs={**data, **(module_kwargs or {})}, **args)
    hf.train()
    targs = make_args(tmp_path / "hl", **args)
    torch.manual_seed(0)
    model = model_fn()
    trainer = hf_lightning.build_trainer(targs, **LIGHTNING_QUIET)  # seeds like transformers.Trainer.__init__
    module = hf_lightning.HFModule(model, targs, **(module_kwargs or {}))
    collator = data.get("data_collator")
    datamodule = hf_lightning.HFDataModule(targs, train_dataset=data["train_dataset"], eval_dataset=data.get("eval_dataset"), data_collator=collator)
    trainer.fit(module, datamodule=datamodule)
    state = _flow(trainer).state
    assert_same_history(hf.state.log_history, state.log_history)
    assert_same_weights(hf.model, model)
    return hf, trainer, state


def test_build_trainer_fit_plain_module_ga3(tmp_path):
    _, trainer, state = _both(
        tmp_path, TinyReg, dict(train_dataset=RegressionDataset(50), eval_dataset=RegressionDataset(8, seed=1)),
        per_device_train_batch_size=8, gradient_accumulation_steps=3, num_train_epochs=2, logging_steps=1, eval_strategy="steps",
        eval_steps=2, save_strategy="steps", save_steps=3, learning_rate=1e-2, warmup_steps=0.2, lr_scheduler_type="cosine",
    )
    assert trainer.global_step == state.global_step == 6  # Lightning counts optimizer steps, like transformers


def test_build_trainer_fit_bert_dict_eval_with_metrics(tmp_path):
    data = dict(train_dataset=ClassificationDataset(16), eval_dataset={"a": ClassificationDataset(6, seed=1), "b": ClassificationDataset(4, seed=2)})
    _, _, state = _both(
        tmp_path, tiny_bert_classifier, data, module_kwargs=dict(compute_metrics=accuracy), per_device_train_batch_size=4,
        num_train_epochs=2, logging_strategy="epoch", eval_strategy="epoch", learning_rate=1e-3, metric_for_best_model="a_accuracy",
    )
    assert state.best_metric is not None


def test_build_trainer_fit_causal_lm(tmp_path):
    data = dict(train_dataset=VariableLMDataset(12), eval_dataset=VariableLMDataset(4, seed=1), data_collator=pad_collate)
    _both(tmp_path, tiny_llama, data, per_device_train_batch_size=2, gradient_accumulation_steps=3, max_steps=3, logging_steps=1,
          eval_strategy="steps", eval_steps=2, learning_rate=1e-3, include_num_input_tokens_seen="non_padding")


def test_lightning_validate_logs_like_evaluate(tmp_path):
    """``trainer.validate`` on the Lightning path logs an eval entry like a standalone ``evaluate()``."""
    args = make_args(tmp_path, per_device_eval_batch_size=4)
    trainer = hf_lightning.build_trainer(args, **LIGHTNING_QUIET)
    module = hf_lightning.HFModule(TinyReg(), args)
    trainer.validate(module, datamodule=hf_lightning.HFDataModule(args, eval_dataset=RegressionDataset(10)), verbose=False)
    history = _flow(trainer).state.log_history
    assert len(history) == 1 and {"eval_loss", "eval_runtime", "epoch", "step"} <= set(history[0])


@pytest.mark.parametrize("ga", [1, 2])
def test_facade_and_lightning_api_agree(tmp_path, ga):
    data = dict(train_dataset=RegressionDataset(40), eval_dataset=RegressionDataset(8, seed=1))
    args = dict(per_device_train_batch_size=8, gradient_accumulation_steps=ga, num_train_epochs=2, logging_steps=1, eval_strategy="epoch")
    facade = build("hl", TinyReg, tmp_path / "facade", trainer_kwargs=data, **args)
    facade.train()
    _, _, state = _both(tmp_path, TinyReg, data, **args)
    assert_same_history(facade.state.log_history, state.log_history)
