"""Tiny models, tokenizers and data for running transformers' example scripts offline (scripts/example_scripts.py).

Everything is built here from a word list: a BERT, a GPT-2 and a T5 (hidden size 32, 2 layers), each saved with a
tokenizer made from a vocabulary this module writes, and small json/txt/SQuAD-style files drawn from a seeded
generator. Nothing comes from the Hub, and the same call writes the same bytes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Fixtures", "WORDS", "build_fixtures", "write_data", "write_models"]

NAMES = ["anna", "ben", "clara", "david", "emma", "felix"]
PLACES = ["paris", "rome", "oslo", "lima", "kyoto", "cairo"]
WORDS = [
    "the", "a", "cat", "dog", "bird", "house", "tree", "river", "car", "book", "city", "garden", "road", "lake",
    "sees", "likes", "finds", "walks", "reads", "runs", "sings", "builds", "in", "near", "with", "from", "to",
    "red", "big", "small", "old", "new", "green", "quiet", "fast", "slow", "happy", "who", "what", "where",
    "is", "was", "did", "yes", "no", *NAMES, *PLACES,
]
PUNCTUATION = [".", ",", "?"]
MAX_LENGTH = 64  # tokens: the models' position embeddings and the tokenizers' model_max_length


@dataclass(frozen=True)
class Fixtures:
    """Where the tiny models and the data files were written."""

    bert: Path
    gpt2: Path
    t5: Path
    data: Path

    def model(self, kind: str) -> Path:
        """The folder of the ``bert``, ``gpt2`` or ``t5`` model (config, weights, tokenizer)."""
        return {"bert": self.bert, "gpt2": self.gpt2, "t5": self.t5}[kind]


def build_fixtures(folder: Path, seed: int = 0) -> Fixtures:
    """Write the three tiny models and every data file under ``folder``; return their paths.

    Args:
        folder: where ``models/`` and ``data/`` are written (created if missing).
        seed: seed of the data generator and of the models' initial weights.
    """
    models = write_models(folder / "models", seed)
    data = folder / "data"
    write_data(data, seed)
    return Fixtures(data=data, **models)


# ------------------------------------------------------------------------------------------------ models

def write_models(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Save a tiny BERT, GPT-2 and T5 with their tokenizers under ``folder``; return ``{kind: path}``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    paths = {}
    bert_tok = _bert_tokenizer(folder / "bert")
    gpt2_tok = _word_level_tokenizer(["<|endoftext|>", "<unk>"], eos="<|endoftext|>", unk="<unk>", bos="<|endoftext|>")
    t5_tok = _word_level_tokenizer(["<pad>", "</s>", "<unk>"], eos="</s>", unk="<unk>", pad="<pad>", append_eos=True)
    configs = {
        "bert": (bert_tok, BertForMaskedLM, BertConfig(
            vocab_size=len(bert_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=MAX_LENGTH, pad_token_id=bert_tok.pad_token_id,
        )),
        "gpt2": (gpt2_tok, GPT2LMHeadModel, GPT2Config(
            vocab_size=len(gpt2_tok), n_embd=32, n_layer=2, n_head=2, n_inner=37, n_positions=MAX_LENGTH,
            bos_token_id=gpt2_tok.eos_token_id, eos_token_id=gpt2_tok.eos_token_id,
        )),
        "t5": (t5_tok, T5ForConditionalGeneration, T5Config(
            vocab_size=len(t5_tok), d_model=32, d_kv=16, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id,
            decoder_start_token_id=t5_tok.pad_token_id,
        )),
    }
    for kind, (tokenizer, model_class, config) in configs.items():
        torch.manual_seed(seed)
        path = folder / kind
        model = model_class(config)
        if kind == "t5":  # an untrained T5 generates only specials: its predictions would all be empty strings
            model.generation_config.min_new_tokens = 4
            model.generation_config.suppress_tokens = [tokenizer.pad_token_id, tokenizer.unk_token_id]
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[kind] = path
    return paths


def _vocabulary() -> list[str]:
    return [*WORDS, *PUNCTUATION]


def _bert_tokenizer(folder: Path) -> Any:
    """A WordPiece BertTokenizerFast over the word list (whole words, lower case)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_vocabulary()]) + "\n")
    return BertTokenizerFast(vocab=str(vocab), model_max_length=MAX_LENGTH)  # transformers 5 ignores `vocab_file=`


