"""``HFModule`` in a ``lightning.Trainer`` the user built: the same run as ``build_trainer``'s, and the one
rule for Lightning settings that overlap TrainingArguments (``overlaps``)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from transformers import TrainingArguments

import hf_lightning
from hf_lightning import overlaps
from helpers import assert_same_history, make_args
from tiny import RegressionDataset, TinyReg

ARGS = dict(per_device_train_batch_size=4, num_train_epochs=2, logging_steps=1, eval_strategy="steps", eval_steps=2,
            save_strategy="steps", save_steps=2, learning_rate=0.05)
PLAIN = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, logger=False)


def _data(args):
    return hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1))


def _fit(trainer, args):
    torch.manual_seed(0)
    module = hf_lightning.HFModule(TinyReg(dropout=0.1), args)
    trainer.fit(module, datamodule=_data(args))
    return module


def _files(out):
    return {d: sorted(os.listdir(out / d)) for d in sorted(os.listdir(out)) if d.startswith("checkpoint-")}


def test_plain_lightning_trainer_runs_like_build_trainer(tmp_path):
    built_args = make_args(tmp_path / "built", **ARGS)
    built = hf_lightning.build_trainer(built_args, enable_progress_bar=False)
    built_module = _fit(built, built_args)
    plain_args = make_args(tmp_path / "plain", **ARGS)
    plain = pl.Trainer(**PLAIN)
    plain_module = _fit(plain, plain_args)
    assert_same_history(built_module.hooks.state.log_history, plain_module.hooks.state.log_history)
    assert any("eval_loss" in e for e in plain_module.hooks.state.log_history)
    assert _files(tmp_path / "plain") == _files(tmp_path / "built") and _files(tmp_path / "plain")
    assert {"loss", "eval_loss"} <= set(plain.callback_metrics)  # what Lightning callbacks can monitor
    assert not list((tmp_path / "plain").rglob("*.ckpt"))  # Lightning's default checkpointing gave way to checkpoint-N


def test_plain_lightning_trainer_bf16_mixed_runs_like_build_trainer(tmp_path):
    """``precision="bf16-mixed"`` in one's own lightning.Trainer autocasts the model's forward only, as ``build_trainer``
    does and as accelerate does for transformers (precision.py), instead of each whole step: the same run."""
    from hf_lightning.precision import ForwardAutocastPrecision

    plain = pl.Trainer(**{**PLAIN, "precision": "bf16-mixed"})
    plain_module = _fit(plain, make_args(tmp_path / "plain", **ARGS, bf16=True))
    built_args = make_args(tmp_path / "built", **ARGS, bf16=True)
    built = hf_lightning.build_trainer(built_args, enable_progress_bar=False)
    built_module = _fit(built, built_args)
    for trainer, module in ((plain, plain_module), (built, built_module)):
        assert type(trainer.precision_plugin) is ForwardAutocastPrecision and trainer.precision == "bf16-mixed"
        assert "_original_forward" in module.model.__dict__
    assert_same_history(built_module.hooks.state.log_history, plain_module.hooks.state.log_history)
    for a, b in zip(built_module.model.parameters(), plain_module.model.parameters()):
        assert torch.equal(a, b)


def test_user_logger_gets_every_record(tmp_path):
    args = make_args(tmp_path, **ARGS)
    trainer = pl.Trainer(**{**PLAIN, "logger": CSVLogger(tmp_path / "csv", name="run")})
    _fit(trainer, args)
    trainer.loggers[0].save()
    text = (tmp_path / "csv" / "run" / "version_0" / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert {"train/loss", "eval/loss", "train/learning_rate"} <= set(header), header


def test_early_stopping_monitors_eval_loss(tmp_path):
    args = make_args(tmp_path, **{**ARGS, "num_train_epochs": 20, "learning_rate": 10.0})  # diverges: eval_loss grows
    stop = EarlyStopping(monitor="eval_loss", patience=1, check_on_train_epoch_end=False)
    trainer = pl.Trainer(**{**PLAIN, "callbacks": [stop]})
    module = _fit(trainer, args)
    assert stop.stopped_epoch > 0 or trainer.should_stop
    assert module.hooks.state.global_step < 20 * 4


def test_a_configured_model_checkpoint_is_refused(tmp_path):
    args = make_args(tmp_path, **ARGS)
    trainer = pl.Trainer(**{**PLAIN, "callbacks": [ModelCheckpoint(monitor="eval_loss")]})
    with pytest.raises(ValueError, match="ModelCheckpoint.*checkpoint-N.*save_strategy"):
        _fit(trainer, args)


@pytest.mark.parametrize(
    "lightning, field, value",
    [
        (dict(max_epochs=3), "num_train_epochs", 3.0),
        (dict(max_steps=3), "max_steps", 3),
        (dict(accumulate_grad_batches=2), "gradient_accumulation_steps", 2),
        (dict(gradient_clip_val=0.5), "max_grad_norm", 0.5),
        (dict(val_check_interval=3), "eval_steps", 3),
        (dict(log_every_n_steps=2), "logging_steps", 2),
    ],
)
def test_plain_trainer_settings_are_honoured_in_the_arguments(tmp_path, lightning, field, value):
    args = make_args(tmp_path, **{k: v for k, v in ARGS.items() if k not in ("logging_steps", "eval_steps", "num_train_epochs")})
    trainer = pl.Trainer(**{**PLAIN, **lightning})
    module = _fit(trainer, args)
    assert getattr(args, field) == value
    saved = torch.load(tmp_path / f"checkpoint-{module.hooks.state.global_step}" / "training_args.bin", weights_only=False)
    assert getattr(saved, field) == value  # training_args.bin records what ran


def test_facade_and_build_trainer_honour_the_same_rule(tmp_path):
    args = make_args(tmp_path / "facade", max_steps=-1, num_train_epochs=3)
    trainer = hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path / "facade"), train_dataset=RegressionDataset(8),
                                   max_steps=2, enable_progress_bar=False)
    assert trainer.args.max_steps == 2
    assert trainer.train().global_step == 2
    built = make_args(tmp_path / "built")
    hf_lightning.build_trainer(built, max_epochs=2, precision="bf16-mixed", enable_progress_bar=False)
    assert built.num_train_epochs == 2.0 and built.bf16
    del args


def test_contradictions_name_both_options(tmp_path):
    args = make_args(tmp_path, num_train_epochs=1)
    with pytest.raises(ValueError, match=r"`max_epochs=3` \(lightning.Trainer\) contradicts `num_train_epochs=1` \(TrainingArguments\)"):
        hf_lightning.build_trainer(args, max_epochs=3)
    with pytest.raises(ValueError, match="max_epochs=3.*no effect with `max_steps=5`"):
        hf_lightning.build_trainer(make_args(tmp_path, max_steps=5), max_epochs=3)
    with pytest.raises(ValueError, match="limit_train_batches.*not supported"):
        hf_lightning.Trainer(model=TinyReg(), args=make_args(tmp_path), limit_train_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2.*contradicts `gradient_accumulation_steps=4`"):
        pl_trainer = pl.Trainer(**{**PLAIN, "accumulate_grad_batches": 2})
        _fit(pl_trainer, make_args(tmp_path, gradient_accumulation_steps=4, **ARGS))


def test_loggers_passed_in_are_added_to_report_to(tmp_path):
    args = make_args(tmp_path, report_to="tensorboard")
    trainer = hf_lightning.build_trainer(args, logger=CSVLogger(tmp_path / "csv"), enable_progress_bar=False)
    kinds = {type(logger) for logger in trainer.loggers}
    assert kinds == {TensorBoardLogger, CSVLogger}
    with pytest.raises(ValueError, match="logger=False.*report_to"):
        hf_lightning.build_trainer(make_args(tmp_path, report_to="tensorboard"), logger=False)


DEFAULTS = {"num_train_epochs": 3.0, "max_steps": -1, "gradient_accumulation_steps": 1, "bf16": False, "fp16": False,
            "eval_strategy": "no", "eval_steps": None, "save_strategy": "steps", "full_determinism": False}


@pytest.mark.parametrize(
    "args, lightning, expected",
    [
        ({}, {"max_epochs": 2}, {"num_train_epochs": 2.0}),
        ({"num_train_epochs": 2.0}, {"max_epochs": 2}, {}),
        ({}, {"precision": "bf16-mixed"}, {"bf16": True}),
        ({"bf16": True}, {"precision": "bf16-mixed"}, {}),
        ({}, {"precision": "32-true"}, {}),
        ({}, {"val_check_interval": 5}, {"eval_strategy": "steps", "eval_steps": 5}),
        ({}, {"val_check_interval": 1.0}, {"eval_strategy": "epoch"}),
        ({}, {"enable_checkpointing": False}, {"save_strategy": "no"}),
        ({}, {"enable_checkpointing": True}, {}),
        ({}, {"use_distributed_sampler": False}, {}),
        ({}, {"deterministic": True}, {"full_determinism": True}),
        ({}, {"strategy": "ddp", "devices": 2}, {}),
    ],
)
def test_reconcile_table(args, lightning, expected):
    assert overlaps.reconcile({**DEFAULTS, **args}, DEFAULTS, lightning) == expected


@pytest.mark.parametrize(
    "args, lightning, message",
    [
        ({"num_train_epochs": 1.0}, {"max_epochs": 3}, "contradicts `num_train_epochs=1.0`"),
        ({"bf16": True}, {"precision": "16-mixed"}, "contradicts `bf16=True`"),
        ({}, {"precision": "bf16-true"}, "no TrainingArguments equivalent"),
        ({}, {"val_check_interval": 0.25}, "fraction of an epoch"),
        ({}, {"check_val_every_n_epoch": 2}, "no every-N-epochs"),
        ({}, {"gradient_clip_algorithm": "value"}, "clips by norm"),
        ({}, {"use_distributed_sampler": True}, "shards the data like accelerate"),
        ({}, {"fast_dev_run": True}, "not supported"),
    ],
)
def test_reconcile_refusals(args, lightning, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        overlaps.reconcile({**DEFAULTS, **args}, DEFAULTS, lightning)


def test_all_problems_at_once():
    with pytest.raises(ValueError) as raised:
        overlaps.reconcile(DEFAULTS, DEFAULTS, {"fast_dev_run": True, "precision": "bf16-true", "max_epochs": 0})
    text = str(raised.value)
    assert "fast_dev_run" in text and "bf16-true" in text and "max_epochs=0" in text


def test_training_arguments_defaults_are_what_the_rule_assumes():
    args = TrainingArguments(output_dir="unused", report_to="none")
    for field, value in DEFAULTS.items():
        current = getattr(args, field)
        assert str(getattr(current, "value", current)) == str(value), field


def test_an_optimizer_passed_in_for_parameters_the_model_does_not_have_is_refused(tmp_path):
    """A sharding strategy replaces the parameters, so an ``optimizers=`` optimizer would update nothing; transformers
    refuses ``optimizers`` with FSDP. Here the optimizer holds another model's parameters: the same situation."""
    args = make_args(tmp_path, **ARGS)
    stranger = torch.optim.SGD(TinyReg().parameters(), lr=0.1)
    module = hf_lightning.HFModule(TinyReg(), args, optimizers=(stranger, None))
    with pytest.raises(ValueError, match="optimizers=.*not the model's.*create_optimizer"):
        pl.Trainer(**PLAIN).fit(module, datamodule=_data(args))
    assert module.hooks.state.global_step == 0


