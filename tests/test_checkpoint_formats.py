"""Weights in other shapes: PEFT adapters and sharded safetensors with an index.

- PEFT: a LoRA model's checkpoints hold ``adapter_model.safetensors`` + ``adapter_config.json`` (the
  same files and tensors as transformers), resume in both frameworks, and load with
  ``PeftModel.from_pretrained``.
- Sharding: transformers.Trainer always saves with ``save_pretrained``'s default ``max_shard_size``
  ("50GB") and so does hf_lightning; a checkpoint whose weights were re-saved in small shards
  (``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``) resumes all the same.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from checkpoint_helpers import TokenDataset, assert_bitwise, checkpoints, sorted_entries
from helpers import assert_same_history, build
from safetensors.torch import load_file
from tiny import tiny_llama_config
from transformers import DataCollatorForSeq2Seq, LlamaForCausalLM

from hf_lightning.hf_format import CheckpointError

peft = pytest.importorskip("peft")

ARGS = dict(per_device_train_batch_size=8, num_train_epochs=2, save_strategy="steps", save_steps=3, logging_steps=1,
            learning_rate=1e-2)


def llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(tiny_llama_config(attention_dropout=0.1))


def lora() -> torch.nn.Module:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    return peft.get_peft_model(llama(), config)


def data(tokenizer) -> dict:
    return dict(train_dataset=TokenDataset(32, causal=True), data_collator=DataCollatorForSeq2Seq(tokenizer))


def train(framework, model_fn, output_dir, tokenizer, resume=None, **extra):
    trainer = build(framework, model_fn, output_dir, trainer_kwargs=data(tokenizer), **{**ARGS, **extra})
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer


def assert_continues(uninterrupted, resumed) -> None:
    assert_bitwise(uninterrupted.model, resumed.model)
    expected, actual = uninterrupted.state.log_history, resumed.state.log_history
    assert_same_history(sorted_entries(expected[:-1]), sorted_entries(actual[:-1]), rel=0)


# ------------------------------------------------------------------------------------------ PEFT


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("lora")
    return root, {framework: train(framework, lora, root / framework, tokenizer) for framework in ("hf", "hl")}


def test_lora_checkpoints_match_transformers(lora_runs):
    root, runs = lora_runs
    assert checkpoints(root / "hl") == checkpoints(root / "hf") == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]
    for name in checkpoints(root / "hf"):
        hf_dir, hl_dir = root / "hf" / name, root / "hl" / name
        assert set(os.listdir(hl_dir)) == set(os.listdir(hf_dir))
        assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(hl_dir))
        assert "model.safetensors" not in os.listdir(hl_dir)
        hf_tensors, hl_tensors = load_file(hf_dir / "adapter_model.safetensors"), load_file(hl_dir / "adapter_model.safetensors")
        assert hl_tensors.keys() == hf_tensors.keys() and all("lora_" in key for key in hl_tensors)
        assert all(torch.equal(hl_tensors[key], hf_tensors[key]) for key in hf_tensors)
        assert json.loads((hl_dir / "adapter_config.json").read_text()) == json.loads((hf_dir / "adapter_config.json").read_text())
    assert_same_history(runs["hf"].state.log_history, runs["hl"].state.log_history)


@pytest.mark.parametrize("writer,reader", [("hl", "hl"), ("hl", "hf"), ("hf", "hl")])
def test_lora_resume_reproduces_uninterrupted_run(lora_runs, tmp_path, tokenizer, writer, reader):
    root, runs = lora_runs
    resumed = train(reader, lora, tmp_path, tokenizer, resume=root / writer / "checkpoint-3")
    assert_continues(runs[reader], resumed)


def test_lora_checkpoint_loads_with_peft_from_pretrained(lora_runs):
    root, runs = lora_runs
    torch.manual_seed(0)  # the base weights of the run (they are frozen)
    loaded = peft.PeftModel.from_pretrained(llama(), root / "hl" / "checkpoint-8").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(runs["hl"].model.eval()(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_adapter_checkpoint_into_a_plain_model_is_a_clear_error(lora_runs, tmp_path, tokenizer):
    root, _ = lora_runs
    with pytest.raises(CheckpointError, match="holds a PEFT adapter") as raised:
        train("hl", llama, tmp_path, tokenizer, resume=root / "hl" / "checkpoint-3")
    assert str(root / "hl" / "checkpoint-3" / "adapter_model.safetensors") in str(raised.value)


# -------------------------------------------------------------------------------------- sharding


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("shards")
    return root, {framework: train(framework, llama, root / framework, tokenizer) for framework in ("hf", "hl")}


def test_default_shard_size_is_transformers_one_file(llama_runs):
    root, _ = llama_runs
    for framework in ("hf", "hl"):
        files = os.listdir(root / framework / "checkpoint-3")
        assert "model.safetensors" in files and "model.safetensors.index.json" not in files


@pytest.mark.parametrize("reader", ["hl", "hf"])
def test_resume_from_sharded_safetensors(llama_runs, tmp_path, tokenizer, reader):
    root, runs = llama_runs
    sharded = tmp_path / "checkpoint-3"
    shutil.copytree(root / "hl" / "checkpoint-3", sharded)
    model = LlamaForCausalLM.from_pretrained(sharded)
    os.remove(sharded / "model.safetensors")
    model.save_pretrained(sharded, max_shard_size="40KB")
    files = os.listdir(sharded)
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files and len(shards) > 2
    resumed = train(reader, llama, tmp_path / "out", tokenizer, resume=sharded)
    assert_continues(runs["hl"], resumed)


def test_missing_shard_is_a_clear_error(llama_runs, tmp_path, tokenizer):
    root, _ = llama_runs
    sharded = tmp_path / "checkpoint-3"
    shutil.copytree(root / "hl" / "checkpoint-3", sharded)
    model = LlamaForCausalLM.from_pretrained(sharded)
    os.remove(sharded / "model.safetensors")
    model.save_pretrained(sharded, max_shard_size="40KB")
    victim = sorted(f for f in os.listdir(sharded) if f.startswith("model-"))[1]
    os.remove(sharded / victim)
    with pytest.raises(CheckpointError, match="shard listed in model.safetensors.index.json is missing") as raised:
        train("hl", llama, tmp_path / "out", tokenizer, resume=sharded)
    assert str(sharded / victim) in str(raised.value)
