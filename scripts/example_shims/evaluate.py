"""A stand-in for the ``evaluate`` package, for running transformers' example scripts offline.

``evaluate.load(name)`` downloads the metric's code from the Hub, which an offline check cannot do. The
example-script check (scripts/example_scripts.py) puts this folder first on ``PYTHONPATH`` for both the
stock and the hf_lightning run, so both score their predictions with these simplified metrics: accuracy, mse,
seqeval-style entity scores, ROUGE, BLEU and the SQuAD scores. They are deterministic functions of the
predictions, which is all a differential check needs; they are not meant to reproduce the published numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Metric", "load"]


class Metric:
    """One metric: ``compute(predictions=..., references=..., **options)`` returns a dict of scores."""

    def __init__(self, name: str, function: Callable[..., dict[str, Any]]) -> None:
        self.name = name
        self._function = function

    def compute(self, *, predictions: Any, references: Any, **options: Any) -> dict[str, Any]:
        return self._function(predictions, references, **options)


def load(path: str, config_name: str | None = None, cache_dir: str | None = None, **_: Any) -> Metric:
    """The metric named ``path`` (``config_name`` and ``cache_dir`` are accepted and ignored)."""
    if path not in _METRICS:
        raise ValueError(f"the offline `evaluate` stand-in has no metric {path!r}; it has {sorted(_METRICS)}")
    return Metric(path, _METRICS[path])


# ----------------------------------------------------------------------------------------- classification

def accuracy(predictions: Any, references: Any, **_: Any) -> dict[str, float]:
    return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}


def mse(predictions: Any, references: Any, **_: Any) -> dict[str, float]:
    diff = np.asarray(predictions, dtype=np.float64) - np.asarray(references, dtype=np.float64)
    return {"mse": float(np.mean(diff**2))}


# ---------------------------------------------------------------------------------------- token labelling

def _entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """IOB2 chunks as ``(type, start, end)``; an ``I-`` that does not continue a chunk starts one."""
    chunks, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        if kind is not None and (prefix != "I" or label != kind):
            chunks.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = label, i
    return chunks


def _prf(correct: int, predicted: int, true: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def seqeval(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], **_: Any) -> dict[str, Any]:
    """Entity-level precision/recall/F1 per type and overall, plus token accuracy (seqeval's keys)."""
    predicted, true = set(), set()
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        predicted |= {(i, *e) for e in _entities(pred)}
        true |= {(i, *e) for e in _entities(ref)}
    scores: dict[str, Any] = {}
    for kind in sorted({e[1] for e in predicted | true}):
        p = {e for e in predicted if e[1] == kind}
        t = {e for e in true if e[1] == kind}
        precision, recall, f1 = _prf(len(p & t), len(p), len(t))
        scores[kind] = {"precision": precision, "recall": recall, "f1": f1, "number": len(t)}
    precision, recall, f1 = _prf(len(predicted & true), len(predicted), len(true))
    tokens = [(p, r) for pred, ref in zip(predictions, references) for p, r in zip(pred, ref)]
    accuracy_ = sum(p == r for p, r in tokens) / len(tokens) if tokens else 0.0
    return {**scores, "overall_precision": precision, "overall_recall": recall, "overall_f1": f1,
            "overall_accuracy": accuracy_}


# ------------------------------------------------------------------------------------------ generation

def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _f_measure(overlap: float, predicted: int, reference: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge(predictions: Sequence[str], references: Sequence[str], **_: Any) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures; ``rougeLsum`` matches each predicted line with its best reference line
    (``use_stemmer`` is ignored)."""
    totals = Counter()
    for prediction, reference in zip(predictions, references):
        p, r = _words(prediction), _words(reference)
        for n in (1, 2):
            overlap = sum((_ngrams(p, n) & _ngrams(r, n)).values())
            totals[f"rouge{n}"] += _f_measure(overlap, max(len(p) - n + 1, 0), max(len(r) - n + 1, 0))
        totals["rougeL"] += _f_measure(_lcs(p, r), len(p), len(r))
        reference_lines = [_words(line) for line in reference.split("\n")]
        summed = sum(max(_lcs(_words(line), ref) for ref in reference_lines) for line in prediction.split("\n"))
        totals["rougeLsum"] += _f_measure(min(summed, len(p), len(r)), len(p), len(r))
    count = max(len(predictions), 1)
    return {key: totals[key] / count for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")}


def sacrebleu(predictions: Sequence[str], references: Sequence[Sequence[str]], **_: Any) -> dict[str, Any]:
    """Corpus BLEU (0-100) over whitespace tokens, up to 4-grams, against the first reference of each."""
    matches, totals, sys_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for prediction, refs in zip(predictions, references):
        p, r = prediction.split(), refs[0].split()
        sys_len, ref_len = sys_len + len(p), ref_len + len(r)
        for n in range(4):
            matches[n] += sum((_ngrams(p, n + 1) & _ngrams(r, n + 1)).values())
            totals[n] += max(len(p) - n, 0)
    precisions = [100.0 * m / t if t else 0.0 for m, t in zip(matches, totals)]
    bp = 1.0 if sys_len > ref_len else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    score = bp * math.exp(sum(math.log(p / 100) for p in precisions) / 4) * 100 if all(precisions) else 0.0
    return {"score": score, "counts": matches, "totals": totals, "precisions": precisions, "bp": bp,
            "sys_len": sys_len, "ref_len": ref_len}


# ---------------------------------------------------------------------------------------- question answering

def _normalize(text: str) -> list[str]:
    text = re.sub(r"\b(a|an|the)\b", " ", re.sub(r"[^\w\s]", " ", text.lower()))
    return text.split()


def _token_f1(prediction: str, answer: str) -> float:
    p, a = _normalize(prediction), _normalize(answer)
    overlap = sum((Counter(p) & Counter(a)).values())
    return _f_measure(overlap, len(p), len(a)) if p and a else float(p == a)


def _best(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    answers = list(answers) or [""]
    exact = max(float(_normalize(prediction) == _normalize(a)) for a in answers)
    return exact, max(_token_f1(prediction, a) for a in answers)


def squad(predictions: Sequence[dict], references: Sequence[dict], **_: Any) -> dict[str, float]:
    """SQuAD v1 exact match and token F1, in percent."""
    answers = {ref["id"]: ref["answers"]["text"] for ref in references}
    scores = [_best(p["prediction_text"], answers[p["id"]]) for p in predictions]
    count = max(len(scores), 1)
    return {"exact_match": 100.0 * sum(s[0] for s in scores) / count, "f1": 100.0 * sum(s[1] for s in scores) / count}


def squad_v2(predictions: Sequence[dict], references: Sequence[dict], **_: Any) -> dict[str, float]:
    """SQuAD v2 exact and F1 overall and split by whether the question has an answer, in percent."""
    answers = {ref["id"]: ref["answers"]["text"] for ref in references}
    groups: dict[str, list[tuple[float, float]]] = {"": [], "HasAns_": [], "NoAns_": []}
    for p in predictions:
        score = _best(p["prediction_text"], answers[p["id"]])
        groups[""].append(score)
        groups["HasAns_" if answers[p["id"]] else "NoAns_"].append(score)
    result: dict[str, float] = {}
    for prefix, scores in groups.items():
        if scores or not prefix:
            count = max(len(scores), 1)
            result[f"{prefix}exact"] = 100.0 * sum(s[0] for s in scores) / count
            result[f"{prefix}f1"] = 100.0 * sum(s[1] for s in scores) / count
            result[f"{prefix}total"] = len(scores)
    return result


_METRICS: dict[str, Callable[..., dict[str, Any]]] = {
    "accuracy": accuracy, "mse": mse, "seqeval": seqeval, "rouge": rouge, "sacrebleu": sacrebleu,
    "squad": squad, "squad_v2": squad_v2,
}
