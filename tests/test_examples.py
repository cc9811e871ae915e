"""Every example (script + YAML config) runs end to end at a tiny size, offline, on the shipped data."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(output_dir, steps: int = 2, **extra: str) -> list[str]:
    argv = [
        "--args.output_dir", str(output_dir), "--args.max_steps", str(steps), "--args.per_device_train_batch_size", "4",
        "--args.per_device_eval_batch_size", "8", "--args.logging_steps", "1", "--args.eval_strategy", "steps",
        "--args.eval_steps", str(steps), "--args.save_strategy", "steps", "--args.save_steps", str(steps),
        "--data.max_train_samples", "16", "--data.max_eval_samples", "8", "--trainer.enable_progress_bar", "false",
    ]
    for key, value in extra.items():
        argv += [f"--{key}", value]
    return argv


def test_shipped_data_is_what_the_generator_writes(tmp_path):
    """examples/data is reproducible: the committed files equal a fresh run of make_data.py."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(os.path.join(EXAMPLES, "data"), copy)
    subprocess.run([sys.executable, str(copy / "make_data.py")], check=True, capture_output=True)
    for folder in ("sentiment", "ner", "lm", "summaries"):
        for name in os.listdir(os.path.join(EXAMPLES, "data", folder)):
            with open(os.path.join(EXAMPLES, "data", folder, name)) as shipped, open(copy / folder / name) as fresh:
                assert shipped.read() == fresh.read(), f"{folder}/{name} differs from make_data.py's output"


def test_text_classification_example(tmp_path):
    """The README's main job, at 2 steps: real MiniLM weights, checkpoints, TensorBoard logs, reload + predict."""
    result = load_example("text_classification").main(tiny(tmp_path, **{"args.metric_for_best_model": "accuracy"}))
    assert 0.0 <= result["accuracy"] <= 1.0
    assert os.path.isdir(tmp_path / "checkpoint-2")
    assert os.listdir(tmp_path / "runs")  # TensorBoard event files (report_to: tensorboard)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
    assert set(model.config.id2label.values()) == {"negative", "positive"}


def test_token_classification_example(tmp_path):
    result = load_example("token_classification").main(tiny(tmp_path))
    assert 0.0 <= result["accuracy"] <= 1.0
    assert os.path.isdir(tmp_path / "checkpoint-2")


def test_causal_lm_example(tmp_path):
    small = '{"model_type": "llama", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, ' \
            '"num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64}'
    result = load_example("causal_lm").main(tiny(tmp_path, **{"model.config": small, "data.max_length": "32"}))
    assert len(result["eval_losses"]) == 2  # eval_on_start, then after step 2
    assert os.path.exists(tmp_path / "generation_config.json")


def test_seq2seq_example(tmp_path):
    small = '{"model_type": "t5", "vocab_size": 30522, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 1, ' \
            '"num_heads": 2, "pad_token_id": 0, "decoder_start_token_id": 0, "eos_token_id": 102}'
    result = load_example("seq2seq").main(tiny(tmp_path, **{"model.config": small}))
    assert len(result["eval_losses"]) == 1 and result["eval_losses"][0] > 0


@pytest.mark.slow
def test_main_job_full_size(tmp_path):
    """The README's main job as shipped (about a minute or two on 2 cores): clearly above chance."""
    result = load_example("text_classification").main(["--args.output_dir", str(tmp_path)])
    assert result["accuracy"] > 0.8
