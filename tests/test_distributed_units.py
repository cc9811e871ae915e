"""In-process checks of ``hf_lightning.distributed`` and ``hf_lightning.consolidate`` (no process group)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from hf_lightning import distributed, fsdp_checkpoint, launching
from hf_lightning.hf_format import CheckpointError
from helpers import make_args


# ------------------------------------------------------------------------------------ strategies


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"find_unused_parameters": True}),  # transformers' default for models without activation checkpointing
        ({"gradient_checkpointing": True}, {"find_unused_parameters": False}),
        ({"ddp_find_unused_parameters": False}, {"find_unused_parameters": False}),
        (
            {"ddp_bucket_cap_mb": 7, "ddp_broadcast_buffers": False, "ddp_static_graph": True},
            {"find_unused_parameters": True, "bucket_cap_mb": 7, "broadcast_buffers": False, "static_graph": True},
        ),
    ],
)
def test_ddp_arguments_map_to_lightnings_ddp_strategy(tmp_path: Path, overrides: dict, expected: dict) -> None:
    args = make_args(tmp_path, ddp_timeout=123, **overrides)
    args.ddp_backend = "gloo"  # set after construction: TrainingArguments would start a process group for it
    strategy = distributed.ddp_strategy(args)
    assert strategy._ddp_kwargs == expected
    assert strategy.process_group_backend == "gloo" and strategy._timeout == timedelta(seconds=123)


def test_strategy_names_and_refused_lightning_strategies(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    args = make_args(tmp_path)
    resolve = distributed.resolve_strategy
    assert isinstance(resolve(args, {"devices": 2}), DDPStrategy)
    assert isinstance(resolve(args, {"num_nodes": 2}), DDPStrategy)
    assert resolve(args, {"devices": 1}) is None and resolve(args, {"accelerator": "cpu"}) is None
    assert isinstance(resolve(args, {"strategy": "ddp"}), DDPStrategy)
    assert isinstance(resolve(args, {"strategy": "fsdp2"}), distributed.FSDP2Strategy)
    ours = distributed.FSDP2Strategy(state_dict_type="full")
    assert resolve(args, {"strategy": ours, "devices": 2}) is ours
    with pytest.raises(ValueError, match=r"ModelParallelStrategy\(...\)` writes Lightning's checkpoint layout.*FSDP2Strategy"):
        resolve(args, {"strategy": ModelParallelStrategy()})


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({"devices": 2}, True), ({"devices": "2"}, True), ({"devices": -1}, True), ({"devices": [0, 1]}, True), ({"devices": 1}, False),
     ({"devices": "auto", "accelerator": "cpu"}, False), ({"num_nodes": 2}, True)],
)
def test_several_processes(kwargs: dict, expected: bool) -> None:
    assert distributed.several_processes(kwargs) is expected


def test_build_trainer_uses_ddp_and_the_ranked_launcher(tmp_path: Path) -> None:
    import hf_lightning

    trainer = hf_lightning.build_trainer(make_args(tmp_path, ddp_find_unused_parameters=False), accelerator="cpu", devices=2)
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.strategy._ddp_kwargs == {"find_unused_parameters": False}
    assert isinstance(trainer.strategy.launcher, launching._RankedScriptLauncher)


def test_ranked_launcher_gives_children_their_global_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' TrainingArguments in a child process needs RANK (accelerate initialises from it)."""
    import subprocess

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, env, **kw: started.append(env) or SimpleNamespace())
    # The launcher writes the parent's environment: give it a copy, so nothing leaks into later tests
    # (a leaked WORLD_SIZE would make every later TrainingArguments wait for a process group).
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    before = dict(os.environ)
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in keys})
    environment = SimpleNamespace(main_address="127.0.0.1", main_port=12345, node_rank=lambda: 1, local_rank=lambda: 0)
    launcher = launching._RankedScriptLauncher(environment, num_processes=3, num_nodes=2)
    launcher._call_children_scripts()
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in started] == [("4", "1", "6", "3"), ("5", "2", "6", "3")]
    assert os.environ["RANK"] == "3" and os.environ["LOCAL_RANK"] == "0"
    monkeypatch.undo()
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"state_dict_type": "local"}, r"`state_dict_type='local'` is not valid; use 'full'"),
        ({"state_dict_type": "full", "save_consolidated": True}, r"`save_consolidated=True` only applies to `state_dict_type='sharded'`"),
        ({"tensor_parallel_size": 2}, r"shards over every process \(data parallel only\)"),
    ],
)
def test_fsdp2_strategy_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distributed.FSDP2Strategy(**kwargs)


def test_fsdp2_strategy_state_dict_types() -> None:
    assert distributed.FSDP2Strategy().state_dict_type == "sharded"  # ModelParallelStrategy's default: distributed
    assert distributed.FSDP2Strategy("FULL_STATE_DICT").state_dict_type == "full"  # accelerate's spelling too
    assert distributed.FSDP2Strategy(state_dict_type="SHARDED_STATE_DICT").state_dict_type == "sharded"


