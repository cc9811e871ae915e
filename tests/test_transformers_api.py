"""transformers.Trainer's public surface on hf_lightning.Trainer: model cards, push_to_hub (up to the upload),
save_state, the attributes users read and assign, both trainers side by side in one process, and the
collator's random state (MLM masking) against transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
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
    """Stands in for huggingface_hub's HfApi at the upload boundary: records what would be sent, chosen by huggingface_hub's
    own pattern filter (the folder is read when the upload is asked for; a future comes back already done)."""

    def __init__(self) -> None:
        self.uploads: list[dict] = []
        self.repos: list[dict] = []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False):
        self.repos.append({"repo_id": repo_id, "token": token, "private": private, "exist_ok": exist_ok})
        return SimpleNamespace(repo_id=f"user/{repo_id}")

    def upload_folder(self, repo_id, folder_path, commit_message=None, token=None, run_as_future=False, ignore_patterns=None,
                      revision=None, path_in_repo=None):
        from concurrent.futures import Future

        from huggingface_hub.utils import filter_repo_objects
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

        folder = Path(folder_path)
        listed = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
        kept = filter_repo_objects(listed, ignore_patterns=[*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS])
        files = {path: listed[path].read_bytes() for path in kept}
        self.uploads.append({"repo_id": repo_id, "commit_message": commit_message, "files": files, "revision": revision,
                             "path_in_repo": path_in_repo})
        info = SimpleNamespace(commit_url="https://example/commit")
        if not run_as_future:
            return info
        done: Future = Future()
        done.set_result(info)
        return done


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


@pytest.mark.parametrize("hub_strategy", ["every_save", "checkpoint", "all_checkpoints", "end"])
def test_push_to_hub_argument_pushes_what_transformers_pushes(tmp_path, monkeypatch, hub_strategy):
    """``push_to_hub=True``: the repository at construction, an upload after each checkpoint (as ``hub_strategy`` says),
    and one from ``save_model()`` as the example scripts call it; the same calls with the same files as transformers."""
    hubs = {}
    for name, cls in (("hf", transformers.Trainer), ("hl", hf_lightning.Trainer)):
        hub = hubs[name] = FakeHub()
        monkeypatch.setattr(transformers.trainer, "hf_api", lambda hub=hub: hub)
        torch.manual_seed(0)
        args = make_args(tmp_path / name / "run", **{**ARGS, "save_strategy": "steps", "save_steps": 2, "push_to_hub": True,
                                                     "hub_strategy": hub_strategy, "hub_private_repo": True})
        kwargs = dict(LIGHTNING_QUIET) if cls is hf_lightning.Trainer else {}
        trainer = cls(model=tiny_bert_classifier(), args=args, train_dataset=ClassificationDataset(16),
                      eval_dataset=ClassificationDataset(8, seed=1), compute_metrics=accuracy, **kwargs)
        assert trainer.hub_model_id == "user/run"
        trainer.train()
        trainer.save_model()
    hf, hl = hubs["hf"], hubs["hl"]
    assert hl.repos == hf.repos == [{"repo_id": "run", "token": None, "private": True, "exist_ok": True}]

    def sent(hub):
        return [(u["repo_id"], u["commit_message"], u["path_in_repo"], sorted(u["files"])) for u in hub.uploads]

    assert sent(hl) == sent(hf)
    assert len(hl.uploads) == {"end": 1, "every_save": 3}.get(hub_strategy, 5)
    assert not any("_hf_lightning.lock" in f or f.startswith(".") for u in hl.uploads for f in u["files"])  # the run lock stays home
    for a, b in zip(hf.uploads, hl.uploads):
        assert a["files"]["model.safetensors"] == b["files"]["model.safetensors"]


def test_push_to_hub_without_the_trainer_facade_is_refused(tmp_path):
    """build_trainer, a lightning.Trainer and the CLI have no transformers.Trainer to push from: refused before training."""
    with pytest.raises(ValueError, match=r"`push_to_hub=True` pushes from an hf_lightning.Trainer.*model.push_to_hub"):
        hf_lightning.build_trainer(make_args(tmp_path, push_to_hub=True))
    with pytest.raises(ValueError, match="async_save=True"):
        hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path, push_to_hub=True), train_dataset=RegressionDataset(8),
                             async_save=True, **LIGHTNING_QUIET)


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


@pytest.mark.parametrize("precision", [dict(bf16=True), dict(fp16=True), {}])
def test_prepare_model_treats_a_reference_model_as_accelerate_does(tmp_path, precision):
    """``accelerator.prepare_model(m, evaluation_mode=True)`` (TRL's reference and teacher models): under mixed precision
    the forward autocasts and returns fp32, as accelerate's; on CPU only bf16 autocasts (accelerate has no fp16 there)."""
    outputs = {}
    for name, cls in (("hf", transformers.Trainer), ("hl", hf_lightning.Trainer)):
        kwargs = dict(LIGHTNING_QUIET) if cls is hf_lightning.Trainer else {}
        trainer = cls(model=TinyReg(), args=make_args(tmp_path / name, **precision), train_dataset=RegressionDataset(8), **kwargs)
        torch.manual_seed(0)
        reference = trainer.accelerator.prepare_model(torch.nn.Linear(4, 3), evaluation_mode=True)
        with torch.no_grad():
            out = reference(torch.randn(2, 4))
        outputs[name] = ("_original_forward" in reference.__dict__, out.dtype, out)
    assert outputs["hl"][:2] == outputs["hf"][:2]
    assert outputs["hl"][0] == bool(precision.get("bf16"))
    assert torch.equal(outputs["hl"][2], outputs["hf"][2])


def test_prepare_model_refuses_a_second_trained_model_under_several_processes(tmp_path, monkeypatch):
    """accelerate would wrap it in DDP; Lightning's strategy syncs only the trained model's gradients: an error, not a
    silently unsynchronised model. For evaluation (TRL's reference models) it is prepared as usual."""
    trainer = hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path), train_dataset=RegressionDataset(8), **LIGHTNING_QUIET)
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    with pytest.raises(NotImplementedError, match=r"prepare_model\(Linear\).*evaluation_mode=True"):
        trainer.accelerator.prepare_model(torch.nn.Linear(4, 3))
    assert isinstance(trainer.accelerator.prepare_model(torch.nn.Linear(4, 3), evaluation_mode=True), torch.nn.Linear)
