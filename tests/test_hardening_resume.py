"""Resume checks every file before the first step and names every problem at once (issue 13).

Broken files are generated here from a good checkpoint. Missing optimizer/scheduler/RNG files are
warnings that say what starts fresh, and whatever is intact is still restored.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random

import pytest
import torch
from hardening_helpers import StepCounter, copy_checkpoint, fit_path, tiny_trainer
from tiny import TinyReg

from hf_lightning import hf_format
from hf_lightning.checkpoint_checks import (
    optimizer_fit_problems,
    optimizer_problems,
    rng_problems,
    scheduler_fit_problems,
    scheduler_problems,
    trainer_state_problems,
)
from hf_lightning.hf_format import CheckpointError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    tiny_trainer(root / "run").train()
    return root / "run" / "checkpoint-2"


def state_of(checkpoint) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def write_state(checkpoint, data) -> None:
    (checkpoint / "trainer_state.json").write_text(json.dumps(data))


def resume_error(checkpoint, tmp_path, *, via: str = "facade", model_fn=TinyReg) -> str:
    counter = StepCounter()
    if via == "facade":
        from helpers import build
        from hardening_helpers import ARGS
        from tiny import RegressionDataset

        trainer = build("hl", model_fn, tmp_path / "out", trainer_kwargs=dict(train_dataset=RegressionDataset(32), callbacks=[counter]), **ARGS)
        with pytest.raises(CheckpointError) as raised:
            trainer.train(resume_from_checkpoint=str(checkpoint))
    else:
        with pytest.raises(CheckpointError) as raised:
            fit_path(tmp_path / "out", checkpoint, callbacks=[counter])
    assert counter.steps == 0, "a step ran before the error"
    return str(raised.value)


# ------------------------------------------------------------------------------ trainer_state.json

PATH = "ckpt/trainer_state.json"
GOOD = {"global_step": 2, "log_history": [{"loss": 1.0, "step": 1}], "max_steps": 4, "logging_steps": 1, "eval_steps": 500, "save_steps": 2}


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"global_step": None}, "global_step", "must be an integer"),
        ({"global_step": -3}, "global_step", "must be >= 0"),
        ({"global_step": 10**30}, "global_step", "beyond any training run"),
        ({"global_step": 3}, "global_step", "named checkpoint-2"),
        ({"global_step": 2, "max_steps": 1}, "global_step", "beyond `max_steps` 1"),
        ({"log_history": None}, "log_history", "must be a list"),
        ({"log_history": [1]}, "log_history[0]", "must be an object"),
        ({"epoch": "one"}, "epoch", "finite number"),
        ({"logging_steps": 0}, "logging_steps", "must be > 0"),
        ({"save_steps": -1}, "save_steps", "must be > 0"),
        ({"best_metric": "high"}, "best_metric", "number or null"),
        ({"stateful_callbacks": {"X": 3}}, "stateful_callbacks.X", "TrainerCallback.state()"),
        ({"is_world_process_zero": "yes"}, "is_world_process_zero", "true or false"),
    ],
)
def test_trainer_state_problems_table(change, field, words):
    problems = trainer_state_problems({**GOOD, **change}, PATH, folder_step=2)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{PATH}: `{field}`") and words in problems[0], problems[0]


def test_trainer_state_problems_all_at_once_and_missing_fields():
    assert trainer_state_problems(GOOD, PATH, folder_step=2) == []
    assert trainer_state_problems(GOOD, PATH, folder_step=None) == []  # a folder not named checkpoint-N
    problems = trainer_state_problems({}, PATH, folder_step=2)
    assert [p.split("`")[1] for p in problems] == ["global_step", "log_history"]
    assert "is missing" in problems[0]
    assert trainer_state_problems([1, 2], PATH) == [f"{PATH}: must be a JSON object (transformers' TrainerState), got a list."]
    several = trainer_state_problems({**GOOD, "global_step": -1, "log_history": None, "epoch": None, "x": 1}, PATH)
    assert len(several) == 4


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda s: s.pop("global_step"), "`global_step` is missing"),
        (lambda s: s.update(global_step=-1), "`global_step` must be >= 0"),
        (lambda s: s.update(global_step=99), "`global_step` is 99, but the folder is named checkpoint-2"),
        (lambda s: s.update(global_step=2**60), "beyond any training run"),
        (lambda s: s.update(log_history=None), "`log_history` must be a list"),
        (lambda s: s.clear(), "`global_step` is missing"),
        (lambda s: s.update(logging_steps="1"), "`logging_steps` must be a number"),
        (lambda s: s.update(logging_steps=0), "needs a positive interval"),  # the run logs every logging_steps
        (lambda s: s.update(epoch=[1]), "`epoch` must be a finite number"),
    ],
)
def test_bad_trainer_state_stops_before_the_first_step(good, tmp_path, mutate, words):
    checkpoint = copy_checkpoint(good, tmp_path)
    data = state_of(checkpoint)
    mutate(data)
    write_state(checkpoint, data)
    message = resume_error(checkpoint, tmp_path)
    assert str(checkpoint / "trainer_state.json") in message and words in message, message


def test_binary_trainer_state(good, tmp_path):
    checkpoint = copy_checkpoint(good, tmp_path)
    (checkpoint / "trainer_state.json").write_bytes(b"\x80\x04\x95\xff\x00binary")
    message = resume_error(checkpoint, tmp_path)
    assert str(checkpoint / "trainer_state.json") in message and "not UTF-8 text" in message


def test_every_problem_of_every_file_at_once(good, tmp_path):
    checkpoint = copy_checkpoint(good, tmp_path)
    data = state_of(checkpoint)
    data["global_step"] = 7
    data["log_history"] = None
    write_state(checkpoint, data)
    torch.save({"param_groups": "x"}, checkpoint / "optimizer.pt")
    torch.save([1, 2], checkpoint / "scheduler.pt")
    rng = hf_format.load_torch(checkpoint / "rng_state.pth")
    rng["python"] = (3, (1, 2), None)
    torch.save(rng, checkpoint / "rng_state.pth")
    for via in ("facade", "fit"):
        message = resume_error(checkpoint, tmp_path / via, via=via)
        assert "7 problems" in message, message
        for needle in (
            "trainer_state.json: `global_step` is 7, but the folder is named checkpoint-2",
            "trainer_state.json: `global_step` is 7, beyond `max_steps` 4",
            "trainer_state.json: `log_history` must be a list",
            "optimizer.pt: `state` is missing",
            "optimizer.pt: `param_groups` must be a list",
            "scheduler.pt: must hold an LR scheduler state_dict",
            "rng_state.pth: `python` is not a random.getstate() value",
        ):
            assert needle in message, (needle, message)


# ---------------------------------------------------------------------------- optimizer / scheduler


def test_optimizer_scheduler_rng_problem_tables():
    assert optimizer_problems({"state": {}, "param_groups": [{"params": [0, 1], "lr": 0.1}]}, "o") == []
    assert "`param_groups` is missing" in optimizer_problems({"state": {}}, "o")[0]
    assert "must hold an optimizer state_dict" in optimizer_problems([1], "o")[0]
    assert "`param_groups[0].params`" in optimizer_problems({"state": {}, "param_groups": [{"params": "x"}]}, "o")[0]
    assert "no group lists: [5]" in optimizer_problems({"state": {5: {}}, "param_groups": [{"params": [0]}]}, "o")[0]
    assert scheduler_problems({"last_epoch": 2, "base_lrs": [0.1], "lr_lambdas": [None]}, "s") == []
    assert "`last_epoch` must be an integer" in scheduler_problems({"last_epoch": "2"}, "s")[0]
    good_rng = {"python": random.getstate(), "numpy": __import__("numpy").random.get_state(), "cpu": torch.random.get_rng_state()}
    assert rng_problems(good_rng, "r") == []
    assert "`numpy` is not" in rng_problems({**good_rng, "numpy": (1,)}, "r")[0]
    assert "`cpu` must be" in rng_problems({**good_rng, "cpu": torch.zeros(3)}, "r")[0]
    assert "lacks ['cpu']" in rng_problems({"python": 1, "numpy": 2}, "r")[0]


def test_optimizer_and_scheduler_fit_tables():
    w, b = torch.zeros(4, 4), torch.zeros(4)
    live = [{"params": [w, b]}]
    saved = {"state": {0: {"exp_avg": torch.zeros(4, 4)}, 1: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"params": [0, 1]}]}
    assert optimizer_fit_problems(saved, live, "o") == []
    assert "has 2 groups" in optimizer_fit_problems({**saved, "param_groups": [{"params": [0]}, {"params": [1]}]}, live, "o")[0]
    assert "has 1 parameters, the run's optimizer 2" in optimizer_fit_problems({**saved, "param_groups": [{"params": [0]}]}, live, "o")[0]
    wrong = {"state": {0: {"exp_avg": torch.zeros(6, 6)}}, "param_groups": [{"params": [0, 1]}]}
    assert "shape (6, 6), the model's hidden.weight (4, 4)" in optimizer_fit_problems(wrong, live, "o", {0: "hidden.weight"})[0]
    assert scheduler_fit_problems({"last_epoch": 1}, {"last_epoch": 0, "base_lrs": [1]}, "s", "LambdaLR") == [
        "s: lacks ['base_lrs'], which the run's LambdaLR has (keys found: ['last_epoch'])."
    ]


@pytest.mark.parametrize("via", ["facade", "fit"])
def test_optimizer_of_another_model(tmp_path, via):
    """Param groups are checked against the run's optimizer once it exists, still before the first step."""
    from helpers import build
    from hardening_helpers import ARGS
    from tiny import RegressionDataset

    other = tmp_path / "other"
    build("hl", lambda: TinyReg(dim=4), other, trainer_kwargs=dict(train_dataset=RegressionDataset(32)), **ARGS).train()
    checkpoint = other / "checkpoint-2"
    # keep the model weights of the run's model (dim 6), so only the optimizer disagrees
    torch.manual_seed(0)
    import safetensors.torch

    safetensors.torch.save_file(TinyReg(dim=6).state_dict(), str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError) as raised:
        if via == "facade":
            build("hl", lambda: TinyReg(dim=6), tmp_path / "out", trainer_kwargs=dict(train_dataset=RegressionDataset(32, dim=6)), **ARGS).train(
                resume_from_checkpoint=str(checkpoint)
            )
        else:
            from helpers import LIGHTNING_QUIET, make_args

            import hf_lightning

            args = make_args(tmp_path / "out", **ARGS)
            trainer = hf_lightning.build_trainer(args, **LIGHTNING_QUIET)
            trainer.fit(hf_lightning.HFModule(TinyReg(dim=6), args), datamodule=hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(32, dim=6)), ckpt_path=str(checkpoint))
    message = str(raised.value)
    assert str(checkpoint / "optimizer.pt") in message and "shape (4, 4), the model's hidden.weight (6, 6)" in message, message


