"""Pure scheduling decisions checked against transformers' own code on tables of cases.

``step_end_flags``/``epoch_end_flags`` against ``DefaultFlowCallback``, ``plan_training`` against
``Trainer.set_initial_training_values``, ``resolve_interval_steps`` against ``TrainerState.compute_steps``,
and the grouping/epoch/resume arithmetic against the loop of ``Trainer._run_epoch``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer as HFTrainer
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback

from hf_lightning.schedule import (
    epoch_end_flags,
    epoch_progress,
    group_size,
    plan_training,
    resolve_interval_steps,
    resume_position,
    step_end_flags,
)
from tiny import RegressionDataset, TinyReg


def _args(**kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


# ------------------------------------------------------------------------- DefaultFlowCallback

FLOW_CASES = [
    # (strategies (log, eval, save), logging_steps, eval_steps, save_steps, logging_first_step, eval_delay, max_steps)
    (("steps", "steps", "steps"), 2, 4, 5, False, 0, 12),  # golden fact 1
    (("steps", "steps", "steps"), 0.25, 0.4, 0.5, False, 0, 14),  # fact 4: ratios -> 4, 6, 7
    (("steps", "steps", "steps"), 5, 4, 4, False, 0, 14),  # fact 5
    (("steps", "steps", "no"), 3, None, 500, False, 0, 14),  # fact 6: eval_steps falls back to logging_steps
    (("steps", "no", "no"), 5, None, 500, True, 0, 7),  # fact 7: logging_first_step
    (("steps", "steps", "no"), 500, 2, 500, False, 5, 14),  # fact 9: eval_delay
    (("epoch", "epoch", "epoch"), 500, None, 500, True, 0, 9),
    (("no", "no", "no"), 500, None, 500, True, 0, 3),
    (("steps", "steps", "steps"), 1, 1, 1, True, 0, 4),
    (("steps", "steps", "best"), 3, 3, 500, False, 2.5, 10),
    (("epoch", "steps", "steps"), 500, 0.3, 0.2, False, 4, 11),
    (("steps", "epoch", "no"), 4, None, 500, False, 1.5, 8),
]


@pytest.mark.parametrize("strategies,logging,evals,saves,first,delay,max_steps", FLOW_CASES)
def test_step_and_epoch_flags_match_default_flow_callback(strategies, logging, evals, saves, first, delay, max_steps):
    log_strategy, eval_strategy, save_strategy = strategies
    kwargs = dict(
        logging_strategy=log_strategy,
        eval_strategy=eval_strategy,
        save_strategy=save_strategy,
        logging_steps=logging,
        save_steps=saves,
        logging_first_step=first,
        eval_delay=delay,
    )
    if evals is not None:
        kwargs["eval_steps"] = evals
    if save_strategy == "best":
        kwargs["metric_for_best_model"] = "loss"
    args = _args(**kwargs)
    state = TrainerState()
    state.compute_steps(args, max_steps)
    state.max_steps = max_steps
    ours = {k: resolve_interval_steps(getattr(args, f"{k}_steps"), max_steps) for k in ("logging", "eval", "save")}
    assert ours == {"logging": state.logging_steps, "eval": state.eval_steps, "save": state.save_steps}
    flow = DefaultFlowCallback()
    steps_per_epoch = 3
    for step in range(1, max_steps + 1):
        state.global_step = step
        state.epoch = step / steps_per_epoch
        control = flow.on_step_end(args, state, TrainerControl())
        flags = step_end_flags(
            global_step=step,
            max_steps=max_steps,
            logging_steps=ours["logging"],
            eval_steps=ours["eval"],
            save_steps=ours["save"],
            logging_strategy=log_strategy,
            eval_strategy=eval_strategy,
            save_strategy=save_strategy,
            logging_first_step=first,
            eval_delay=delay,
        )
        expected = (control.should_log, control.should_evaluate, control.should_save, control.should_training_stop)
        assert (flags.log, flags.evaluate, flags.save, flags.stop) == expected, f"step {step}"
        if step % steps_per_epoch == 0 or step == max_steps:
            control = flow.on_epoch_end(args, state, TrainerControl())
            flags = epoch_end_flags(
                epoch=state.epoch,
                logging_strategy=log_strategy,
                eval_strategy=eval_strategy,
                save_strategy=save_strategy,
                eval_delay=delay,
            )
            assert (flags.log, flags.evaluate, flags.save) == (
                control.should_log,
                control.should_evaluate,
                control.should_save,
            ), f"epoch end at step {step}"


def _steps_where(flag: str, max_steps: int, **kwargs) -> list[int]:
    logging_steps = resolve_interval_steps(kwargs.pop("logging_steps", 500), max_steps)
    eval_steps = kwargs.pop("eval_steps", None)
    eval_steps = logging_steps if eval_steps is None else resolve_interval_steps(eval_steps, max_steps)
    save_steps = resolve_interval_steps(kwargs.pop("save_steps", 500), max_steps)
    defaults = dict(logging_strategy="steps", eval_strategy="no", save_strategy="no", logging_first_step=False, eval_delay=0)
    defaults.update(kwargs)
    found = []
    for step in range(1, max_steps + 1):
        flags = step_end_flags(
            global_step=step, max_steps=max_steps, logging_steps=logging_steps, eval_steps=eval_steps, save_steps=save_steps, **defaults
        )
        if getattr(flags, flag):
            found.append(step)
    return found


@pytest.mark.parametrize("logging,evals,saves", [(1.0, 1.0, 1.0), (1.0, 3.0, 0.5), (0.25, 2.0, 500)])
def test_interval_steps_keep_transformers_types(logging, evals, saves):
    """``--logging_steps 1`` parses to 1.0, which TrainingArguments keeps a float (it casts only values above 1):
    trainer_state.json then says ``"logging_steps": 1.0``, as transformers' (seen running run_glue.py)."""
    args = _args(logging_steps=logging, eval_steps=evals, save_steps=saves, eval_strategy="steps", save_strategy="steps")
    state = TrainerState()
    state.compute_steps(args, 10)
    ours = [resolve_interval_steps(getattr(args, f"{k}_steps"), 10) for k in ("logging", "eval", "save")]
    expected = [state.logging_steps, state.eval_steps, state.save_steps]
    assert [(v, type(v)) for v in ours] == [(v, type(v)) for v in expected]


