"""Lightning's FSDPStrategy (FSDP1, CUDA only) and FSDP2 on GPUs, in bf16, against transformers' FSDP.

Skipped without CUDA (conftest). Runs on 1 or 2 GPUs (``torchrun --nproc_per_node min(2, #GPUs)``).
transformers.Trainer gets the same FSDP setting through ``fsdp``/``fsdp_config`` (accelerate's plugin).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import dist_helpers as dh
from helpers import assert_same_history

pytestmark = [pytest.mark.gpu, pytest.mark.distributed]

KINDS = ("fsdp_full", "fsdp_sharded", "fsdp2_full", "fsdp2_sharded")
# TrainingArguments' own fsdp/fsdp_config, the same for both frameworks (presets of tests/scripts/dist_run.py):
# FSDP1 shard_grad_op + sharded + activation checkpointing + backward prefetch; FSDP2 with CPU offload (on CPU
# the offload policy moves nothing, so only here is it really exercised).
ARG_PRESETS = ("v1_sharded", "offload")


def _nproc() -> int:
    return max(1, min(2, torch.cuda.device_count()))


def _rng_files() -> set[str]:
    n = _nproc()
    return {"rng_state.pth"} if n == 1 else {f"rng_state_{r}.pth" for r in range(n)}


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu")
    n = str(_nproc())
    hl = ["--framework", "hl", "--device", "cuda", "--devices", n, "--out", str(out / "hl")]
    hf = ["--framework", "hf", "--device", "cuda", "--out", str(out / "hf")]
    for kind in KINDS:
        hl += ["--case", f"llama:strategy={kind}:bf16=true:name={kind}"]
        hl += ["--case", f"llama:strategy={kind}:bf16=true:resume=3:name={kind}-resumed:source={out / 'hl' / kind / 'out'}"]
        hf += ["--case", f"llama:strategy={kind}:bf16=true:name={kind}"]
        # transformers resumes hf_lightning's checkpoint under the same FSDP setting
        hf += ["--case", f"llama:strategy={kind}:bf16=true:resume=3:name={kind}-from-hl:source={out / 'hl' / kind / 'out'}"]
    for preset in ARG_PRESETS:
        hl += ["--case", f"llama:fsdp_args={preset}:bf16=true:name=args-{preset}"]
        hf += ["--case", f"llama:fsdp_args={preset}:bf16=true:name=args-{preset}"]
    dh.torchrun("dist_run.py", *hl, nproc=_nproc(), timeout=600)
    dh.torchrun("dist_run.py", *hf, nproc=_nproc(), timeout=600)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_bf16_matches_transformers_fsdp(gpu_runs: Path, kind: str) -> None:
    assert_same_history(dh.result(gpu_runs / "hf" / kind)["log_history"], dh.result(gpu_runs / "hl" / kind)["log_history"], rel=2e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_checkpoint_layout(gpu_runs: Path, kind: str) -> None:
    ours = set(os.listdir(gpu_runs / "hl" / kind / "out" / "checkpoint-3"))
    theirs = set(os.listdir(gpu_runs / "hf" / kind / "out" / "checkpoint-3"))
    if kind.endswith("sharded"):
        # ours also describe the model (config, tokenizer, training_args.bin) so they can be consolidated alone
        assert theirs <= ours and ours - theirs <= {"config.json", "generation_config.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json"}
        assert {"pytorch_model_fsdp_0", "optimizer_0", "scheduler.pt", "trainer_state.json"} | _rng_files() <= ours
    else:
        assert ours == theirs
        assert {"model.safetensors", "pytorch_model_fsdp.bin", "optimizer.bin"} | _rng_files() <= ours


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_resume_reproduces_the_run(gpu_runs: Path, kind: str) -> None:
    full, resumed = gpu_runs / "hl" / kind, gpu_runs / "hl" / f"{kind}-resumed"
    dh.assert_same_tensors(dh.weights(full / "final"), dh.weights(resumed / "final"), atol=1e-2)
    after = [e for e in dh.result(full)["log_history"] if e["step"] > 3 and "train_runtime" not in e]
    assert_same_history(after, [e for e in dh.result(resumed)["log_history"] if e["step"] > 3 and "train_runtime" not in e], rel=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_resumes_hf_lightning_fsdp_checkpoint(gpu_runs: Path, kind: str) -> None:
    ours = dh.result(gpu_runs / "hl" / kind)["log_history"]
    theirs = dh.result(gpu_runs / "hf" / f"{kind}-from-hl")["log_history"]
    after = [e for e in ours if e["step"] > 3 and "train_runtime" not in e]
    assert_same_history(after, [e for e in theirs if e["step"] > 3 and "train_runtime" not in e], rel=2e-2)


@pytest.mark.parametrize("preset", ARG_PRESETS)
def test_fsdp_arguments_match_transformers_fsdp(gpu_runs: Path, preset: str) -> None:
    """The same `fsdp`/`fsdp_config` in both frameworks: transformers really shards here (accelerate's plugin)."""
    hf, hl = dh.result(gpu_runs / "hf" / f"args-{preset}"), dh.result(gpu_runs / "hl" / f"args-{preset}")
    assert hf["fsdp_enabled"] is True and hl["strategy"] == ("FSDPStrategy" if preset.startswith("v1") else "FSDP2Strategy")
    assert_same_history(hf["log_history"], hl["log_history"], rel=2e-2)
    # activation checkpointing of the same blocks (FSDP1 names carry the wrappers' `_fsdp_wrapped_module`)
    assert _unwrapped(hl["sharding"]["checkpointed"]) == _unwrapped(hf["sharding"]["checkpointed"])
    assert bool(hl["sharding"]["checkpointed"]) is (preset == "v1_sharded")
    for name in ("checkpoint-3", "checkpoint-6"):
        ours, theirs = set(hl["checkpoints"][name]), set(hf["checkpoints"][name])
        assert theirs <= ours and ours - theirs <= {"config.json", "generation_config.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json"}


def _unwrapped(names: list[str]) -> list[str]:
    import re

    return sorted(re.sub(r"(^|\.)_fsdp_wrapped_module", "", name).lstrip(".") for name in names)
