"""What a ``checkpoint-N`` folder holds, compared file for file with transformers.Trainer.

Golden facts 10 (rotation and best-model sequences), 11 (EarlyStoppingCallback and its saved
state), 15 (file sets) and 20 (``total_flos`` in ``TrainOutput.metrics``), ``trainer_state.json``
content, ``from_pretrained`` round trips and ``save_model`` exports.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from checkpoint_helpers import TokenDataset, checkpoints
from helpers import LIGHTNING_QUIET, TIMING, assert_same_history, build, make_args, run_both
from tiny import RegressionDataset, TinyReg, tiny_bert_config, tiny_llama_config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    LlamaForCausalLM,
    TrainerCallback,
)

import hf_lightning


def bert() -> BertForSequenceClassification:
    return BertForSequenceClassification(tiny_bert_config())


def llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(tiny_llama_config())


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def read_state(folder) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


# ------------------------------------------------------------------------------ fact 15: file sets

STEP_ARGS = dict(per_device_train_batch_size=8, num_train_epochs=2, save_strategy="steps", save_steps=3, logging_steps=2)


def case(name: str, tokenizer):
    """``(model factory, trainer kwargs, extra args)`` of each fact-15 case."""
    if name == "plain":
        return TinyReg, dict(train_dataset=RegressionDataset(32)), {}
    if name == "bert-processing-class":
        data = dict(train_dataset=TokenDataset(32), eval_dataset=TokenDataset(8, seed=3), processing_class=tokenizer)
        return bert, data, dict(include_num_input_tokens_seen="all", eval_strategy="steps", eval_steps=3)
    if name == "bert-collator-tokenizer":
        return bert, dict(train_dataset=TokenDataset(32), data_collator=DataCollatorWithPadding(tokenizer)), {}
    if name == "causal-lm":
        return llama, dict(train_dataset=TokenDataset(32, causal=True), data_collator=DataCollatorForSeq2Seq(tokenizer)), {}
    if name == "save-only-model":
        collator = DataCollatorForSeq2Seq(tokenizer)
        return llama, dict(train_dataset=TokenDataset(32, causal=True), data_collator=collator), dict(save_only_model=True)
    raise KeyError(name)


CASES = ["plain", "bert-processing-class", "bert-collator-tokenizer", "causal-lm", "save-only-model"]
EXPECTED_FILES = {  # golden fact 15 (tokenizer files come with the tokenizer)
    "plain": {"model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json", "training_args.bin"},
    "bert-processing-class": {"config.json", "model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt",
                              "trainer_state.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json"},
    "causal-lm": {"config.json", "generation_config.json", "model.safetensors", "optimizer.pt", "rng_state.pth",
                  "scheduler.pt", "trainer_state.json", "training_args.bin", "tokenizer.json", "tokenizer_config.json"},
    "save-only-model": {"config.json", "generation_config.json", "model.safetensors", "trainer_state.json",
                        "training_args.bin", "tokenizer.json", "tokenizer_config.json"},
}


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("layout")
    runs = {}
    for name in CASES:
        model_fn, kwargs, extra = case(name, tokenizer)
        runs[name] = run_both(model_fn, root / name, trainer_kwargs=kwargs, **STEP_ARGS, **extra)
    return root, runs


@pytest.mark.parametrize("name", CASES)
def test_same_files_and_trainer_state_as_transformers(layout_runs, name):
    root, runs = layout_runs
    hf_dir, hl_dir = root / name / "hf", root / name / "hl"
    assert checkpoints(hl_dir) == checkpoints(hf_dir) == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]
    for checkpoint in checkpoints(hf_dir):
        assert set(os.listdir(hl_dir / checkpoint)) == set(os.listdir(hf_dir / checkpoint)), checkpoint
        assert without_timings(read_state(hl_dir / checkpoint)) == without_timings(read_state(hf_dir / checkpoint))
        text = (hl_dir / checkpoint / "trainer_state.json").read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # transformers' formatting
    if name in EXPECTED_FILES:
        assert set(os.listdir(hl_dir / "checkpoint-3")) == EXPECTED_FILES[name]
    state = read_state(hl_dir / "checkpoint-6")
    fields = {"best_global_step", "best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step",
              "is_hyper_param_search", "is_local_process_zero", "is_world_process_zero", "log_history", "logging_steps",
              "max_steps", "num_input_tokens_seen", "num_train_epochs", "save_steps", "stateful_callbacks",
              "total_flos", "train_batch_size", "trial_name", "trial_params"}
    assert set(state) == fields
    assert state["stateful_callbacks"]["TrainerControl"]["args"]["should_save"] is True
    assert state["train_batch_size"] == 8 and state["total_flos"] >= 0
    if name == "bert-processing-class":
        assert state["num_input_tokens_seen"] > 0 and state["total_flos"] > 0
    if name == "causal-lm":
        final = read_state(hl_dir / "checkpoint-8")
        assert final["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"] is True


@pytest.mark.parametrize("name,auto", [("bert-processing-class", AutoModelForSequenceClassification),
                                       ("causal-lm", AutoModelForCausalLM)])
def test_from_pretrained_checkpoint_gives_the_trained_logits(layout_runs, name, auto):
    root, runs = layout_runs
    trained = runs[name][1].model.eval()
    loaded = auto.from_pretrained(root / name / "hl" / "checkpoint-8").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / name / "hl" / "checkpoint-8")
    batch = tokenizer(["w1 w2 w3 w4", "w5 w6"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(trained(**batch).logits, loaded(**batch).logits)


# ---------------------------------------------------------------------------------- save_model


def test_facade_save_model_matches_transformers(layout_runs, tmp_path):
    root, runs = layout_runs
    hf, hl = runs["bert-processing-class"]
    hf.save_model(str(tmp_path / "hf"))
    hl.save_model(str(tmp_path / "hl"))
    assert set(os.listdir(tmp_path / "hl")) == set(os.listdir(tmp_path / "hf")) == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.bin"}
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hl").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hl")
    batch = tokenizer(["w7 w8 w9"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(hl.model.eval()(**batch).logits, loaded(**batch).logits)


def test_module_save_model_on_the_build_trainer_path(tmp_path, tokenizer):
    args = make_args(tmp_path / "run", per_device_train_batch_size=8, max_steps=2)
    torch.manual_seed(0)
    module = hf_lightning.HFModule(llama(), args, processing_class=tokenizer)
    datamodule = hf_lightning.HFDataModule(args, train_dataset=TokenDataset(16, causal=True),
                                           data_collator=DataCollatorForSeq2Seq(tokenizer))
    trainer = hf_lightning.build_trainer(args, **LIGHTNING_QUIET)
    trainer.fit(module, datamodule=datamodule)
    module.save_model(str(tmp_path / "export"))
    assert set(os.listdir(tmp_path / "export")) == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.bin"}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(module.model.eval()(input_ids=ids).logits, loaded(input_ids=ids).logits)


# ------------------------------------------------------------------- facts 10 and 11: best model

ACCS = [0.5, 0.9, 0.6, 0.7, 0.8, 0.85, 0.3, 0.2]
BEST_ARGS = dict(per_device_train_batch_size=8, num_train_epochs=8, eval_strategy="epoch", save_strategy="epoch",
                 logging_strategy="epoch", metric_for_best_model="acc")


class FolderWatch(TrainerCallback):
    """The checkpoint folders present after every save (transformers rotates before ``on_save``)."""

    def __init__(self, output_dir) -> None:
        self.output_dir, self.after_save = output_dir, []

    def on_save(self, args, state, control, **kwargs):
        self.after_save.append((state.global_step, checkpoints(self.output_dir)))


def run_best(framework: str, output_dir, callbacks=(), **extra):
    accs = iter(ACCS)
    watch = FolderWatch(output_dir)
    trainer = build(framework, TinyReg, output_dir, trainer_kwargs=dict(
        train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1),
        compute_metrics=lambda prediction: {"acc": next(accs)}, callbacks=[watch, *callbacks]), **{**BEST_ARGS, **extra})
    trainer.train()
    return trainer, watch.after_save, checkpoints(output_dir)


@pytest.mark.parametrize("extra", [
    dict(save_total_limit=2),
    dict(save_total_limit=1),
    dict(save_strategy="best"),
    dict(save_total_limit=1, load_best_model_at_end=True),
    dict(save_strategy="best", load_best_model_at_end=True, save_total_limit=1),
], ids=["limit-2", "limit-1", "best", "limit-1-load-best", "best-load-best-limit-1"])
def test_rotation_and_best_model_sequences_match_transformers(tmp_path, extra):
    hf, hf_seen, hf_final = run_best("hf", tmp_path / "hf", **extra)
    hl, hl_seen, hl_final = run_best("hl", tmp_path / "hl", **extra)
    assert hl_seen == hf_seen
    assert hl_final == hf_final
    for key in ("best_metric", "best_global_step", "global_step"):
        assert getattr(hl.state, key) == getattr(hf.state, key)
    assert os.path.basename(hl.state.best_model_checkpoint) == os.path.basename(hf.state.best_model_checkpoint) == "checkpoint-4"
    assert hl.state.best_metric == 0.9 and hl.state.best_global_step == 4  # fact 10
    for checkpoint in hl_final:
        assert without_timings(read_state(tmp_path / "hl" / checkpoint)) == _relative(
            without_timings(read_state(tmp_path / "hf" / checkpoint)), tmp_path)
    if extra.get("save_total_limit") == 2:
        assert all(folders == ["checkpoint-2"] or "checkpoint-4" in folders for _, folders in hl_seen)
        assert hl_final == ["checkpoint-4", "checkpoint-16"]
    if extra == dict(save_total_limit=1):
        assert hl_final == ["checkpoint-4"]  # the newest is deleted too at the end (§1.7)
    if extra.get("save_strategy") == "best":
        assert [step for step, _ in hl_seen] == [2, 4]  # no final save
    if extra.get("load_best_model_at_end"):
        assert_same_history(hf.state.log_history, hl.state.log_history)
        torch.testing.assert_close(hl.model.state_dict(), hf.model.state_dict(), rtol=0, atol=0)
        best = hf_lightning.hf_format.load_model_state_dict(tmp_path / "hl" / "checkpoint-4")
        torch.testing.assert_close(dict(hl.model.state_dict()), best, rtol=0, atol=0)


def _relative(state: dict, tmp_path) -> dict:
    """transformers' state names its own output_dir in best_model_checkpoint: point it at ours."""
    if state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = state["best_model_checkpoint"].replace(str(tmp_path / "hf"), str(tmp_path / "hl"))
    return state


