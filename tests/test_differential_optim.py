"""Optimizers and schedulers against transformers.Trainer: the two HF parameter groups (fact 16),
every ``lr_scheduler_type`` (through ``get_scheduler``), plateau schedulers stepped on the eval
metric, the optim names, ``optim_args``, ``optimizers=(opt, sched)`` and ``optimizer_cls_and_kwargs``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer as HFTrainer
from transformers.trainer_utils import SchedulerType

from helpers import assert_same_history, assert_same_weights, make_args, run_both
from hf_lightning.hooks import TrainerHooks
from lm import tiny_bert_classifier, tiny_llama
from tiny import RegressionDataset, TinyReg


def parameter_groups(model, weight_decay):
    """The groups of hf_lightning's create_optimizer (the Lightning way: TrainerHooks)."""
    return TrainerHooks(model, make_args("unused", weight_decay=weight_decay)).create_optimizer().param_groups


def _named_groups(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g["weight_decay"]) for g in groups]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_bert_classifier, TinyReg], ids=["llama", "bert", "plain"])
def test_parameter_groups_match_create_optimizer(tmp_path, factory):
    torch.manual_seed(0)
    model = factory()
    next(model.parameters()).requires_grad_(False)  # frozen parameters are left out of both groups
    hf = HFTrainer(model=model, args=make_args(tmp_path, weight_decay=0.1))
    expected = _named_groups(model, hf.create_optimizer().param_groups)
    assert _named_groups(model, parameter_groups(model, 0.1)) == expected


def test_golden_fact_16_llama_no_decay_set(tmp_path):
    model = tiny_llama()
    groups = _named_groups(model, parameter_groups(model, 0.1))
    assert groups[0][1] == 0.1 and groups[1][1] == 0.0
    no_decay = set(groups[1][0])
    expected = {f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")}
    assert no_decay == expected | {"model.norm.weight"}
    assert "model.embed_tokens.weight" in groups[0][0] and "lm_head.weight" in groups[0][0]
    assert make_args(tmp_path).optim == "adamw_torch_fused"


def _train(tmp_path, **args):
    kwargs = dict(train_dataset=RegressionDataset(40), eval_dataset=RegressionDataset(8, seed=1))
    args.setdefault("per_device_train_batch_size", 8)
    args.setdefault("learning_rate", 1e-2)
    args.setdefault("logging_steps", 1)
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=kwargs, **args)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    return hf, hl


SCHEDULER_KWARGS = {
    "cosine_with_min_lr": {"min_lr": 1e-3},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 3},
    "reduce_lr_on_plateau": {"patience": 0, "factor": 0.5, "mode": "max"},  # a falling loss "plateaus": lr halves
    "greedy": {"patience": 1, "factor": 0.5, "min_lr": 1e-4},
    "cosine_with_restarts": {"num_cycles": 2},
    "polynomial": {"power": 2.0, "lr_end": 1e-4},
}


@pytest.mark.parametrize("name", [s.value for s in SchedulerType])
def test_every_lr_scheduler_type(tmp_path, name):
    args = dict(lr_scheduler_type=name, max_steps=8, warmup_steps=2, lr_scheduler_kwargs=SCHEDULER_KWARGS.get(name, {}))
    if name in ("reduce_lr_on_plateau", "greedy"):
        # stepped on the eval metric (metric_for_best_model defaults to "loss"), not per optimizer step
        args.update(eval_strategy="steps", eval_steps=2)
    hf, hl = _train(tmp_path, **args)
    lrs = [e["learning_rate"] for e in hl.state.log_history if "learning_rate" in e]
    assert len(set(lrs)) > 1 or name == "constant"


def test_reduce_lr_on_plateau_on_a_named_metric(tmp_path):
    _train(
        tmp_path, lr_scheduler_type="reduce_lr_on_plateau", lr_scheduler_kwargs={"patience": 0, "factor": 0.3}, max_steps=8,
        eval_strategy="steps", eval_steps=2, metric_for_best_model="eval_loss", greater_is_better=True,
    )


def test_warmup_and_cosine_with_weight_decay(tmp_path):
    _train(tmp_path, lr_scheduler_type="cosine", warmup_steps=0.25, weight_decay=0.05, num_train_epochs=3, gradient_accumulation_steps=2)


@pytest.mark.parametrize(
    "optim,optim_args",
    [("adamw_torch", None), ("adamw_torch_fused", None), ("sgd", None), ("sgd", "momentum=0.9,nesterov=True"),
     ("adafactor", None), ("adagrad", "lr_decay=0.01"), ("rmsprop", "momentum=0.5")],
)
def test_optim_names_and_optim_args(tmp_path, optim, optim_args):
    _train(tmp_path, optim=optim, optim_args=optim_args, max_steps=6, weight_decay=0.01)


def test_user_optimizer_and_scheduler(tmp_path):
    made = {}

    def with_optimizers():
        torch.manual_seed(0)
        model = TinyReg()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        made.setdefault("pairs", []).append((optimizer, scheduler))
        return model

    from helpers import build

    trainers = []
    for side in ("hf", "hl"):
        model = with_optimizers()
        optimizer, scheduler = made["pairs"][-1]
        trainer = build(side, lambda m=model: m, tmp_path / side, trainer_kwargs=dict(train_dataset=RegressionDataset(40), optimizers=(optimizer, scheduler)),
                        max_steps=6, logging_steps=1, per_device_train_batch_size=8)
        trainer.train()
        trainers.append(trainer)
    assert_same_history(trainers[0].state.log_history, trainers[1].state.log_history)
    assert_same_weights(trainers[0].model, trainers[1].model)


def test_optimizer_cls_and_kwargs(tmp_path):
    kwargs = dict(train_dataset=RegressionDataset(40), optimizer_cls_and_kwargs=(torch.optim.Adam, {"lr": 3e-2, "amsgrad": True}))
    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=kwargs, max_steps=5, logging_steps=1, weight_decay=0.1)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