def test_damaged_file_is_not_reported_as_a_security_refusal(good, tmp_path):
    checkpoint = copy_checkpoint(good, tmp_path)
    data = (checkpoint / "optimizer.pt").read_bytes()
    (checkpoint / "optimizer.pt").write_bytes(data[: len(data) // 2])
    message = resume_error(checkpoint, tmp_path)
    assert str(checkpoint / "optimizer.pt") in message and "damaged" in message and "refused" not in message


# --------------------------------------------------------------------- missing parts start fresh


@pytest.mark.parametrize("missing", [["scheduler.pt"], ["optimizer.pt"], ["rng_state.pth"], ["optimizer.pt", "scheduler.pt", "rng_state.pth"]])
def test_missing_parts_warn_and_the_rest_is_restored(good, tmp_path, caplog, missing):
    checkpoint = copy_checkpoint(good, tmp_path)
    saved_optimizer = hf_format.load_torch(checkpoint / "optimizer.pt")
    saved_scheduler = hf_format.load_torch(checkpoint / "scheduler.pt")
    for name in missing:
        os.remove(checkpoint / name)
    seen = {}

    from transformers import TrainerCallback

    class Peek(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            seen["optimizer"] = copy.deepcopy(optimizer.state_dict())  # training updates the tensors in place
            seen["scheduler"] = copy.deepcopy(lr_scheduler.state_dict())

    trainer = tiny_trainer(tmp_path / "out", callbacks=[Peek()])
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 4
    warnings = [r.getMessage() for r in caplog.records if "without" in r.getMessage() and str(checkpoint) in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    for name in missing:
        assert name in warnings[0]
    assert ("optimizer starts fresh" in warnings[0]) == ("optimizer.pt" in missing)
    assert ("schedule restarts" in warnings[0]) == ("scheduler.pt" in missing)
    assert ("random generators" in warnings[0]) == ("rng_state.pth" in missing)
    if "optimizer.pt" not in missing:  # intact: restored, even without scheduler.pt
        for key, value in saved_optimizer["state"].items():
            assert torch.equal(seen["optimizer"]["state"][key]["exp_avg"], value["exp_avg"])
    else:
        assert seen["optimizer"]["state"] == {}
    if "scheduler.pt" not in missing:
        assert seen["scheduler"]["last_epoch"] == saved_scheduler["last_epoch"] == 2
    else:
        assert seen["scheduler"]["last_epoch"] == 0


def test_gone_best_checkpoint_is_a_warning(good, tmp_path, caplog):
    checkpoint = copy_checkpoint(good, tmp_path)
    data = state_of(checkpoint)
    data["best_model_checkpoint"] = str(tmp_path / "gone" / "checkpoint-1")
    data["best_global_step"], data["best_metric"] = 1, 0.5
    write_state(checkpoint, data)
    trainer = tiny_trainer(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    messages = [r.getMessage() for r in caplog.records if "no longer exists" in r.getMessage()]
    assert len(messages) == 1 and str(tmp_path / "gone" / "checkpoint-1") in messages[0] and "load_best_model_at_end" in messages[0]
