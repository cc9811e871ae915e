"""Resume from ``checkpoint-N`` folders (golden fact 12), the three ways in, and across frameworks.

One uninterrupted transformers run and one hf_lightning run (TinyReg with dropout, GA 2, a checkpoint
at every step) serve every test here: a resumed run must end bitwise where the uninterrupted one
ends, with the same losses, whichever framework wrote the checkpoint and whichever resumes it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from checkpoint_helpers import assert_bitwise, sorted_entries
from helpers import LIGHTNING_QUIET, assert_same_history, build, make_args
from tiny import RegressionDataset, TinyReg
from transformers import EarlyStoppingCallback

import hf_lightning
from hf_lightning import hf_format

ARGS = dict(
    per_device_train_batch_size=8,
    gradient_accumulation_steps=2,
    num_train_epochs=3,  # 4 updates per epoch, 12 in all
    logging_steps=1,
    eval_strategy="steps",
    eval_steps=4,
    save_strategy="steps",
    save_steps=1,
    learning_rate=1e-2,
    warmup_steps=2,
)


def model_fn() -> TinyReg:
    return TinyReg(dropout=0.2)


def data() -> dict:
    return dict(train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs with a checkpoint at every step: ``{"hf": trainer, "hl": trainer, "root": path}``."""
    root = tmp_path_factory.mktemp("resume")
    out = {"root": root}
    for framework in ("hf", "hl"):
        trainer = build(framework, model_fn, root / framework, trainer_kwargs=data(), **ARGS)
        trainer.train()
        out[framework] = trainer
    return out


def resume(framework: str, checkpoint, output_dir, **overrides):
    """A fresh trainer (other initial weights) resumed from ``checkpoint`` by ``train(resume_from_checkpoint=...)``."""
    trainer = build(framework, model_fn, output_dir, model_seed=123, trainer_kwargs=data(), **{**ARGS, **overrides})
    trainer.train(resume_from_checkpoint=str(checkpoint) if not isinstance(checkpoint, bool) else checkpoint)
    return trainer


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_continues(uninterrupted, resumed) -> None:
    """Same weights bitwise and the same log_history, except the summary's per-call train_loss."""
    assert_bitwise(uninterrupted.model, resumed.model)
    expected, actual = uninterrupted.state.log_history, resumed.state.log_history
    assert_same_history(sorted_entries(expected[:-1]), sorted_entries(actual[:-1]), rel=0)
    assert actual[-1]["step"] == expected[-1]["step"] and actual[-1]["epoch"] == expected[-1]["epoch"]


def copy_checkpoints(source, dest, up_to: int) -> None:
    """``dest`` holds ``checkpoint-1 .. checkpoint-{up_to}`` of ``source`` (a run killed after step up_to)."""
    os.makedirs(dest, exist_ok=True)
    for step in range(1, up_to + 1):
        shutil.copytree(os.path.join(source, f"checkpoint-{step}"), os.path.join(dest, f"checkpoint-{step}"))


# ------------------------------------------------------------------------------------------------


def test_uninterrupted_runs_agree(runs):
    assert_same_history(runs["hf"].state.log_history, runs["hl"].state.log_history, rel=0)
    assert_bitwise(runs["hf"].model, runs["hl"].model)


@pytest.mark.parametrize("step", [5, 4], ids=["mid-epoch", "epoch-boundary"])
def test_facade_resume_reproduces_uninterrupted_run(runs, tmp_path, step):
    resumed = resume("hl", runs["root"] / "hl" / f"checkpoint-{step}", tmp_path)
    assert_continues(runs["hl"], resumed)
    # The summary averages only the steps run in this call, like transformers (fact 12).
    reference = resume("hf", runs["root"] / "hf" / f"checkpoint-{step}", tmp_path / "hf")
    assert resumed.state.log_history[-1]["train_loss"] == reference.state.log_history[-1]["train_loss"]
    assert resumed.state.log_history[-1]["train_loss"] != runs["hl"].state.log_history[-1]["train_loss"]


def _lightning_parts(output_dir, **overrides):
    torch.manual_seed(123)
    args = make_args(output_dir, **{**ARGS, **overrides})
    module = hf_lightning.HFModule(model_fn(), args)
    datamodule = hf_lightning.HFDataModule(args, **data())
    trainer = hf_lightning.build_trainer(args, **LIGHTNING_QUIET)
    return trainer, module, datamodule


def _flow(trainer):
    return next(cb for cb in trainer.callbacks if isinstance(cb, hf_lightning.HFFlowCallback))


