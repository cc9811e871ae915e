"""Train a small encoder-decoder (T5) from scratch to summarise reviews as "<sentiment>: <subject>", then generate.

The run is ``examples/seq2seq.yaml``; extra arguments are CLI overrides (``--args.max_steps 10``).
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a clone without installing


def main(argv: list[str] | None = None) -> dict:
    from hf_lightning.cli import run

    cli = run(["fit", "--config", os.path.join(HERE, "seq2seq.yaml"), *(sys.argv[1:] if argv is None else argv)])
    if not cli.trainer.is_global_zero:
        return {}
    losses = [e["eval_loss"] for e in cli.flow.state.log_history if "eval_loss" in e]
    print(f"\neval loss per epoch: {[round(x, 3) for x in losses]}")

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    output_dir = str(cli.training_args.output_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    with open(os.path.join(HERE, "data", "summaries", "validation.jsonl")) as f:
        rows = [json.loads(line) for line in f][:50]
    sources = [row["review"] for row in rows]
    with torch.no_grad():
        generated = model.generate(**tokenizer(sources, return_tensors="pt", padding=True, return_token_type_ids=False), max_new_tokens=12)
    outputs = tokenizer.batch_decode(generated, skip_special_tokens=True)
    # the tokenizer lowercases and splits the colon off: compare ignoring case and spaces
    exact = sum(o.replace(" ", "") == row["summary"].lower().replace(" ", "") for o, row in zip(outputs, rows)) / len(rows)
    print(f"exact match on {len(rows)} validation reviews: {exact:.2f}")
    for source, output in list(zip(sources, outputs))[:3]:
        print(f"  {source!r} -> {output!r}")
    return {"eval_losses": losses, "exact_match": exact, "output_dir": output_dir}


if __name__ == "__main__":
    main()
