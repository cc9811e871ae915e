"""Train a small causal language model from scratch, report perplexity, and sample a continuation (seeded).

The run is ``examples/causal_lm.yaml``; extra arguments are CLI overrides (``--args.max_steps 10``).
"""

from __future__ import annotations

import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a clone without installing


def main(argv: list[str] | None = None) -> dict:
    from hf_lightning.cli import run

    cli = run(["fit", "--config", os.path.join(HERE, "causal_lm.yaml"), *(sys.argv[1:] if argv is None else argv)])
    if not cli.trainer.is_global_zero:
        return {}
    losses = [e["eval_loss"] for e in cli.flow.state.log_history if "eval_loss" in e]
    print(f"\neval perplexity: {math.exp(losses[0]):.1f} before training -> {math.exp(losses[-1]):.1f} after")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = str(cli.training_args.output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    prompt = tokenizer("The concert was", return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
    torch.manual_seed(0)
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=16, do_sample=True, top_k=10, pad_token_id=tokenizer.pad_token_id)
    print("  sample: " + tokenizer.decode(generated[0], skip_special_tokens=True))
    return {"eval_losses": losses, "output_dir": output_dir}


if __name__ == "__main__":
    main()