# ---------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("num_samples, batch_size, world, drop_last", [(10, 4, 1, False), (13, 4, 2, False), (8, 4, 2, False), (13, 4, 2, True), (3, 4, 2, False)])
def test_gather_remainder_is_accelerates(num_samples: int, batch_size: int, world: int, drop_last: bool) -> None:
    """gather_for_metrics' remainder of a prepared loader; -1 (keep all) for a loader accelerate never saw."""
    from accelerate.data_loader import prepare_data_loader

    data = list(range(num_samples))
    for rank in range(world):
        loader = prepare_data_loader(
            DataLoader(data, batch_size=batch_size, drop_last=drop_last), num_processes=world, process_index=rank, even_batches=True
        )
        list(loader)
        assert distributed.gather_remainder(loader) == loader.remainder
    assert distributed.gather_remainder(DataLoader(data, batch_size=batch_size)) == -1


def test_eval_gather_truncates_the_last_batch_on_one_process() -> None:
    gather = distributed.EvalGather(SimpleNamespace(world_size=1), remainder=2)
    tensor = torch.arange(12).reshape(4, 3)
    gather.begin_batch(is_last=False)
    assert gather.pad(tensor) is tensor and gather.gather(tensor) is tensor
    gather.begin_batch(is_last=True)
    assert gather.gather(tensor).tolist() == tensor[:2].tolist()


# ----------------------------------------------------------------------------- checkpoint layout


def test_checkpoint_layout_and_saved_world_size(tmp_path: Path) -> None:
    (tmp_path / "a" / distributed.FSDP_MODEL_DIR).mkdir(parents=True)
    (tmp_path / "a" / "rng_state_0.pth").touch()
    (tmp_path / "a" / "rng_state_1.pth").touch()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / distributed.FSDP_MODEL_FILE).touch()
    (tmp_path / "b" / "rng_state.pth").touch()
    (tmp_path / "c").mkdir()
    assert [distributed.checkpoint_layout(tmp_path / n) for n in "abc"] == ["sharded", "full", "plain"]
    assert [distributed.saved_world_size(tmp_path / n) for n in "abc"] == [2, 1, None]


def test_optimizer_state_keys_move_between_lightning_and_transformers_names() -> None:
    osd = {"state": {"model.w": {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "params": ["model.w", "model.b"]}]}
    stripped = fsdp_checkpoint.strip_optimizer_prefix(osd)
    assert list(stripped["state"]) == ["w"] and stripped["param_groups"][0]["params"] == ["w", "b"]
    assert fsdp_checkpoint.add_optimizer_prefix(stripped)["param_groups"] == osd["param_groups"]


# -------------------------------------------------------------------------------- consolidation


def _write_sharded(folder: Path, state: dict[str, torch.Tensor]) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": state}, storage_writer=dcp.FileSystemWriter(str(folder / distributed.FSDP_MODEL_DIR)))


def test_consolidate_tied_llama_without_a_process_group(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from hf_lightning.consolidate import consolidate
    from tiny import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=True))
    checkpoint = tmp_path / "checkpoint-5"
    _write_sharded(checkpoint, {k: v.clone() for k, v in model.state_dict().items()})
    model.config.architectures = ["LlamaForCausalLM"]  # as save_pretrained records it
    model.config.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    target = consolidate(checkpoint)
    assert target == checkpoint and {"model.safetensors", "config.json", "tokenizer.json"} <= set(os.listdir(checkpoint))
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_consolidate_transformers_sharded_checkpoint_needs_a_config(tmp_path: Path) -> None:
    """transformers' own sharded checkpoints have no config.json: name one with `config`."""
    from transformers import BertForSequenceClassification

    from hf_lightning.consolidate import consolidate
    from tiny import tiny_bert_config

    model = BertForSequenceClassification(tiny_bert_config())
    _write_sharded(tmp_path / "ckpt", dict(model.state_dict()))
    model.save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointError, match=r"not a sharded FSDP checkpoint"):
        consolidate(tmp_path / "base")
    out = consolidate(tmp_path / "ckpt", tmp_path / "export", config=tmp_path / "base")
    loaded = BertForSequenceClassification.from_pretrained(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_consolidate_plain_module_writes_its_state_dict(tmp_path: Path) -> None:
    import safetensors.torch

    from hf_lightning.consolidate import main
    from tiny import TinyReg

    model = TinyReg()
    _write_sharded(tmp_path, dict(model.state_dict()))
    assert main([str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    written = safetensors.torch.load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(written) == sorted(model.state_dict()) and all(torch.equal(written[k], v) for k, v in model.state_dict().items())


def test_hf_lightning_command_routes_consolidate(tmp_path: Path) -> None:
    """`hf-lightning consolidate CHECKPOINT -o DIR` is the same tool as `python -m hf_lightning.consolidate`."""
    import safetensors.torch

    from hf_lightning.cli import main
    from tiny import TinyReg

    model = TinyReg()
    _write_sharded(tmp_path / "checkpoint-3", dict(model.state_dict()))
    with pytest.raises(SystemExit) as exit_info:
        main(["consolidate", str(tmp_path / "checkpoint-3"), "-o", str(tmp_path / "export")])
    assert exit_info.value.code == 0
    written = safetensors.torch.load_file(tmp_path / "export" / "model.safetensors")
    assert all(torch.equal(written[k], v) for k, v in model.state_dict().items())
