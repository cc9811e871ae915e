"""transformers ``TrainerCallback``s run unmodified inside Lightning (semantics page §8).

Every test runs transformers.Trainer and hf_lightning on the same tiny case with the same callback
and compares what the callback saw: the event sequence (name, global_step, epoch), the kwargs passed
with each event, the log/metric keys, and what the run did when a callback set a control flag.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights, build, make_args
from tiny import RegressionDataset, TinyReg
from transformers import EarlyStoppingCallback, TrainerCallback, TrainerControl, default_data_collator

import hf_lightning

EVENTS = sorted(name for name in dir(TrainerCallback) if name.startswith("on_"))
HANDLER_KWARGS = ("model", "processing_class", "optimizer", "lr_scheduler", "train_dataloader", "eval_dataloader")


class Recorder(TrainerCallback):
    """Records every event: name, global_step, epoch, which kwargs were set, and the log/metric keys."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.kwargs: list[tuple[str, dict]] = []


def _recording(event: str):
    def record(self: Recorder, args, state, control, **kwargs):
        keys = sorted(kwargs.get("logs") or kwargs.get("metrics") or {})
        present = tuple(k for k in HANDLER_KWARGS if kwargs.get(k) is not None)
        self.events.append((event, state.global_step, round(state.epoch or 0, 4), tuple(sorted(kwargs)), present, tuple(keys)))
        self.kwargs.append((event, kwargs))

    return record


for _event in EVENTS:
    setattr(Recorder, _event, _recording(_event))


class SetFlag(TrainerCallback):
    """Sets ``control.<flag>`` in ``event`` when ``state.global_step == step``."""

    def __init__(self, event: str, step: int, flag: str) -> None:
        self.step, self.flag = step, flag
        setattr(self, event, self._set)

    def _set(self, args, state, control: TrainerControl, **kwargs):
        if state.global_step == self.step:
            setattr(control, self.flag, True)


def run_pair(tmp_path, callbacks_factory, *, n: int = 64, eval_dataset=None, trainer_kwargs=None, **args):
    """Train with transformers and hf_lightning, each with fresh callbacks from ``callbacks_factory``.

    ``trainer_kwargs`` may be a callable, for objects each run needs its own copy of.
    """
    runs = {}
    for framework in ("hf", "hl"):
        out = tmp_path / framework
        shutil.rmtree(out, ignore_errors=True)
        callbacks = callbacks_factory()
        kwargs = dict(
            train_dataset=RegressionDataset(n),
            eval_dataset=eval_dataset if eval_dataset is not None else RegressionDataset(16, seed=1),
            callbacks=callbacks,
            **((trainer_kwargs() if callable(trainer_kwargs) else trainer_kwargs) or {}),
        )
        trainer = build(framework, TinyReg, out, trainer_kwargs=kwargs, **args)
        trainer.train()
        runs[framework] = (trainer, callbacks)
    return runs["hf"], runs["hl"]


def _checkpoints(folder) -> list[str]:
    return sorted(d for d in os.listdir(folder) if d.startswith("checkpoint-")) if os.path.isdir(folder) else []


def assert_same_run(hf, hl, tmp_path) -> None:
    (hf_trainer, hf_callbacks), (hl_trainer, hl_callbacks) = hf, hl
    assert hf_callbacks[0].events == hl_callbacks[0].events
    assert_same_history(hf_trainer.state.log_history, hl_trainer.state.log_history)
    assert_same_weights(hf_trainer.model, hl_trainer.model)
    assert _checkpoints(tmp_path / "hf") == _checkpoints(tmp_path / "hl")


