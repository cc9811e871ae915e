"""``state``: log entries, metric prefixes and best-metric tracking against transformers' own methods.

transformers' ``Trainer.log`` and ``Trainer._determine_best_metric`` are called unbound on a small
stand-in holding only the attributes they read, so both sides run on identical inputs.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from transformers import Trainer as HFTrainer
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_lightning import state as hf_state


def _args(**kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


def _transformers_prefix(metrics: dict, prefix: str) -> dict:
    # The renaming loop at the end of Trainer.evaluation_loop.
    metrics = dict(metrics)
    for key in list(metrics.keys()):
        if not key.startswith(f"{prefix}_"):
            metrics[f"{prefix}_{key}"] = metrics.pop(key)
    return metrics


@pytest.mark.parametrize(
    "metrics,prefix",
    [
        ({"accuracy": 1.0, "eval_loss": 0.5, "f1": 0.2}, "eval"),
        ({"eval_already": 1.0, "loss": 0.3}, "eval_a"),  # golden fact 14: eval_a_eval_already
        ({"test_x": 1, "y": 2}, "test"),
        ({}, "eval"),
    ],
)
def test_prefix_metrics_renames_like_evaluation_loop(metrics, prefix):
    ours = hf_state.prefix_metrics(metrics, prefix)
    expected = _transformers_prefix(metrics, prefix)
    assert list(ours.items()) == list(expected.items())


def test_golden_fact_14_prefix_of_a_named_dataset():
    assert "eval_a_eval_already" in hf_state.prefix_metrics({"eval_already": 1.0}, "eval_a")


def _best_runner(args: TrainingArguments, state: TrainerState):
    return SimpleNamespace(args=args, state=state)


@pytest.mark.parametrize(
    "metric,greater,save_strategy,values",
    [
        ("acc", None, "epoch", [0.5, 0.9, 0.6, 0.7, 0.9, 0.95]),  # golden fact 10: inferred greater_is_better
        ("loss", None, "steps", [3.0, 2.0, 2.0, 2.5, 1.0]),
        ("eval_a_loss", None, "no", [3.0, 2.0, 4.0]),  # best_global_step only with steps/epoch/best
        ("my_loss", True, "best", [1.0, 0.5, 2.0]),
        ("f1", False, "epoch", [0.3, 0.1, 0.2]),
    ],
)
def test_update_best_metric_matches_determine_best_metric(metric, greater, save_strategy, values):
    kwargs = dict(metric_for_best_model=metric, greater_is_better=greater, save_strategy=save_strategy)
    if save_strategy != "no":
        kwargs["eval_strategy"] = save_strategy if save_strategy != "best" else "steps"
    args = _args(**kwargs)
    name = hf_state.metric_name_for_best(metric)
    theirs, ours = TrainerState(), TrainerState()
    for step, value in enumerate(values, start=1):
        theirs.global_step = ours.global_step = step
        metrics = {name: value, "eval_runtime": 0.1}
        expected = HFTrainer._determine_best_metric(_best_runner(args, theirs), metrics, None)
        got = hf_state.update_best_metric(
            ours, metrics, metric_for_best_model=metric, greater_is_better=greater, save_strategy=save_strategy
        )
        assert got == expected, f"eval {step}"
        assert (ours.best_metric, ours.best_global_step) == (theirs.best_metric, theirs.best_global_step)


def test_missing_best_metric_lists_available_metrics():
    with pytest.raises(KeyError) as raised:
        hf_state.update_best_metric(
            TrainerState(), {"eval_loss": 1.0, "eval_f1": 0.5}, metric_for_best_model="acc", greater_is_better=None, save_strategy="steps"
        )
    message = str(raised.value)
    assert "eval_acc" in message and "eval_loss" in message and "eval_f1" in message


def test_greater_is_better_default():
    assert [hf_state.greater_is_better(m, None) for m in ("loss", "eval_loss", "my_loss", "accuracy", "f1")] == [
        False, False, False, True, True
    ]
    assert hf_state.greater_is_better("loss", True) is True
    for metric in ("loss", "accuracy"):
        assert _args(metric_for_best_model=metric).greater_is_better == hf_state.greater_is_better(metric, None)


class _Recorder:
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs):
        self.logs.append(dict(logs))
        return control


@pytest.mark.parametrize("tokens", ["no", "all"])
@pytest.mark.parametrize("with_start", [False, True])
def test_append_log_matches_trainer_log(tokens, with_start):
    args = _args(include_num_input_tokens_seen=tokens)
    start = time.time() - 2.0
    runs = []
    for side in ("hf", "ours"):
        state = TrainerState(global_step=7, epoch=1.75, num_input_tokens_seen=1234)
        logs = hf_state.train_log_entry(loss=0.5, grad_norm=1.25, learning_rate=1e-3)
        if side == "hf":
            stand_in = SimpleNamespace(
                state=state, args=args, control=TrainerControl(), callback_handler=_Recorder(), _initial_num_input_tokens_seen=200
            )
            HFTrainer.log(stand_in, logs, start if with_start else None)
        else:
            hf_state.append_log(
                state, logs, num_input_tokens_seen=tokens != "no", start_time=start if with_start else None,
                initial_num_input_tokens_seen=200,
            )
        runs.append((logs, state.log_history))
    (hf_logs, hf_history), (our_logs, our_history) = runs
    assert list(our_logs) == list(hf_logs)  # the dict is mutated the same way (callers read its `epoch`)
    assert [list(e) for e in our_history] == [list(e) for e in hf_history]
    for key in ("loss", "grad_norm", "learning_rate", "epoch", "step"):
        assert our_history[0][key] == hf_history[0][key]
    if tokens != "no" and with_start:
        assert our_history[0]["train_tokens_per_second"] == pytest.approx(hf_history[0]["train_tokens_per_second"], rel=0.05)


def test_train_log_entry_key_order():
    assert list(hf_state.train_log_entry(loss=1.0, grad_norm=2.0, learning_rate=3.0)) == ["loss", "grad_norm", "learning_rate"]


def test_train_summary_keys_and_rates():
    start = time.time() - 4.0
    summary = hf_state.train_summary(start_time=start, num_train_samples=128, steps_this_call=6, max_steps=12, total_flos=5.0, train_loss=0.25)
    assert list(summary) == ["train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"]
    runtime = summary["train_runtime"]
    assert summary["train_samples_per_second"] == pytest.approx(round(64 / runtime, 3), abs=1e-3)
    assert summary["train_steps_per_second"] == pytest.approx(round(6 / runtime, 3), abs=1e-3)


def test_eval_speed_metrics_keys():
    metrics = hf_state.eval_speed_metrics("eval_a", time.time() - 1.0, num_samples=10, eval_batch_size=4, world_size=1)
    assert list(metrics) == ["eval_a_runtime", "eval_a_samples_per_second", "eval_a_steps_per_second"]
    assert metrics["eval_a_steps_per_second"] == pytest.approx(round(3 / metrics["eval_a_runtime"], 3), abs=1e-3)
