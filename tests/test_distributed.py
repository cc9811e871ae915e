"""DDP and FSDP2 on 2 CPU processes (gloo), against transformers.Trainer under torchrun.

Three launches per module (each killed with its children if it overruns):
- transformers.Trainer under ``torchrun --nproc_per_node 2``: the reference;
- hf_lightning with DDP through Lightning's own launcher (``python script.py``, ``devices=2``);
- hf_lightning with FSDP2 (``FSDP2Strategy``) under torchrun, then accelerate's FSDP loaders on its
  checkpoints (what transformers.Trainer uses to resume FSDP runs).
transformers has no FSDP on CPU (it silently falls back to DDP), so its DDP run is the reference for
FSDP2 numbers too: sharding must not change them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

import dist_helpers as dh
from helpers import assert_same_history

pytestmark = [pytest.mark.distributed]

CASES = ("reg", "llama")
RESUME_STEP = {"reg": 2, "llama": 3}  # reg: mid-epoch with dropout; llama: epoch boundary

SHARDED_FILES_TRANSFORMERS = {"optimizer_0", "pytorch_model_fsdp_0", "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt", "trainer_state.json"}
FULL_FILES_TRANSFORMERS = {
    "config.json", "generation_config.json", "model.safetensors", "optimizer.bin", "pytorch_model_fsdp.bin",
    "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt", "trainer_state.json", "training_args.bin",
}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
# hf_lightning's sharded saves also describe the model, so the checkpoint alone can be consolidated.
SHARDED_DESCRIPTION = {"config.json", "generation_config.json", "training_args.bin"} | TOKENIZER_FILES


def _runs(kind: str, out: Path) -> list[str]:
    runs = [*CASES, *(f"{c}:resume={RESUME_STEP[c]}" for c in CASES)]
    if kind == "hl":
        runs.append(f"reg:resume=2:name=reg-fromhf:source={out.parent / 'hf' / 'reg' / 'out'}")
    return runs


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: transformers.Trainer under torchrun with 2 processes."""
    root = tmp_path_factory.mktemp("ddp")
    args = ["--framework", "hf", "--out", str(root / "hf")]
    for spec in _runs("hf", root / "hf"):
        args += ["--case", spec]
    dh.torchrun("dist_run.py", *args, timeout=200)
    return root


@pytest.fixture(scope="module")
def runs(hf_runs: Path) -> Path:
    """hf_lightning with DDP under Lightning's own launcher, same cases (results next to transformers')."""
    args = ["--framework", "hl", "--devices", "2", "--out", str(hf_runs / "hl")]
    for spec in _runs("hl", hf_runs / "hl"):
        args += ["--case", spec]
    dh.python("dist_run.py", *args, timeout=240)
    return hf_runs


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hf_lightning FSDP2 under torchrun: full and sharded saves, resumes, tied weights, accelerate's loaders."""
    out = tmp_path_factory.mktemp("fsdp2")
    specs = [
        "llama:strategy=fsdp2_sharded:name=sharded",
        "llama:strategy=fsdp2_full:name=full",
        f"llama:strategy=fsdp2_sharded:resume=3:name=sharded-resumed:source={out / 'sharded' / 'out'}",
        f"llama:strategy=fsdp2_full:resume=3:name=full-resumed:source={out / 'full' / 'out'}",
        "llama_tied:strategy=fsdp2_sharded_consolidated:name=tied",
        "reg:strategy=fsdp2_sharded:name=reg-sharded",
        # the worse checkpoint (step 3) is the "best": it must be loaded into the shards at the end
        "llama:strategy=fsdp2_sharded:load_best_model_at_end=true:metric_for_best_model=eval_loss:greater_is_better=true:name=best",
        "llama:strategy=fsdp2_sharded:save_only_model=true:name=weights-only",
        f"llama:strategy=fsdp2_sharded:resume=3:name=weights-only-resumed:source={out / 'weights-only' / 'out'}",
    ]
    args = ["--framework", "hl", "--out", str(out), "--compat", "sharded,full"]
    for spec in specs:
        args += ["--case", spec]
    dh.torchrun("dist_run.py", *args, timeout=280)
    return out


# ----------------------------------------------------------------------------------------- DDP


def test_transformers_reference_writes_one_rng_file_per_rank(hf_runs: Path) -> None:
    """The reference itself (§1.2): rank 0 writes the folder, every rank its rng_state_{rank}.pth."""
    for case in CASES:
        out = hf_runs / "hf" / case / "out"
        for name in (d for d in os.listdir(out) if d.startswith("checkpoint-")):
            files = set(os.listdir(out / name))
            assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors", "optimizer.pt"} <= files
            assert "rng_state.pth" not in files


