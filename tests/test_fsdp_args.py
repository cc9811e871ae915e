"""transformers' ``fsdp``/``fsdp_config`` mapped onto hf_lightning's FSDP strategies.

In-process: the mapping of every option (a table), what is refused up front and how the message
reads, the units each wrap policy makes, and the facade accepting ``fsdp`` in a process that is not
distributed yet. On 2 CPU processes (gloo): hf_lightning runs the same ``TrainingArguments`` that
transformers.Trainer runs under torchrun. transformers has no FSDP on CPU: accelerate stays
``MULTI_CPU``, so its ``fsdp`` run silently trains with DDP and writes DDP checkpoints (asserted below,
so a change in transformers shows up here). Its numbers are the reference: sharding must not change
them. The checkpoint layout is the one transformers writes under real FSDP (§1.3, checked on a GPU).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import dist_helpers as dh
import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, make_args
from hf_lightning import distributed, fsdp_args, fsdp_units
from hf_lightning.arguments import ARGUMENT_SUPPORT, HONOURED, validate_arguments
from tiny import RegressionDataset, TinyReg, tiny_llama_config


@pytest.fixture(autouse=True)
def _keep_fsdp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TrainingArguments(fsdp=...) writes FSDP_CPU_RAM_EFFICIENT_LOADING into os.environ; undo it after each test."""
    original = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", original or "false")  # recorded: restored (or removed) afterwards
    if original is None:
        monkeypatch.delenv("FSDP_CPU_RAM_EFFICIENT_LOADING")


# ------------------------------------------------------------------------------- the mapping

V2 = distributed.FSDP2Strategy
V1 = distributed.FSDPStrategy

