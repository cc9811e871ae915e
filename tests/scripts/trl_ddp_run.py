"""TRL's GRPOTrainer in 2 processes, on transformers (``hf``) or on hf_lightning (``hl``, Lightning's DDP); run by torchrun.

Launched by tests/test_trl.py, never imported by it:

    torchrun --standalone --nproc_per_node 2 tests/scripts/trl_ddp_run.py --framework hf --out DIR

Rank 0 writes ``DIR/<framework>_history.json`` (log_history without wall-clock keys) and ``DIR/<framework>_weights.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # repository root

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402

from helpers import TIMING  # noqa: E402
from tiny import write_tokenizer  # noqa: E402


def reward_length(completions, **kwargs):
    return [float(len(completion.split())) for completion in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["hf", "hl"], required=True)
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    tokenizer = write_tokenizer(os.path.join(opts.out, f"tokenizer_{opts.framework}_rank{os.environ.get('RANK', '0')}"))
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    args = trl.GRPOConfig(
        output_dir=os.path.join(opts.out, opts.framework), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, max_steps=4, gradient_accumulation_steps=2, num_iterations=2, eval_strategy="steps",
        eval_steps=2, per_device_eval_batch_size=4, logging_steps=1, save_strategy="steps", save_steps=2, learning_rate=1e-3,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, bf16=False,
    )
    trainer_class, lightning = trl.GRPOTrainer, {}
    if opts.framework == "hl":
        import hf_lightning

        trainer_class = hf_lightning.on_lightning(trl.GRPOTrainer)
        lightning = dict(enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=2, strategy="ddp")
    trainer = trainer_class(
        model=transformers.LlamaForCausalLM(config), reward_funcs=reward_length, args=args, processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_dict({"prompt": [f"w1 w2 w{10 + i}" for i in range(16)]}),
        eval_dataset=datasets.Dataset.from_dict({"prompt": [f"w3 w{20 + i}" for i in range(8)]}), **lightning,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        history = [{k: v for k, v in entry.items() if not any(t in k for t in TIMING)} for entry in trainer.state.log_history]
        with open(os.path.join(opts.out, f"{opts.framework}_history.json"), "w") as f:
            json.dump(history, f)
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, os.path.join(opts.out, f"{opts.framework}_weights.pt"))


if __name__ == "__main__":
    main()
