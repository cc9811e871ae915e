"""Writes the small datasets the examples train on. Deterministic: re-running gives the same files.

All of it is synthetic, made from templates and word lists in this file; none of it is real data:

- ``sentiment/{train,test}.csv`` (text,label): short English review sentences, positive or negative.
  Besides plain "X was great" sentences there are negations ("was not great" -> negative) and
  contrasts ("was dull at first, but in the end it was moving" -> the second clause wins), so a
  bag of words is not enough. The test set uses subjects the training set never shows, and about
  30% of its sentences follow patterns the training set never shows ("was far from terrible",
  "I expected it to be dull, but it was fun").
- ``ner/{train,validation}.jsonl`` (tokens, tags): sentences with person, organisation and
  location names tagged in IOB2 (B-PER, I-PER, B-ORG, I-ORG, B-LOC, O).
- ``lm/{train,validation}.txt``: one sentence per line (the sentiment sentences), for language modeling.
- ``summaries/{train,validation}.jsonl`` (review, summary): a review sentence -> "negative: the coffee", for seq2seq.

Run: ``python examples/data/make_data.py``
"""

from __future__ import annotations

import csv
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

SUBJECTS_TRAIN = [
    "the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending", "this book", "the story",
    "the restaurant", "the service", "the food", "this phone", "the battery", "the hotel room", "the staff",
    "the concert", "the game", "this album", "the show", "the museum", "the tour", "the camera", "the app",
    "the coffee", "the course", "the lecture", "this laptop", "the headphones", "the flight", "the menu",
]
SUBJECTS_TEST = [
    "the sequel", "this novel", "the musical", "the cafe", "the guide", "the keyboard", "the podcast",
    "the festival", "the workshop", "the tablet", "the series", "the bakery",
]
POSITIVE = [
    "great", "wonderful", "excellent", "delightful", "brilliant", "superb", "charming", "enjoyable", "fantastic",
    "impressive", "lovely", "outstanding", "remarkable", "pleasant", "moving", "fun", "beautiful", "good",
    "amazing", "perfect",
]
NEGATIVE = [
    "terrible", "awful", "boring", "disappointing", "dreadful", "poor", "mediocre", "annoying", "dull",
    "horrible", "bland", "frustrating", "messy", "weak", "forgettable", "bad", "slow", "painful", "ugly",
    "useless",
]
INTENSIFIERS = ["", "", "really ", "truly ", "quite ", "absolutely ", "very ", "pretty "]
OPENERS = ["", "", "honestly, ", "overall, ", "i think ", "to be fair, ", "in my opinion, "]


def _sentence(rng: random.Random, subjects: list[str], held_out: bool = False) -> tuple[str, str, str]:
    subject = rng.choice(subjects)
    label = rng.choice(["positive", "negative"])
    same, opposite = (POSITIVE, NEGATIVE) if label == "positive" else (NEGATIVE, POSITIVE)
    kind = rng.random()
    if held_out and kind < 0.3:  # sentence patterns the training set never shows
        text = rng.choice([
            f"I expected {subject} to be {rng.choice(opposite)}, but it was {rng.choice(same)}.",
            f"{subject} was far from {rng.choice(opposite)}.",
            f"Nobody could call {subject} {rng.choice(opposite)}.",
            f"{subject}? {rng.choice(same).capitalize()}, {rng.choice(INTENSIFIERS)}{rng.choice(same)}.",
        ])
    elif kind < 0.45:  # plain
        text = f"{rng.choice(OPENERS)}{subject} was {rng.choice(INTENSIFIERS)}{rng.choice(same)}."
    elif kind < 0.6:  # two adjectives of the same polarity
        text = f"{subject} is {rng.choice(same)} and {rng.choice(same)}."
    elif kind < 0.8:  # negation: "not great" is negative, "not terrible" positive
        text = f"{rng.choice(OPENERS)}{subject} was not {rng.choice(INTENSIFIERS)}{rng.choice(opposite)}."
    else:  # contrast: the clause after "but" decides
        text = f"{subject} was {rng.choice(opposite)} at first, but in the end it was {rng.choice(same)}."
    return text[0].upper() + text[1:], label, subject


