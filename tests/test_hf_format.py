"""The pure I/O layer: names, atomic publish, rotation (same decisions as transformers), safe loading, round trips."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from transformers import TrainerState
from transformers.trainer_utils import rotate_checkpoints as transformers_rotate

from hf_lightning import checkpoint_folders, hf_format
from hf_lightning.callbacks.checkpoint import snapshot_state
from hf_lightning.checkpoint_io import EXTRAS_KEY, HFCheckpointIO, load_hf_checkpoint
from hf_lightning.hf_format import CheckpointError


def make_checkpoints(folder, steps, mtimes=None) -> None:
    for i, step in enumerate(steps):
        path = folder / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"x")
        (path / "trainer_state.json").write_text("{}")
        when = 1_000_000 + (mtimes[i] if mtimes else 10 * i)
        os.utime(path, (when, when))


def remaining(folder) -> list[str]:
    return sorted((n for n in os.listdir(folder) if n.startswith("checkpoint-")), key=lambda n: int(n.split("-")[1]))


@pytest.mark.parametrize("steps,mtimes,limit,best", [
    ([2, 4, 6, 8], None, 2, None),
    ([2, 4, 6, 8], None, 2, 4),
    ([2, 4, 6, 8], None, 1, 4),
    ([2, 4, 6, 8], None, 1, 8),
    ([2, 4, 6, 8, 10], None, 3, 2),
    ([5, 10, 12], [0, 20, 10], 1, None),  # by mtime: checkpoint-10 is the newest
    ([5, 10, 12], [0, 0.3, 0.5], 2, None),  # mtimes within 1 s: by step
    ([2, 4], None, 0, None),
    ([2, 4], None, None, None),
])
def test_rotation_decides_like_transformers(tmp_path, steps, mtimes, limit, best):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    make_checkpoints(ours, steps, mtimes)
    make_checkpoints(theirs, steps, mtimes)
    checkpoint_folders.rotate_checkpoints(ours, limit, None if best is None else str(ours / f"checkpoint-{best}"), use_mtime=True)
    transformers_rotate(str(theirs), limit, None if best is None else str(theirs / f"checkpoint-{best}"), use_mtime=True)
    assert remaining(ours) == remaining(theirs)
    assert not [n for n in os.listdir(ours) if n.startswith(".")]


def test_publish_is_a_rename_and_replaces_a_previous_folder(tmp_path):
    tmp = tmp_path / checkpoint_folders.temporary_name(3)
    tmp.mkdir()
    (tmp / "a").write_text("new")
    final = tmp_path / "checkpoint-3"
    final.mkdir()
    (final / "a").write_text("old")
    checkpoint_folders.publish_checkpoint(tmp, final)
    assert (final / "a").read_text() == "new" and not tmp.exists()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3"]


def test_hidden_names_are_invisible_to_transformers_and_cleaned(tmp_path):
    make_checkpoints(tmp_path, [1, 2])
    (tmp_path / ".tmp-checkpoint-3").mkdir()
    (tmp_path / ".old-checkpoint-1").mkdir()
    (tmp_path / "checkpoint-x").mkdir()  # not a step number: ignored, kept
    assert checkpoint_folders.find_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    removed, kept = checkpoint_folders.remove_leftovers(tmp_path, current=checkpoint_folders.new_owner_id())  # legacy names: no owner
    assert sorted(os.path.basename(p) for p in removed) == [".old-checkpoint-1", ".tmp-checkpoint-3"] and kept == []
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2", "checkpoint-x"]
    assert checkpoint_folders.find_last_checkpoint(tmp_path / "absent") is None


def test_last_checkpoint_passes_over_folders_a_killed_transformers_save_left(tmp_path):
    make_checkpoints(tmp_path, [4, 5, 6])
    os.remove(tmp_path / "checkpoint-6" / "trainer_state.json")  # transformers killed mid-save: written last
    assert checkpoint_folders.find_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")
    (tmp_path / "checkpoint-5" / hf_format.INCOMPLETE_MARKER).write_text("")  # transformers' JIT-save sentinel
    assert checkpoint_folders.find_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    with pytest.raises(CheckpointError, match="checkpoint-is-incomplete.txt: transformers marked this checkpoint"):
        hf_format.read_weights(tmp_path / "checkpoint-5")
    os.remove(tmp_path / "checkpoint-4" / "trainer_state.json")
    assert checkpoint_folders.find_last_checkpoint(tmp_path) is None


def test_trainer_state_text_is_transformers_own(tmp_path):
    state = TrainerState(global_step=3, log_history=[{"loss": 1.5, "step": 3}], best_metric=0.5)
    state.save_to_json(str(tmp_path / "theirs.json"))
    hf_format.write_trainer_state(state, tmp_path)
    assert (tmp_path / "trainer_state.json").read_text() == (tmp_path / "theirs.json").read_text()
    assert hf_format.read_trainer_state(tmp_path).log_history == state.log_history
    assert hf_format.read_trainer_state(tmp_path / "nowhere") is None


def test_rng_round_trip_and_checks(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    hf_format.save_torch(hf_format.capture_rng_state(), tmp_path / "rng_state.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    states = hf_format.read_rng_states(tmp_path)
    assert list(states) == ["rng_state.pth"] and set(states["rng_state.pth"]) == {"python", "numpy", "cpu"}
    hf_format.apply_rng_state(states["rng_state.pth"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    hf_format.save_torch({"python": 1}, tmp_path / "rng_state_1.pth")
    with pytest.raises(CheckpointError, match=r"rng_state_1.pth: not an RNG state file, it lacks \['numpy', 'cpu'\]"):
        hf_format.read_rng_states(tmp_path)
    assert hf_format.rng_file_name(1, 0) == "rng_state.pth" and hf_format.rng_file_name(2, 1) == "rng_state_1.pth"


def test_load_torch_refuses_code_and_missing_files(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Payload()}, tmp_path / "scaler.pt")
    with pytest.raises(CheckpointError, match=r"scaler.pt: refused to load.*GLOBAL print was not an allowed global by default.$"):
        hf_format.load_torch(tmp_path / "scaler.pt")
    with pytest.raises(CheckpointError, match="absent.pt: file not found"):
        hf_format.load_torch(tmp_path / "absent.pt")


def test_pytorch_bin_and_its_index_load_weights_only(tmp_path):
    tensors = {"a.weight": torch.randn(2, 2), "b.weight": torch.randn(3)}
    single = tmp_path / "single"
    single.mkdir()
    torch.save(tensors, single / "pytorch_model.bin")
    assert hf_format.read_weights(single).path.endswith("pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    torch.save({"a.weight": tensors["a.weight"]}, sharded / "pytorch_model-00001-of-00002.bin")
    torch.save({"b.weight": tensors["b.weight"]}, sharded / "pytorch_model-00002-of-00002.bin")
    index = {"metadata": {}, "weight_map": {"a.weight": "pytorch_model-00001-of-00002.bin",
                                            "b.weight": "pytorch_model-00002-of-00002.bin"}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    for folder in (single, sharded):
        loaded = hf_format.load_model_state_dict(folder)
        assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    index["weight_map"]["c.weight"] = "pytorch_model-00002-of-00002.bin"
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"the shards lack tensors the index lists: \['c.weight'\]"):
        hf_format.read_weights(sharded)
    (sharded / "pytorch_model.bin.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        hf_format.read_weights(sharded)


def test_scaler_state_round_trips_through_the_checkpoint_io(tmp_path):
    """fp16 needs a GPU here (Lightning turns 16-mixed into bf16 on CPU), so the scaler path is checked at the IO level."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model = torch.nn.Linear(2, 1)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "MixedPrecision": scaler.state_dict(),
        EXTRAS_KEY: {"model": model},
    }
    HFCheckpointIO().save_checkpoint(checkpoint, tmp_path)
    assert hf_format.load_torch(tmp_path / "scaler.pt") == scaler.state_dict()
    loaded = load_hf_checkpoint(str(tmp_path))
    assert loaded["MixedPrecision"] == scaler.state_dict()


def test_snapshot_copies_tensors_and_keeps_sharing():
    weight = torch.randn(4, 4)
    tied = {"embed": weight, "head": weight.detach(), "other": torch.randn(2)}
    optimizer_state = {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(1.0)}}}
    checkpoint = {"state_dict": tied, "optimizer_states": [optimizer_state], EXTRAS_KEY: {"model": "kept"}}
    copy = snapshot_state(checkpoint)
    weight.add_(1.0)
    optimizer_state["state"][0]["exp_avg"].add_(1.0)
    assert not torch.equal(copy["state_dict"]["embed"], weight)
    assert copy["state_dict"]["embed"].untyped_storage().data_ptr() == copy["state_dict"]["head"].untyped_storage().data_ptr()
    assert copy["state_dict"]["other"].untyped_storage().data_ptr() != copy["state_dict"]["embed"].untyped_storage().data_ptr()
    assert torch.equal(copy["optimizer_states"][0]["state"][0]["exp_avg"], torch.zeros(3))
    assert copy[EXTRAS_KEY]["model"] == "kept"
