"""bf16 on CPU against transformers.Trainer, bit for bit: where autocast is on and where it is off.

accelerate autocasts only the model's forward: transformers computes the backward, and a loss computed outside
the model, with autocast off. Lightning's ``bf16-mixed`` autocasts the whole training step, and hf_lightning runs
transformers' step inside it. On CPU the backward runs on the autocasting thread, so it ran under autocast too and
the gradients changed (run_glue/run_clm/run_translation drifted from the second step; scripts/example_scripts.py).
"""

from __future__ import annotations

import functools

import torch

from helpers import assert_same_history, assert_same_weights, build, run_both
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


def test_bf16_loss_outside_the_model_sees_fp32_outputs_as_in_transformers(tmp_path):
    """Label smoothing computes the loss outside the model: under accelerate on the fp32 outputs of the wrapped
    forward, with autocast off. Run under Lightning's step-wide autocast it saw bf16 logits (run_glue with
    ``--bf16 --label_smoothing_factor 0.1``: eval loss 0.697265625 instead of 0.7004779)."""
    kwargs = dict(train_dataset=ClassificationDataset(16), eval_dataset=ClassificationDataset(8, seed=1))
    hf, hl = run_both(functools.partial(tiny_bert_classifier, hidden_dropout_prob=0.1), tmp_path, trainer_kwargs=kwargs,
                      bf16=True, label_smoothing_factor=0.1, per_device_train_batch_size=4, max_steps=4, logging_steps=1,
                      eval_strategy="steps", eval_steps=2, learning_rate=1e-3)
    assert hl.lightning_trainer.precision == "bf16-mixed"
    assert_same_history(hf.state.log_history, hl.state.log_history, rel=EXACT)
    assert_same_weights(hf.model, hl.model, atol=EXACT)
    assert _measured(hf.evaluate()) == _measured(hl.evaluate())  # evaluate() after train(): the same wrapped forward


def test_under_bf16_the_forward_autocasts_and_returns_fp32_while_accelerator_autocast_still_autocasts(tmp_path):
    trainer = build("hl", tiny_bert_classifier, tmp_path, trainer_kwargs=dict(train_dataset=ClassificationDataset(8)),
                    bf16=True, per_device_train_batch_size=4, max_steps=1)
    trainer.train()
    batch = ClassificationDataset(2)[0]
    seen = []
    hook = trainer.model.bert.encoder.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        logits = trainer.model(input_ids=batch["input_ids"][None]).logits
    finally:
        hook.remove()
    assert seen == [True] and logits.dtype == torch.float32  # accelerate's wrapped forward: autocast in, fp32 out
    with trainer.lightning_trainer.precision_plugin.forward_context():
        assert not torch.is_autocast_enabled("cpu")  # the step itself does not autocast
    with trainer.accelerator.autocast():  # what trainer code asks for explicitly still autocasts
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _measured(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}
