"""What hf_lightning keeps off the console: output of Lightning's that no hf_lightning user can act on.

Each entry names one exact message and where it comes from, so nothing else is hidden:

- ``WARNING_FILTERS``: Python warnings that Lightning raises on every hf_lightning run (installed when
  ``hf_lightning`` is imported, by :func:`install_warning_filters`);
- ``BANNERS``: Lightning's INFO banners (hardware, tips) dropped while ``build_trainer`` builds a
  ``lightning.Trainer``, and while ``hf-lightning`` runs a subcommand (:func:`lightning_banners_muted`);
  a plain ``lightning.Trainer`` keeps them.

Imports nothing heavy: it runs on ``import hf_lightning`` and on ``hf-lightning --help``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["WARNING_FILTERS", "BANNERS", "BANNER_LOGGERS", "install_warning_filters", "lightning_banners_muted", "is_banner"]


class WarningFilter(NamedTuple):
    """One ``warnings.filterwarnings("ignore", ...)`` entry, and why the user can't act on the warning."""

    message: str  # regular expression matched against the start of the message
    category: type[Warning]
    module: str  # regular expression matched against the module the warning is attributed to
    why: str


WARNING_FILTERS: tuple[WarningFilter, ...] = (
    WarningFilter(
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree$",
        why="Lightning's own code calls torch's deprecated LeafSpec on every batch; nothing in user code to change.",
    ),
    WarningFilter(
        message=r"Total length of `list` across ranks is zero",
        category=UserWarning,
        module=r"lightning\.pytorch\.utilities\.data$",
        why="HFDataModule gives an empty list of eval loaders when there is no eval set, which is intended.",
    ),
)

BANNERS: tuple[str, ...] = ("GPU available: ", "TPU available: ", "HPU available: ", "💡 Tip: ", "`Trainer.fit` stopped: ")
"""Starts of Lightning's INFO lines: the hardware lines and the litlogger/litmodels advertisements that
``lightning.Trainer(...)`` logs, and the reason ``fit`` ended, which under hf_lightning is always the
``max_steps`` it derived from ``TrainingArguments``. "GPU available but not used" is a warning and stays."""

BANNER_LOGGERS: tuple[str, ...] = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

_installed = False


def install_warning_filters() -> None:
    """Add ``WARNING_FILTERS`` in front of the process's warning filters (once)."""
    global _installed
    if _installed:
        return
    for entry in WARNING_FILTERS:
        warnings.filterwarnings("ignore", message=entry.message, category=entry.category, module=entry.module)
    _installed = True


def is_banner(message: str) -> bool:
    """True for the Lightning banner lines in ``BANNERS``."""
    return message.startswith(BANNERS)


class _BannerFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and is_banner(record.getMessage()))


@contextlib.contextmanager
def lightning_banners_muted() -> Iterator[None]:
    """Drop Lightning's ``BANNERS`` records (only those) logged inside the block."""
    banner_filter = _BannerFilter()
    loggers = [logging.getLogger(name) for name in BANNER_LOGGERS]
    for logger in loggers:
        logger.addFilter(banner_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(banner_filter)
