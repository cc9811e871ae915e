"""Tiny generated datasets, tokenizer folders and config snippets for the CLI, example and notebook tests."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np

TINY_BERT = dict(
    model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
    vocab_size=99, max_position_embeddings=64,
)
TINY_LLAMA = dict(
    model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
    intermediate_size=37, vocab_size=99, max_position_embeddings=64, tie_word_embeddings=False,
)
TINY_T5 = dict(
    model_type="t5", vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=2,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=3,
)


def accuracy(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics``: accuracy of the argmax over the last logits dimension, ignoring -100 labels."""
    predictions = np.asarray(eval_pred.predictions).argmax(-1)
    labels = np.asarray(eval_pred.label_ids)
    keep = labels != -100
    return {"accuracy": float((predictions[keep] == labels[keep]).mean())}


def tokenizer_folder(folder: str | os.PathLike) -> str:
    """The tests' 99-token WordPiece tokenizer, saved so ``AutoTokenizer.from_pretrained(folder)`` loads it."""
    from tiny import write_tokenizer

    write_tokenizer(folder).save_pretrained(folder)
    return str(folder)


def _words(rng: random.Random, low: int, high: int, n: int) -> list[str]:
    return [f"w{rng.randint(low, high)}" for _ in range(n)]


def _write_splits(folder: str | os.PathLike, ext: str, counts: dict[str, int], line: Callable[[random.Random], str],
                  seed: int, header: str | None = None) -> dict[str, str]:
    """One ``{split}.{ext}`` file per split with ``counts[split]`` lines drawn by ``line(rng)``; returns the paths."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    files = {}
    for split, count in counts.items():
        path = os.path.join(folder, f"{split}.{ext}")
        with open(path, "w") as f:
            if header is not None:
                f.write(header + "\n")
            f.writelines(line(rng) + "\n" for _ in range(count))
        files[split] = path
    return files


def classification_csv(folder: str | os.PathLike, n_train: int = 64, n_eval: int = 24, seed: int = 0) -> dict[str, str]:
    """``train.csv``/``validation.csv``/``test.csv`` with ``text,label``: 'pos' texts use words w50-w90, 'neg' w5-w45."""

    def line(rng: random.Random) -> str:
        label = rng.choice(["neg", "pos"])
        low = 50 if label == "pos" else 5
        return " ".join(_words(rng, low, low + 40, rng.randint(3, 10))) + "," + label  # no commas or quotes to escape

    return _write_splits(folder, "csv", {"train": n_train, "validation": n_eval, "test": n_eval}, line, seed, header="text,label")


def token_classification_jsonl(folder: str | os.PathLike, n: int = 48, seed: int = 0) -> dict[str, str]:
    """``tokens`` (words) and ``tags`` (B-X on words w50+, O otherwise) in train/validation jsonl."""

    def line(rng: random.Random) -> str:
        tokens = _words(rng, 5, 90, rng.randint(3, 9))
        return json.dumps({"tokens": tokens, "tags": ["B-X" if int(t[1:]) >= 50 else "O" for t in tokens]})

    return _write_splits(folder, "jsonl", {"train": n, "validation": n // 2}, line, seed)


def text_lines(folder: str | os.PathLike, n: int = 80, seed: int = 0) -> dict[str, str]:
    """Plain text files (one sentence per line) for language modeling."""

    def line(rng: random.Random) -> str:
        start = rng.randint(5, 80)
        return " ".join(f"w{start + i}" for i in range(rng.randint(4, 12)) if start + i < 99)

    return _write_splits(folder, "txt", {"train": n, "validation": n // 4}, line, seed)


def seq2seq_jsonl(folder: str | os.PathLike, n: int = 48, seed: int = 0) -> dict[str, str]:
    """``source``/``target`` pairs: the target is the source's words reversed."""

    def line(rng: random.Random) -> str:
        words = _words(rng, 5, 90, rng.randint(2, 6))
        return json.dumps({"source": " ".join(words), "target": " ".join(reversed(words))})

    return _write_splits(folder, "jsonl", {"train": n, "validation": n // 4}, line, seed)


def qa_json(folder: str | os.PathLike, n: int = 24, seed: int = 0) -> dict[str, str]:
    """SQuAD-style ``question``/``context``/``answers`` records (the answer is a word of the context)."""

    def line(rng: random.Random) -> str:
        words = _words(rng, 5, 90, rng.randint(5, 12))
        answer_index = rng.randrange(len(words))
        start = len(" ".join(words[:answer_index])) + (1 if answer_index else 0)
        return json.dumps({
            "question": " ".join(_words(rng, 5, 90, 3)),
            "context": " ".join(words),
            "answers": {"text": [words[answer_index]], "answer_start": [start]},
        })

    return _write_splits(folder, "jsonl", {"train": n, "validation": n // 2}, line, seed)