def test_golden_facts_4_to_9_as_step_lists():
    ratios = dict(logging_steps=0.25, eval_steps=0.4, save_steps=0.5, eval_strategy="steps", save_strategy="steps")
    assert [resolve_interval_steps(r, 14) for r in (0.25, 0.4, 0.5)] == [4, 6, 7]  # fact 4
    assert _steps_where("log", 14, **ratios) == [4, 8, 12]
    assert _steps_where("evaluate", 14, **ratios) == [6, 12, 14]
    assert _steps_where("save", 14, **ratios) == [7, 14]
    fact5 = dict(logging_steps=5, eval_steps=4, save_steps=4, eval_strategy="steps", save_strategy="steps")
    assert _steps_where("evaluate", 14, **fact5) == [4, 8, 12, 14]
    assert _steps_where("save", 14, **fact5) == [4, 8, 12, 14]
    assert _steps_where("log", 14, **fact5) == [5, 10]
    assert _steps_where("evaluate", 14, logging_steps=3, eval_strategy="steps") == [3, 6, 9, 12, 14]  # fact 6
    assert _steps_where("log", 7, logging_steps=5, logging_first_step=True) == [1, 5]  # fact 7
    assert _steps_where("evaluate", 14, eval_steps=2, eval_strategy="steps", eval_delay=5)[0] == 6  # fact 9


# --------------------------------------------------------------------- set_initial_training_values