@pytest.mark.parametrize("case", CASES)
def test_ddp_log_history_and_weights_match_transformers(runs: Path, case: str) -> None:
    """Per-device batches, summed token counts, rank-mean losses, gathered eval without duplicates."""
    hf, hl = dh.result(runs / "hf" / case), dh.result(runs / "hl" / case)
    assert_same_history(hf["log_history"], hl["log_history"], rel=1e-5)
    evals = [e for e in hl["log_history"] if "eval_loss" in e]
    assert evals and all(e["eval_n"] == {"reg": 13, "llama": 7}[case] for e in evals)  # padding duplicates dropped
    dh.assert_same_tensors(dh.weights(runs / "hf" / case / "final"), dh.weights(runs / "hl" / case / "final"), atol=1e-6)
    # DDP keeps its backward preparation but not Lightning's hook dispatch (nobody listens): step_dispatch.py
    assert hl["dispatch"] == ["backward=direct,optimizer_step=direct"]


@pytest.mark.parametrize("case", CASES)
def test_ddp_evaluate_and_predict_match_transformers(runs: Path, case: str) -> None:
    """``evaluate()`` and ``predict()`` after training: gathered over ranks, each sample once."""
    hf, hl = dh.result(runs / "hf" / case), dh.result(runs / "hl" / case)
    assert_same_history([hf["evaluate"]], [hl["evaluate"]], rel=1e-5)
    assert_same_history([hf["predict"]["metrics"]], [hl["predict"]["metrics"]], rel=1e-5)
    assert hl["predict"]["shape"] == hf["predict"]["shape"] and hl["predict"]["shape"][0] == {"reg": 13, "llama": 7}[case]
    assert hl["predict"]["label_ids_shape"] == hf["predict"]["label_ids_shape"]
    assert abs(hl["predict"]["sum"] - hf["predict"]["sum"]) <= 1e-6 * max(1.0, abs(hf["predict"]["sum"]))


@pytest.mark.parametrize("case", CASES)
def test_ddp_each_rank_trains_on_transformers_micro_batches(runs: Path, case: str) -> None:
    for rank in (0, 1):
        expected, actual = dh.batches(runs / "hf" / case, rank), dh.batches(runs / "hl" / case, rank)
        assert len(expected) == 12 and actual == expected, f"rank {rank}"
    assert dh.batches(runs / "hl" / case, 0) != dh.batches(runs / "hl" / case, 1)


@pytest.mark.parametrize("case", CASES)
def test_ddp_checkpoint_folders_match_transformers(runs: Path, case: str) -> None:
    """Same files (rng_state_0/1.pth from each rank, the rest from rank 0) with the same contents."""
    hf, hl = runs / "hf" / case / "out", runs / "hl" / case / "out"
    names = sorted(d for d in os.listdir(hf) if d.startswith("checkpoint-"))
    assert names == sorted(d for d in os.listdir(hl) if d.startswith("checkpoint-")) and names
    assert not [d for d in os.listdir(hl) if d.startswith(".")], "temporary folders left behind"
    for name in names:
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(hl / name))
        dh.assert_same_checkpoint(hf / name, hl / name)


@pytest.mark.parametrize("case", CASES)
def test_ddp_resume_reproduces_the_run(runs: Path, case: str) -> None:
    step = RESUME_STEP[case]
    full, resumed = runs / "hl" / case, runs / "hl" / f"{case}-resume{step}"
    dh.assert_same_tensors(dh.weights(full / "final"), dh.weights(resumed / "final"), atol=0)
    after = [e for e in dh.result(full)["log_history"] if e["step"] > step and "train_runtime" not in e]
    resumed_log = [e for e in dh.result(resumed)["log_history"] if e["step"] > step and "train_runtime" not in e]
    assert_same_history(after, resumed_log, rel=0)
    # and transformers resumed the same checkpoint the same way
    assert_same_history(dh.result(runs / "hf" / f"{case}-resume{step}")["log_history"], dh.result(resumed)["log_history"], rel=1e-5)
    dh.assert_same_checkpoint(full / "out" / "checkpoint-6", resumed / "out" / "checkpoint-6")


