"""bf16 on CPU against transformers.Trainer, bit for bit: where autocast is on and where it is off.

accelerate autocasts only the model's forward: transformers computes the backward, and a loss computed outside
the model, with autocast off. Lightning's ``bf16-mixed`` autocasts the whole training step, and hf_lightning runs
transformers' step inside it. On CPU the backward runs on the autocasting thread, so it ran under autocast too and
the gradients changed (run_glue/run_clm/run_translation drifted from the second step; scripts/example_scripts.py).
"""

from __future__ import annotations

import functools

from helpers import assert_same_history, assert_same_weights, run_both
from lm import ClassificationDataset, tiny_bert_classifier

EXACT = 0.0


def test_bf16_backward_runs_outside_autocast_as_in_transformers(tmp_path):
    """A BERT with dropout: its backward under autocast gave grad_norm 0.6064453125 instead of 0.6064450144767761."""
    kwargs = dict(train_dataset=ClassificationDataset(16), eval_dataset=ClassificationDataset(8, seed=1))
    hf, hl = run_both(functools.partial(tiny_bert_classifier, hidden_dropout_prob=0.1), tmp_path, trainer_kwargs=kwargs,
                      bf16=True, per_device_train_batch_size=4, max_steps=4, logging_steps=1, eval_strategy="steps",
                      eval_steps=2, learning_rate=1e-3)
    assert hl.lightning_trainer.precision == "bf16-mixed"
    assert_same_history(hf.state.log_history, hl.state.log_history, rel=EXACT)
    assert_same_weights(hf.model, hl.model, atol=EXACT)
