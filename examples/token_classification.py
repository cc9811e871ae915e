"""Fine-tune MiniLM to tag people, organisations and places, then tag a new sentence with the result.

The run is ``examples/token_classification.yaml``; extra arguments are CLI overrides
(``python examples/token_classification.py --args.max_steps 10``).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a clone without installing


def main(argv: list[str] | None = None) -> dict:
    from hf_lightning.cli import run

    cli = run(["fit", "--config", os.path.join(HERE, "token_classification.yaml"), *(sys.argv[1:] if argv is None else argv)])
    if not cli.trainer.is_global_zero:
        return {}
    metrics = cli.flow.state.log_history[-2]
    print(f"\neval token accuracy: {metrics.get('eval_accuracy', float('nan')):.3f}")

    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    output_dir = str(cli.training_args.output_dir)
    model = AutoModelForTokenClassification.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    words = "Grace Tanaka works for Globex in Oslo .".split()
    encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**encoded).logits.argmax(-1)[0].tolist()
    tags, seen = [], set()
    for position, word in enumerate(encoded.word_ids()):
        if word is not None and word not in seen:
            seen.add(word)
            tags.append(model.config.id2label[predicted[position]])
    print("  " + "  ".join(f"{w}/{t}" for w, t in zip(words, tags)))
    return {"accuracy": metrics.get("eval_accuracy"), "output_dir": output_dir}


if __name__ == "__main__":
    main()