def test_ddp_resumes_a_transformers_checkpoint(runs: Path) -> None:
    ours = runs / "hl" / "reg-resume2"
    from_hf = runs / "hl" / "reg-fromhf"
    dh.assert_same_tensors(dh.weights(ours / "final"), dh.weights(from_hf / "final"), atol=0)
    assert_same_history(dh.result(ours)["log_history"], dh.result(from_hf)["log_history"], rel=1e-6)


def test_resume_on_another_world_size_behaves_like_transformers(runs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 2-process checkpoint resumed by 1 process: same continuation as transformers, plus a warning."""
    import dist_cases
    from helpers import build
    from tiny import TinyReg

    case = dist_cases.reg_case()
    checkpoint = runs / "hf" / "reg" / "out" / "checkpoint-2"
    histories = []
    for framework in ("hf", "hl"):
        trainer = build(framework, lambda: TinyReg(dropout=0.1), tmp_path / framework, trainer_kwargs=case.trainer_kwargs, **case.args)
        with caplog.at_level(logging.WARNING, logger="hf_lightning.distributed"):
            trainer.train(resume_from_checkpoint=str(checkpoint))
        histories.append(trainer.state.log_history)
    assert_same_history(*histories, rel=1e-5)
    assert histories[1][-1]["step"] == 12  # 44 samples / 4 per step on one process: 6 steps per epoch
    assert any("written by 2 process(es) and is resumed by 1" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------- FSDP2


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_fsdp2_trains_like_transformers_ddp(runs: Path, fsdp_runs: Path, kind: str) -> None:
    """Sharding changes no number: logs and weights equal transformers' DDP run on the same 2 processes."""
    assert_same_history(dh.result(runs / "hf" / "llama")["log_history"], dh.result(fsdp_runs / kind)["log_history"], rel=1e-5)
    dh.assert_same_tensors(dh.weights(runs / "hf" / "llama" / "final"), dh.weights(fsdp_runs / kind / "final"), atol=1e-5)
    for rank in (0, 1):
        dh.assert_same_batches(dh.batches(runs / "hf" / "llama", rank), dh.batches(fsdp_runs / kind, rank), f"rank {rank}")
    assert dh.result(fsdp_runs / kind)["dispatch"] == ["backward=direct,optimizer_step=direct"]


def test_fsdp2_plain_module_matches_transformers_ddp(runs: Path, fsdp_runs: Path) -> None:
    """A plain nn.Module (one FSDP unit) with dropout and accumulation."""
    assert_same_history(dh.result(runs / "hf" / "reg")["log_history"], dh.result(fsdp_runs / "reg-sharded")["log_history"], rel=1e-5)


def test_fsdp2_checkpoint_layouts_are_accelerates(fsdp_runs: Path) -> None:
    for name in ("checkpoint-3", "checkpoint-6"):
        sharded = set(os.listdir(fsdp_runs / "sharded" / "out" / name))
        assert sharded == SHARDED_FILES_TRANSFORMERS | SHARDED_DESCRIPTION
        for folder in ("pytorch_model_fsdp_0", "optimizer_0"):  # every rank wrote its shard
            assert set(os.listdir(fsdp_runs / "sharded" / "out" / name / folder)) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
        full = set(os.listdir(fsdp_runs / "full" / "out" / name))
        assert full == FULL_FILES_TRANSFORMERS | TOKENIZER_FILES
    from hf_lightning import hf_format

    full = fsdp_runs / "full" / "out" / "checkpoint-3"
    weights = hf_format.load_torch(full / "pytorch_model_fsdp.bin")
    dh.assert_same_tensors(dh.weights(full), weights, atol=0)  # model stored twice, as accelerate does
    optimizer = hf_format.load_torch(full / "optimizer.bin")
    assert set(optimizer["state"]) == set(weights)  # keyed by parameter name, like accelerate's FSDP2 optimizer.bin


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_fsdp2_resume_reproduces_the_run(fsdp_runs: Path, kind: str) -> None:
    full, resumed = fsdp_runs / kind, fsdp_runs / f"{kind}-resumed"
    dh.assert_same_tensors(dh.weights(full / "final"), dh.weights(resumed / "final"), atol=1e-6)
    after = [e for e in dh.result(full)["log_history"] if e["step"] > 3 and "train_runtime" not in e]
    assert_same_history(after, [e for e in dh.result(resumed)["log_history"] if e["step"] > 3 and "train_runtime" not in e], rel=1e-5)


def test_fsdp2_checkpoints_round_trip_through_accelerates_fsdp_loaders(fsdp_runs: Path) -> None:
    """transformers resumes FSDP with accelerate's load_fsdp_model/optimizer: they read ours, and we read theirs."""
    report = json.loads((fsdp_runs / "compat" / "compat.json").read_text())
    assert report["num_weights"] > 0 and report["num_moments"] > 0
    diffs = {k: v for k, v in report.items() if isinstance(v, float)}
    assert len(diffs) == 8 and all(v <= 1e-6 for v in diffs.values()), diffs
    assert report["accelerate_full_files"] == ["optimizer.bin", "pytorch_model_fsdp.bin"]
    assert report["accelerate_sharded_files"] == ["optimizer_0", "pytorch_model_fsdp_0"]


def test_consolidate_sharded_checkpoint_loads_with_from_pretrained(fsdp_runs: Path, tmp_path: Path) -> None:
    """Tied lm_head/embeddings survive; equal to the weights gathered at save time (save_consolidated)."""
    from transformers import AutoModelForCausalLM

    from hf_lightning.consolidate import main

    checkpoint = fsdp_runs / "tied" / "out" / "checkpoint-6"
    assert main([str(checkpoint), "-o", str(tmp_path / "export")]) == 0
    exported = dh.weights(tmp_path / "export")
    assert "lm_head.weight" not in exported  # written once, as save_pretrained writes tied weights
    dh.assert_same_tensors(dh.weights(checkpoint), exported, atol=0)  # the consolidated copy written at save
    dh.assert_same_tensors(dh.weights(fsdp_runs / "tied" / "final"), exported, atol=0)  # save_model() at the end
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, exported["model.embed_tokens.weight"])
    shutil.rmtree(tmp_path / "export")