def test_report_to_loggers_join_a_plain_trainers_loggers(tmp_path):
    """As in build_trainer: report_to's loggers are added to the user's, replace Lightning's default one, and
    ``logger=False`` contradicts them."""
    args = make_args(tmp_path / "default", report_to="tensorboard", **ARGS)
    default = pl.Trainer(**{**PLAIN, "logger": True, "default_root_dir": str(tmp_path / "root")})
    _fit(default, args)
    assert [type(logger) for logger in default.loggers] == [TensorBoardLogger]
    assert list((tmp_path / "default" / "runs").rglob("events.out.tfevents.*"))  # transformers' place, not lightning_logs
    assert not (tmp_path / "root" / "lightning_logs").exists()

    args = make_args(tmp_path / "mine", report_to="tensorboard", **ARGS)
    mine = pl.Trainer(**{**PLAIN, "logger": CSVLogger(tmp_path / "csv", name="run")})
    _fit(mine, args)
    assert [type(logger) for logger in mine.loggers] == [CSVLogger, TensorBoardLogger]
    assert "eval/loss" in (tmp_path / "csv" / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0]

    with pytest.raises(ValueError, match="logger=False.*contradicts.*report_to"):
        _fit(pl.Trainer(**PLAIN), make_args(tmp_path / "none", report_to="tensorboard", **ARGS))


