"""Helpers shared by the checkpoint tests: token datasets, folder listings, bitwise comparisons."""

from __future__ import annotations

import os

import torch


class TokenDataset(torch.utils.data.Dataset):
    """Token id sequences of varying length, with a class label or (``causal``) labels = inputs."""

    def __init__(self, n: int, seed: int = 0, causal: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(4, 12, (1,), generator=g))
            ids = torch.randint(5, 99, (length,), generator=g).tolist()
            label = ids if causal else int(torch.randint(0, 2, (1,), generator=g))
            self.items.append({"input_ids": ids, "labels": label})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def checkpoints(folder) -> list[str]:
    names = [n for n in os.listdir(folder) if n.startswith("checkpoint-")] if os.path.isdir(folder) else []
    return sorted(names, key=lambda n: int(n.split("-")[1]))


def assert_bitwise(expected: torch.nn.Module | dict, actual: torch.nn.Module | dict) -> None:
    e = expected if isinstance(expected, dict) else expected.state_dict()
    a = actual if isinstance(actual, dict) else actual.state_dict()
    assert e.keys() == a.keys()
    for key in e:
        assert torch.equal(e[key], a[key]), f"{key} differs by {(e[key] - a[key]).abs().max().item()}"


def sorted_entries(history: list[dict]) -> list[dict]:
    """Entries read back from trainer_state.json have sorted keys (in transformers too): compare key sets."""
    return [dict(sorted(entry.items())) for entry in history]
