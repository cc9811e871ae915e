"""Override points under DDP on 2 CPU processes: the same subclass body on transformers.Trainer
(torchrun) and on hf_lightning.Trainer (Lightning's launcher), compared rank by rank.

One launch per framework runs every body of ``overrides.py`` listed below on the ``reg`` case
(gradient accumulation with a short last group, evaluation and checkpoints every 2 steps).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dist_helpers as dh
from helpers import assert_same_history

pytestmark = [pytest.mark.distributed]

BODIES = (
    "CustomLoss", "OwnTrainingStep", "SuperTrainingStep", "CustomPredictionStep", "QuestionAnsweringStyleEvaluate",
    "CustomEvaluationLoop", "CustomLog", "CustomOptimizer", "CustomSaveModel", "CustomLoaders", "ConstantFlos",
    "CustomPrepareInputs", "CustomNumItems", "CustomClipGradNorm", "CustomLearningRate", "CustomSave", "CustomSaveCheckpoint",
    "CopiedLogSaveEvaluate", "WrappedLogSaveEvaluate",
)


@pytest.fixture(scope="module")
def override_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-overrides")
    specs = [f"reg:subclass={body}:name={body}" for body in BODIES]
    hf = ["--framework", "hf", "--out", str(root / "hf")]
    hl = ["--framework", "hl", "--devices", "2", "--out", str(root / "hl")]
    for spec in specs:
        hf += ["--case", spec]
        hl += ["--case", spec]
    dh.torchrun("dist_run.py", *hf, timeout=240)
    dh.python("dist_run.py", *hl, timeout=240)
    return root


def _calls(folder: Path, rank: int) -> list:
    return json.loads((folder / f"calls_rank{rank}.json").read_text())


@pytest.mark.parametrize("body", BODIES)
def test_ddp_subclass_body_matches_transformers(override_runs: Path, body: str) -> None:
    hf_folder, hl_folder = override_runs / "hf" / body, override_runs / "hl" / body
    hf, hl = dh.result(hf_folder), dh.result(hl_folder)
    assert_same_history(hf["log_history"], hl["log_history"], rel=1e-5)
    assert_same_history([hf["evaluate"]], [hl["evaluate"]], rel=1e-5)
    assert_same_history([hf["predict"]["metrics"]], [hl["predict"]["metrics"]], rel=1e-5)
    assert hl["predict"]["shape"] == hf["predict"]["shape"]
    assert abs(hl["predict"]["sum"] - hf["predict"]["sum"]) <= 1e-6 * max(1.0, abs(hf["predict"]["sum"]))
    dh.assert_same_tensors(dh.weights(hf_folder / "final"), dh.weights(hl_folder / "final"), atol=1e-6)
    assert hl["checkpoints"] == hf["checkpoints"]
    for rank in (0, 1):
        expected = _calls(hf_folder, rank)
        assert expected, f"{body} was not called on rank {rank}"
        assert _calls(hl_folder, rank) == expected, f"rank {rank}"


def test_ddp_custom_save_model_runs_on_every_rank_for_every_checkpoint(override_runs: Path) -> None:
    folder = override_runs / "hl" / "CustomSaveModel"
    for rank in (0, 1):
        assert ["save_model", True] in _calls(folder, rank)
    checkpoints = [d for d in os.listdir(folder / "out") if d.startswith("checkpoint-")]
    assert checkpoints and all((folder / "out" / d / "custom_save_model.txt").exists() for d in checkpoints)