# (fsdp, fsdp_config, strategy class, expected strategy_kwargs subset)
MAPPINGS = [
    ("full_shard auto_wrap", None, V2,
     dict(state_dict_type="full", reshard_after_forward=True, shard_layers=None, cpu_offload=False, checkpoint_layers=False)),
    (True, {"fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT"}, V2, dict(state_dict_type="sharded", reshard_after_forward=True)),
    ("shard_grad_op", None, V2, dict(reshard_after_forward=False)),
    ("full_shard offload", None, V2, dict(reshard_after_forward=True, cpu_offload=True)),
    (True, {"cpu_offload": True, "reshard_after_forward": False}, V2, dict(cpu_offload=True, reshard_after_forward=False)),
    (True, {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}, V2, dict(shard_layers=["LlamaDecoderLayer"])),
    (True, {"auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 1000}, V2, dict(min_num_params=1000)),
    (True, {"auto_wrap_policy": "SIZE_BASED_WRAP"}, V2, dict(min_num_params=0)),
    (True, {"auto_wrap_policy": "NO_WRAP"}, V2, dict(shard_layers=[])),
    (True, {"activation_checkpointing": "true", "cpu_ram_efficient_loading": True}, V2,
     dict(checkpoint_layers=True, cpu_ram_efficient_loading=True)),
    ("full_shard", {"version": 1}, V1,
     dict(sharding_strategy="FULL_SHARD", state_dict_type="full", sync_module_states=True, use_orig_params=True, forward_prefetch=False,
          backward_prefetch=None)),
    ("hybrid_shard offload", {"version": 1, "state_dict_type": "SHARDED_STATE_DICT"}, V1,
     dict(sharding_strategy="HYBRID_SHARD", cpu_offload=True, state_dict_type="sharded")),
    ("hybrid_shard_zero2", {"version": 1}, V1, dict(sharding_strategy="_HYBRID_SHARD_ZERO2")),
    ("no_shard", {"version": 1}, V1, dict(sharding_strategy="NO_SHARD")),
    (True, {"version": 1, "reshard_after_forward": "shard_grad_op", "backward_prefetch": "backward_post", "forward_prefetch": True,
            "use_orig_params": False, "sync_module_states": False, "limit_all_gathers": False}, V1,
     dict(sharding_strategy="SHARD_GRAD_OP", backward_prefetch="BACKWARD_POST", forward_prefetch=True, use_orig_params=False,
          sync_module_states=False, limit_all_gathers=False)),
    (True, {"version": 1, "cpu_ram_efficient_loading": True, "sync_module_states": False}, V1, dict(sync_module_states=True)),
    (True, {"version": 1, "auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 500, "activation_checkpointing": True}, V1,
     dict(min_num_params=500, checkpoint_layers=True)),
]


def _args(tmp_path: Path, fsdp, fsdp_config, **overrides):
    config = json.loads(json.dumps(fsdp_config)) if fsdp_config is not None else None  # TrainingArguments edits it
    return make_args(tmp_path, fsdp=fsdp, fsdp_config=config, **overrides)


@pytest.mark.parametrize(("fsdp", "fsdp_config", "cls", "expected"), MAPPINGS, ids=[f"{m[0]}|{m[1]}" for m in MAPPINGS])
def test_fsdp_arguments_map_to_the_strategy(tmp_path: Path, fsdp, fsdp_config, cls, expected: dict) -> None:
    args = _args(tmp_path, fsdp, fsdp_config, use_cpu=cls is V2, ddp_timeout=77)
    plan = fsdp_args.fsdp_plan(args)
    kwargs = plan.strategy_kwargs()
    assert {k: kwargs.get(k) for k in expected} == expected
    strategy = distributed.resolve_strategy(args, {"devices": 2})
    assert type(strategy) is cls and strategy._timeout == timedelta(seconds=77)
    assert strategy.state_dict_type == kwargs["state_dict_type"]
    if cls is V2:
        for name in ("reshard_after_forward", "cpu_offload", "checkpoint_layers", "cpu_ram_efficient_loading", "min_num_params"):
            assert getattr(strategy, name) == kwargs.get(name, None if name == "min_num_params" else getattr(strategy, name))
        assert strategy.shard_layers == kwargs.get("shard_layers")
        return
    from torch.distributed.fsdp import BackwardPrefetch, ShardingStrategy

    assert strategy.sharding_strategy is ShardingStrategy[kwargs["sharding_strategy"]]
    assert strategy.cpu_offload.offload_params is kwargs["cpu_offload"]
    fsdp_kwargs = strategy.kwargs
    assert fsdp_kwargs["sync_module_states"] is kwargs["sync_module_states"] and fsdp_kwargs["use_orig_params"] is kwargs["use_orig_params"]
    assert fsdp_kwargs["forward_prefetch"] is kwargs["forward_prefetch"]
    prefetch = kwargs["backward_prefetch"]
    assert fsdp_kwargs["backward_prefetch"] == (BackwardPrefetch[prefetch] if prefetch else None)
    assert fsdp_kwargs.get("limit_all_gathers", "unset") == kwargs.get("limit_all_gathers", "unset")
    assert fsdp_kwargs["auto_wrap_policy"] is not None
    assert bool(strategy._activation_checkpointing_kwargs) is kwargs["checkpoint_layers"]
    if kwargs["checkpoint_layers"]:
        assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"] is fsdp_kwargs["auto_wrap_policy"]  # the units are checkpointed


def test_fsdp1_layer_policy_resolves_the_models_blocks() -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    strategy = V1(shard_layers=None)
    strategy._unit_policy.bind(model)
    assert {c.__name__ for c in strategy._unit_policy._module_classes} == {"LlamaDecoderLayer"}
    with pytest.raises(ValueError, match=r"names 'GPT2Block', which is not a module class of LlamaForCausalLM; it has \[.*'LlamaDecoderLayer'"):
        V1(shard_layers=["GPT2Block"])._unit_policy.bind(model)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({}, ["model.layers.0", "model.layers.1"]),
     # torch's size-based recursion: a module is wrapped when the parameters its wrapped children leave reach the threshold
     ({"min_num_params": 3500}, ["model.layers.0.mlp", "model.layers.0.self_attn", "model.layers.1.mlp", "model.layers.1.self_attn"])],
    ids=["blocks", "size"],
)
def test_fsdp1_policy_is_the_wrap_and_the_checkpointing_policy(kwargs: dict, expected: list[str]) -> None:
    """The policy FullyShardedDataParallel wraps with is the one Lightning's ``apply_activation_checkpointing``
    gets, so the checkpointed modules are the FSDP units (this part runs without a GPU)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing, checkpoint_wrapper

    model = _llama()
    strategy = V1(checkpoint_layers=True, **kwargs)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert strategy._activation_checkpointing_kwargs == {"auto_wrap_policy": policy}
    if strategy._unit_policy is not None:
        strategy._unit_policy.bind(model)  # what FSDPStrategy._setup_model does before wrapping
        names = {module: name for name, module in model.named_modules()}
        assert sorted(names[m] for m in policy._run_policy(model, set(), {})) == expected
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, auto_wrap_policy=policy)
    assert sorted(name for name, m in model.named_modules() if hasattr(m, "_checkpoint_wrapped_module")) == expected


def test_the_argument_table_marks_fsdp_honoured() -> None:
    assert ARGUMENT_SUPPORT["fsdp"][0] == HONOURED and ARGUMENT_SUPPORT["fsdp_config"][0] == HONOURED


def test_the_docs_table_is_up_to_date() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "distributed.md").read_text()
    assert fsdp_args._markdown_table() in doc, "regenerate the table in docs/distributed.md with `python -m hf_lightning.fsdp_args`"


# ------------------------------------------------------------------------------- refused up front

# (fsdp, fsdp_config, other TrainingArguments, validate_arguments keywords, message)
REFUSED = [
    ("xla", True, {"xla": True}, {}, {}, r"`fsdp_config\['xla'\]=True` \(PyTorch/XLA FSDP\) is not supported.*remove `xla`"),
    ("local_state_dict", True, {"state_dict_type": "LOCAL_STATE_DICT"}, {}, {},
     r"`fsdp_config\['state_dict_type'\]='LOCAL_STATE_DICT'`.*use 'SHARDED_STATE_DICT'.*or 'FULL_STATE_DICT'"),
    ("bad_state_dict", True, {"state_dict_type": "HALF_STATE_DICT"}, {}, {}, r"`fsdp_config\['state_dict_type'\]='HALF_STATE_DICT'` is not valid"),
    ("v1_on_cpu", "full_shard", {"version": 1}, {}, {},
     r"`fsdp_config\['version'\]=1` \(FSDP1, Lightning's FSDPStrategy\) needs CUDA GPUs.*use_cpu=True.*use `fsdp_config\['version'\]=2`"),
    ("v1_bad_prefetch", True, {"version": 1, "backward_prefetch": "sideways"}, {}, {}, r"`fsdp_config\['backward_prefetch'\]='SIDEWAYS'` is not valid; use one of"),
    ("version_3", True, {"version": 3}, {}, {}, r"`fsdp_config\['version'\]=3` is not valid; use 2 \(FSDP2, the default\) or 1"),
    ("two_checkpointings", True, {"activation_checkpointing": True}, {"activation_checkpointing": True}, {},
     r"can't both be set to True.*set `activation_checkpointing=False`"),
    ("checkpointing_without_units", True, {"activation_checkpointing": True, "auto_wrap_policy": "NO_WRAP"}, {}, {},
     r"`auto_wrap_policy='NO_WRAP'`.*names no layers to checkpoint; use `auto_wrap_policy='TRANSFORMER_BASED_WRAP'`"),
    ("optimizers", True, None, {}, {"optimizers": (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), None)},
     r"Passing `optimizers` is not allowed with `fsdp`.*optimizer_cls_and_kwargs"),
]


@pytest.mark.parametrize(("case", "fsdp", "fsdp_config", "other", "keywords", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_unmappable_fsdp_settings_are_refused_when_arguments_are_validated(tmp_path: Path, case, fsdp, fsdp_config, other, keywords, message) -> None:
    args = _args(tmp_path, fsdp, fsdp_config, **other)
    with pytest.raises(ValueError, match=message):
        validate_arguments(args, **keywords)


def test_refused_before_training_by_the_facade(tmp_path: Path) -> None:
    args = _args(tmp_path, True, {"state_dict_type": "LOCAL_STATE_DICT"})
    with pytest.raises(ValueError, match="LOCAL_STATE_DICT"):
        hf_lightning.Trainer(model=TinyReg(), args=args, train_dataset=RegressionDataset(8), **LIGHTNING_QUIET)


def test_fsdp_set_after_the_arguments_were_built_is_processed_like_transformers(tmp_path: Path) -> None:
    args = make_args(tmp_path)
    args.fsdp, args.fsdp_config = "shard_grad_op offload", {"fsdp_state_dict_type": "SHARDED_STATE_DICT"}
    plan = fsdp_args.fsdp_plan(args)
    assert (plan.reshard_after_forward, plan.cpu_offload, plan.state_dict_type) == (False, True, "sharded")
    assert args.fsdp_config == {"fsdp_state_dict_type": "SHARDED_STATE_DICT"}  # the user's arguments are left alone


def test_fsdp1_on_a_cpu_accelerator_is_refused_when_the_strategy_is_built(tmp_path: Path) -> None:
    args = _args(tmp_path, "full_shard", {"version": 1}, use_cpu=False)
    with pytest.raises(ValueError, match=r"`fsdp_config\['version'\]=1`.*`accelerator='cpu'` was given; use `fsdp_config\['version'\]=2`"):
        distributed.resolve_strategy(args, {"accelerator": "cpu", "devices": 2})


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2", distributed.FSDP2Strategy()], ids=["ddp", "fsdp2", "FSDP2Strategy"])
def test_fsdp_and_a_lightning_strategy_are_refused_together(tmp_path: Path, strategy) -> None:
    args = _args(tmp_path, True, None)
    with pytest.raises(ValueError, match=r"`fsdp=True` \(TrainingArguments\) and `strategy=.*` \(lightning.Trainer\) both choose"):
        hf_lightning.build_trainer(args, strategy=strategy, accelerator="cpu", devices=2, **LIGHTNING_QUIET)
    assert isinstance(distributed.resolve_strategy(args, {"strategy": "auto"}), V2)  # Lightning's default is no choice


def test_config_keys_transformers_ignores_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = _args(tmp_path, True, {"forward_prefetch": True, "sharding_strategy": "FULL_SHARD"})  # v1-only key, accelerate-config key
    assert fsdp_args.ignored_fsdp_config_keys(args) == ["forward_prefetch", "sharding_strategy"]
    with caplog.at_level(logging.WARNING, logger="hf_lightning.arguments"):
        validate_arguments(args)
    warned = [r.getMessage() for r in caplog.records]
    assert any("`fsdp_config['forward_prefetch']` is not read by transformers" in m for m in warned)
    assert any("`fsdp_config['sharding_strategy']`" in m for m in warned)
    assert fsdp_args.ignored_fsdp_config_keys(_args(tmp_path, True, {"version": 1, "forward_prefetch": True}, use_cpu=False)) == []


# ---------------------------------------------------------------------------------- the facade


def test_facade_accepts_fsdp_outside_a_distributed_launch(tmp_path: Path) -> None:
    """transformers.Trainer refuses `fsdp` in a process that is not distributed yet; Lightning's launcher starts from one."""
    from transformers import LlamaForCausalLM, Trainer

    args = _args(tmp_path, "shard_grad_op", {"state_dict_type": "SHARDED_STATE_DICT"})
    with pytest.raises(ValueError, match="Using fsdp only works in distributed training"):
        Trainer(model=LlamaForCausalLM(tiny_llama_config()), args=args)
    trainer = hf_lightning.Trainer(model=LlamaForCausalLM(tiny_llama_config()), args=args, accelerator="cpu", devices=2, **LIGHTNING_QUIET)
    assert trainer.args.fsdp is True and trainer.is_fsdp_enabled is False  # restored; the sharding is Lightning's
    strategy = trainer._lightning().strategy
    assert type(strategy) is V2 and strategy.state_dict_type == "sharded" and strategy.reshard_after_forward is False


# ------------------------------------------------------------------------------- FSDP2 units


def _llama(tie: bool = False):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=tie))


