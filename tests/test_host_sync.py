"""No host-device synchronisation during training except at logging steps (issue 6).

A synchronisation is what makes the host wait for the accelerator: reading a device tensor's value
(``item``, ``tolist``, ``bool``, ``float``, ``int``, ``numpy``, ``cpu``) or ``torch.cuda.synchronize``.
``SyncCounter`` patches those entry points and attributes each call to the optimizer step during
which it happened. On CPU every tensor is a host tensor, so calls made by the data pipeline (the
sampler and the collator, which work on host data under ``torch.utils.data``) are left out; on
CUDA only calls on CUDA tensors count, and torch's own sync debug mode is switched on as well.
Synchronisations inside the model's forward (transformers' attention-mask helpers check masks on
the host) belong to the model, happen under every training loop, and are counted apart.

Lightning's progress bar reads the values logged with ``prog_bar=True`` back at every batch end
(``_ResultCollection.metrics``); that is free only if those values are host tensors. On CPU the
counter can't tell host from device tensors, so it leaves that read out and the test checks
instead that everything hf_lightning hands to ``LightningModule.log`` during ``fit`` is a host
tensor (a Python number would be put on the module's device by Lightning).

The counter is checked against transformers.Trainer, which reads the loss every step (its NaN/Inf
filter is a Python ``or`` over two tensors): it must see those reads.
"""

from __future__ import annotations

import collections
import sys
import warnings
from typing import Any

import pytest
import torch
from transformers import TrainerCallback
from transformers import Trainer as HFTrainer

import hf_lightning
from helpers import LIGHTNING_QUIET, make_args
from tiny import tiny_bert_config, tiny_llama_config

SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")
DATA_PIPELINE = ("/torch/utils/data/",)
PROGRESS_BAR_READ = "lightning/pytorch/trainer/connectors/logger_connector/result.py"


