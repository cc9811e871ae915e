"""Arguments: the support table covers every TrainingArguments field, bad input is rejected before
training like transformers rejects it (naming the option, the value and what is valid), unsupported
options are never ignored, and the cheap "honoured" options really take effect."""

from __future__ import annotations

import dataclasses
import runpy

import pytest
import torch
from transformers import Trainer as HFTrainer
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights, build, make_args, run_both
from hf_lightning.arguments import (
    ARGUMENT_SUPPORT,
    HONOURED,
    NOT_APPLICABLE,
    UNSUPPORTED,
    precision_for,
    process_log_level,
    trainer_limits,
    validate_arguments,
)
from lm import ClassificationDataset, VariableLMDataset, accuracy, pad_collate, tiny_bert_classifier, tiny_llama
from tiny import RegressionDataset, TinyReg


def test_table_covers_every_training_arguments_field():
    fields = [f.name for f in dataclasses.fields(TrainingArguments)]
    assert sorted(ARGUMENT_SUPPORT) == sorted(fields)
    assert {status for status, _ in ARGUMENT_SUPPORT.values()} <= {HONOURED, NOT_APPLICABLE, UNSUPPORTED}
    assert all(why.strip() for _, why in ARGUMENT_SUPPORT.values())


def test_markdown_table_is_printed_by_the_module(capsys):
    runpy.run_module("hf_lightning.arguments", run_name="__main__")  # python -m hf_lightning.arguments
    out = capsys.readouterr().out
    assert out.count("\n| `") == len(ARGUMENT_SUPPORT)
    assert "| `gradient_accumulation_steps` | honoured |" in out


# -------------------------------------------------------------- unsupported options are errors

UNSUPPORTED_VALUES = {
    "use_liger_kernel": True,
    "liger_kernel_config": {"rope": True},
    "parallelism_config": "tp=2",
    "deepspeed": "ds_config.json",
    "debug": "underflow_overflow",
    "save_on_each_node": True,
    "accelerator_config": {"even_batches": False},
}


def test_every_unsupported_field_has_a_sample_value():
    assert sorted(UNSUPPORTED_VALUES) == sorted(k for k, (status, _) in ARGUMENT_SUPPORT.items() if status == UNSUPPORTED)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_VALUES))
def test_unsupported_option_is_named_with_what_is_supported(tmp_path, name):
    args = make_args(tmp_path)
    setattr(args, name, UNSUPPORTED_VALUES[name])
    with pytest.raises(ValueError) as raised:
        hf_lightning.Trainer(model=TinyReg(), args=args, train_dataset=RegressionDataset(8), **LIGHTNING_QUIET)
    message = str(raised.value)
    assert f"`{name}" in message
    why = ARGUMENT_SUPPORT[name][1]
    assert why.split(";")[0][:30] in message or name == "accelerator_config"


def test_batch_rebalance_is_refused_with_the_valid_strategies(tmp_path):
    with pytest.raises(ValueError, match="batch_rebalance.*'random', 'sequential' or 'group_by_length'"):
        hf_lightning.build_trainer(make_args(tmp_path, train_sampling_strategy="batch_rebalance"))


def test_accelerator_config_harmless_fields_are_accepted(tmp_path):
    validate_arguments(make_args(tmp_path, accelerator_config={"non_blocking": True, "use_configured_state": False}))


def test_all_problems_are_reported_at_once(tmp_path):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=2, use_liger_kernel=True, report_to="nonsense")
    with pytest.raises(ValueError) as raised:
        validate_arguments(args, has_eval_dataset=False)
    message = str(raised.value)
    assert "use_liger_kernel" in message and "eval_dataset" in message and "'nonsense'" in message


# ------------------------------------------------------- rejected like transformers.Trainer does


def _batch_metrics_without_compute_result(eval_pred):
    return {}


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from (RegressionDataset(8)[i] for i in range(8))


REJECTED = [
    ("eval_strategy_without_eval_dataset", dict(eval_strategy="steps", eval_steps=2), dict(train_dataset=RegressionDataset(8)), "eval_strategy"),
    ("best_without_metric", dict(save_strategy="best", eval_strategy="steps", eval_steps=2),
     dict(train_dataset=RegressionDataset(8), eval_dataset=RegressionDataset(4)), "metric_for_best_model"),
    ("batch_eval_metrics_without_compute_result", dict(batch_eval_metrics=True),
     dict(train_dataset=RegressionDataset(8), compute_metrics=_batch_metrics_without_compute_result), "compute_result"),
    ("unsized_without_max_steps", dict(), dict(train_dataset=_Stream()), "max_steps"),
    ("optimizers_and_cls", dict(), dict(train_dataset=RegressionDataset(8), optimizers=(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), None),
                                        optimizer_cls_and_kwargs=(torch.optim.SGD, {})), "optimizer_cls_and_kwargs"),
]