@pytest.mark.parametrize(
    ("tie", "layers", "min_num_params", "expected"),
    [
        (False, None, None, ["model.layers.0", "model.layers.1"]),
        (False, ["LlamaMLP"], None, ["model.layers.0.mlp", "model.layers.1.mlp"]),
        (False, [], None, []),
        # accelerate's FSDP2 size policy: every module above the threshold, parents included; ModuleList can't be a unit
        (False, None, 3000, ["lm_head", "model", "model.embed_tokens", "model.layers.0", "model.layers.0.mlp", "model.layers.0.self_attn",
                             "model.layers.1", "model.layers.1.mlp", "model.layers.1.self_attn"]),
        # tied lm_head/embeddings: neither end, nor a module holding one end, becomes a unit
        (True, None, 3000, ["model.layers.0", "model.layers.0.mlp", "model.layers.0.self_attn", "model.layers.1", "model.layers.1.mlp",
                            "model.layers.1.self_attn"]),
    ],
    ids=["blocks", "named", "none", "size", "size-tied"],
)
def test_fsdp2_units(tie: bool, layers, min_num_params, expected: list[str]) -> None:
    torch.manual_seed(0)
    model = _llama(tie)
    policy = fsdp_units.unit_policy(model, layers, min_num_params)
    assert sorted(name for name, module in model.named_modules() if module is not model and policy(module)) == expected