@pytest.mark.parametrize("ckpt_path", ["last", "checkpoint-2"])
def test_a_plain_trainer_resumes_from_checkpoint_n(tmp_path, ckpt_path):
    """``fit(ckpt_path="last")`` in a plain lightning.Trainer means the newest checkpoint-N of output_dir, as with
    build_trainer; the resumed run continues the uninterrupted one."""
    import shutil

    def run(out, ckpt=None):
        args = make_args(out, per_device_train_batch_size=4, max_steps=4, logging_steps=1, save_strategy="steps",
                         save_steps=2, learning_rate=0.05)
        torch.manual_seed(0)
        module = hf_lightning.HFModule(TinyReg(), args)
        counter = _CountBatches()
        pl.Trainer(**{**PLAIN, "callbacks": [counter]}).fit(module, datamodule=_data(args), ckpt_path=ckpt)
        module.batches_run = counter.batches
        return module

    whole = run(tmp_path / "whole")
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    resumed = run(tmp_path / "cut", ckpt_path if ckpt_path == "last" else str(tmp_path / "cut" / ckpt_path))
    after = [[e for e in m.hooks.state.log_history if e["step"] > 2 and "loss" in e] for m in (whole, resumed)]
    assert (whole.batches_run, resumed.batches_run) == (4, 2)  # steps 3 and 4 trained, steps 1 and 2 not again
    assert_same_history(*after)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