@pytest.mark.parametrize("case,args,kwargs,option", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected_like_transformers(tmp_path, case, args, kwargs, option):
    with pytest.raises((ValueError, RuntimeError)):
        HFTrainer(model=TinyReg(), args=make_args(tmp_path / "hf", **args), **kwargs)
    with pytest.raises(ValueError) as raised:
        hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path / "hl", **args), **kwargs, **LIGHTNING_QUIET)
    assert option in str(raised.value)


def test_base_model_without_head_is_refused_before_training_but_can_predict(tmp_path):
    """transformers' own class-name check never matches (it looks the name up among model types), so a
    headless model only fails at the first step there; we refuse it when training starts, with the fix."""
    from transformers import BertModel

    from tiny import tiny_bert_config

    data = dict(train_dataset=ClassificationDataset(8), **LIGHTNING_QUIET)
    trainer = hf_lightning.Trainer(model=BertModel(tiny_bert_config()), args=make_args(tmp_path), **data)
    assert trainer.predict(ClassificationDataset(4)).predictions is not None
    with pytest.raises(ValueError, match="BertModel.*AutoModelForXxx.*compute_loss_func"):
        trainer.train()
    with pytest.raises(ValueError, match="did not return a loss"):
        HFTrainer(model=BertModel(tiny_bert_config()), args=make_args(tmp_path / "hf"), train_dataset=ClassificationDataset(8)).train()


def test_removed_tokenizer_argument(tmp_path):
    with pytest.raises(TypeError):
        HFTrainer(model=TinyReg(), args=make_args(tmp_path), tokenizer=None)
    with pytest.raises(TypeError, match="tokenizer.*processing_class"):
        hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path), tokenizer=None)


def test_model_and_model_init_together_are_refused_like_transformers(tmp_path):
    for cls in (HFTrainer, hf_lightning.Trainer):
        with pytest.raises(ValueError, match="either a `model` or `model_init` argument, but not both"):
            cls(model=TinyReg(), args=make_args(tmp_path), model_init=TinyReg)
    for cls in (HFTrainer, hf_lightning.Trainer):
        with pytest.raises(RuntimeError, match="requires either a `model` or `model_init` argument"):
            cls(args=make_args(tmp_path))


def test_save_best_without_eval_is_accepted_like_transformers(tmp_path):
    args = make_args(tmp_path, save_strategy="best", metric_for_best_model="loss")
    HFTrainer(model=TinyReg(), args=args, train_dataset=RegressionDataset(8))
    hf_lightning.Trainer(model=TinyReg(), args=args, train_dataset=RegressionDataset(8), **LIGHTNING_QUIET)


def test_args_must_be_training_arguments():
    with pytest.raises(TypeError, match="TrainingArguments"):
        hf_lightning.build_trainer({"output_dir": "x"})


# --------------------------------------------------------------------------- errors at run time


def test_missing_metric_for_best_model_lists_the_metrics(tmp_path):
    kwargs = dict(train_dataset=ClassificationDataset(8), eval_dataset=ClassificationDataset(4, seed=1), compute_metrics=accuracy)
    args = dict(eval_strategy="steps", eval_steps=1, max_steps=2, metric_for_best_model="f1", per_device_train_batch_size=4)
    with pytest.raises(KeyError, match="eval_f1"):
        build("hf", tiny_bert_classifier, tmp_path / "hf", trainer_kwargs=kwargs, **args).train()
    with pytest.raises(KeyError) as raised:
        build("hl", tiny_bert_classifier, tmp_path / "hl", trainer_kwargs=kwargs, **args).train()
    assert "eval_f1" in str(raised.value) and "eval_accuracy" in str(raised.value) and "eval_loss" in str(raised.value)


class _NoLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, input_x, labels=None):
        return {"logits": self.linear(input_x), "hidden": input_x}


def test_model_without_loss_lists_its_keys(tmp_path):
    with pytest.raises(ValueError, match="only the following keys: logits,hidden"):
        build("hf", _NoLoss, tmp_path / "hf", trainer_kwargs=dict(train_dataset=RegressionDataset(8)), max_steps=1).train()
    with pytest.raises(ValueError, match="only the following keys: logits,hidden. For reference, the inputs it received are input_x"):
        build("hl", _NoLoss, tmp_path / "hl", trainer_kwargs=dict(train_dataset=RegressionDataset(8)), max_steps=1).train()


# ------------------------------------------------------------------ honoured options take effect


