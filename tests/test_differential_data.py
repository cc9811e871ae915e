"""Data handling against transformers.Trainer: column pruning (datasets.Dataset by forward signature,
RemoveColumnsCollator for torch datasets), label/label_ids renaming, DataCollatorWithPadding with a
tokenizer, the no-column error, sampling strategies (same batches), seeds and full determinism.
"""

from __future__ import annotations

import datasets
import pytest

import hf_lightning
import torch

from helpers import assert_same_history, assert_same_weights, build, run_both
from lm import ClassificationDataset, VariableLMDataset, accuracy, pad_collate, tiny_bert_classifier, tiny_llama
from tiny import RegressionDataset, TinyReg


def _text_dataset(tokenizer, n: int, seed: int, label_key: str = "label") -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = {"text": [], label_key: [], "idx": []}
    for i in range(n):
        length = int(torch.randint(2, 9, (1,), generator=g))
        words = [f"w{int(w)}" for w in torch.randint(0, 94, (length,), generator=g)]
        rows["text"].append(" ".join(words))
        rows[label_key].append(int(int(words[0][1:]) > 46))
        rows["idx"].append(i)
    ds = datasets.Dataset.from_dict(rows)
    return ds.map(lambda row: tokenizer(row["text"]), batched=True)


@pytest.mark.parametrize("label_key", ["label", "label_ids"])
def test_datasets_columns_tokenizer_padding_and_label_renaming(tmp_path, tokenizer, label_key):
    """Unused columns (text, idx) are removed, label(_ids) becomes labels, DataCollatorWithPadding pads."""
    kwargs = dict(
        train_dataset=_text_dataset(tokenizer, 12, 0, label_key), eval_dataset=_text_dataset(tokenizer, 6, 1, label_key),
        processing_class=tokenizer, compute_metrics=accuracy,
    )
    hf, hl = run_both(tiny_bert_classifier, tmp_path, trainer_kwargs=kwargs, per_device_train_batch_size=4, num_train_epochs=1,
                      logging_steps=2, eval_strategy="epoch", learning_rate=1e-3, save_strategy="epoch")
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(p.name for p in (tmp_path / "hl" / "checkpoint-3").iterdir())


def test_remove_columns_collator_for_torch_datasets(tmp_path):
    class Extra(RegressionDataset):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "note": "not a tensor", "index": i}

    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=Extra(24), eval_dataset=Extra(8, seed=1)),
                      max_steps=3, logging_steps=1, eval_strategy="steps", eval_steps=3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


def test_remove_unused_columns_false_keeps_everything(tmp_path):
    class Labelled(RegressionDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {"input_x": item["input_x"], "label": item["labels"]}

    hf, hl = run_both(TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=Labelled(16)), remove_unused_columns=False,
                      max_steps=2, logging_steps=1)
    assert_same_history(hf.state.log_history, hl.state.log_history)


def test_no_matching_column_is_a_clear_error(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["a b", "c d"], "other": [1, 2]})
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=ds), max_steps=1)
    with pytest.raises(ValueError, match=r"No columns in the dataset match the model.s forward method signature.*remove_unused_columns") as raised:
        trainer.train()
    assert "input_x" in str(raised.value) and "text" in str(raised.value)


def _record_batches(trainer_cls_side, tmp_path, **args):
    seen = []

    class Recorder(TinyReg):
        def forward(self, input_x, labels=None):
            if self.training:
                seen.append(input_x[:, 0].tolist())
            return super().forward(input_x, labels)

    trainer = build(trainer_cls_side, Recorder, tmp_path / trainer_cls_side, trainer_kwargs=dict(train_dataset=RegressionDataset(30)), **args)
    trainer.train()
    return seen


@pytest.mark.parametrize("strategy", ["random", "sequential"])
@pytest.mark.parametrize("seeds", [dict(seed=42), dict(seed=7, data_seed=11)])
def test_same_batches_as_transformers(tmp_path, strategy, seeds):
    args = dict(train_sampling_strategy=strategy, num_train_epochs=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, **seeds)
    assert _record_batches("hf", tmp_path, **args) == _record_batches("hl", tmp_path, **args)


def test_group_by_length_same_batches_as_transformers(tmp_path):
    seen = {"hf": [], "hl": []}

    def recorder(side):
        def make():
            model = tiny_llama()

            def hook(module, args, kwargs):
                if module.training:
                    seen[side].append(kwargs["input_ids"].shape[1])

            model.register_forward_pre_hook(hook, with_kwargs=True)
            return model

        return make

    for side in ("hf", "hl"):
        trainer = build(side, recorder(side), tmp_path / side, trainer_kwargs=dict(train_dataset=VariableLMDataset(16, max_len=12), data_collator=pad_collate),
                        train_sampling_strategy="group_by_length", per_device_train_batch_size=4, num_train_epochs=2, logging_steps=1)
        trainer.train()
        seen[side + "_history"] = trainer.state.log_history
    assert seen["hf"] == seen["hl"]
    assert_same_history(seen["hf_history"], seen["hl_history"])