def test_lightning_fit_ckpt_path_folder(runs, tmp_path):
    trainer, module, datamodule = _lightning_parts(tmp_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(runs["root"] / "hl" / "checkpoint-7"))
    assert_bitwise(runs["hl"].model, module.model)
    assert_same_history(sorted_entries(runs["hl"].state.log_history[:-1]), sorted_entries(_flow(trainer).state.log_history[:-1]), rel=0)
    assert trainer.global_step == 12 and trainer.current_epoch == 3


def test_lightning_fit_ckpt_path_last(runs, tmp_path):
    copy_checkpoints(runs["root"] / "hl", tmp_path, up_to=6)
    trainer, module, datamodule = _lightning_parts(tmp_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path="last")
    assert_bitwise(runs["hl"].model, module.model)
    history = _flow(trainer).state.log_history
    assert_same_history(sorted_entries(runs["hl"].state.log_history[:-1]), sorted_entries(history[:-1]), rel=0)
    # Resumed from checkpoint-6, the highest N: the summary counts the 6 steps run here.
    assert _flow(trainer).last_train_output.metrics["train_steps_per_second"] > 0
    assert sorted(os.listdir(tmp_path), key=lambda n: int(n.split("-")[1])) == [f"checkpoint-{i}" for i in range(1, 13)]


def test_facade_resume_true_takes_highest_step(runs, tmp_path):
    copy_checkpoints(runs["root"] / "hl", tmp_path, up_to=9)
    os.utime(tmp_path / "checkpoint-2")  # the newest mtime must not matter, only N (§1.1)
    resumed = resume("hl", True, tmp_path)
    assert_continues(runs["hl"], resumed)
    reference = resume("hf", runs["root"] / "hf" / "checkpoint-9", tmp_path / "hf")
    assert resumed.state.log_history[-1]["train_loss"] == reference.state.log_history[-1]["train_loss"]


def test_resume_true_without_checkpoint_fails_like_transformers(tmp_path):
    trainer = build("hl", model_fn, tmp_path, trainer_kwargs=data(), **ARGS)
    with pytest.raises(ValueError, match="No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)


# ------------------------------------------------------------------------------------ interop


def test_transformers_resumes_from_hf_lightning_checkpoint(runs, tmp_path):
    resumed = resume("hf", runs["root"] / "hl" / "checkpoint-5", tmp_path)
    assert_continues(runs["hf"], resumed)


def test_hf_lightning_resumes_from_transformers_checkpoint(runs, tmp_path):
    resumed = resume("hl", runs["root"] / "hf" / "checkpoint-6", tmp_path)
    assert_continues(runs["hf"], resumed)


# ---------------------------------------------------------------------------- restored pieces


def test_restored_optimizer_scheduler_and_state(runs, tmp_path):
    """Right after the restore: optimizer and scheduler states equal the files; the state is the checkpoint's."""
    source = runs["root"] / "hl" / "checkpoint-5"
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["optimizer"] = copy.deepcopy(trainer.optimizers[0].state_dict())
            seen["scheduler"] = trainer.lr_scheduler_configs[0].scheduler.state_dict()
            seen["state"] = json.loads(hf_format.trainer_state_json(_flow(trainer).state))

    # Other logging/eval/save intervals than the checkpoint's: transformers keeps the checkpoint's (§1.6).
    trainer, module, datamodule = _lightning_parts(tmp_path, logging_steps=3, eval_steps=5, save_steps=2)
    trainer.callbacks.append(Probe())
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(source))
    optimizer = hf_format.load_torch(source / "optimizer.pt")
    scheduler = hf_format.load_torch(source / "scheduler.pt")
    assert seen["optimizer"]["param_groups"] == optimizer["param_groups"]
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            assert torch.equal(seen["optimizer"]["state"][index][key], value)
    assert seen["scheduler"]["last_epoch"] == scheduler["last_epoch"] == 5
    on_disk = json.loads((source / "trainer_state.json").read_text())
    for key in ("global_step", "epoch", "log_history", "logging_steps", "eval_steps", "save_steps", "total_flos"):
        assert seen["state"][key] == on_disk[key], key
    # log_history continues; logs every step, evals every 4 and saves every step, as in the checkpoint.
    history = _flow(trainer).state.log_history
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 13))
    assert [e["step"] for e in history if "eval_loss" in e] == [4, 8, 12]
    assert sorted(int(n.split("-")[1]) for n in os.listdir(tmp_path) if n.startswith("checkpoint-")) == list(range(6, 13))