def test_early_stopping_stops_and_saves_its_state_like_transformers(tmp_path):
    extra = dict(load_best_model_at_end=True)
    hf, hf_seen, _ = run_best("hf", tmp_path / "hf", callbacks=[EarlyStoppingCallback(2)], **extra)
    hl, hl_seen, _ = run_best("hl", tmp_path / "hl", callbacks=[EarlyStoppingCallback(2)], **extra)
    assert hl.state.global_step == hf.state.global_step == 8  # fact 11: stops after the eval at step 8
    assert hl_seen == hf_seen
    stored = read_state(tmp_path / "hl" / "checkpoint-8")["stateful_callbacks"]["EarlyStoppingCallback"]
    assert stored == {"args": {"early_stopping_patience": 2, "early_stopping_threshold": 0.0},
                      "attributes": {"early_stopping_patience_counter": 2}}
    for checkpoint in ("checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"):
        assert without_timings(read_state(tmp_path / "hl" / checkpoint)) == _relative(
            without_timings(read_state(tmp_path / "hf" / checkpoint)), tmp_path)


# ------------------------------------------------------------------------------------- fact 20


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_total_flos_in_train_output_like_transformers(tmp_path, disable_tqdm):
    outputs = {}
    for framework in ("hf", "hl"):
        trainer = build(framework, TinyReg, tmp_path / framework, trainer_kwargs=dict(train_dataset=RegressionDataset(16)),
                        per_device_train_batch_size=8, max_steps=2, disable_tqdm=disable_tqdm)
        outputs[framework] = (trainer.train().metrics, trainer.state.log_history[-1])
    assert ("total_flos" in outputs["hl"][0]) == ("total_flos" in outputs["hf"][0]) == (not disable_tqdm)
    assert "total_flos" in outputs["hl"][1] and "total_flos" in outputs["hf"][1]