def _word_level_tokenizer(specials: list[str], *, eos: str, unk: str, bos: str | None = None, pad: str | None = None,
                          append_eos: bool = False) -> Any:
    """A word-level fast tokenizer (split on whitespace and punctuation); ``append_eos`` ends every text with ``eos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, *_vocabulary()])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # joins the words with spaces again
    if append_eos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, vocab[eos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, unk_token=unk, bos_token=bos, pad_token=pad, model_max_length=MAX_LENGTH
    )


# -------------------------------------------------------------------------------------------------- data

def write_data(folder: Path, seed: int = 0) -> None:
    """Write the json/txt files every example script reads (train, validation and test splits) to ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": 32, "validation": 12, "test": 8}
    for split, n in splits.items():
        _json_lines(folder / f"glue_{split}.json", [_pair(rng) for _ in range(n)])
        _json_lines(folder / f"ner_{split}.json", [_tagged(rng) for _ in range(n)])
        _json_lines(folder / f"swag_{split}.json", [_choice(rng) for _ in range(n)])
        _json_lines(folder / f"summaries_{split}.json", [_summary(rng) for _ in range(n)])
        _json_lines(folder / f"translation_{split}.json", [_translation(rng) for _ in range(n)])
        (folder / f"squad_{split}.json").write_text(json.dumps({"data": [_question(rng, f"{split}-{i}") for i in range(n)]}))
        (folder / f"text_{split}.txt").write_text("\n".join(_sentence(rng) for _ in range(2 * n)) + "\n")


def _json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _sentence(rng: random.Random, words: int | None = None) -> str:
    body = [rng.choice(WORDS[:40]) for _ in range(words or rng.randint(4, 9))]
    return " ".join(body) + " ."


def _pair(rng: random.Random) -> dict[str, Any]:
    first = _sentence(rng)
    second = first if rng.random() < 0.5 else _sentence(rng)
    return {"sentence1": first, "sentence2": second, "label": "same" if second == first else "different"}


def _tagged(rng: random.Random) -> dict[str, Any]:
    tokens, tags = [], []
    for _ in range(rng.randint(4, 8)):
        roll = rng.random()
        if roll < 0.2:
            tokens += [rng.choice(NAMES), rng.choice(NAMES)]
            tags += ["B-PER", "I-PER"]
        elif roll < 0.35:
            tokens.append(rng.choice(PLACES))
            tags.append("B-LOC")
        else:
            tokens.append(rng.choice(WORDS[:40]))
            tags.append("O")
    return {"tokens": tokens, "ner_tags": tags}


def _choice(rng: random.Random) -> dict[str, Any]:
    endings = {f"ending{i}": _sentence(rng, 3) for i in range(4)}
    return {"sent1": _sentence(rng), "sent2": rng.choice(NAMES) + " " + rng.choice(WORDS[14:22]), **endings,
            "label": rng.randrange(4)}


def _summary(rng: random.Random) -> dict[str, Any]:
    text = _sentence(rng, 12)
    return {"text": text, "summary": " ".join(text.split()[:4]) + " ."}


def _translation(rng: random.Random) -> dict[str, Any]:
    words = _sentence(rng).split()[:-1]
    return {"translation": {"en": " ".join(words) + " .", "de": " ".join(reversed(words)) + " ."}}


def _question(rng: random.Random, example_id: str) -> dict[str, Any]:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    context = f"{_sentence(rng)} {name} walks to {place} . {_sentence(rng)}"
    if rng.random() < 0.5:
        question, answer = f"who walks to {place} ?", name
    else:
        question, answer = f"where did {name} walks ?", place
    start = context.index(f"{name} walks to {place}") + (0 if answer == name else len(f"{name} walks to "))
    return {"id": example_id, "title": "tiny", "context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [start]}}