def test_ignore_data_skip_matches_transformers(runs, tmp_path):
    hl = resume("hl", runs["root"] / "hl" / "checkpoint-5", tmp_path / "hl", ignore_data_skip=True)
    hf = resume("hf", runs["root"] / "hf" / "checkpoint-5", tmp_path / "hf", ignore_data_skip=True)
    assert_bitwise(hf.model, hl.model)
    assert_same_history(hf.state.log_history, hl.state.log_history, rel=0)
    assert not all(torch.equal(a, b) for a, b in zip(hl.model.state_dict().values(), runs["hl"].model.state_dict().values()))


def test_save_only_model_checkpoint_restarts_optimizer_and_schedule(tmp_path):
    """Weights and state load; optimizer and scheduler start fresh, so the lr restarts at λ(0) (§1.2)."""
    args = dict(per_device_train_batch_size=8, max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1,
                save_only_model=True, learning_rate=1e-2)
    first = build("hl", model_fn, tmp_path / "first", trainer_kwargs=data(), **args)
    first.train()
    checkpoint = tmp_path / "first" / "checkpoint-2"
    assert not (checkpoint / "optimizer.pt").exists()
    results = {}
    for framework in ("hf", "hl"):
        trainer = build(framework, model_fn, tmp_path / framework, model_seed=123, trainer_kwargs=data(), **args)
        trainer.train(resume_from_checkpoint=str(checkpoint))
        results[framework] = trainer
    assert_same_history(results["hf"].state.log_history, results["hl"].state.log_history, rel=0)
    assert_bitwise(results["hf"].model, results["hl"].model)
    lrs = [e["learning_rate"] for e in results["hl"].state.log_history if "loss" in e]
    assert lrs[2] == 1e-2  # step 3 runs with λ(0): a fresh schedule


def test_callback_states_restored_when_asked(tmp_path):
    """restore_callback_states_from_checkpoint rebuilds EarlyStoppingCallback from the checkpoint, like transformers."""
    accs = [0.5, 0.9, 0.6, 0.7, 0.8, 0.85, 0.3, 0.2]

    def scripted(start: int):
        it = iter(accs[start:])
        return lambda prediction: {"acc": next(it)}

    args = dict(per_device_train_batch_size=8, num_train_epochs=8, eval_strategy="epoch", save_strategy="epoch",
                logging_strategy="epoch", metric_for_best_model="acc", load_best_model_at_end=True)
    small = dict(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1))
    first = build("hl", TinyReg, tmp_path / "first", trainer_kwargs=dict(
        **small, compute_metrics=scripted(0), callbacks=[EarlyStoppingCallback(early_stopping_patience=3)]), **args)
    first.train()
    checkpoint = tmp_path / "first" / "checkpoint-6"  # after accs .5 .9 .6: counter 1
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["EarlyStoppingCallback"]
    assert stored == {"args": {"early_stopping_patience": 3, "early_stopping_threshold": 0.0},
                      "attributes": {"early_stopping_patience_counter": 1}}
    results = {}
    for framework in ("hf", "hl"):
        for restore in (True, False):
            callback = EarlyStoppingCallback(early_stopping_patience=3)
            trainer = build(framework, TinyReg, tmp_path / f"{framework}{restore}", trainer_kwargs=dict(
                **small, compute_metrics=scripted(3), callbacks=[callback]),
                restore_callback_states_from_checkpoint=restore, **args)
            trainer.train(resume_from_checkpoint=str(checkpoint))
            results[framework, restore] = trainer.state.global_step
    # Restored counter 1: .7, .8 → stop at step 10; a fresh counter: .7 .8 .85 → stop at step 12.
    assert results["hf", True] == results["hl", True] == 10
    assert results["hf", False] == results["hl", False] == 12


def test_resume_true_passes_over_a_checkpoint_transformers_left_half_written(runs, tmp_path):
    """transformers killed during a save left checkpoint-6 without scheduler.pt, rng_state.pth and trainer_state.json.

    transformers' own ``resume_from_checkpoint=True`` would take it; hf_lightning takes checkpoint-5 and
    still ends where the uninterrupted transformers run ends.
    """
    copy_checkpoints(runs["root"] / "hf", tmp_path, up_to=6)
    for name in ("scheduler.pt", "rng_state.pth", "trainer_state.json"):
        os.remove(tmp_path / "checkpoint-6" / name)
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-6")
    resumed = resume("hl", True, tmp_path)
    assert_continues(runs["hf"], resumed)
