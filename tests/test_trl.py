"""TRL's trainers on Lightning through ``on_lightning``: the same runs as TRL's own.

SFT and DPO in detail; then Reward, KTO, GRPO, RLOO and Distillation, each run by TRL and by ``on_lightning`` of the
same class on the same tiny Llama, compared bit for bit (log_history, weights, checkpoint files); and GRPO in two
processes, Lightning's DDP against TRL under torchrun.

TRL's trainers subclass transformers.Trainer and override its points (``compute_loss`` with token accuracy and
entropy, ``log``, ``_prepare_dataset``, their own collator, the signature columns); ``on_lightning(SFTTrainer)``
puts hf_lightning.Trainer under them. DPO also prepares a reference model with ``accelerator.prepare_model``.
TRL's configs default to ``bf16=True``, so these runs are bf16 on CPU, on both sides. Skipped when TRL is not
installed (``pip install "hf_lightning[trl]"``).
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights
from tiny import write_tokenizer

trl = pytest.importorskip("trl")

RUN = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4, logging_steps=1, eval_strategy="steps",
           eval_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3, max_length=32, report_to="none",
           use_cpu=True, disable_tqdm=True, seed=0)
"""The arguments both TRL configs get: 4 optimizer steps of 2 micro-batches, evaluated and saved every 2."""


def _tiny_llama(tokenizer) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.LlamaForCausalLM(config)


def _run(trainer_class, out, tokenizer, **trainer_kwargs):
    import datasets

    texts = [f"the cat sat on the mat {i} times" for i in range(24)]
    train = datasets.Dataset.from_dict({"text": texts})
    dev = datasets.Dataset.from_dict({"text": texts[:8]})
    model = _tiny_llama(tokenizer)
    args = trl.SFTConfig(output_dir=str(out), **RUN)
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer,
                            **trainer_kwargs)
    trainer.train()
    return trainer


def test_sft_trainer_on_lightning_equals_trl(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    lightning_sft = hf_lightning.on_lightning(trl.SFTTrainer)
    assert issubclass(lightning_sft, trl.SFTTrainer) and issubclass(lightning_sft, hf_lightning.Trainer)

    stock = _run(trl.SFTTrainer, tmp_path / "trl", tokenizer)
    ours = _run(lightning_sft, tmp_path / "hl", tokenizer, **LIGHTNING_QUIET)

    history = ours.state.log_history
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(history[0])  # TRL's own log keys came through
    assert any("eval_mean_token_accuracy" in entry for entry in history)
    assert_same_history(stock.state.log_history, history, rel=0.0)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    for step in ("checkpoint-2", "checkpoint-4"):
        assert sorted(os.listdir(tmp_path / "trl" / step)) == sorted(os.listdir(tmp_path / "hl" / step))


def _dpo(trainer_class, out, tokenizer, **trainer_kwargs):
    import copy

    import datasets

    rows = {
        "prompt": [f"w1 w2 w{10 + i}" for i in range(16)],
        "chosen": [f" w{30 + i % 5} w40" for i in range(16)],
        "rejected": [f" w{50 + i % 7} w60 w61" for i in range(16)],
    }
    train = datasets.Dataset.from_dict(rows)
    model = _tiny_llama(tokenizer)
    args = trl.DPOConfig(output_dir=str(out), **RUN)
    trainer = trainer_class(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=train,
                            eval_dataset=train.select(range(8)), processing_class=tokenizer, **trainer_kwargs)
    trainer.train()
    return trainer


def test_dpo_trainer_on_lightning_equals_trl(tmp_path):
    """DPO's batches keep TRL's own columns (its ``_set_signature_columns_if_needed``), and its reference model runs in
    the bf16 autocast that accelerate's ``prepare_model`` gives it: the rewards, losses and weights are TRL's."""
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    stock = _dpo(trl.DPOTrainer, tmp_path / "trl", tokenizer)
    ours = _dpo(hf_lightning.on_lightning(trl.DPOTrainer), tmp_path / "hl", tokenizer, **LIGHTNING_QUIET)

    history = ours.state.log_history
    assert {"rewards/chosen", "rewards/margins", "logps/rejected"} <= set(history[0])
    assert history[0]["rewards/chosen"] == 0.0  # the policy is its reference at the first step, to the last bit
    assert history[1]["loss"] < history[0]["loss"]  # and it learns
    assert_same_history(stock.state.log_history, history, rel=0.0)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    for step in ("checkpoint-2", "checkpoint-4"):
        assert sorted(os.listdir(tmp_path / "trl" / step)) == sorted(os.listdir(tmp_path / "hl" / step))


# ------------------------------------------------------------------------------- the other TRL trainers

def _saved_llama(folder, tokenizer, noise_seed: int | None = None) -> str:
    """The tiny Llama saved to ``folder`` (a path: TRL loads reference/teacher models by name); ``noise_seed`` perturbs it."""
    model = _tiny_llama(tokenizer)
    if noise_seed is not None:
        torch.manual_seed(noise_seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _reward_length(completions, **kwargs):
    return [float(len(completion.split())) for completion in completions]


def _prompts(n: int, first: int = 10) -> dict[str, list[str]]:
    return {"prompt": [f"w1 w2 w{first + i}" for i in range(n)]}


ONLINE = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4, logging_steps=1, eval_strategy="steps",
              eval_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3, report_to="none", use_cpu=True,
              disable_tqdm=True, seed=0, bf16=False, max_completion_length=8)
"""The trainers that generate: 4 prompts per micro-batch (GRPO/RLOO: 1 prompt x 4 generations), completions of 8 tokens."""


def _other_trainer_cases(tmp_path, tokenizer):
    """Per trainer: TRL's trainer and config classes, the config's arguments, and the trainer's inputs (built afresh per run)."""
    import datasets

    policy = _saved_llama(tmp_path / "policy", tokenizer)
    preferences = {"chosen": [f"w1 w2 w{30 + i % 5} w40" for i in range(16)], "rejected": [f"w1 w2 w{50 + i % 7} w60 w61" for i in range(16)]}
    kto = {**_prompts(16), "completion": [f" w{30 + i % 5} w40" for i in range(16)], "label": [i % 3 != 0 for i in range(16)]}
    completions = {**_prompts(16), "completion": [f" w{30 + i % 5} w40" for i in range(16)]}

    def reward_model():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, num_labels=1,
        )
        return transformers.LlamaForSequenceClassification(config)

    def train_eval(rows, n_eval=8):
        train = datasets.Dataset.from_dict(rows)
        return dict(train_dataset=train, eval_dataset=train.select(range(n_eval)))

    return {
        # sequence-classification model, pairwise loss, TRL's reward metrics (accuracy, margin)
        "reward": (trl.RewardTrainer, trl.RewardConfig, RUN, lambda: dict(model=reward_model(), **train_eval(preferences))),
        # unpaired preferences; a reference model loaded from the policy's folder
        "kto": (trl.KTOTrainer, trl.KTOConfig, RUN, lambda: dict(model=policy, **train_eval(kto))),
        # generation in `_prepare_inputs` (TRL's override), reused over num_iterations=2; no reference model (beta=0)
        "grpo": (trl.GRPOTrainer, trl.GRPOConfig, dict(ONLINE, num_generations=4, num_iterations=2),
                 lambda: dict(model=policy, reward_funcs=_reward_length, train_dataset=datasets.Dataset.from_dict(_prompts(16)),
                              eval_dataset=datasets.Dataset.from_dict(_prompts(8, first=20)))),
        # leave-one-out baseline with a KL term to a reference model (beta > 0 by default)
        "rloo": (trl.RLOOTrainer, trl.RLOOConfig, dict(ONLINE, num_generations=4, num_iterations=2),
                 lambda: dict(model=policy, reward_funcs=_reward_length, train_dataset=datasets.Dataset.from_dict(_prompts(16)),
                              eval_dataset=datasets.Dataset.from_dict(_prompts(8, first=20)))),
        # on-policy distillation from a perturbed copy of the policy, in bf16 (TRL's default)
        "distillation": (trl.DistillationTrainer, trl.DistillationConfig, dict(ONLINE, bf16=True),
                         lambda: dict(model=policy, teacher_model=_saved_llama(tmp_path / "teacher", tokenizer, noise_seed=1),
                                      **train_eval(completions))),
    }