@pytest.fixture(scope="module")
def hf_trainer(tmp_path_factory):
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("plan")), report_to="none", use_cpu=True)
    return HFTrainer(model=TinyReg(), args=args, train_dataset=RegressionDataset(8))


class _Unsized(IterableDataset):
    def __iter__(self):
        yield from range(10)


PLAN_CASES = list(
    itertools.product(
        [50, 64, 72, 7],  # samples
        [8, 5],  # batch size
        [1, 2, 3, 10],  # accumulation
        [(-1, 2), (-1, 1.5), (-1, 0.3), (10, 3), (1, 3), (0, 2)],  # (max_steps, num_train_epochs)
        [False, True],  # dataloader_drop_last
    )
)
# An empty dataloader (7 samples, batch 8, drop_last) has no plan in transformers either.
PLAN_CASES = [case for case in PLAN_CASES if not (case[4] and case[0] < case[1])]


@pytest.mark.parametrize("samples,bs,ga,limits,drop_last", PLAN_CASES)
def test_plan_training_matches_set_initial_training_values(hf_trainer, samples, bs, ga, limits, drop_last):
    max_steps, epochs = limits
    args = _args(
        per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga,
        max_steps=max_steps,
        num_train_epochs=epochs,
        dataloader_drop_last=drop_last,
    )
    loader = DataLoader(range(samples), batch_size=bs, drop_last=drop_last)
    hf_trainer._train_batch_size = bs  # what Trainer.__init__ takes from its own args
    expected = hf_trainer.set_initial_training_values(args, loader)
    plan = plan_training(
        max_steps=max_steps,
        num_train_epochs=epochs,
        gradient_accumulation_steps=ga,
        per_device_train_batch_size=bs,
        world_size=1,
        micro_batches_per_epoch=len(loader),
        num_examples=samples,
    )
    ours = (
        plan.num_train_epochs,
        plan.updates_per_epoch,
        plan.num_examples,
        plan.num_train_samples,
        plan.total_train_batch_size,
        plan.steps_in_epoch,
        plan.max_steps,
    )
    assert ours == expected


def test_plan_training_unsized_matches_transformers(hf_trainer):
    args = _args(per_device_train_batch_size=4, gradient_accumulation_steps=3, max_steps=7)
    hf_trainer._train_batch_size = 4
    expected = hf_trainer.set_initial_training_values(args, DataLoader(_Unsized(), batch_size=4))
    plan = plan_training(
        max_steps=7, num_train_epochs=3, gradient_accumulation_steps=3, per_device_train_batch_size=4, world_size=1,
        micro_batches_per_epoch=None, num_examples=None,
    )
    ours = (plan.num_train_epochs, plan.updates_per_epoch, plan.num_examples, plan.num_train_samples,
            plan.total_train_batch_size, plan.steps_in_epoch, plan.max_steps)
    assert ours == expected
    with pytest.raises(ValueError, match="max_steps"):
        plan_training(max_steps=-1, num_train_epochs=3, gradient_accumulation_steps=1, per_device_train_batch_size=4,
                      world_size=1, micro_batches_per_epoch=None, num_examples=None)


def test_golden_facts_3_and_8_plans():
    def plan(samples, ga, max_steps=-1, epochs=2.0, drop_last=False):
        micro = samples // 8 if drop_last else math.ceil(samples / 8)
        return plan_training(max_steps=max_steps, num_train_epochs=epochs, gradient_accumulation_steps=ga,
                             per_device_train_batch_size=8, world_size=1, micro_batches_per_epoch=micro, num_examples=samples)

    fact3 = plan(50, 3)
    assert (fact3.updates_per_epoch, fact3.max_steps) == (3, 6)
    assert plan(50, 3, drop_last=True).max_steps == 4
    fact8 = plan(50, 1, max_steps=10)
    assert (fact8.num_train_epochs, fact8.max_steps) == (2, 10)
    assert plan(50, 1, epochs=1.5).max_steps == 11
    e1 = plan(64, 2, epochs=3)
    assert (e1.max_steps, e1.updates_per_epoch, e1.num_train_epochs) == (12, 4, 3)