@pytest.mark.parametrize("extra", [
    dict(metric_for_best_model=None, load_best_model_at_end=True),  # defaults to "loss", lower is better
    dict(greater_is_better=False, load_best_model_at_end=True),  # "acc", but lower is better
], ids=["default-metric", "greater-is-better-false"])
def test_best_metric_defaults_like_transformers(tmp_path, extra):
    hf, hf_seen, hf_final = run_best("hf", tmp_path / "hf", save_total_limit=1, **extra)
    hl, hl_seen, hl_final = run_best("hl", tmp_path / "hl", save_total_limit=1, **extra)
    assert hl.args.metric_for_best_model == hf.args.metric_for_best_model
    assert hl.args.greater_is_better == hf.args.greater_is_better is False
    assert (hl.state.best_metric, hl.state.best_global_step) == (hf.state.best_metric, hf.state.best_global_step)
    assert hl_seen == hf_seen and hl_final == hf_final
    if extra.get("greater_is_better") is False:
        assert hl.state.best_metric == 0.2 and hl_final == ["checkpoint-16"]
    torch.testing.assert_close(hl.model.state_dict(), hf.model.state_dict(), rtol=0, atol=0)


def test_load_best_model_at_end_argument_checks_are_transformers_own(tmp_path):
    """transformers validates these in TrainingArguments itself, so both frameworks refuse the same input."""
    with pytest.raises(ValueError, match="--load_best_model_at_end requires the save and eval strategy to match"):
        make_args(tmp_path, load_best_model_at_end=True, eval_strategy="epoch", save_strategy="steps")