@pytest.mark.parametrize("name", ["reward", "kto", "grpo", "rloo", "distillation"])
def test_other_trl_trainers_on_lightning_equal_trl(tmp_path, name):
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    cases = _other_trainer_cases(tmp_path, tokenizer)
    trainer_class, config_class, arguments, inputs = cases[name]

    def run(cls, out, **kwargs):
        trainer = cls(args=config_class(output_dir=str(tmp_path / out), **arguments), processing_class=tokenizer, **inputs(), **kwargs)
        trainer.train()
        return trainer

    stock = run(trainer_class, "trl")
    ours = run(hf_lightning.on_lightning(trainer_class), "hl", **LIGHTNING_QUIET)
    history = ours.state.log_history
    assert any("eval_loss" in entry for entry in history)
    assert history[0]["loss"] != 0.0 or history[0].get("grad_norm", 0.0) != 0.0  # a run that learns something
    assert_same_history(stock.state.log_history, history, rel=0.0)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    for step in ("checkpoint-2", "checkpoint-4"):
        assert sorted(os.listdir(tmp_path / "trl" / step)) == sorted(os.listdir(tmp_path / "hl" / step))


def test_online_dpo_overrides_maybe_log_save_evaluate_and_runs_on_lightning_as_in_trl(tmp_path):
    """TRL's OnlineDPOTrainer copies transformers' ``_maybe_log_save_evaluate`` to add its own metrics to each training
    log (and resets ``tr_loss`` in place): routed, so its logs, weights and checkpoints on Lightning are TRL's own.
    Without evaluation: TRL's own run cannot evaluate a prompt-only dataset."""
    import datasets
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    policy = _saved_llama(tmp_path / "policy", tokenizer)
    arguments = {**{k: v for k, v in ONLINE.items() if k != "max_completion_length"}, "max_new_tokens": 8, "eval_strategy": "no"}

    def run(cls, out, **kwargs):
        trainer = cls(model=policy, reward_funcs=_reward_length, args=OnlineDPOConfig(output_dir=str(tmp_path / out), **arguments),
                      processing_class=tokenizer, train_dataset=datasets.Dataset.from_dict(_prompts(16)), **kwargs)
        trainer.train()
        return trainer

    stock = run(OnlineDPOTrainer, "trl")
    ours = run(hf_lightning.on_lightning(OnlineDPOTrainer), "hl", **LIGHTNING_QUIET)
    history = ours.state.log_history
    assert [entry["step"] for entry in history if "objective/kl" in entry] == [1, 2, 3, 4]  # TRL's metrics, from its override
    assert_same_history(stock.state.log_history, history, rel=0.0)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    for step in ("checkpoint-2", "checkpoint-4"):
        assert sorted(os.listdir(tmp_path / "trl" / step)) == sorted(os.listdir(tmp_path / "hl" / step))


