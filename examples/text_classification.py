"""Fine-tune MiniLM for sentiment classification on the shipped data, then reload the result and predict.

The whole run is ``examples/text_classification.yaml`` (read by the ``hf-lightning`` CLI); this script
adds what a newcomer wants to see afterwards: where everything went, the eval accuracy, and the
fine-tuned model loaded back with ``from_pretrained``. Extra arguments are CLI overrides, e.g.::

    python examples/text_classification.py --args.num_train_epochs 1 --args.output_dir /tmp/run
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a clone without installing


def main(argv: list[str] | None = None) -> dict:
    from hf_lightning.cli import run

    started = time.time()
    cli = run(["fit", "--config", os.path.join(HERE, "text_classification.yaml"), *(sys.argv[1:] if argv is None else argv)])
    if not cli.trainer.is_global_zero:
        return {}
    output_dir = str(cli.training_args.output_dir)
    accuracy = cli.flow.state.best_metric
    print(f"\neval accuracy (best evaluation): {accuracy:.3f}   wall time: {time.time() - started:.0f} s")

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    sentences = ["The museum was wonderful.", "The battery was not good at all.", "The food was bland at first, but in the end it was lovely."]
    with torch.no_grad():
        logits = model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits
    for sentence, label in zip(sentences, logits.argmax(-1).tolist()):
        print(f"  {model.config.id2label[label]:>8}  <- {sentence}")
    return {"accuracy": accuracy, "output_dir": output_dir, "seconds": time.time() - started}


if __name__ == "__main__":
    main()
