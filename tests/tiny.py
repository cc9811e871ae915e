"""Tiny models and datasets for tests: built from configs, nothing downloaded."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class TinyReg(nn.Module):
    """A plain module ``(input_x, labels) -> {"loss", "logits"}`` with no ``**kwargs`` (semantics page's TinyReg)."""

    def __init__(self, dim: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        self.hidden = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.dropout(torch.tanh(self.hidden(input_x)))
        logits = self.linear(h).squeeze(-1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(logits, labels)
        return out


class RegressionDataset(torch.utils.data.Dataset):
    """``n`` samples of ``{"input_x", "labels"}`` from a fixed generator."""

    def __init__(self, n: int = 64, dim: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.arange(1, dim + 1, dtype=torch.float32)
        self.y = self.x @ w + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_x": self.x[i], "labels": self.y[i]}


def tiny_bert_config(**overrides: Any):
    from transformers import BertConfig

    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99,
        max_position_embeddings=64, num_labels=2,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_llama_config(**overrides: Any):
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=37,
        vocab_size=99, max_position_embeddings=64, tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def make_model(factory, seed: int = 0):
    torch.manual_seed(seed)
    return factory()


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]


def write_tokenizer(folder: str | os.PathLike):
    """A BERT WordPiece fast tokenizer over a vocabulary written to ``folder`` (99 tokens)."""
    from transformers import BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    vocab = os.path.join(folder, "vocab.txt")
    # Written aside, then renamed: several processes of a distributed test write the same folder, and one
    # must never read the file while another has just truncated it (its pad token would be another id).
    partial = f"{vocab}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    os.replace(partial, vocab)
    tokenizer = BertTokenizerFast(vocab=vocab)  # transformers 5 ignores `vocab_file=` (every word became [UNK])
    if tokenizer.pad_token_id != VOCAB.index("[PAD]") or len(tokenizer) != len(VOCAB):
        raise RuntimeError(f"the test tokenizer did not load {vocab}: pad id {tokenizer.pad_token_id}, {len(tokenizer)} tokens")
    return tokenizer
