"""Checkpoints from elsewhere: code in a pickle never runs, and broken folders fail clearly before training.

Every error names the file at fault and says what is wrong with it, and comes before the first
training step (no step runs, no folder is written).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from helpers import LIGHTNING_QUIET, build, make_args
from tiny import RegressionDataset, TinyReg, tiny_bert_config
from transformers import BertForSequenceClassification, TrainerCallback

import hf_lightning
from hf_lightning.hf_format import CheckpointError

ARGS = dict(per_device_train_batch_size=8, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1)


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """``checkpoint-2`` of a TinyReg run (complete: model, optimizer, scheduler, rng, state)."""
    root = tmp_path_factory.mktemp("good")
    build("hl", TinyReg, root / "run", trainer_kwargs=dict(train_dataset=RegressionDataset(32)), **ARGS).train()
    return root / "run" / "checkpoint-2"


def broken_copy(good_checkpoint, tmp_path):
    target = tmp_path / "checkpoint-2"
    shutil.copytree(good_checkpoint, target)
    return target


def resume_fails(checkpoint, tmp_path, model_fn=TinyReg, via: str = "facade") -> CheckpointError:
    """Resume from ``checkpoint``, expect a CheckpointError before any training step, return it."""
    counter = StepCounter()
    output_dir = tmp_path / "out"
    if via == "facade":
        trainer = build("hl", model_fn, output_dir, trainer_kwargs=dict(train_dataset=RegressionDataset(32), callbacks=[counter]), **ARGS)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        with pytest.raises(CheckpointError) as raised:
            trainer.train(resume_from_checkpoint=str(checkpoint))
        model = trainer.model
    else:
        args = make_args(output_dir, **ARGS)
        module = hf_lightning.HFModule(model_fn(), args)
        datamodule = hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(32))
        trainer = hf_lightning.build_trainer(args, callbacks=[counter], **LIGHTNING_QUIET)
        before = {k: v.clone() for k, v in module.model.state_dict().items()}
        with pytest.raises(CheckpointError) as raised:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint))
        model = module.model
    assert counter.steps == 0
    assert not [n for n in os.listdir(output_dir) if n.startswith("checkpoint-")] if output_dir.exists() else True
    if isinstance(model, TinyReg):
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]) or key in (), "weights changed before the error"
    return raised.value


# --------------------------------------------------------------------------- untrusted pickles


class Payload:
    """Unpickling this runs ``touch <marker>`` (under ``weights_only=False``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"])
@pytest.mark.parametrize("via", ["facade", "fit"])
def test_malicious_pickle_does_not_run(good_checkpoint, tmp_path, name, via):
    checkpoint = broken_copy(good_checkpoint, tmp_path)
    marker = tmp_path / "pwned"
    original = torch.load(checkpoint / name, weights_only=False)
    evil = {"payload": Payload(str(marker))}
    if isinstance(original, dict):
        evil = {**original, "payload": Payload(str(marker))}
    torch.save(evil, checkpoint / name)
    if name == "training_args.bin":
        # Never read on resume (transformers does not read it either): training goes on, nothing runs.
        trainer = build("hl", TinyReg, tmp_path / "out", trainer_kwargs=dict(train_dataset=RegressionDataset(32)), **ARGS)
        trainer.train(resume_from_checkpoint=str(checkpoint))
        assert trainer.state.global_step == 4
    else:
        error = resume_fails(checkpoint, tmp_path, via=via)
        assert str(checkpoint / name) in str(error)
        assert "weights_only" in str(error) and "system" in str(error)
    assert not marker.exists()


def test_the_payload_is_real(tmp_path):
    """The payload used above does run code when loaded without weights_only (so the test above means something)."""
    marker = tmp_path / "pwned"
    torch.save({"payload": Payload(str(marker))}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("via", ["facade", "fit"])
def test_missing_folder(tmp_path, via):
    missing = tmp_path / "nowhere" / "checkpoint-7"
    if via == "facade":
        trainer = build("hl", TinyReg, tmp_path / "out", trainer_kwargs=dict(train_dataset=RegressionDataset(32)), **ARGS)
        with pytest.raises(CheckpointError, match="checkpoint folder not found") as raised:
            trainer.train(resume_from_checkpoint=str(missing))
        error = raised.value
    else:
        error = resume_fails(missing, tmp_path, via=via)
    assert str(missing) in str(error)


@pytest.mark.parametrize("via", ["facade", "fit"])
def test_folder_without_weights(good_checkpoint, tmp_path, via):
    checkpoint = broken_copy(good_checkpoint, tmp_path)
    os.remove(checkpoint / "model.safetensors")
    error = resume_fails(checkpoint, tmp_path, via=via)
    assert str(checkpoint) in str(error) and "no model weights" in str(error)
    assert "optimizer.pt" in str(error)  # lists what the folder does hold


@pytest.mark.parametrize("via", ["facade", "fit"])
def test_corrupt_trainer_state(good_checkpoint, tmp_path, via):
    checkpoint = broken_copy(good_checkpoint, tmp_path)
    text = (checkpoint / "trainer_state.json").read_text()
    (checkpoint / "trainer_state.json").write_text(text[: len(text) // 2])
    error = resume_fails(checkpoint, tmp_path, via=via)
    assert str(checkpoint / "trainer_state.json") in str(error) and "corrupt JSON" in str(error)


def test_trainer_state_with_unknown_fields(good_checkpoint, tmp_path):
    checkpoint = broken_copy(good_checkpoint, tmp_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["not_a_field"] = 1
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    error = resume_fails(checkpoint, tmp_path)
    assert str(checkpoint / "trainer_state.json") in str(error) and "not_a_field" in str(error)


def test_corrupt_weights_file(good_checkpoint, tmp_path):
    checkpoint = broken_copy(good_checkpoint, tmp_path)
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 20)
    error = resume_fails(checkpoint, tmp_path)
    assert str(checkpoint / "model.safetensors") in str(error) and "safetensors" in str(error)


@pytest.mark.parametrize("via", ["facade", "fit"])
def test_weights_with_wrong_shapes(good_checkpoint, tmp_path, via):
    error = resume_fails(good_checkpoint, tmp_path, model_fn=lambda: TinyReg(dim=6), via=via)
    message = str(error)
    assert str(good_checkpoint / "model.safetensors") in message
    assert "hidden.weight" in message and "(4, 4)" in message and "(6, 6)" in message


def test_weights_of_another_model(good_checkpoint, tmp_path):
    bert = lambda: BertForSequenceClassification(tiny_bert_config())  # noqa: E731
    error = resume_fails(good_checkpoint, tmp_path, model_fn=bert)
    message = str(error)
    assert str(good_checkpoint / "model.safetensors") in message
    assert "missing" in message and "bert.embeddings" in message and "unexpected" in message and "hidden.weight" in message
