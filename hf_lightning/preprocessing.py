"""Tokenizing a dataset for each task, as transformers' example scripts do (run_glue, run_ner, run_clm, run_mlm,
run_summarization, run_qa): one ``datasets.map`` function per task, built from a ``DataSpec``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .specs import DataSpec

__all__ = ["PREPROCESSORS"]



def _text_classification(spec: DataSpec, tokenizer: Any, columns: dict, label2id: Any) -> Callable:
    def function(batch: dict) -> dict:
        texts = [batch[columns["text"]]] + ([batch[columns["pair"]]] if columns["pair"] else [])
        encoded = tokenizer(*texts, truncation=spec.truncation, max_length=spec.max_length, padding=spec.padding)
        label = columns["label"]
        if label in batch:
            encoded["labels"] = [label2id[v] if label2id else v for v in batch[label]]
        return encoded

    return function


def _token_classification(spec: DataSpec, tokenizer: Any, columns: dict, label2id: Any) -> Callable:
    def function(batch: dict) -> dict:
        encoded = tokenizer(
            batch[columns["text"]], is_split_into_words=True, truncation=spec.truncation, max_length=spec.max_length, padding=spec.padding
        )
        label = columns["label"]
        if label not in batch:
            return encoded
        all_labels = []
        for i, tags in enumerate(batch[label]):
            previous, row = None, []
            for word in encoded.word_ids(batch_index=i):
                # run_ner: only the first sub-token of a word carries its label
                row.append(-100 if word is None or word == previous else (label2id[tags[word]] if label2id else tags[word]))
                previous = word
            all_labels.append(row)
        encoded["labels"] = all_labels
        return encoded

    return function


def _language_modeling(spec: DataSpec, tokenizer: Any, columns: dict, label2id: Any, *, causal: bool) -> Callable:
    block = spec.max_length or min(getattr(tokenizer, "model_max_length", 1024), 1024)

    def function(batch: dict) -> dict:
        if not spec.group_texts:
            return tokenizer(batch[columns["text"]], truncation=spec.truncation, max_length=block, padding=spec.padding,
                             return_special_tokens_mask=not causal)
        encoded = tokenizer(batch[columns["text"]], return_special_tokens_mask=not causal)
        # run_clm/run_mlm group_texts: concatenate, drop the remainder, cut into blocks
        joined = {k: sum(encoded[k], []) for k in encoded.keys()}
        total = (len(joined["input_ids"]) // block) * block
        result = {k: [v[i : i + block] for i in range(0, total, block)] for k, v in joined.items()}
        if causal:
            result["labels"] = [list(ids) for ids in result["input_ids"]]
        return result

    return function


def _seq2seq(spec: DataSpec, tokenizer: Any, columns: dict, label2id: Any) -> Callable:
    def function(batch: dict) -> dict:
        inputs = [spec.source_prefix + text for text in batch[columns["text"]]]
        encoded = tokenizer(inputs, max_length=spec.max_length, truncation=spec.truncation, padding=spec.padding)
        if columns["target"] in batch:
            targets = tokenizer(
                text_target=batch[columns["target"]], max_length=spec.max_target_length or spec.max_length, truncation=spec.truncation
            )
            encoded["labels"] = targets["input_ids"]
        return encoded

    return function


def _question_answering(spec: DataSpec, tokenizer: Any, columns: dict, label2id: Any) -> Callable:
    pad_on_right = tokenizer.padding_side == "right"
    max_length = spec.max_length or min(getattr(tokenizer, "model_max_length", 384), 384)

    def function(batch: dict) -> dict:
        questions = [q.lstrip() for q in batch[columns["text"]]]
        contexts = batch[columns["pair"]]
        encoded = tokenizer(
            questions if pad_on_right else contexts,
            contexts if pad_on_right else questions,
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_length,
            stride=spec.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=spec.padding,
        )
        sample_map = encoded.pop("overflow_to_sample_mapping")
        offsets = encoded.pop("offset_mapping")
        starts, ends = [], []
        context_id = 1 if pad_on_right else 0
        for i, offset in enumerate(offsets):
            ids = encoded["input_ids"][i]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            sequence = encoded.sequence_ids(i)
            answers = batch[columns["label"]][sample_map[i]]
            # run_qa prepare_train_features: label the answer's token span, or CLS when it is outside this chunk
            if not answers["answer_start"]:
                starts.append(cls_index)
                ends.append(cls_index)
                continue
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start = sequence.index(context_id)
            token_end = len(sequence) - 1 - sequence[::-1].index(context_id)
            if not (offset[token_start][0] <= start_char and offset[token_end][1] >= end_char):
                starts.append(cls_index)
                ends.append(cls_index)
                continue
            while token_start < len(offset) and offset[token_start][0] <= start_char:
                token_start += 1
            while offset[token_end][1] >= end_char:
                token_end -= 1
            starts.append(token_start - 1)
            ends.append(token_end + 1)
        encoded["start_positions"], encoded["end_positions"] = starts, ends
        return encoded

    return function


PREPROCESSORS: dict[str, Callable[..., Callable]] = {
    "sequence-classification": _text_classification,
    "token-classification": _token_classification,
    "causal-lm": lambda *a: _language_modeling(*a, causal=True),
    "masked-lm": lambda *a: _language_modeling(*a, causal=False),
    "seq2seq": _seq2seq,
    "question-answering": _question_answering,
}