@pytest.mark.parametrize(
    "log_level,replica,on_each_node,ranks,expected",
    [("error", "warning", False, (0, 0), hf_logging.ERROR), ("error", "warning", False, (1, 0), hf_logging.WARNING),
     ("info", "critical", True, (3, 0), hf_logging.INFO), ("info", "critical", True, (3, 1), hf_logging.CRITICAL)],
)
def test_process_log_level(tmp_path, log_level, replica, on_each_node, ranks, expected):
    args = make_args(tmp_path, log_level=log_level, log_level_replica=replica, log_on_each_node=on_each_node)
    assert process_log_level(args, global_rank=ranks[0], local_rank=ranks[1]) == expected


def test_log_level_is_applied_like_transformers(tmp_path):
    before = hf_logging.get_verbosity()
    try:
        HFTrainer(model=TinyReg(), args=make_args(tmp_path, log_level="error"))
        expected = hf_logging.get_verbosity()
        hf_logging.set_verbosity(before)
        hf_lightning.build_trainer(make_args(tmp_path, log_level="error"), **LIGHTNING_QUIET)
        assert hf_logging.get_verbosity() == expected == hf_logging.ERROR
        hf_lightning.build_trainer(make_args(tmp_path, log_level="passive"), **LIGHTNING_QUIET)
        assert hf_logging.get_verbosity() == hf_logging.ERROR  # passive keeps the current level
    finally:
        hf_logging.set_verbosity(before)


def test_precision_and_limits():
    assert precision_for(make_args("x", bf16=True)) == "bf16-mixed"
    assert precision_for(make_args("x")) == "32-true"
    assert trainer_limits(make_args("x", max_steps=7)) == {"max_steps": 7, "max_epochs": -1}
    assert trainer_limits(make_args("x", num_train_epochs=1.5)) == {"max_steps": -1, "max_epochs": 2}


@pytest.mark.parametrize("flag", ["bf16_full_eval", "fp16_full_eval"])
def test_full_eval_casts_like_transformers(tmp_path, flag):
    def run(trainer):
        before = trainer.evaluate()
        dtype_before = next(trainer.model.parameters()).dtype
        trainer.train()
        return before, dtype_before, trainer.evaluate(), next(trainer.model.parameters()).dtype

    from helpers import act_both, assert_same_metrics

    kwargs = dict(train_dataset=ClassificationDataset(8), eval_dataset=ClassificationDataset(8, seed=1))
    hf, hl, expected, actual = act_both(tiny_bert_classifier, tmp_path, run, trainer_kwargs=kwargs, max_steps=2, logging_steps=1,
                                        optim="adamw_torch", per_device_train_batch_size=4, **{flag: True})
    assert expected[1] == actual[1] and expected[3] == actual[3]
    assert_same_metrics(expected[0], actual[0], rel=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history, rel=1e-3)


def test_activation_checkpointing(tmp_path):
    kwargs = dict(train_dataset=VariableLMDataset(8), data_collator=pad_collate)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, activation_checkpointing=True, per_device_train_batch_size=2,
                      max_steps=2, logging_steps=1, learning_rate=1e-3)
    assert hl.model.is_activation_checkpointing
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


def test_neftune_and_use_cache(tmp_path):
    kwargs = dict(train_dataset=VariableLMDataset(8), data_collator=pad_collate)
    hf, hl = run_both(tiny_llama, tmp_path, trainer_kwargs=kwargs, neftune_noise_alpha=5.0, use_cache=True,
                      per_device_train_batch_size=2, max_steps=2, logging_steps=1, learning_rate=1e-3)
    assert hl.model.config.use_cache is True
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert not hl.model.get_input_embeddings()._forward_hooks  # the NEFTune hook is removed after training


def test_torch_empty_cache_steps_runs(tmp_path):
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=RegressionDataset(16)), torch_empty_cache_steps=1,
                      max_steps=2, logging_steps=1)
    assert_same_history(hf.state.log_history, hl.state.log_history)


def test_docs_table_is_up_to_date():
    from pathlib import Path

    from hf_lightning.arguments import _markdown_table, _not_applicable_list

    doc = (Path(__file__).parent.parent / "docs" / "arguments.md").read_text()
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for text in (doc, readme):
        assert _markdown_table() in text, "regenerate the table in docs/arguments.md and README.md with `python -m hf_lightning.arguments`"
        assert _not_applicable_list() in text


def test_lightning_path_checks_datasets_before_training(tmp_path):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=1, max_steps=2)
    trainer = hf_lightning.build_trainer(args, **LIGHTNING_QUIET)
    module = hf_lightning.HFModule(TinyReg(), args)
    with pytest.raises(ValueError, match="eval_strategy='steps'.*eval_dataset"):
        trainer.fit(module, datamodule=hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(8)))
    assert trainer.global_step == 0


def test_auto_find_batch_size_needs_the_facade(tmp_path):
    with pytest.raises(ValueError, match="auto_find_batch_size=True.*hf_lightning.Trainer.*BatchSizeFinder"):
        hf_lightning.build_trainer(make_args(tmp_path, auto_find_batch_size=True))
