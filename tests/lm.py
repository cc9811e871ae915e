"""Tiny causal-LM and classification data for the differential tests (nothing downloaded)."""

from __future__ import annotations

from typing import Any

import torch


class VariableLMDataset(torch.utils.data.Dataset):
    """``n`` token sequences of varying length; labels are the inputs with some positions masked to -100."""

    def __init__(self, n: int = 18, vocab: int = 99, seed: int = 0, min_len: int = 3, max_len: int = 9) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
            ids = torch.randint(5, vocab, (length,), generator=g)
            labels = ids.clone()
            labels[torch.rand(length, generator=g) < 0.3] = -100
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def pad_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` with 0 (attention mask 0) and ``labels`` with -100, to the batch's longest."""
    longest = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        pad = longest - len(f["input_ids"])
        batch["input_ids"].append(torch.cat([f["input_ids"], torch.zeros(pad, dtype=torch.long)]))
        batch["attention_mask"].append(torch.cat([torch.ones(len(f["input_ids"]), dtype=torch.long), torch.zeros(pad, dtype=torch.long)]))
        batch["labels"].append(torch.cat([f["labels"], torch.full((pad,), -100, dtype=torch.long)]))
    return {k: torch.stack(v) for k, v in batch.items()}


def tiny_llama():
    from transformers import LlamaForCausalLM

    from tiny import tiny_llama_config

    return LlamaForCausalLM(tiny_llama_config())


def tiny_bert_classifier(**overrides: Any):
    from transformers import BertForSequenceClassification

    from tiny import tiny_bert_config

    return BertForSequenceClassification(tiny_bert_config(**overrides))


class ClassificationDataset(torch.utils.data.Dataset):
    """Token sequences (fixed length) with a binary ``label`` that depends on the first token."""

    def __init__(self, n: int = 24, length: int = 6, seed: int = 0, label_key: str = "labels") -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 99, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), self.label_key: self.labels[i]}


def accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}
