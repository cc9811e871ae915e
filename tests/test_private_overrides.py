"""Overrides of transformers.Trainer's private methods: each one hf_lightning's run would reach is called where
transformers calls it (``ROUTED``, differential bodies in ``overrides.py``) or refused before training starts
(``REFUSED``). None is ignored."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
import transformers

import hf_lightning
from hf_lightning.private_overrides import REFUSED, ROUTED, refused_overrides, user_override
from helpers import LIGHTNING_QUIET, assert_same_history, make_args
import overrides
from overrides import subclass
from tiny import RegressionDataset, TinyReg

def _with(base: type, **methods) -> type:
    return type("UserTrainer", (base,), methods)


def _passthrough(name: str):
    def method(self, *args, **kwargs):
        return getattr(super(type(self), self), name)(*args, **kwargs)

    return method


def test_routed_and_refused_are_transformers_methods():
    assert not set(ROUTED) & set(REFUSED)
    missing = [name for name in [*ROUTED, *REFUSED] if not callable(getattr(transformers.Trainer, name, None))]
    assert missing == []


@pytest.mark.parametrize(
    "method,resuming,load_best,refused",
    [
        ("get_batch_samples", False, False, True),
        ("_maybe_log_save_evaluate", False, False, False),  # routed
        ("_inner_training_loop", False, False, True),
        ("_save_rng_state", False, False, True),
        ("_load_rng_state", True, False, False),  # routed
        ("_load_scaler", True, False, False),  # routed
        ("_load_callback_state", True, False, False),  # routed
        ("_issue_warnings_after_load", False, False, False),
        ("_issue_warnings_after_load", True, False, True),
        ("_load_optimizer_and_scheduler", True, False, False),  # routed
        ("_load_best_model", False, True, False),  # routed
        ("_load_from_checkpoint", True, False, False),  # routed
        ("_prepare_inputs", True, True, False),  # routed
        ("_save", True, True, False),  # routed
        ("compute_loss", True, True, False),  # an override point
    ],
)
def test_refused_overrides_table(method, resuming, load_best, refused):
    cls = _with(hf_lightning.Trainer, **{method: _passthrough(method)})
    problems = refused_overrides(cls, resuming=resuming, load_best=load_best)
    assert bool(problems) == refused
    if refused:
        assert problems[0].startswith(f"`UserTrainer.{method}` overrides transformers.Trainer.{method}, which hf_lightning never calls")


def test_hf_lightnings_own_methods_and_transformers_subclasses_are_not_user_overrides():
    assert not user_override(hf_lightning.Trainer, "_save_checkpoint")  # hf_lightning's own
    assert user_override(hf_lightning.on_lightning(transformers.Seq2SeqTrainer), "prediction_step")
    assert refused_overrides(hf_lightning.on_lightning(transformers.Seq2SeqTrainer), resuming=True, load_best=True) == []


def test_trl_grpo_trainer_overrides_only_routed_methods():
    """GRPO overrides ``_prepare_inputs`` (generation) and ``_load_optimizer_and_scheduler`` (its entropy controller's
    state, on resume): both routed, so nothing is refused, resuming or not."""
    trl = pytest.importorskip("trl")
    cls = hf_lightning.on_lightning(trl.GRPOTrainer)
    assert user_override(cls, "_prepare_inputs") and user_override(cls, "_load_optimizer_and_scheduler")
    assert refused_overrides(cls, resuming=False, load_best=True) == []
    assert refused_overrides(cls, resuming=True, load_best=True) == []


class LoadOptimizerAndScheduler:
    """Records what the restored optimizer and scheduler hold when the override runs, after its ``super()``."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        state = self.optimizer.state_dict()["state"]
        self.loaded = dict(
            checkpoint=os.path.basename(checkpoint), global_step=self.state.global_step,
            adam_steps=sorted({float(s["step"]) for s in state.values()}), exp_avg=[s["exp_avg"].clone() for s in state.values()],
            scheduler_epoch=self.lr_scheduler.last_epoch, lr=self.optimizer.param_groups[0]["lr"],
        )