class SyncCounter(TrainerCallback):
    """Counts synchronising calls per optimizer step (0 = before the first step)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.step = 0
        self.calls: dict[int, list[str]] = collections.defaultdict(list)
        self.model_calls = 0
        self._in_model = 0
        self.logged: list[tuple[str, Any]] = []

    def watch_model(self, model: torch.nn.Module) -> None:
        """Count synchronisations inside ``model``'s forward apart (they are the model's, not the loop's)."""

        def enter(*_: Any) -> None:
            self._in_model += 1

        def leave(*_: Any) -> None:
            self._in_model -= 1

        model.register_forward_pre_hook(enter)
        model.register_forward_hook(leave, always_call=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step = state.global_step + 1

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in SYNC_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        from lightning.pytorch import LightningModule

        original_log = LightningModule.log

        def log(module: Any, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            if module.trainer.training:
                self.logged.append((name, value))
            return original_log(module, name, value, *args, **kwargs)

        monkeypatch.setattr(LightningModule, "log", log)
        if torch.cuda.is_available():
            original = torch.cuda.synchronize

            def synchronize(*args: Any, **kwargs: Any) -> None:
                self._record("torch.cuda.synchronize")
                return original(*args, **kwargs)

            monkeypatch.setattr(torch.cuda, "synchronize", synchronize)

    def _wrap(self, name: str, original: Any) -> Any:
        counter = self

        def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if counter._counts(tensor):
                counter._record(f"Tensor.{name}")
            return original(tensor, *args, **kwargs)

        return wrapper

    def _counts(self, tensor: torch.Tensor) -> bool:
        if self.device_type == "cuda":
            return tensor.is_cuda
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if any(part in name for part in DATA_PIPELINE) or name.endswith(PROGRESS_BAR_READ):
                return False
            frame = frame.f_back
        return True

    def _record(self, what: str) -> None:
        if self._in_model:
            self.model_calls += 1
            return
        caller = sys._getframe(3)
        self.calls[self.step].append(f"{what} from {caller.f_code.co_filename}:{caller.f_lineno} ({caller.f_code.co_name})")

    def warning_hook(self, show: Any) -> Any:
        """A ``warnings.showwarning`` recording torch's sync-debug-mode warnings like the patched calls."""

        def hook(message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
            if "synchroniz" not in str(message):
                return show(message, category, filename, lineno, *args, **kwargs)
            if self._in_model:
                self.model_calls += 1
            else:
                self.calls[self.step].append(f"sync debug mode: {filename}:{lineno}")

        return hook

    def steps_with_syncs(self) -> set[int]:
        return {step for step, calls in self.calls.items() if step > 0 and calls}


def _llama():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_llama_config())


def _bert():
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(tiny_bert_config())


class TokenData(torch.utils.data.Dataset):
    """Sequences with some padding (attention mask 0, label -100), so token counts are data-dependent."""

    def __init__(self, n: int, seq_len: int = 12, causal_lm: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 99, (n, seq_len), generator=g)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
        self.mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        self.labels = self.ids.masked_fill(self.mask == 0, -100) if causal_lm else torch.randint(0, 2, (n,), generator=g)
        self.ids = self.ids.masked_fill(self.mask == 0, 0)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _train(framework: str, tmp_path, monkeypatch, *, model_fn=_llama, causal_lm: bool = True, progress_bar: bool = False, device: str = "cpu", **args: Any) -> SyncCounter:
    counter = SyncCounter(device)
    torch.manual_seed(0)
    model = model_fn()
    counter.watch_model(model)
    settings: dict[str, Any] = dict(
        per_device_train_batch_size=4, max_steps=8, logging_steps=4, learning_rate=1e-3, max_grad_norm=1.0,
        disable_tqdm=not progress_bar, use_cpu=device == "cpu",
    )
    settings.update(args)
    kwargs: dict[str, Any] = dict(model=model, args=make_args(tmp_path / framework, **settings), train_dataset=TokenData(96, causal_lm=causal_lm), callbacks=[counter])
    if framework == "hl":
        kwargs.update(LIGHTNING_QUIET)
        kwargs["enable_progress_bar"] = progress_bar
        trainer = hf_lightning.Trainer(**kwargs)
    else:
        trainer = HFTrainer(**kwargs)
    counter.install(monkeypatch)
    try:
        if device == "cuda":
            # torch's own detector also sees synchronising copies and kernels (nonzero, masked indexing, ...).
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                monkeypatch.setattr(warnings, "showwarning", counter.warning_hook(warnings.showwarning))
                trainer.train()
        else:
            trainer.train()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        monkeypatch.undo()
    return counter


def _assert_syncs_only_when_logging(counter: SyncCounter, logging_steps: set[int]) -> None:
    unexpected = {step: calls for step, calls in counter.calls.items() if step > 0 and step not in logging_steps and calls}
    assert not unexpected, "host synchronisations on non-logging steps:\n" + "\n".join(
        f"  step {step}: {calls[:5]}" for step, calls in sorted(unexpected.items())
    )
    # The loss is read at every logging step, so the counter must have seen it there.
    assert counter.steps_with_syncs() == logging_steps
    device_values = [(name, value) for name, value in counter.logged if not (isinstance(value, torch.Tensor) and value.device.type == "cpu")]
    assert not device_values, f"values logged to Lightning during training that are not host tensors: {device_values}"


@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(progress_bar=True),
        dict(gradient_accumulation_steps=2, include_num_input_tokens_seen="non_padding"),
        dict(include_num_input_tokens_seen="all"),
        dict(model_fn=_bert, causal_lm=False, logging_nan_inf_filter=False, lr_scheduler_type="cosine", warmup_steps=2),
    ],
    ids=["default", "progress-bar", "accumulation-tokens", "all-tokens", "bert-no-nan-filter"],
)
def test_no_host_sync_on_non_logging_steps(tmp_path, monkeypatch, case):
    counter = _train("hl", tmp_path, monkeypatch, **case)
    _assert_syncs_only_when_logging(counter, {4, 8})


def test_counter_sees_transformers_per_step_loss_check(tmp_path, monkeypatch):
    """transformers.Trainer's NaN/Inf filter reads the loss every step: the counter must catch it."""
    counter = _train("hf", tmp_path, monkeypatch)
    assert counter.steps_with_syncs() == set(range(1, 9))
    assert any("Tensor.__bool__" in call for call in counter.calls[3])


@pytest.mark.gpu
@pytest.mark.parametrize("case", [dict(bf16=True), dict(bf16=True, progress_bar=True, optim="adamw_torch_fused")], ids=["bf16", "bf16-fused-progress-bar"])
def test_no_host_sync_on_non_logging_steps_cuda(tmp_path, monkeypatch, case):
    counter = _train("hl", tmp_path, monkeypatch, device="cuda", **case)
    _assert_syncs_only_when_logging(counter, {4, 8})


def test_token_count_kept_on_host_matches_transformers(tmp_path):
    """``num_input_tokens_seen="all"`` counted on the host, without a device tensor per step, is transformers' count."""
    from helpers import assert_same_history, run_both

    hf, hl = run_both(
        _llama,
        tmp_path,
        trainer_kwargs=dict(train_dataset=TokenData(40)),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        logging_steps=2,
        include_num_input_tokens_seen="all",
    )
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert hl.state.num_input_tokens_seen == hf.state.num_input_tokens_seen > 0