# ------------------------------------------------------------------ the epoch loop's arithmetic


def _transformers_epoch(steps_in_epoch: int, ga: int, updates_per_epoch: int, epoch: int) -> tuple[list[int], list[float]]:
    """The group sizes and epoch floats of ``Trainer._run_epoch`` (its loop, with the model calls left out)."""
    remainder = steps_in_epoch % ga or ga
    sizes, epochs = [], []
    step = -1
    batches = iter(range(steps_in_epoch))
    for update_step in range(updates_per_epoch):
        num_batches = ga if update_step != updates_per_epoch - 1 else remainder
        group = list(itertools.islice(batches, num_batches))
        sizes.append(len(group))
        step += len(group)
        epochs.append(epoch + (step + 1) / steps_in_epoch)
    return sizes, epochs


@pytest.mark.parametrize("steps_in_epoch,ga", [(7, 1), (7, 2), (7, 3), (9, 2), (8, 4), (3, 5), (10, 3)])
def test_group_size_and_epoch_progress_follow_the_transformers_loop(steps_in_epoch, ga):
    updates = max(math.ceil(steps_in_epoch / ga), 1)
    for epoch in (0, 2):
        sizes, epochs = _transformers_epoch(steps_in_epoch, ga, updates, epoch)
        ours = [group_size(i, steps_in_epoch=steps_in_epoch, gradient_accumulation_steps=ga, updates_per_epoch=updates) for i in range(updates)]
        assert ours == sizes
        done = list(itertools.accumulate(ours))
        assert [epoch_progress(epoch, d, steps_in_epoch) for d in done] == epochs


def test_golden_facts_2_and_3_epoch_floats():
    _, e2 = _transformers_epoch(9, 2, 5, 0)
    assert [epoch_progress(0, d, 9) for d in (2, 4, 6, 8, 9)] == e2 == [2 / 9, 4 / 9, 6 / 9, 8 / 9, 1.0]
    sizes = [group_size(i, steps_in_epoch=7, gradient_accumulation_steps=3, updates_per_epoch=3) for i in range(3)]
    assert sizes == [3, 3, 1]
    floats = [round(epoch_progress(e, d, 7), 4) for e in (0, 1) for d in (3, 6, 7)]
    assert floats == [0.4286, 0.8571, 1.0, 1.4286, 1.8571, 2.0]


@pytest.mark.parametrize("global_step,updates,ga,ignore", [(5, 4, 2, False), (4, 4, 2, False), (5, 4, 2, True), (13, 5, 3, False), (0, 3, 1, False)])
def test_resume_position_matches_init_training_state(global_step, updates, ga, ignore):
    # Trainer._init_training_state, in micro-batches; ours counts whole optimizer steps.
    epochs_trained = int(global_step // updates)
    skipped_micro = 0 if ignore else (global_step % updates) * ga
    assert resume_position(global_step, updates_per_epoch=updates, gradient_accumulation_steps=ga, ignore_data_skip=ignore) == (
        epochs_trained,
        skipped_micro // ga,
    )


@pytest.mark.parametrize("value,expected", [(0.1, 2), (0.25, 4), (3, 3), (1, 1), (0, 0)])
def test_warmup_steps_golden_fact_17(value, expected):
    args = _args(warmup_steps=value)
    assert args.get_warmup_steps(14) == expected
    from hf_lightning.hooks import TrainerHooks

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    hooks = TrainerHooks(torch.nn.Linear(1, 1), _args(warmup_steps=value, lr_scheduler_type="constant_with_warmup"))
    scheduler = hooks.create_scheduler(14, optimizer)
    lrs = []
    for _ in range(14):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert sum(lr < 1.0 for lr in lrs) == expected
