"""Lightning's per-step hook dispatch is skipped only where nobody listens (``step_dispatch``), and a run is the same
either way: listeners still get every hook, in Lightning's order, with the same gradients."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import DoublePrecision, MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

import hf_lightning
from hf_lightning.step_dispatch import QuietProfiler, StepDispatch, plan_step_dispatch
from helpers import assert_same_history, make_args
from tiny import RegressionDataset, TinyReg


class _Silent(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass


class _BeforeBackward(Callback):
    def on_before_backward(self, trainer, pl_module, loss):
        pass


class _AfterBackward(Callback):
    def on_after_backward(self, trainer, pl_module):
        pass


class _BeforeStep(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pass


def _patched_instance() -> Callback:
    callback = _Silent()
    callback.on_after_backward = lambda trainer, pl_module: None
    return callback


class _ModuleAfterBackward(hf_lightning.HFModule):
    def on_after_backward(self):
        pass


class _ModuleBackward(hf_lightning.HFModule):
    def backward(self, loss, *args, **kwargs):
        loss.backward(*args, **kwargs)


class _ModuleBeforeStep(hf_lightning.HFModule):
    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)


class _PrecisionBackward(Precision):
    def backward(self, tensor, model, optimizer, *args, **kwargs):
        super().backward(tensor, model, optimizer, *args, **kwargs)


class _StrategyBackward(SingleDeviceStrategy):
    def backward(self, closure_loss, optimizer, *args, **kwargs):
        return super().backward(closure_loss, optimizer, *args, **kwargs)


def _averaged_ddp() -> DDPStrategy:
    strategy = DDPStrategy()
    strategy._model_averager = object()  # post-local SGD
    return strategy


def _scaled_fp16() -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


# (case, callbacks, module class, strategy, precision, profiler) -> (direct backward, direct optimizer step)
CASES = [
    ("defaults", [], hf_lightning.HFModule, SingleDeviceStrategy, Precision, QuietProfiler, (True, True)),
    ("lightning's pass-through profiler", [], hf_lightning.HFModule, SingleDeviceStrategy, Precision, PassThroughProfiler, (True, True)),
    ("a callback with other hooks", [_Silent], hf_lightning.HFModule, SingleDeviceStrategy, Precision, QuietProfiler, (True, True)),
    ("a real profiler", [], hf_lightning.HFModule, SingleDeviceStrategy, Precision, SimpleProfiler, (False, False)),
    ("callback on_before_backward", [_BeforeBackward], hf_lightning.HFModule, SingleDeviceStrategy, Precision, QuietProfiler, (False, True)),
    ("callback on_after_backward", [_Silent, _AfterBackward], hf_lightning.HFModule, SingleDeviceStrategy, Precision, QuietProfiler, (False, True)),
    ("callback hook set on the instance", [_patched_instance], hf_lightning.HFModule, SingleDeviceStrategy, Precision, QuietProfiler, (False, True)),
    ("callback on_before_optimizer_step", [_BeforeStep], hf_lightning.HFModule, SingleDeviceStrategy, Precision, QuietProfiler, (True, False)),
    ("module on_after_backward", [], _ModuleAfterBackward, SingleDeviceStrategy, Precision, QuietProfiler, (False, True)),
    ("module backward", [], _ModuleBackward, SingleDeviceStrategy, Precision, QuietProfiler, (False, True)),
    ("module on_before_optimizer_step", [], _ModuleBeforeStep, SingleDeviceStrategy, Precision, QuietProfiler, (True, False)),
    ("bf16-mixed, no scaler", [], hf_lightning.HFModule, SingleDeviceStrategy, lambda: MixedPrecision("bf16-mixed", "cpu"), QuietProfiler, (True, True)),
    ("16-mixed with a grad scaler", [], hf_lightning.HFModule, SingleDeviceStrategy, _scaled_fp16, QuietProfiler, (False, False)),
    ("64-true", [], hf_lightning.HFModule, SingleDeviceStrategy, DoublePrecision, QuietProfiler, (True, True)),
    ("precision backward overridden", [], hf_lightning.HFModule, SingleDeviceStrategy, _PrecisionBackward, QuietProfiler, (False, True)),
    ("strategy backward overridden", [], hf_lightning.HFModule, _StrategyBackward, Precision, QuietProfiler, (False, True)),
    ("DDP", [], hf_lightning.HFModule, DDPStrategy, Precision, QuietProfiler, (True, True)),
    ("DDP with model averaging", [], hf_lightning.HFModule, _averaged_ddp, Precision, QuietProfiler, (True, False)),
]


@pytest.mark.parametrize(
    "callbacks, module_cls, strategy, precision, profiler, expected",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_step_dispatch(tmp_path, callbacks, module_cls, strategy, precision, profiler, expected):
    module = module_cls(TinyReg(), make_args(tmp_path))
    plan = plan_step_dispatch(
        callbacks=[make() for make in callbacks], module=module, module_base=hf_lightning.HFModule,
        strategy=strategy(), precision=precision(), profiler=profiler(),
    )
    assert plan == StepDispatch(direct_backward=expected[0], direct_optimizer_step=expected[1])


class _Recorder(Callback):
    """Every per-step Lightning hook, in order, with what it sees; and the plan the module ran with."""

    def __init__(self, listen: bool) -> None:
        self.events: list[tuple] = []
        self.plans: list[StepDispatch] = []
        if listen:
            self.on_before_backward = self._before_backward
            self.on_after_backward = self._after_backward
            self.on_before_optimizer_step = self._before_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.events.append(("batch_start", trainer.global_step))
        self.plans.append(pl_module._dispatch)

    def _before_backward(self, trainer, pl_module, loss):
        self.events.append(("before_backward", trainer.global_step, loss.requires_grad))

    def _after_backward(self, trainer, pl_module):
        grads = [p.grad is not None for p in pl_module.parameters() if p.requires_grad]
        self.events.append(("after_backward", trainer.global_step, all(grads)))

    def _before_step(self, trainer, pl_module, optimizer):
        # Lightning calls it before the module's hook, so gradients are not clipped yet.
        self.events.append(("before_optimizer_step", trainer.global_step, pl_module._grad_norm is None))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.events.append(("batch_end", trainer.global_step))


def _run(tmp_path, name, listen: bool):
    args = make_args(tmp_path / name, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3,
                     logging_steps=1, learning_rate=0.05, max_grad_norm=0.5)
    recorder = _Recorder(listen)
    torch.manual_seed(0)
    trainer = hf_lightning.Trainer(model=TinyReg(dropout=0.1), args=args, train_dataset=RegressionDataset(32),
                                   callbacks=[recorder])
    trainer.train()
    return trainer, recorder


def test_listeners_get_every_hook_and_the_run_is_the_same(tmp_path, monkeypatch):
    quiet, quiet_rec = _run(tmp_path, "quiet", listen=False)
    # The module's own hook runs after the callbacks', with the gradients unclipped until then.
    seen_norms: list[bool] = []
    original = hf_lightning.HFModule.on_before_optimizer_step
    monkeypatch.setattr(hf_lightning.HFModule, "on_before_optimizer_step",
                        lambda self, opt: (seen_norms.append(True), original(self, opt))[1])
    heard, heard_rec = _run(tmp_path, "heard", listen=True)

    assert set(quiet_rec.plans) == {StepDispatch(direct_backward=True, direct_optimizer_step=True)}
    assert set(heard_rec.plans) == {StepDispatch()}  # listeners: Lightning's full dispatch
    step = [("batch_start", 0), ("before_backward", 0, True), ("after_backward", 0, True),
            ("before_backward", 0, True), ("after_backward", 0, True), ("before_optimizer_step", 0, True), ("batch_end", 1)]
    assert heard_rec.events[:7] == step
    assert [e[0] for e in heard_rec.events].count("before_backward") == 6  # 3 steps x 2 micro-batches
    assert len(seen_norms) == 3
    assert_same_history(quiet.state.log_history, heard.state.log_history)
    for a, b in zip(quiet.model.parameters(), heard.model.parameters()):
        assert torch.equal(a, b)


def test_a_profiler_sees_the_hooks(tmp_path):
    """With a profiler, Lightning's dispatch (and its records) stay."""
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=0.05)
    profiler = SimpleProfiler()
    trainer = hf_lightning.build_trainer(args, profiler=profiler, enable_progress_bar=False)
    trainer.fit(hf_lightning.HFModule(TinyReg(), args), datamodule=hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(16)))
    recorded = profiler.recorded_durations
    for hook in ("on_before_backward", "on_after_backward", "on_before_optimizer_step"):
        assert len(recorded[f"[LightningModule]HFModule.{hook}"]) == 2
        assert len(recorded[f"[Callback]HFFlowCallback.{hook}"]) == 2


@pytest.mark.parametrize("name", ["plain", "quiet"])
def test_plain_lightning_trainer_takes_the_direct_calls(tmp_path, name):
    """``HFModule`` in one's own ``lightning.Trainer`` skips the same dispatch (its default profiler records nothing)."""
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=0.05)
    recorder = _Recorder(listen=False)
    profiler = {"plain": None, "quiet": QuietProfiler()}[name]
    trainer = pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, logger=False,
                         callbacks=[recorder], profiler=profiler)
    trainer.fit(hf_lightning.HFModule(TinyReg(), args), datamodule=hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(16)))
    assert set(recorder.plans) == {StepDispatch(direct_backward=True, direct_optimizer_step=True)}
    assert trainer.global_step == 2