BASE = dict(
    per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=2, logging_steps=3,
    eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=5,
)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(dict(BASE, eval_on_start=True, logging_first_step=True, logging_steps=2), id="steps-eval_on_start"),
        pytest.param(
            dict(BASE, n=72, logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch"), id="epoch-uneven-groups"
        ),
    ],
)
def test_event_sequence_matches_transformers(tmp_path, args):
    args = dict(args)
    n = args.pop("n", 64)
    hf, hl = run_pair(tmp_path, lambda: [Recorder()], n=n, **args)
    assert_same_run(hf, hl, tmp_path)
    names = [e[0] for e in hl[1][0].events]
    assert {"on_init_end", "on_train_begin", "on_epoch_begin", "on_step_begin", "on_substep_end", "on_pre_optimizer_step",
            "on_optimizer_step", "on_step_end", "on_log", "on_prediction_step", "on_evaluate", "on_save", "on_epoch_end",
            "on_train_end"} <= set(names)


@pytest.mark.parametrize(
    "event,step,flag",
    [
        ("on_step_end", 3, "should_training_stop"),
        ("on_step_end", 2, "should_save"),
        ("on_step_end", 1, "should_evaluate"),
        ("on_step_end", 5, "should_log"),
        ("on_step_end", 2, "should_epoch_stop"),
        ("on_evaluate", 3, "should_training_stop"),
        ("on_evaluate", 3, "should_save"),
        ("on_log", 3, "should_save"),
        ("on_epoch_end", 4, "should_evaluate"),
        ("on_epoch_end", 4, "should_log"),
        ("on_save", 5, "should_training_stop"),
        ("on_optimizer_step", 2, "should_training_stop"),
        ("on_substep_end", 2, "should_training_stop"),  # breaks out of the accumulation group, no optimizer step
        ("on_step_begin", 2, "should_epoch_stop"),
    ],
)
def test_control_flags_obeyed_like_transformers(tmp_path, event, step, flag):
    hf, hl = run_pair(tmp_path, lambda: [Recorder(), SetFlag(event, step, flag)], **BASE)
    assert_same_run(hf, hl, tmp_path)


def test_kwargs_are_the_run_objects(tmp_path, tokenizer):
    """model, processing_class, optimizer, lr_scheduler and the dataloaders, like transformers passes them."""
    hf, hl = run_pair(
        tmp_path,
        lambda: [Recorder()],
        eval_dataset={"a": RegressionDataset(16, seed=1), "b": RegressionDataset(12, seed=2)},
        trainer_kwargs=dict(processing_class=tokenizer, data_collator=default_data_collator),
        **BASE,
    )
    assert hf[1][0].events == hl[1][0].events
    trainer, (recorder,) = hl
    hf_recorder = hf[1][0]
    for (event, kwargs), (_, hf_kwargs) in zip(recorder.kwargs, hf_recorder.kwargs):
        assert kwargs["model"] is trainer.model
        assert kwargs["processing_class"] is tokenizer
        if event in ("on_init_end",):
            continue
        optimizer, scheduler = kwargs["optimizer"], kwargs["lr_scheduler"]
        assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in hf_kwargs["optimizer"].param_groups]
        assert scheduler.get_last_lr() == hf_kwargs["lr_scheduler"].get_last_lr()
        # the micro-batch loader transformers would iterate (inside Lightning's per-step grouping)
        assert kwargs["train_dataloader"] is trainer.lightning_trainer.train_dataloader.loader
        assert type(kwargs["train_dataloader"]) is type(hf_kwargs["train_dataloader"])
        assert len(kwargs["train_dataloader"]) == len(hf_kwargs["train_dataloader"])
        if event == "on_prediction_step":  # the loader of the dataset being evaluated, as in transformers
            assert len(kwargs["eval_dataloader"]) == len(hf_kwargs["eval_dataloader"])
            assert len(kwargs["eval_dataloader"].dataset) == len(hf_kwargs["eval_dataloader"].dataset)


def test_evaluate_and_predict_events(tmp_path):
    events = {}
    for framework in ("hf", "hl"):
        recorder = Recorder()
        trainer = build(framework, TinyReg, tmp_path / framework, trainer_kwargs=dict(callbacks=[recorder]))
        trainer.evaluate(RegressionDataset(20, seed=1))
        trainer.predict(RegressionDataset(12, seed=2))
        events[framework] = recorder.events
    assert events["hf"] == events["hl"]
    assert [e[0] for e in events["hl"]][-3:] == ["on_prediction_step", "on_prediction_step", "on_predict"]