def test_grpo_resumes_from_trls_checkpoint_as_trl_does(tmp_path):
    """GRPO overrides ``_load_optimizer_and_scheduler`` (its entropy controller's state): routed, so
    ``on_lightning(GRPOTrainer)`` resumes TRL's own ``checkpoint-3`` and continues exactly as TRL's resumed run."""
    import shutil

    import datasets

    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    tokenizer.eos_token = "[SEP]"
    policy = _saved_llama(tmp_path / "policy", tokenizer)

    def run(cls, out, resume_from=None, **kwargs):
        args = trl.GRPOConfig(output_dir=str(tmp_path / out), **dict(ONLINE, max_steps=6, save_steps=3, eval_strategy="no",
                                                                     num_generations=4, num_iterations=2))
        if resume_from is not None:  # the output folder of a run stopped after its first checkpoint
            shutil.copytree(resume_from, tmp_path / out / "checkpoint-3")
        trainer = cls(model=policy, reward_funcs=_reward_length, args=args, processing_class=tokenizer,
                      train_dataset=datasets.Dataset.from_dict(_prompts(16)), **kwargs)
        trainer.train(resume_from_checkpoint=None if resume_from is None else str(tmp_path / out / "checkpoint-3"))
        return trainer

    run(trl.GRPOTrainer, "first")
    stock = run(trl.GRPOTrainer, "trl", resume_from=tmp_path / "first" / "checkpoint-3")
    ours = run(hf_lightning.on_lightning(trl.GRPOTrainer), "hl", resume_from=tmp_path / "first" / "checkpoint-3", **LIGHTNING_QUIET)
    assert [entry["step"] for entry in ours.state.log_history[:4]] == [1, 2, 3, 4]  # TRL's history up to step 3, then ours
    assert_same_history(stock.state.log_history, ours.state.log_history, rel=0.0)
    assert_same_weights(stock.model, ours.model, atol=0.0)
    assert sorted(os.listdir(tmp_path / "trl" / "checkpoint-6")) == sorted(os.listdir(tmp_path / "hl" / "checkpoint-6"))

@pytest.mark.distributed
@pytest.mark.slow  # two torchrun launches of TRL, ~20 s: `pytest -m slow tests/test_trl.py`
def test_grpo_in_two_processes_on_lightning_equals_trl_under_torchrun(tmp_path):
    """GRPO gathers the rewards of all ranks to compute each group's advantage and generates on every rank: under
    Lightning's DDP (2 CPU processes, gloo) the log_history and the final weights are TRL's under torchrun, bit for bit."""
    import json

    from dist_helpers import torchrun

    for framework in ("hf", "hl"):
        torchrun("trl_ddp_run.py", "--framework", framework, "--out", str(tmp_path))
    expected, actual = (json.loads((tmp_path / f"{fw}_history.json").read_text()) for fw in ("hf", "hl"))
    assert sum("eval_loss" in entry for entry in expected) == 2 and len(expected) == 7  # 4 steps, 2 evaluations, the summary
    assert actual == expected
    weights = {fw: torch.load(tmp_path / f"{fw}_weights.pt") for fw in ("hf", "hl")}
    assert weights["hf"].keys() == weights["hl"].keys()
    assert all(torch.equal(weights["hf"][k], weights["hl"][k]) for k in weights["hf"])