def test_fsdp2_checkpoint_wrappers_count_as_the_blocks_they_wrap() -> None:
    model = _llama()
    policy = fsdp_units.unit_policy(model)
    fsdp_units.checkpoint_units(model, policy)
    wrapped = [name for name, module in model.named_modules() if hasattr(module, "_checkpoint_wrapped_module")]
    assert wrapped == ["model.layers.0", "model.layers.1"]
    assert all(policy(model.get_submodule(name)) for name in wrapped)  # shard_model shards the wrapper, not what it wraps
    assert set(model.state_dict()) == set(_llama().state_dict())  # checkpoint keys unchanged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shard_layers": ["LlamaDecoderLayer"], "min_num_params": 10}, r"both choose the FSDP units; pass one"),
        ({"min_num_params": -1}, r"`min_num_params=-1` must be an integer >= 0"),
        ({"shard_layers": [], "checkpoint_layers": True}, r"`shard_layers=\[\]` makes none; name the layers to checkpoint"),
    ],
)
@pytest.mark.parametrize("cls", [V2, V1], ids=["FSDP2Strategy", "FSDPStrategy"])
def test_strategies_refuse_contradictory_units(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# --------------------------------------------------------------------- 2 CPU processes (gloo)

FULL_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "optimizer.bin", "pytorch_model_fsdp.bin",
    "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt", "trainer_state.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json",
}
SHARDED_FILES = {
    "optimizer_0", "pytorch_model_fsdp_0", "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt", "trainer_state.json",
    # hf_lightning also describes the model in sharded checkpoints (docs/distributed.md)
    "config.json", "generation_config.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json",
}
DDP_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth",
    "scheduler.pt", "trainer_state.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json",
}
PERTURBED = "perturb=0.5"  # ranks > 0 build the model with other weights