@pytest.mark.slow  # one more launch (~15 s)
def test_fsdp2_sharded_checkpoint_resumes_on_one_process(fsdp_runs: Path) -> None:
    """Resharded on load: training continues (with one process' step count, like transformers) and saves again."""
    one = f"llama:strategy=fsdp2_sharded:resume=3:name=one-process:source={fsdp_runs / 'sharded' / 'out'}"
    dh.python("dist_run.py", "--framework", "hl", "--devices", "1", "--out", str(fsdp_runs), "--case", one, timeout=150)
    log = dh.result(fsdp_runs / "one-process")["log_history"]
    # steps 1-3 come from the checkpoint; 21 samples / 2 per micro-batch / 2 per step: 6 steps per epoch on one process
    assert [e["step"] for e in log if "loss" in e] == list(range(1, 13))
    checkpoint = fsdp_runs / "one-process" / "out" / "checkpoint-12"
    assert {"pytorch_model_fsdp_0", "optimizer_0", "rng_state.pth"} <= set(os.listdir(checkpoint))
    assert set(os.listdir(checkpoint / "pytorch_model_fsdp_0")) == {".metadata", "__0_0.distcp"}


def test_fsdp2_loads_the_best_model_into_the_shards_at_the_end(fsdp_runs: Path, tmp_path: Path) -> None:
    from hf_lightning.consolidate import consolidate

    result = dh.result(fsdp_runs / "best")
    best = fsdp_runs / "best" / "out" / "checkpoint-3"
    state = json.loads((fsdp_runs / "best" / "out" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith("checkpoint-3") and result["log_history"][-1]["step"] == 6
    exported = dh.weights(fsdp_runs / "best" / "final")  # save_model() after train(): the loaded best weights
    dh.assert_same_tensors(dh.weights(consolidate(best, tmp_path / "best")), exported, atol=0)
    with pytest.raises(AssertionError, match="weights differ"):
        dh.assert_same_tensors(dh.weights(fsdp_runs / "sharded" / "final"), exported, atol=1e-6)


def test_fsdp2_save_only_model_writes_shards_and_resumes_with_a_fresh_optimizer(fsdp_runs: Path) -> None:
    """transformers refuses save_only_model with sharded state dicts; hf_lightning writes the model shards only."""
    files = set(os.listdir(fsdp_runs / "weights-only" / "out" / "checkpoint-3"))
    assert files == {"pytorch_model_fsdp_0", "trainer_state.json"} | SHARDED_DESCRIPTION
    log = dh.result(fsdp_runs / "weights-only-resumed")["log_history"]
    first = dh.result(fsdp_runs / "weights-only")["log_history"][0]
    resumed = [e for e in log if e["step"] == 4 and "loss" in e][0]
    assert resumed["learning_rate"] == first["learning_rate"]  # the schedule restarts, as in transformers (§1.2)