@pytest.mark.parametrize("writer", ["transformers", "hf_lightning"])
def test_load_optimizer_and_scheduler_override_runs_on_resume_as_in_transformers(tmp_path, writer):
    """The same subclass of each trainer resumes from the same checkpoint (written by ``writer``): the override runs
    once, sees the restored optimizer and scheduler, and the resumed runs end with the same weights."""
    bases = {"transformers": transformers.Trainer, "hf_lightning": hf_lightning.Trainer}
    run = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4, learning_rate=0.1)

    def build(framework, out):
        torch.manual_seed(0)
        cls = subclass(LoadOptimizerAndScheduler, bases[framework])
        extra = dict(LIGHTNING_QUIET) if framework == "hf_lightning" else {}
        return cls(model=TinyReg(), args=make_args(out, **run), train_dataset=RegressionDataset(32), **extra)

    first = build(writer, tmp_path / "first")
    first.train()
    assert not hasattr(first, "loaded")  # a fresh run has nothing to load (transformers does not call it either)
    resumed = {}
    for framework in bases:
        trainer = resumed[framework] = build(framework, tmp_path / framework)
        trainer.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-2"))
    expected, actual = resumed["transformers"].loaded, resumed["hf_lightning"].loaded
    assert expected["checkpoint"] == "checkpoint-2" and expected["adam_steps"] == [2.0] and expected["scheduler_epoch"] == 2
    assert {k: v for k, v in actual.items() if k != "exp_avg"} == {k: v for k, v in expected.items() if k != "exp_avg"}
    assert all(torch.equal(a, b) for a, b in zip(expected["exp_avg"], actual["exp_avg"]))
    for a, b in zip(resumed["transformers"].model.parameters(), resumed["hf_lightning"].model.parameters()):
        assert torch.equal(a, b)


def _build(cls: type, out, **args):
    return cls(model=TinyReg(), args=make_args(out, **args), train_dataset=RegressionDataset(16), **LIGHTNING_QUIET)


def test_a_refused_override_fails_at_construction_with_what_to_do(tmp_path):
    cls = _with(hf_lightning.Trainer, get_batch_samples=_passthrough("get_batch_samples"),
                store_flos=_passthrough("store_flos"))
    with pytest.raises(TypeError) as raised:
        _build(cls, tmp_path, max_steps=2)
    message = str(raised.value)
    assert "`UserTrainer.get_batch_samples`" in message and "`_get_num_items_in_batch`" in message
    assert "`UserTrainer.store_flos`" in message and "`floating_point_ops`" in message
    assert not os.path.exists(tmp_path / "checkpoint-2")


def test_a_resume_only_override_is_refused_when_resuming_before_training(tmp_path):
    cls = _with(hf_lightning.Trainer, _issue_warnings_after_load=_passthrough("_issue_warnings_after_load"))
    trainer = _build(cls, tmp_path, max_steps=2, save_strategy="steps", save_steps=2, per_device_train_batch_size=4)
    trainer.train()  # not resuming: nothing to refuse
    assert trainer.state.global_step == 2
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.args.max_steps = 4
    with pytest.raises(TypeError, match=r"`UserTrainer._issue_warnings_after_load` overrides .* reports missing and unexpected keys"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert trainer.state.global_step == 2 and not os.path.exists(tmp_path / "checkpoint-4")
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))


def _calls_of_every_method(base: type, out) -> set[str]:
    """Every transformers.Trainer method the run calls, through a subclass that overrides each one (but the refused)."""
    called: set[str] = set()
    names = [n for n, v in vars(transformers.Trainer).items() if inspect.isfunction(v) and not n.startswith("__") and n not in REFUSED]

    def recorder(name):
        def method(self, *args, **kwargs):
            called.add(name)
            return getattr(super(Recorder, self), name)(*args, **kwargs)

        method.__signature__ = inspect.signature(getattr(transformers.Trainer, name))
        return method

    Recorder = type("Recorder", (base,), {name: recorder(name) for name in names})
    extra = dict(LIGHTNING_QUIET) if issubclass(base, hf_lightning.Trainer) else {}
    args = make_args(out, max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2, logging_steps=1, per_device_train_batch_size=4,
                     gradient_accumulation_steps=2, load_best_model_at_end=True, save_total_limit=1, include_num_input_tokens_seen="all")
    data = dict(train_dataset=RegressionDataset(32), eval_dataset=RegressionDataset(8, seed=1))
    torch.manual_seed(0)
    trainer = Recorder(model=TinyReg(), args=args, **data, **extra)
    trainer.train()
    trainer.evaluate()
    trainer.predict(RegressionDataset(8, seed=2))
    trainer.save_model(str(out / "final"))
    args.max_steps = 6
    Recorder(model=TinyReg(), args=args, **data, **extra).train(resume_from_checkpoint=True)
    return called