@pytest.fixture(scope="module")
def fsdp_arg_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same TrainingArguments (fsdp/fsdp_config presets of dist_run.py) for transformers under torchrun and for
    hf_lightning under Lightning's own launcher (the launching process builds the facade before any process group)."""
    out = tmp_path_factory.mktemp("fsdp_args")
    hf = ["--framework", "hf", "--out", str(out / "hf")]
    for spec in ("llama:fsdp_args=full:name=full", f"llama:fsdp_args=checkpointing_rank0:{PERTURBED}:name=rank0"):
        hf += ["--case", spec]
    dh.torchrun("dist_run.py", *hf, timeout=200)
    hl = ["--framework", "hl", "--devices", "2", "--out", str(out / "hl")]
    for spec in (
        "llama:fsdp_args=full:name=full",
        "llama:fsdp_args=sharded:name=sharded",
        f"llama:fsdp_args=sharded:resume=3:name=sharded-resumed:source={out / 'hl' / 'sharded' / 'out'}",
        "llama:fsdp_args=grad_op_size:name=size",
        f"llama:fsdp_args=checkpointing_rank0:{PERTURBED}:name=rank0",
        f"llama:fsdp_args=sharded:{PERTURBED}:name=perturbed",
        "llama:fsdp_args=full:save_only_model=true:name=full-weights-only",
        "llama_tied:fsdp_args=sharded:name=tied",
        f"llama_tied:fsdp_args=checkpointing_rank0:{PERTURBED}:name=tied-rank0",
    ):
        hl += ["--case", spec]
    dh.python("dist_run.py", *hl, timeout=240)
    return out