class _CountBatches(pl.Callback):
    batches = 0

    def on_train_batch_end(self, *args, **kwargs):
        self.batches += 1


def test_validate_and_test_return_transformers_metrics(tmp_path, capsys):
    """``lightning.Trainer.validate``/``test`` return (and with ``verbose`` print) each dataloader's metrics under
    transformers' names, as ``evaluate()``/``predict()`` compute them."""
    args = make_args(tmp_path, **ARGS)
    data = hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(16), test_dataset=RegressionDataset(4, seed=2),
                                     eval_dataset={"a": RegressionDataset(8, seed=1), "b": RegressionDataset(4, seed=5)})
    module = hf_lightning.HFModule(TinyReg(), args)
    trainer = pl.Trainer(**PLAIN)
    trainer.fit(module, datamodule=data)
    validated = trainer.validate(module, datamodule=data, verbose=True)
    assert [sorted(k for k in r if k.endswith("_loss")) for r in validated] == [["eval_a_loss"], ["eval_b_loss"]]
    last = module.hooks.state.log_history[-2:]  # the records validate() added, one per eval set
    assert validated[0]["eval_a_loss"] == last[0]["eval_a_loss"] and validated[1]["eval_b_loss"] == last[1]["eval_b_loss"]
    assert "eval_a_loss" in capsys.readouterr().out  # Lightning's results table
    tested = trainer.test(module, datamodule=data, verbose=False)
    assert len(tested) == 1 and tested[0]["test_loss"] > 0 and "test_runtime" in tested[0]


class _BatchOnly(hf_lightning.HFModule):
    """A subclass whose ``training_step`` takes no ``batch_idx``, as Lightning allows."""

    seen: list[str]

    def training_step(self, batch):  # type: ignore[override]
        self.seen.append("batch-only")
        return super().training_step(batch, -1)


class _Indexed(hf_lightning.HFModule):
    seen: list[int]

    def training_step(self, batch, batch_idx):
        self.seen.append(batch_idx)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("module_class, expected", [(_BatchOnly, ["batch-only"] * 4), (_Indexed, [0, 1, 2, 3])])
def test_training_step_gets_batch_idx_only_when_its_signature_has_it(tmp_path, module_class, expected):
    """The training epoch loop reads training_step's signature once per function (Lightning reads it every batch)."""
    args = make_args(tmp_path, **{**ARGS, "num_train_epochs": 1, "eval_strategy": "no", "save_strategy": "no"})
    module = module_class(TinyReg(), args)
    module.seen = []
    pl.Trainer(**PLAIN).fit(module, datamodule=_data(args))
    assert module.seen == expected


@pytest.mark.parametrize(
    "name, hint",
    [
        ("max_epochs", "`trainer.max_epochs` is a TrainingArguments setting in hf-lightning: set `args.num_train_epochs` instead."),
        ("precision", "`trainer.precision` is a TrainingArguments setting in hf-lightning: set `args.bf16` / `args.fp16` instead."),
        ("gradient_clip_algorithm", "`trainer.gradient_clip_algorithm`: transformers clips by the gradient norm only (`args.max_grad_norm`)."),
        ("fast_dev_run", "`trainer.fast_dev_run` is not supported: no transformers equivalent; use `max_steps` and a small `eval_dataset`."),
        ("accelerator", None),  # the CLI's trainer section takes it
        ("benchmark", None),  # not covered by the rule: the parser's own error stands
    ],
)
def test_cli_hint_for_lightning_settings_the_config_cannot_take(name, hint):
    assert overlaps.cli_hint(name) == hint