def _scripted_metrics(values):
    values = iter(values)

    def compute_metrics(eval_pred):
        return {"acc": next(values)}

    return compute_metrics


GOLDEN_10 = dict(
    per_device_train_batch_size=8, num_train_epochs=8, eval_strategy="epoch", save_strategy="epoch",
    metric_for_best_model="acc", logging_strategy="epoch",
)
ACCS = [0.5, 0.9, 0.6, 0.7, 0.8, 0.85, 0.3, 0.2]


def test_early_stopping_stops_at_the_same_step(tmp_path):
    """Golden fact 11: EarlyStoppingCallback(2) on accs .5,.9,.6,.7,... stops after the eval at step 8."""
    hf, hl = run_pair(
        tmp_path,
        lambda: [Recorder(), EarlyStoppingCallback(early_stopping_patience=2)],
        n=16,
        trainer_kwargs=lambda: dict(compute_metrics=_scripted_metrics(ACCS)),
        **GOLDEN_10,
    )
    assert_same_run(hf, hl, tmp_path)
    trainer, (_, early) = hl
    assert trainer.state.global_step == 8
    assert [e["eval_acc"] for e in trainer.state.log_history if "eval_acc" in e] == ACCS[:4]
    assert early.early_stopping_patience_counter == 2
    saved = hf_lightning.hf_format.read_trainer_state(tmp_path / "hl" / "checkpoint-8")
    assert saved.stateful_callbacks["EarlyStoppingCallback"] == {
        "args": {"early_stopping_patience": 2, "early_stopping_threshold": 0.0},
        "attributes": {"early_stopping_patience_counter": 2},
    }


def test_build_trainer_path_routes_trainer_callbacks(tmp_path):
    """``build_trainer(args, callbacks=[TrainerCallback])`` + HFModule + HFDataModule sees transformers' events."""
    hf_recorder, hl_recorder = Recorder(), Recorder()
    hf = build("hf", TinyReg, tmp_path / "hf", trainer_kwargs=dict(
        train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1), callbacks=[hf_recorder]), **BASE)
    hf.train()
    args = make_args(tmp_path / "hl", **BASE)
    torch.manual_seed(0)
    model = TinyReg()
    trainer = hf_lightning.build_trainer(args, callbacks=[hl_recorder], **LIGHTNING_QUIET)
    data = hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(64), eval_dataset=RegressionDataset(16, seed=1))
    trainer.fit(hf_lightning.HFModule(model, args), datamodule=data)
    assert hl_recorder.events == hf_recorder.events
    flow = next(cb for cb in trainer.callbacks if isinstance(cb, hf_lightning.HFFlowCallback))
    assert_same_history(hf.state.log_history, flow.state.log_history)


class FakeIntegration(TrainerCallback):
    """Stands in for a reporting integration (wandb, codecarbon, ...): records what it would report."""

    instances: list[FakeIntegration] = []

    def __init__(self) -> None:
        self.reported: list[tuple[int, dict]] = []
        self.started = self.ended = False
        FakeIntegration.instances.append(self)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.started = model is not None

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.reported.append((state.global_step, dict(logs)))

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = True


def test_report_to_runs_transformers_integration_callbacks(tmp_path, monkeypatch):
    """A ``report_to`` name without a Lightning logger runs its transformers callback, as in transformers."""
    from transformers.integrations import integration_utils

    monkeypatch.setitem(integration_utils.INTEGRATION_TO_CALLBACK, "fake_tracker", FakeIntegration)
    FakeIntegration.instances.clear()
    hf, hl = run_pair(tmp_path, lambda: [Recorder()], report_to=["fake_tracker"], **BASE)
    assert_same_run(hf, hl, tmp_path)
    hf_fake, hl_fake = FakeIntegration.instances
    assert hl_fake.started and hl_fake.ended
    assert [step for step, _ in hl_fake.reported] == [step for step, _ in hf_fake.reported]
    assert [sorted(logs) for _, logs in hl_fake.reported] == [sorted(logs) for _, logs in hf_fake.reported]