@pytest.mark.distributed
def test_transformers_trains_fsdp_arguments_on_cpu_with_ddp(fsdp_arg_runs: Path) -> None:
    """What transformers really runs here: accelerate keeps MULTI_CPU, no FSDP plugin, a DDP wrapper, DDP checkpoints."""
    for name in ("full", "rank0"):
        result = dh.result(fsdp_arg_runs / "hf" / name)
        assert result["fsdp_enabled"] is False and result["wrapper"] == "DistributedDataParallel"
        assert result["sharding"] == {"units": {}, "checkpointed": []}  # not even activation checkpointing
        assert all(set(files) == DDP_FILES for files in result["checkpoints"].values())


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["full", "sharded", "size"])
def test_fsdp_arguments_train_like_transformers(fsdp_arg_runs: Path, name: str) -> None:
    hf, hl = dh.result(fsdp_arg_runs / "hf" / "full"), dh.result(fsdp_arg_runs / "hl" / name)
    assert hl["strategy"] == "FSDP2Strategy"
    assert_same_history(hf["log_history"], hl["log_history"], rel=1e-5)
    dh.assert_same_tensors(dh.weights(fsdp_arg_runs / "hf" / "full" / "final"), dh.weights(fsdp_arg_runs / "hl" / name / "final"), atol=1e-5)
    for rank in (0, 1):
        dh.assert_same_batches(dh.batches(fsdp_arg_runs / "hf" / "full", rank), dh.batches(fsdp_arg_runs / "hl" / name, rank), f"rank {rank}")


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "files"), [("full", FULL_FILES), ("sharded", SHARDED_FILES), ("size", SHARDED_FILES)])
def test_fsdp_arguments_write_transformers_fsdp_layout(fsdp_arg_runs: Path, name: str, files: set[str]) -> None:
    checkpoints = dh.result(fsdp_arg_runs / "hl" / name)["checkpoints"]
    assert sorted(checkpoints) == ["checkpoint-3", "checkpoint-6"]
    assert all(set(found) == files for found in checkpoints.values())
    if files is SHARDED_FILES:
        shards = set(os.listdir(fsdp_arg_runs / "hl" / name / "out" / "checkpoint-3" / "pytorch_model_fsdp_0"))
        assert shards == {".metadata", "__0_0.distcp", "__1_0.distcp"}


@pytest.mark.distributed
def test_full_state_dict_with_save_only_model_writes_what_transformers_writes(fsdp_arg_runs: Path) -> None:
    """transformers writes pytorch_model_fsdp.bin/optimizer.bin with the optimizer state, which save_only_model skips (§1.2)."""
    checkpoints = dh.result(fsdp_arg_runs / "hl" / "full-weights-only")["checkpoints"]
    expected = {"config.json", "generation_config.json", "model.safetensors", "trainer_state.json", "training_args.bin",
                "tokenizer.json", "tokenizer_config.json"}
    assert checkpoints and all(set(found) == expected for found in checkpoints.values())


@pytest.mark.distributed
def test_fsdp_arguments_shape_the_units(fsdp_arg_runs: Path) -> None:
    """transformer blocks by default, reshard_after_forward from full_shard/shard_grad_op, size-based units, checkpointing."""
    full = dh.result(fsdp_arg_runs / "hl" / "full")["sharding"]
    assert sorted(full["units"]) == ["<root>", "model.layers.0", "model.layers.1"] and full["checkpointed"] == []
    assert full["units"]["model.layers.0"]["reshard_after_forward"] is True
    size = dh.result(fsdp_arg_runs / "hl" / "size")["sharding"]["units"]
    assert {"model.layers.0.mlp", "model.layers.0.self_attn", "model.embed_tokens", "lm_head"} <= set(size)
    assert all(unit["reshard_after_forward"] is False for name, unit in size.items() if unit and name != "<root>")
    rank0 = dh.result(fsdp_arg_runs / "hl" / "rank0")["sharding"]
    assert rank0["checkpointed"] == ["model.layers.0", "model.layers.1"]
    assert sorted(rank0["units"]) == ["<root>", "model.layers.0", "model.layers.1"]  # the checkpoint wrappers are the units