def test_every_method_transformers_calls_is_called_or_refused(tmp_path):
    """Differential on the extension surface: what transformers.Trainer calls on a run with accumulation, evaluation,
    checkpoints, the best model, prediction, save_model and a resume, hf_lightning calls too (or refuses overriding)."""
    theirs = _calls_of_every_method(transformers.Trainer, tmp_path / "hf")
    ours = _calls_of_every_method(hf_lightning.Trainer, tmp_path / "hl")
    assert sorted(theirs - ours) == []
    assert set(ROUTED) <= ours  # every routed override ran


def test_a_harness_that_rebinds_transformers_trainer_is_not_refused(monkeypatch, tmp_path):
    """``scripts/upstream_trainer_tests.py`` rebinds ``transformers.Trainer`` to a subclass of ours: transformers' own
    methods must still not count as a user's overrides."""
    standin = type("Trainer", (hf_lightning.Trainer,), {})
    monkeypatch.setattr(transformers, "Trainer", standin)
    monkeypatch.setattr(transformers.trainer, "Trainer", standin)
    assert refused_overrides(standin, resuming=True, load_best=True) == []
    trainer = _build(standin, tmp_path, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1


class LoadFromCheckpoint:
    """Loads as the base does, then halves the weights: the resumed run must train from the halved weights."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.loaded_from = os.path.basename(resume_from_checkpoint)
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.mul_(0.5)


class LoadBestModel:
    """Records the best checkpoint, loads it as the base does, then halves the weights."""

    def _load_best_model(self):
        self.best_seen = (os.path.basename(self.state.best_model_checkpoint), self.state.best_metric, self.state.global_step)
        super()._load_best_model()
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.mul_(0.5)


def _same_subclass_on_both(body, tmp_path, run_args, *, resume_from=None, data=None, model=TinyReg):
    trainers = {}
    for name, base in (("transformers", transformers.Trainer), ("hf_lightning", hf_lightning.Trainer)):
        torch.manual_seed(0)
        extra = dict(LIGHTNING_QUIET) if name == "hf_lightning" else {}
        inputs = data() if callable(data) else data  # a factory when the inputs hold state (callbacks)
        trainer = trainers[name] = subclass(body, base)(model=model(), args=make_args(tmp_path / name, **run_args), **inputs, **extra)
        trainer.train(resume_from_checkpoint=resume_from)
    return trainers["transformers"], trainers["hf_lightning"]


def test_load_from_checkpoint_override_loads_the_weights_on_resume_as_in_transformers(tmp_path):
    run = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4, learning_rate=0.1)
    data = dict(train_dataset=RegressionDataset(32))
    torch.manual_seed(0)
    transformers.Trainer(model=TinyReg(), args=make_args(tmp_path / "first", **run), **data).train()
    expected, actual = _same_subclass_on_both(LoadFromCheckpoint, tmp_path, run, data=data,
                                              resume_from=str(tmp_path / "first" / "checkpoint-2"))
    assert expected.loaded_from == actual.loaded_from == "checkpoint-2"
    assert [e["loss"] for e in actual.state.log_history if "loss" in e] == [e["loss"] for e in expected.state.log_history if "loss" in e]
    for a, b in zip(expected.model.parameters(), actual.model.parameters()):
        assert torch.equal(a, b)


def test_load_best_model_override_runs_at_the_end_as_in_transformers(tmp_path):
    run = dict(max_steps=6, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=4,
               learning_rate=0.5, load_best_model_at_end=True)
    data = dict(train_dataset=RegressionDataset(32), eval_dataset=RegressionDataset(8, seed=1))
    expected, actual = _same_subclass_on_both(LoadBestModel, tmp_path, run, data=data)
    assert actual.best_seen == expected.best_seen and expected.best_seen[2] == 6  # after the last step, once
    assert_same_history(expected.state.log_history, actual.state.log_history, rel=0.0)
    for a, b in zip(expected.model.parameters(), actual.model.parameters()):
        assert torch.equal(a, b)


class LoadRngState:
    """Restores as the base does, then reseeds: the dropout masks after the resume show when the override ran."""

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        self.resume_calls = getattr(self, "resume_calls", []) + [("rng", os.path.basename(checkpoint))]
        torch.manual_seed(1234)


class LoadScaler:
    def _load_scaler(self, checkpoint):
        super()._load_scaler(checkpoint)
        self.resume_calls = getattr(self, "resume_calls", []) + [("scaler", os.path.basename(checkpoint))]


class LoadCallbackState:
    """Records the early-stopping counter the base restored, then resets it."""

    def _load_callback_state(self):
        super()._load_callback_state()
        stopper = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, transformers.EarlyStoppingCallback))
        self.resume_calls = getattr(self, "resume_calls", []) + [("callbacks", stopper.early_stopping_patience_counter)]
        stopper.early_stopping_patience_counter = 0


@pytest.mark.parametrize("body", [LoadRngState, LoadScaler, LoadCallbackState], ids=lambda body: body.__name__)
@pytest.mark.parametrize("mid_epoch", [True, False], ids=["mid-epoch", "epoch-boundary"])
def test_resume_overrides_run_where_transformers_calls_them(tmp_path, body, mid_epoch):
    """The same subclass of each trainer resumes a transformers checkpoint, in the middle of an epoch (the RNG is restored
    after the skipped batches) or at its end (at the start of the next): the override runs once, at the same moment."""
    run = dict(max_steps=8, save_strategy="steps", save_steps=3 if mid_epoch else 4, per_device_train_batch_size=4,
               learning_rate=0.1, eval_strategy="steps", eval_steps=1, metric_for_best_model="loss",
               restore_callback_states_from_checkpoint=True)

    def data():
        return dict(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1),
                    callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=50)])

    step = 3 if mid_epoch else 4
    torch.manual_seed(0)
    transformers.Trainer(model=TinyReg(dropout=0.3), args=make_args(tmp_path / "first", **run), **data()).train()
    expected, actual = _same_subclass_on_both(body, tmp_path, run, data=data, model=lambda: TinyReg(dropout=0.3),
                                              resume_from=str(tmp_path / "first" / f"checkpoint-{step}"))
    assert expected.resume_calls == actual.resume_calls and len(expected.resume_calls) == 1
    assert_same_history(expected.state.log_history, actual.state.log_history, rel=0.0)
    for a, b in zip(expected.model.parameters(), actual.model.parameters()):
        assert torch.equal(a, b)


def test_load_methods_called_outside_train_are_transformers_own(tmp_path):
    """Called on their own (a script, transformers' own tests), ``_load_callback_state`` and ``_load_rng_state`` restore
    what transformers' do: the TrainerControl saved with the state, and this process's generators."""
    run = dict(max_steps=2, save_strategy="steps", save_steps=2, per_device_train_batch_size=4, restore_callback_states_from_checkpoint=True)
    _build(hf_lightning.Trainer, tmp_path, **run).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    restored = {}
    for name, base in (("transformers", transformers.Trainer), ("hf_lightning", hf_lightning.Trainer)):
        extra = dict(LIGHTNING_QUIET) if name == "hf_lightning" else {}
        trainer = base(model=TinyReg(), args=make_args(tmp_path / name, **run), train_dataset=RegressionDataset(16), **extra)
        trainer.state = transformers.TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        trainer._load_callback_state()
        torch.manual_seed(99)
        trainer._load_rng_state(checkpoint)
        restored[name] = (trainer.control.should_training_stop, torch.rand(3))
    assert restored["hf_lightning"][0] is restored["transformers"][0] is True
    assert torch.equal(restored["hf_lightning"][1], restored["transformers"][1])


def test_a_copied_maybe_log_save_evaluate_feeds_lightnings_callback_metrics(tmp_path):
    """The training logs a copied ``_maybe_log_save_evaluate`` writes reach Lightning too (progress bar, callbacks)."""
    cls = subclass(overrides.CopiedLogSaveEvaluate, hf_lightning.Trainer)
    trainer = _build(cls, tmp_path, max_steps=4, logging_steps=2, per_device_train_batch_size=4)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "window" in entry]
    assert [entry["step"] for entry in logs] == [2, 4] and all(entry["window"] == 2 for entry in logs)
    metrics = trainer.lightning_trainer.callback_metrics
    assert float(metrics["loss"]) == pytest.approx(logs[-1]["loss"], rel=1e-6)
    assert float(metrics["learning_rate"]) == pytest.approx(logs[-1]["learning_rate"])


def test_maybe_log_save_evaluate_outside_train_says_when_it_runs(tmp_path):
    trainer = _build(hf_lightning.Trainer, tmp_path, max_steps=2)
    with pytest.raises(RuntimeError, match="`_maybe_log_save_evaluate` .* during `train\\(\\)`"):
        trainer._maybe_log_save_evaluate(torch.zeros(()), None, trainer.model, None, 0, None, 0.0)
