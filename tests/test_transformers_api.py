"""transformers.Trainer's public surface on hf_lightning.Trainer: model cards, push_to_hub (up to the upload),
save_state, the attributes users read and assign, both trainers side by side in one process, and the
collator's random state (MLM masking) against transformers."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import DataCollatorForLanguageModeling, TrainerControl, TrainerState

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights, make_args
from lm import ClassificationDataset, accuracy, tiny_bert_classifier
from tiny import RegressionDataset, TinyReg, tiny_bert_config, write_tokenizer

ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, logging_steps=1, eval_strategy="steps", eval_steps=2,
            learning_rate=0.05)


def _pair(tmp_path, bert: bool = False, train: bool = False, **extra):
    """Both trainers on the same case (each trained right after it is built with ``train``: same random state)."""
    trainers = {}
    for name, cls in (("hf", transformers.Trainer), ("hl", hf_lightning.Trainer)):
        out = tmp_path / name / "run"  # the same folder name: the Hub repository is named after it
        shutil.rmtree(out, ignore_errors=True)
        torch.manual_seed(0)
        kwargs = dict(LIGHTNING_QUIET) if cls is hf_lightning.Trainer else {}
        if bert:
            kwargs.update(train_dataset=ClassificationDataset(16), eval_dataset=ClassificationDataset(8, seed=1), compute_metrics=accuracy)
            model = tiny_bert_classifier()
        else:
            kwargs.update(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1))
            model = TinyReg()
        trainers[name] = cls(model=model, args=make_args(out, **{**ARGS, **extra}), **kwargs)
        if train:
            trainers[name].train()
    return trainers["hf"], trainers["hl"]


class FakeHub:
    """Stands in for huggingface_hub's HfApi at the upload boundary: records what would be sent."""

    def __init__(self) -> None:
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False):
        return SimpleNamespace(repo_id=f"user/{repo_id}")

    def upload_folder(self, repo_id, folder_path, commit_message=None, token=None, run_as_future=False, ignore_patterns=(), revision=None):
        files = {}
        for root, _, names in os.walk(folder_path):
            for name in names:
                path = os.path.relpath(os.path.join(root, name), folder_path)
                if path.startswith("checkpoint-") or any(part.startswith("_") for part in path.split(os.sep)) or path.startswith("runs"):
                    continue
                files[path] = open(os.path.join(root, name), "rb").read()
        self.uploads.append({"repo_id": repo_id, "commit_message": commit_message, "files": files, "revision": revision})
        return SimpleNamespace(commit_url="https://example/commit")


def _card(text: str) -> str:
    """The model card without its (run-dependent) timing lines."""
    return "\n".join(line for line in text.splitlines() if "runtime" not in line.lower() and "per_second" not in line)


def test_create_model_card_and_push_to_hub_write_what_transformers_writes(tmp_path, monkeypatch):
    hubs = {}
    hf, hl = _pair(tmp_path, bert=True, train=True)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    for trainer, name in ((hf, "hf"), (hl, "hl")):
        hub = hubs[name] = FakeHub()
        monkeypatch.setattr(transformers.trainer, "hf_api", lambda hub=hub: hub)
        trainer.create_model_card(model_name="tiny", language="en", tags=["regression"])
        trainer.push_to_hub(commit_message="hello", blocking=True)
    hf, hl = hubs["hf"].uploads[0], hubs["hl"].uploads[0]
    assert hl["repo_id"] == hf["repo_id"] and hl["commit_message"] == hf["commit_message"] == "hello"
    assert sorted(hl["files"]) == sorted(hf["files"])
    assert "README.md" in hl["files"] and "model.safetensors" in hl["files"]
    assert _card(hl["files"]["README.md"].decode()) == _card(hf["files"]["README.md"].decode())


def test_save_state_writes_what_transformers_writes(tmp_path):
    hf, hl = _pair(tmp_path, train=True)
    for trainer in (hf, hl):
        trainer.save_state()
    expected = json.loads((tmp_path / "hf" / "run" / "trainer_state.json").read_text())
    actual = json.loads((tmp_path / "hl" / "run" / "trainer_state.json").read_text())
    assert actual.keys() == expected.keys()
    assert actual["stateful_callbacks"] == expected["stateful_callbacks"]
    assert_same_history(expected["log_history"], actual["log_history"])


def test_public_attributes_have_transformers_meaning(tmp_path):
    hf, hl = _pair(tmp_path)
    assert isinstance(hl, transformers.Trainer)
    for name in ("optimizer", "lr_scheduler", "model_wrapped", "callback_handler", "compute_metrics", "label_names", "is_in_train",
                 "data_collator", "processing_class", "train_dataset", "eval_dataset", "state", "control", "accelerator"):
        assert hasattr(hl, name), name
    hl.train()
    hf.train()
    # transformers wraps its optimizer in accelerate's AcceleratedOptimizer; Lightning's strategy steps ours as it is
    assert type(hl.optimizer) is type(hf.optimizer.optimizer) and type(hl.lr_scheduler) is type(hf.lr_scheduler)
    assert hl.lr_scheduler.get_last_lr() == pytest.approx(hf.lr_scheduler.get_last_lr())
    assert hl.is_world_process_zero() and hl.is_local_process_zero() and not hl.is_in_train
    assert hl.accelerator.num_processes == 1 and hl.accelerator.is_main_process
    assert hl.accelerator.unwrap_model(hl.model) is hl.model
    # assignable, as in transformers
    hl.state = TrainerState()
    hl.control = TrainerControl()
    hl.train_dataset = RegressionDataset(8, seed=3)
    hl.eval_dataset = RegressionDataset(4, seed=4)
    assert hl.train().global_step == 2  # trained on the new dataset (8 samples, batches of 4)
    assert hl.evaluate()["eval_loss"] > 0
    with pytest.raises(AttributeError, match="no `deepspeed_config`.*it has: backward"):
        hl.accelerator.deepspeed_config


def test_a_transformers_trainer_still_evaluates_after_hf_lightning_trained(tmp_path):
    """Notebooks compare both in one process: the transformers.Trainer built first keeps working."""
    hf, hl = _pair(tmp_path)
    before = hf.evaluate()
    hl.train()
    hf.train()
    after = hf.evaluate()
    assert set(before) == set(after)
    assert hl.evaluate()["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-5)


class _MaskedLMData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.rows = [torch.randint(5, 99, (int(torch.randint(6, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": [2, *self.rows[i], 3]}


@pytest.mark.parametrize("accumulation", [1, 3])
def test_random_collator_sees_transformers_random_state(tmp_path, accumulation):
    """MLM masking draws random numbers in the collator: the same masks as under transformers, every step."""
    tokenizer = write_tokenizer(tmp_path / "tok")
    runs = {}
    for name, cls in (("hf", transformers.Trainer), ("hl", hf_lightning.Trainer)):
        torch.manual_seed(0)
        model = transformers.BertForMaskedLM(tiny_bert_config(hidden_dropout_prob=0.1))
        kwargs = dict(LIGHTNING_QUIET) if cls is hf_lightning.Trainer else {}
        trainer = cls(model=model, args=make_args(tmp_path / name, per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
                                                   num_train_epochs=2, logging_steps=1, eval_strategy="steps", eval_steps=2,
                                                   learning_rate=1e-3),
                      train_dataset=_MaskedLMData(30), eval_dataset=_MaskedLMData(9),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3), **kwargs)
        trainer.train()
        runs[name] = trainer
    assert_same_history(runs["hf"].state.log_history, runs["hl"].state.log_history)
    assert_same_weights(runs["hf"].model, runs["hl"].model)