def sentiment(n_train: int = 1600, n_test: int = 400, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder = os.path.join(HERE, "sentiment")
    os.makedirs(folder, exist_ok=True)
    for split, n, subjects in (("train", n_train, SUBJECTS_TRAIN), ("test", n_test, SUBJECTS_TEST)):
        seen: set[str] = set()
        rows = []
        while len(rows) < n:
            text, label, _ = _sentence(rng, subjects, held_out=split == "test")
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)


FIRST = ["Alice", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Lucas", "Mei", "Nadia"]
LAST = ["Smith", "Garcia", "Muller", "Rossi", "Tanaka", "Okafor", "Dubois", "Novak", "Silva", "Berg"]
ORGS = [["Acme", "Corp"], ["Globex"], ["Initech"], ["Northwind", "Traders"], ["Blue", "River", "Bank"], ["Umbrella"], ["Stark", "Industries"]]
PLACES = [["Paris"], ["Lagos"], ["Tokyo"], ["New", "York"], ["Berlin"], ["Lima"], ["Oslo"], ["Cape", "Town"], ["Madrid"]]
NER_TEMPLATES = [
    "{per} works for {org} in {loc} .",
    "{per} moved to {loc} last year .",
    "{org} opened an office in {loc} .",
    "Yesterday {per} met {per2} at {org} .",
    "{per} said that {org} will hire more people .",
    "The team from {loc} visited {org} on Monday .",
    "{per} and {per2} live in {loc} .",
]


def _entity(words: list[str], kind: str) -> list[tuple[str, str]]:
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def ner(n_train: int = 600, n_validation: int = 150, seed: int = 1) -> None:
    rng = random.Random(seed)
    folder = os.path.join(HERE, "ner")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_validation)):
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            for _ in range(n):
                slots = {
                    "per": _entity([rng.choice(FIRST), rng.choice(LAST)] if rng.random() < 0.6 else [rng.choice(FIRST)], "PER"),
                    "per2": _entity([rng.choice(FIRST)], "PER"),
                    "org": _entity(rng.choice(ORGS), "ORG"),
                    "loc": _entity(rng.choice(PLACES), "LOC"),
                }
                pairs: list[tuple[str, str]] = []
                for piece in rng.choice(NER_TEMPLATES).split():
                    if piece.startswith("{"):
                        pairs += slots[piece.strip("{}")]
                    else:
                        pairs.append((piece, "O"))
                f.write(json.dumps({"tokens": [w for w, _ in pairs], "tags": [t for _, t in pairs]}) + "\n")


def language_modeling(seed: int = 2) -> None:
    rng = random.Random(seed)
    folder = os.path.join(HERE, "lm")
    os.makedirs(folder, exist_ok=True)
    for split, n, subjects in (("train", 1200, SUBJECTS_TRAIN), ("validation", 200, SUBJECTS_TRAIN)):
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            for _ in range(n):
                f.write(_sentence(rng, subjects)[0] + "\n")


def reviews_to_summaries(seed: int = 3) -> None:
    """A review sentence -> "<sentiment>: <what it is about>" (text-to-text, T5 style)."""
    rng = random.Random(seed)
    folder = os.path.join(HERE, "summaries")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", 1200), ("validation", 200)):
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            for _ in range(n):
                text, label, subject = _sentence(rng, SUBJECTS_TRAIN)
                f.write(json.dumps({"review": text, "summary": f"{label}: {subject}"}) + "\n")


if __name__ == "__main__":
    sentiment()
    ner()
    language_modeling()
    reviews_to_summaries()
    print(f"wrote the example datasets under {HERE}")