def test_group_by_length_with_a_length_column(tmp_path, tokenizer):
    train = _text_dataset(tokenizer, 20, 0)
    train = train.add_column("length", [len(ids) for ids in train["input_ids"]])
    kwargs = dict(train_dataset=train, eval_dataset=_text_dataset(tokenizer, 6, 1), processing_class=tokenizer)
    hf, hl = run_both(tiny_bert_classifier, tmp_path, trainer_kwargs=kwargs, train_sampling_strategy="group_by_length",
                      per_device_train_batch_size=4, max_steps=4, logging_steps=1, eval_strategy="steps", eval_steps=4)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)


def test_seed_sets_dropout_stream_and_full_determinism(tmp_path):
    kwargs = dict(train_dataset=ClassificationDataset(8))
    for i, extra in enumerate([dict(seed=3), dict(seed=3, full_determinism=True)]):
        hf, hl = run_both(lambda: tiny_bert_classifier(hidden_dropout_prob=0.3), tmp_path / str(i), trainer_kwargs=kwargs,
                          per_device_train_batch_size=4, max_steps=2, logging_steps=1, learning_rate=1e-3, **extra)
        assert_same_history(hf.state.log_history, hl.state.log_history)
        assert_same_weights(hf.model, hl.model)
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


def test_dataloader_options_are_passed(tmp_path):
    trainer = build("hl", TinyReg, tmp_path, trainer_kwargs=dict(train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(4)),
                    dataloader_num_workers=1, dataloader_prefetch_factor=3, dataloader_persistent_workers=True, max_steps=2)
    loader = trainer.get_train_dataloader()
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (1, 3, True)
    eval_loader = trainer.get_eval_dataloader()
    assert (eval_loader.num_workers, eval_loader.prefetch_factor) == (1, 3)
    module = hf_lightning.HFModule(TinyReg(), trainer.args)  # the Lightning way builds the same loaders
    datamodule = hf_lightning.HFDataModule(trainer.args, train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(4))
    lightning_trainer = hf_lightning.build_trainer(trainer.args, enable_progress_bar=False)
    lightning_trainer.strategy.connect(module)
    datamodule.trainer = lightning_trainer
    for ours in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert (ours.num_workers, ours.prefetch_factor) == (1, 3)


def test_peft_model_columns_and_labels_from_the_base_model(tmp_path, tokenizer):
    """A PEFT model's forward is ``(*args, **kwargs)``: columns and label names come from the base model."""
    peft = pytest.importorskip("peft")

    def lora_bert():
        config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
        return peft.get_peft_model(tiny_bert_classifier(), config)

    kwargs = dict(train_dataset=_text_dataset(tokenizer, 12, 0), eval_dataset=_text_dataset(tokenizer, 6, 1), processing_class=tokenizer,
                  compute_metrics=accuracy)
    hf, hl = run_both(lora_bert, tmp_path, trainer_kwargs=kwargs, per_device_train_batch_size=4, max_steps=3, logging_steps=1,
                      eval_strategy="steps", eval_steps=3, learning_rate=1e-3)
    assert_same_history(hf.state.log_history, hl.state.log_history)
    assert_same_weights(hf.model, hl.model)
    assert hl.module.label_names == hf.label_names == ["labels"]


@pytest.mark.parametrize(
    "features",
    [
        [{"x": 1, "labels": 2}, {"x": 3, "labels": 4}],  # nothing to remove
        [{"x": 1, "labels": 2, "idx": 0}, {"x": 3, "labels": 4, "idx": 1}],  # an unused column
        [{"idx": 0}, {"x": 3}],  # mixed
        [(1, 2), (3, 4)],  # not dicts: passed through
    ],
)
def test_remove_columns_collator_matches_transformers(features, caplog):
    """hf_lightning's column removal for torch datasets tests keys against a set; it gives transformers' samples (copies,
    never the dataset's own dicts, since collators may change them) and transformers' one log line."""
    import logging

    from transformers.trainer_utils import RemoveColumnsCollator

    from hf_lightning.data import _RemoveColumnsCollator

    seen = {}
    for cls in (RemoveColumnsCollator, _RemoveColumnsCollator):
        collate = cls(data_collator=lambda batch: batch, signature_columns=["x", "labels"], logger=logging.getLogger("cols"),
                      model_name="Tiny", description="training")
        with caplog.at_level(logging.INFO, logger="cols"):
            caplog.clear()
            seen[cls] = (collate([dict(f) if isinstance(f, dict) else f for f in features]), collate(features),
                         [r.getMessage() for r in caplog.records])
        out = seen[cls][1]
        assert all(a is not b for a, b in zip(out, features) if isinstance(b, dict))
    assert seen[RemoveColumnsCollator] == seen[_RemoveColumnsCollator]
