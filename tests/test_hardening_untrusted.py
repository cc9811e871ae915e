"""No code from any file of a checkpoint runs, on any path that reads one (issue 13).

Each test plants a payload (a pickle whose unpickling runs ``touch <marker>``) in one file that a
path reads, then runs the path: the run stops with an error naming the file, and the marker never
appears. Paths: resume (plain layout, FSDP2 full and sharded layouts, Lightning ``.ckpt`` files),
best-model loading at the end of training, and ``hf-lightning consolidate``. The complementary
case (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin``) is in
``test_checkpoint_safety.py``.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from hardening_helpers import (
    StepCounter,
    copy_checkpoint,
    fit_path,
    payload_pickle,
    payload_torch,
    repoint_dcp_entry,
    tiny_trainer,
)
from tiny import TinyReg

from hf_lightning import consolidate, distributed, hf_format, safe_load
from hf_lightning.hf_format import CheckpointError

FSDP_KW = dict(devices=1, accelerator="cpu")


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    tiny_trainer(root / "run").train()
    return root / "run" / "checkpoint-2"


def _fsdp_checkpoint(tmp_path_factory, kind: str):
    root = tmp_path_factory.mktemp(f"fsdp-{kind}")
    tiny_trainer(root / "run", lightning=dict(strategy=distributed.FSDP2Strategy(kind), **FSDP_KW)).train()
    return root / "run" / "checkpoint-2"


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory):
    return _fsdp_checkpoint(tmp_path_factory, "sharded")


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    return _fsdp_checkpoint(tmp_path_factory, "full")


def assert_refused(error: BaseException, file, marker) -> None:
    assert str(file) in str(error), str(error)
    assert not os.path.exists(marker), "the payload ran"


def resume_refused(checkpoint, tmp_path, *, via: str = "facade", lightning: dict | None = None) -> BaseException:
    counter = StepCounter()
    if via == "facade":
        trainer = tiny_trainer(tmp_path / "out", callbacks=[counter], lightning=lightning)
        with pytest.raises(CheckpointError) as raised:
            trainer.train(resume_from_checkpoint=str(checkpoint))
    else:
        with pytest.raises(CheckpointError) as raised:
            fit_path(tmp_path / "out", checkpoint, callbacks=[counter])
    assert counter.steps == 0
    return raised.value


# ----------------------------------------------------------------------------------- plain layout


@pytest.mark.parametrize("via", ["facade", "fit"])
def test_payload_in_scaler(plain_checkpoint, tmp_path, via):
    checkpoint, marker = copy_checkpoint(plain_checkpoint, tmp_path), tmp_path / "pwned"
    (checkpoint / "scaler.pt").write_bytes(payload_torch(marker, {"scale": 1.0}))
    error = resume_refused(checkpoint, tmp_path, via=via)
    assert_refused(error, checkpoint / "scaler.pt", marker)
    assert "weights_only" in str(error) and "posix.system" in str(error)


def test_payload_in_pytorch_model_bin(plain_checkpoint, tmp_path):
    """Without model.safetensors, the weights come from pytorch_model.bin: loaded weights-only."""
    checkpoint, marker = copy_checkpoint(plain_checkpoint, tmp_path), tmp_path / "pwned"
    weights = hf_format.load_model_state_dict(checkpoint)
    os.remove(checkpoint / "model.safetensors")
    (checkpoint / "pytorch_model.bin").write_bytes(payload_torch(marker, weights))
    assert_refused(resume_refused(checkpoint, tmp_path), checkpoint / "pytorch_model.bin", marker)


def test_pickle_posing_as_safetensors_and_trainer_state(plain_checkpoint, tmp_path):
    """Both are read by parsers that cannot run code; the pickles are named as unreadable, together."""
    checkpoint, marker = copy_checkpoint(plain_checkpoint, tmp_path), tmp_path / "pwned"
    (checkpoint / "model.safetensors").write_bytes(payload_pickle(marker))
    (checkpoint / "trainer_state.json").write_bytes(payload_pickle(marker))
    error = resume_refused(checkpoint, tmp_path)
    assert_refused(error, checkpoint / "model.safetensors", marker)
    assert str(checkpoint / "trainer_state.json") in str(error) and "2 problems" in str(error)


def test_lightning_ckpt_file_is_loaded_weights_only(tmp_path):
    """A plain Lightning .ckpt given to fit(ckpt_path=...) goes through torch.load(weights_only=True)."""
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(payload_torch(marker, {"state_dict": {}}))
    with pytest.raises(CheckpointError) as raised:
        fit_path(tmp_path / "out", ckpt)
    assert_refused(raised.value, ckpt, marker)


def test_payload_in_best_checkpoint_at_load_best_model_at_end(tmp_path):
    """load_best_model_at_end reads the best checkpoint's weights weights-only: a planted file is refused."""
    from transformers import TrainerCallback

    marker = tmp_path / "pwned"

    class Plant(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = tmp_path / "out" / f"checkpoint-{state.global_step}"
            weights = hf_format.load_model_state_dict(folder)
            os.remove(folder / "model.safetensors")
            (folder / "pytorch_model.bin").write_bytes(payload_torch(marker, weights))

    accs = iter([0.9, 0.1])
    from tiny import RegressionDataset

    trainer = tiny_trainer(
        tmp_path / "out", callbacks=[Plant()], max_steps=4, save_steps=2, eval_strategy="steps", eval_steps=2,
        metric_for_best_model="acc", load_best_model_at_end=True,
        lightning=dict(eval_dataset=RegressionDataset(8, seed=1), compute_metrics=lambda p: {"acc": next(accs)}),
    )
    with pytest.raises(CheckpointError) as raised:
        trainer.train()
    assert_refused(raised.value, tmp_path / "out" / "checkpoint-2" / "pytorch_model.bin", marker)


# ------------------------------------------------------------------------------- FSDP2 layouts


def test_payload_in_sharded_model_metadata(sharded_checkpoint, tmp_path):
    """pytorch_model_fsdp_0/.metadata: DCP would unpickle it freely; ours allows only DCP's own classes."""
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    metadata = checkpoint / distributed.FSDP_MODEL_DIR / ".metadata"
    metadata.write_bytes(payload_pickle(marker))
    error = resume_refused(checkpoint, tmp_path, lightning=dict(strategy=distributed.FSDP2Strategy("sharded"), **FSDP_KW))
    assert_refused(error, metadata, marker)
    assert "posix.system" in str(error)


def test_payload_in_sharded_optimizer_metadata(sharded_checkpoint, tmp_path):
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    metadata = checkpoint / distributed.FSDP_OPTIMIZER_DIR / ".metadata"
    metadata.write_bytes(payload_pickle(marker))
    error = resume_refused(checkpoint, tmp_path, lightning=dict(strategy=distributed.FSDP2Strategy("sharded"), **FSDP_KW))
    assert_refused(error, metadata, marker)


def test_payload_in_a_sharded_optimizer_entry(sharded_checkpoint, tmp_path):
    """A non-tensor entry (a param group's lr), which DCP loads with weights_only=False."""
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    folder = checkpoint / distributed.FSDP_OPTIMIZER_DIR
    repoint_dcp_entry(folder, "optimizer.param_groups.0.lr", payload_torch(marker))
    error = resume_refused(checkpoint, tmp_path, lightning=dict(strategy=distributed.FSDP2Strategy("sharded"), **FSDP_KW))
    assert_refused(error, folder, marker)
    assert "optimizer.param_groups.0.lr" in str(error) and "weights_only" in str(error)


def test_payload_in_a_sharded_tensor_entry(sharded_checkpoint, tmp_path):
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    folder = checkpoint / distributed.FSDP_MODEL_DIR
    repoint_dcp_entry(folder, "model.linear.weight", payload_torch(marker))
    error = resume_refused(checkpoint, tmp_path, lightning=dict(strategy=distributed.FSDP2Strategy("sharded"), **FSDP_KW))
    assert_refused(error, folder, marker)


@pytest.mark.parametrize("name", ["pytorch_model_fsdp.bin", "optimizer.bin", "scheduler.pt", "rng_state.pth"])
def test_payload_in_full_fsdp_layout(full_checkpoint, tmp_path, name):
    checkpoint, marker = copy_checkpoint(full_checkpoint, tmp_path), tmp_path / "pwned"
    (checkpoint / name).write_bytes(payload_torch(marker, hf_format.load_torch(checkpoint / name)))
    error = resume_refused(checkpoint, tmp_path, lightning=dict(strategy=distributed.FSDP2Strategy("full"), **FSDP_KW))
    assert_refused(error, checkpoint / name, marker)


def test_sharded_resume_still_works(sharded_checkpoint, tmp_path):
    """The allow-listed reader reads what DCP writes (and what accelerate's sharded layout holds)."""
    checkpoint = copy_checkpoint(sharded_checkpoint, tmp_path)
    trainer = tiny_trainer(tmp_path / "out", lightning=dict(strategy=distributed.FSDP2Strategy("sharded"), **FSDP_KW))
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 4


# -------------------------------------------------------------------------------- consolidate


def test_consolidate_refuses_planted_metadata(sharded_checkpoint, tmp_path, capsys):
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    metadata = checkpoint / distributed.FSDP_MODEL_DIR / ".metadata"
    metadata.write_bytes(payload_pickle(marker))
    assert consolidate.main([str(checkpoint), "-o", str(tmp_path / "export")]) == 1
    message = capsys.readouterr().err
    assert str(metadata) in message and "posix.system" in message
    assert not marker.exists()


def test_consolidate_refuses_planted_tensor_entry(sharded_checkpoint, tmp_path):
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    folder = checkpoint / distributed.FSDP_MODEL_DIR
    repoint_dcp_entry(folder, "model.hidden.weight", payload_torch(marker))
    with pytest.raises(CheckpointError) as raised:
        consolidate.consolidate(checkpoint, tmp_path / "export")
    assert_refused(raised.value, folder, marker)


def test_consolidate_never_runs_code_named_by_config(sharded_checkpoint, tmp_path):
    """config.json is JSON; an `auto_map` pointing at a Python file in the checkpoint is not followed."""
    checkpoint, marker = copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "pwned"
    (checkpoint / "configuration_evil.py").write_text(f"import os\nos.system('touch {marker}')\n")
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "evil", "architectures": ["Evil"], "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    with pytest.raises(CheckpointError) as raised:
        consolidate.consolidate(checkpoint, tmp_path / "export")
    assert_refused(raised.value, checkpoint / "config.json", marker)


def test_consolidate_still_works(sharded_checkpoint, tmp_path):
    target = consolidate.consolidate(copy_checkpoint(sharded_checkpoint, tmp_path), tmp_path / "export")
    weights = hf_format.load_model_state_dict(target)
    assert sorted(weights) == sorted(TinyReg().state_dict())


# ------------------------------------------------------------------------------- safe_load units


def test_metadata_unpickler_reads_real_dcp_metadata_only(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": {"w": torch.ones(2, 3, dtype=torch.bfloat16)}, "extra": {"lr": 0.1, "betas": (0.9, 0.99)}}, checkpoint_id=str(tmp_path / "ok"), no_dist=True)
    metadata = safe_load.read_dcp_metadata(tmp_path / "ok")
    assert {"model.w", "extra.lr", "extra.betas"} <= set(metadata.state_dict_metadata)
    state = {"model": {"w": torch.zeros(2, 3, dtype=torch.bfloat16)}, "extra": {"lr": 0.0, "betas": (0.0, 0.0)}}
    safe_load.dcp_load(state, tmp_path / "ok")
    assert torch.equal(state["model"]["w"], torch.ones(2, 3, dtype=torch.bfloat16)) and state["extra"]["lr"] == 0.1

    evil = tmp_path / "evil" / ".metadata"
    evil.parent.mkdir()
    marker = tmp_path / "pwned"
    evil.write_bytes(pickle.dumps(metadata)[:-1] + b"")  # truncated: unreadable, named
    with pytest.raises(CheckpointError, match="not a readable"):
        safe_load.read_dcp_metadata(evil.parent)
    evil.write_bytes(payload_pickle(marker))
    with pytest.raises(CheckpointError, match="posix.system"):
        safe_load.read_dcp_metadata(evil.parent)
    assert not marker.exists()


def test_the_payload_is_real(tmp_path):
    """Loaded the way DCP does (plain pickle, torch.load(weights_only=False)), the payloads run."""
    marker = tmp_path / "pwned"
    pickle.loads(payload_pickle(marker))
    assert marker.exists()
    marker.unlink()
    import io

    torch.load(io.BytesIO(payload_torch(marker)), weights_only=False)
    assert marker.exists()


def test_payload_in_adapter_and_sharded_bin_weights(tmp_path):
    """The other weight files read_weights may pick: a PEFT adapter .bin, and .bin shards behind an index."""
    marker = tmp_path / "pwned"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.bin").write_bytes(payload_torch(marker))
    with pytest.raises(CheckpointError) as raised:
        hf_format.read_weights(adapter)
    assert_refused(raised.value, adapter / "adapter_model.bin", marker)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model-00001-of-00001.bin"}}))
    (sharded / "pytorch_model-00001-of-00001.bin").write_bytes(payload_torch(marker))
    with pytest.raises(CheckpointError) as raised:
        hf_format.read_weights(sharded)
    assert_refused(raised.value, sharded / "pytorch_model-00001-of-00001.bin", marker)
