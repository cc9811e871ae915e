"""Nonsense schedules and unusable train datasets are refused before training, naming the option (issue 13)."""

from __future__ import annotations

import pytest
from hardening_helpers import StepCounter
from helpers import LIGHTNING_QUIET, make_args
from tiny import RegressionDataset, TinyReg, tiny_bert_config

import hf_lightning
from hf_lightning.arguments import schedule_problems, train_dataset_problems


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(logging_steps=-1), "`logging_steps=-1` is negative"),
        (dict(save_steps=-5), "`save_steps=-5` is negative"),
        (dict(eval_strategy="steps", eval_steps=-1), "`eval_steps=-1` is negative"),
        (dict(save_strategy="steps", save_steps=0), "`save_steps=0` with `save_strategy='steps'`"),
        (dict(num_train_epochs=0), "`num_train_epochs=0` with `max_steps=-1` trains nothing"),
        (dict(num_train_epochs=-1), "`num_train_epochs=-1` with `max_steps=-1` trains nothing"),
    ],
)
def test_schedule_problems_table(tmp_path, kwargs, needle):
    problems = schedule_problems(make_args(tmp_path, **kwargs))
    assert len(problems) == 1 and needle in problems[0], problems


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(num_train_epochs=0, max_steps=3), dict(save_strategy="no", save_steps=0), dict(logging_steps=0.25), dict(save_steps=0.5)],
)
def test_sensible_schedules_pass(tmp_path, kwargs):
    assert schedule_problems(make_args(tmp_path, **kwargs)) == []


def test_refused_on_both_paths_before_training(tmp_path):
    args = make_args(tmp_path, logging_steps=-1, save_strategy="steps", save_steps=0, num_train_epochs=0)
    with pytest.raises(ValueError) as raised:
        hf_lightning.Trainer(model=TinyReg(), args=args, train_dataset=RegressionDataset(8), **LIGHTNING_QUIET)
    message = str(raised.value)
    assert "`logging_steps=-1`" in message and "`save_steps=0`" in message and "`num_train_epochs=0`" in message
    with pytest.raises(ValueError, match="`logging_steps=-1`"):
        hf_lightning.build_trainer(args, **LIGHTNING_QUIET)


def test_empty_train_dataset(tmp_path):
    import datasets

    empty = datasets.Dataset.from_dict({"input_x": [], "labels": []})
    counter = StepCounter()
    trainer = hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path, max_steps=2), train_dataset=empty, callbacks=[counter], **LIGHTNING_QUIET)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "The train dataset is empty (0 samples; columns ['input_x', 'labels'])" in message and "['input_x']" in message
    assert counter.steps == 0
    assert "empty (0 samples)" in train_dataset_problems(RegressionDataset(0), signature_columns=None, label_names=["labels"])[0]


def test_raw_text_dataset_names_columns_and_model_inputs(tmp_path, tokenizer):
    """remove_unused_columns drops `text`: only the label is left, which the model cannot run on."""
    import datasets
    from transformers import BertForSequenceClassification

    raw = datasets.Dataset.from_dict({"text": ["w1 w2", "w3"] * 4, "label": [0, 1] * 4})
    trainer = hf_lightning.Trainer(
        model=BertForSequenceClassification(tiny_bert_config()), args=make_args(tmp_path, max_steps=2), train_dataset=raw,
        processing_class=tokenizer, **LIGHTNING_QUIET,
    )
    with pytest.raises(ValueError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "columns ['text', 'label']" in message and "removes ['text']" in message and "leaves ['label']" in message
    assert "BertForSequenceClassification takes ['input_ids', 'attention_mask'" in message
    assert "remove_unused_columns=False" in message


def test_torch_dataset_of_raw_text_is_named_from_its_first_sample():
    class Texts:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"text": "w1", "labels": 1}

    problems = train_dataset_problems(Texts(), signature_columns=["input_ids", "labels"], label_names=["labels"], model_name="M")
    assert len(problems) == 1 and "columns ['text', 'labels']" in problems[0] and "M takes ['input_ids']" in problems[0]
    assert train_dataset_problems(Texts(), signature_columns=None, label_names=[]) == []  # columns kept: nothing to say
