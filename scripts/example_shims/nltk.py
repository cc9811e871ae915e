"""A stand-in for the part of ``nltk`` that run_summarization.py uses: the ``punkt`` lookup and ``sent_tokenize``.

The script looks up the ``punkt`` sentence splitter (and downloads it when missing, which an offline check cannot
do), then splits predictions and references into sentences for ROUGE-Lsum. The example-script check puts this
folder first on ``PYTHONPATH`` for both runs it compares (see evaluate.py beside it).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["data", "download", "sent_tokenize"]

_RESOURCES = ("tokenizers/punkt", "tokenizers/punkt_tab")


class _Data:
    """``nltk.data``: ``find`` answers for the sentence splitter this module provides."""

    def find(self, resource_name: str, paths: Any = None) -> str:
        if resource_name.rstrip("/").startswith(_RESOURCES):
            return resource_name
        raise LookupError(f"the offline nltk stand-in has no resource {resource_name!r}")


data = _Data()


def download(info_or_id: Any = None, **_: Any) -> bool:
    """Nothing to download: the splitter is built in."""
    return True


def sent_tokenize(text: str, language: str = "english") -> list[str]:
    """Split after ``.``, ``!`` or ``?`` followed by white space."""
    return [sentence for sentence in re.split(r"(?<=[.!?])\s+", text.strip()) if sentence]