@pytest.mark.distributed
def test_cpu_ram_efficient_loading_trains_rank0s_weights(fsdp_arg_runs: Path) -> None:
    """Other weights on rank 1: with cpu_ram_efficient_loading the run is transformers' (DDP broadcasts rank 0's too);
    without it FSDP2 keeps each rank's own shard and the run differs."""
    hf = dh.result(fsdp_arg_runs / "hf" / "rank0")["log_history"]
    assert_same_history(hf, dh.result(fsdp_arg_runs / "hl" / "rank0")["log_history"], rel=1e-5)
    dh.assert_same_tensors(dh.weights(fsdp_arg_runs / "hf" / "rank0" / "final"), dh.weights(fsdp_arg_runs / "hl" / "rank0" / "final"), atol=1e-5)
    assert_same_history(hf, dh.result(fsdp_arg_runs / "hf" / "full")["log_history"], rel=1e-5)  # the perturbation was undone
    with pytest.raises(AssertionError):
        assert_same_history(hf, dh.result(fsdp_arg_runs / "hl" / "perturbed")["log_history"], rel=1e-3)


@pytest.mark.distributed
def test_cpu_ram_efficient_loading_keeps_tied_weights_tied(fsdp_arg_runs: Path) -> None:
    """The model goes to `meta` and back through rank 0's broadcast: lm_head and the embeddings are one parameter again."""
    tied, loaded = fsdp_arg_runs / "hl" / "tied", fsdp_arg_runs / "hl" / "tied-rank0"
    assert_same_history(dh.result(tied)["log_history"], dh.result(loaded)["log_history"], rel=0)
    dh.assert_same_tensors(dh.weights(tied / "final"), dh.weights(loaded / "final"), atol=0)
    assert "lm_head.weight" not in dh.weights(loaded / "final")  # written once, as save_pretrained writes tied weights


@pytest.mark.distributed
def test_fsdp_arguments_resume_from_their_checkpoint(fsdp_arg_runs: Path) -> None:
    full, resumed = fsdp_arg_runs / "hl" / "sharded", fsdp_arg_runs / "hl" / "sharded-resumed"
    dh.assert_same_tensors(dh.weights(full / "final"), dh.weights(resumed / "final"), atol=1e-6)
    after = [e for e in dh.result(full)["log_history"] if e["step"] > 3 and "train_runtime" not in e]
    assert_same_history(after, [e for e in dh.result(resumed)["log_history"] if e["step"] > 3 and "train_runtime" not in e], rel=1e-5)


@pytest.mark.slow  # one more launch (~25 s)
@pytest.mark.distributed
def test_offload_and_no_wrap_under_torchrun(fsdp_arg_runs: Path) -> None:
    """CPU offload (a no-op placement on CPU, but the offload policy is applied) and NO_WRAP (the root is the only unit),
    under torchrun this time."""
    out = fsdp_arg_runs / "torchrun"
    dh.torchrun("dist_run.py", "--framework", "hl", "--out", str(out), "--case", "llama:fsdp_args=offload:name=offload",
                "--case", "llama:fsdp_args=no_wrap:name=no_wrap", timeout=200)
    reference = dh.result(fsdp_arg_runs / "hf" / "full")["log_history"]
    offload = dh.result(out / "offload")
    assert {unit["offload"] for unit in offload["sharding"]["units"].values()} == {"CPUOffloadPolicy"}
    no_wrap = dh.result(out / "no_wrap")
    assert list(no_wrap["sharding"]["units"]) == ["<root>"]
    assert all(set(files) == FULL_FILES for files in no_wrap["checkpoints"].values())
    for result in (offload, no_wrap):
        assert_same_history(reference, result["log_history"], rel=1e-5)
