"""sentence-transformers' ``SentenceTransformerTrainer`` on Lightning through ``on_lightning``: the same runs as its own.

Its trainer overrides the dataloaders (its own batch samplers and collator, which pick the columns), ``compute_loss``
(a loss module over the embeddings), ``_save`` (a SentenceTransformer folder), ``_load_best_model`` and
``_load_from_checkpoint`` (it reloads its model folder). A tiny BERT from a config, wrapped with mean pooling, trains
with ``CosineSimilarityLoss`` on both trainers. Skipped when sentence-transformers is not installed.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import transformers

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history
from tiny import write_tokenizer

st = pytest.importorskip("sentence_transformers")

RUN = dict(per_device_train_batch_size=4, max_steps=6, logging_steps=1, eval_strategy="steps", eval_steps=2, save_strategy="steps",
           save_steps=2, learning_rate=1e-3, report_to="none", use_cpu=True, disable_tqdm=True, seed=0)


@pytest.fixture
def backbone(tmp_path):
    """A tiny BERT and its tokenizer, saved where ``models.Transformer`` loads them from."""
    folder = tmp_path / "bert"
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(trainer_class, backbone, out, *, resume_from=None, **kwargs):
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments, losses, models

    torch.manual_seed(0)
    word = models.Transformer(backbone, max_seq_length=16)
    model = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension())])
    pairs = datasets.Dataset.from_dict({
        "sentence1": [f"w1 w{10 + i} w3" for i in range(24)],
        "sentence2": [f"w{10 + i} w4" for i in range(24)],
        "score": [float(i % 5) / 4 for i in range(24)],
    })
    args = SentenceTransformerTrainingArguments(output_dir=str(out), **{**RUN, **kwargs})
    checkpoint = None
    if resume_from is not None:  # the output folder of a run stopped after that checkpoint
        checkpoint = out / os.path.basename(resume_from)
        shutil.copytree(resume_from, checkpoint)
    trainer = trainer_class(model=model, args=args, train_dataset=pairs, eval_dataset=pairs.select(range(8)),
                            loss=losses.CosineSimilarityLoss(model), **({} if trainer_class is st.SentenceTransformerTrainer else LIGHTNING_QUIET))
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    return trainer


def _assert_same_run(stock, ours, stock_dir, our_dir):
    assert_same_history(stock.state.log_history, ours.state.log_history, rel=0.0)
    expected, actual = stock.model.state_dict(), ours.model.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    for step in sorted(os.listdir(stock_dir)):
        if step.startswith("checkpoint-"):
            assert sorted(os.listdir(stock_dir / step)) == sorted(os.listdir(our_dir / step)), step


def test_sentence_transformer_trainer_with_the_best_model_equals_its_own_run(tmp_path, backbone):
    """``greater_is_better=True`` on the eval loss makes an early checkpoint the best: its ``_load_best_model`` override
    (which reloads the folder through its ``_load_from_checkpoint``) runs at the end, on both."""
    best = dict(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=True)
    stock = _run(st.SentenceTransformerTrainer, backbone, tmp_path / "st", **best)
    ours = _run(hf_lightning.on_lightning(st.SentenceTransformerTrainer), backbone, tmp_path / "hl", **best)
    assert os.path.basename(stock.state.best_model_checkpoint) != "checkpoint-6"  # the best is not the last weights
    assert os.path.basename(ours.state.best_model_checkpoint) == os.path.basename(stock.state.best_model_checkpoint)
    assert os.path.isfile(tmp_path / "hl" / "checkpoint-2" / "modules.json")  # its own folder layout, through its `_save`
    _assert_same_run(stock, ours, tmp_path / "st", tmp_path / "hl")


def test_sentence_transformer_trainer_resumes_its_own_checkpoint(tmp_path, backbone):
    """Resuming goes through its ``_load_from_checkpoint`` override, from a checkpoint sentence-transformers wrote."""
    _run(st.SentenceTransformerTrainer, backbone, tmp_path / "first")
    checkpoint = tmp_path / "first" / "checkpoint-2"
    stock = _run(st.SentenceTransformerTrainer, backbone, tmp_path / "st", resume_from=checkpoint)
    ours = _run(hf_lightning.on_lightning(st.SentenceTransformerTrainer), backbone, tmp_path / "hl", resume_from=checkpoint)
    assert [entry.get("step") for entry in ours.state.log_history[:3]] == [1, 2, 2]  # its history up to step 2, then ours
    _assert_same_run(stock, ours, tmp_path / "st", tmp_path / "hl")
