"""``hf-lightning`` (also ``python -m hf_lightning``): the whole product from a config file, on LightningCLI.

Subcommands (``SUBCOMMANDS``): ``fit``, ``validate``, ``test`` and ``predict`` run a config of four groups
(``model``, ``data``, ``args`` = every ``TrainingArguments`` field, ``trainer`` = Lightning settings), see
:mod:`hf_lightning.lightning_cli`; ``consolidate`` merges a sharded FSDP checkpoint. Examples::

    hf-lightning fit --config examples/text_classification.yaml --args.learning_rate 1e-4
    hf-lightning fit --config run.yaml --ckpt_path last          # resume from output_dir/checkpoint-N
    hf-lightning validate --config run.yaml --ckpt_path best     # the best checkpoint of the run
    hf-lightning fit --config run.yaml --print_config            # the full config, defaults included

This module is only the entry point and stays light: ``hf-lightning --help``, a mistyped subcommand and
``consolidate`` are answered without importing torch, Lightning or transformers (seconds of CPU).
"""

from __future__ import annotations

import difflib
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

__all__ = [
    "main",
    "run",
    "SUBCOMMANDS",
    "CONFIG_SUBCOMMANDS",
    "HFLightningCLI",
    "lightning_overrides",
    "training_arguments",
    "resolve_ckpt_path",
]

PROG = "hf-lightning"

CKPT_FORMS = (
    "a checkpoint-N folder (written by hf_lightning or transformers.Trainer); `last`: the newest checkpoint-N in "
    "args.output_dir; `best`: the run's best_model_checkpoint (read from the newest checkpoint's trainer_state.json)"
)


@dataclass(frozen=True)
class Subcommand:
    """One ``hf-lightning`` subcommand: its line in ``hf-lightning --help`` and its ``--ckpt_path`` help."""

    summary: str
    ckpt_path: str | None = None


SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand(
        "Train, as transformers' train(): checkpoint-N folders, logs, the final model and train/eval_results.json "
        "in args.output_dir.",
        ckpt_path=f"Resume training from {CKPT_FORMS}. `last` with no checkpoint-N yet starts from scratch.",
    ),
    "validate": Subcommand(
        "Evaluate on the eval split(s), as transformers' evaluate(): eval_* metrics in eval_results.json.",
        ckpt_path=f"Evaluate the model weights of {CKPT_FORMS}. Default: the model as the config builds it.",
    ),
    "test": Subcommand(
        "transformers' predict() on the test split: test_* metrics in test_results.json.",
        ckpt_path=f"Test the model weights of {CKPT_FORMS}. Default: the model as the config builds it.",
    ),
    "predict": Subcommand(
        "Predictions for the test split: predictions.npy, predicted_labels.txt (classification) and "
        "predict_results.json.",
        ckpt_path=f"Predict with the model weights of {CKPT_FORMS}. Default: the model as the config builds it.",
    ),
    "consolidate": Subcommand(
        "Merge a sharded FSDP checkpoint-N (pytorch_model_fsdp_0/) into model.safetensors + config.json, "
        "loadable with from_pretrained."
    ),
}
CONFIG_SUBCOMMANDS = ("fit", "validate", "test", "predict")
"""The subcommands that run a config through LightningCLI (``consolidate`` has its own small parser)."""

EXAMPLES = """\
  hf-lightning fit --config examples/text_classification.yaml --args.learning_rate 1e-4
  hf-lightning fit --config run.yaml --ckpt_path last          # resume from the newest checkpoint-N
  hf-lightning validate --config run.yaml --ckpt_path best     # evaluate the best checkpoint
  hf-lightning fit --config run.yaml --print_config            # the full config, defaults included
  hf-lightning consolidate outputs/run/checkpoint-500 -o export/"""

USAGE = f"{PROG} {{{','.join(SUBCOMMANDS)}}} ..."


def top_level_help(width: int | None = None) -> str:
    """``hf-lightning --help``: the subcommands, each in one line of help, and examples (``width``: the terminal's, at most 100)."""
    width = width or min(100, shutil.get_terminal_size().columns)
    name_width = max(map(len, SUBCOMMANDS)) + 2
    rows = [
        textwrap.fill(
            command.summary,
            width=width,
            initial_indent=f"  {name:<{name_width}}",
            subsequent_indent=" " * (name_width + 2),
        )
        for name, command in SUBCOMMANDS.items()
    ]
    return "\n".join(
        [
            f"usage: {USAGE}",
            "",
            "Train transformers models with Lightning, from a config file, with transformers.Trainer's semantics",
            "and its checkpoint-N folders.",
            "",
            "subcommands:",
            *rows,
            "",
            f"Each subcommand has its own help: {PROG} fit --help, {PROG} consolidate --help, ...",
            "",
            "examples:",
            EXAMPLES,
        ]
    )


def usage_error(message: str, *, usage: str = USAGE, help_command: str = f"{PROG} --help") -> NoReturn:
    """What every ``hf-lightning`` error looks like: a short usage line, the error, where the help is; exit 2."""
    sys.stderr.write(f"usage: {usage}\nerror: {message}\nFor the options and their help: {help_command}\n")
    raise SystemExit(2)


def unknown_subcommand_message(name: str) -> str:
    close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown subcommand {name!r}: choose one of {', '.join(SUBCOMMANDS)}{hint}"


def main(argv: Sequence[str] | None = None) -> None:
    """The ``hf-lightning`` console script: ``fit``/``validate``/``test``/``predict`` on LightningCLI, ``consolidate``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    if first in ("-h", "--help"):
        print(top_level_help())
        raise SystemExit(0)
    if first is None:
        usage_error(f"choose a subcommand: {', '.join(SUBCOMMANDS)}")
    if first == "consolidate":
        from . import consolidate

        raise SystemExit(consolidate.main(argv[1:]))
    if not first.startswith("-") and first not in CONFIG_SUBCOMMANDS:
        usage_error(unknown_subcommand_message(first))
    run(argv)


def run(argv: Sequence[str] | None = None, **kwargs: Any) -> HFLightningCLI:
    """Run a config subcommand on ``argv`` (default ``sys.argv[1:]``) and return the CLI (with ``.trainer``, ``.model``,
    ``.datamodule``, ``.training_args``, ``.flow``); ``run=False`` only builds them."""
    from .lightning_cli import HFLightningCLI

    return HFLightningCLI(args=list(sys.argv[1:] if argv is None else argv), **kwargs)


_LAZY = ("HFLightningCLI", "BuiltRun", "build_run", "lightning_overrides", "training_arguments", "resolve_ckpt_path", "add_training_arguments")

if TYPE_CHECKING:
    from .lightning_cli import (
        BuiltRun,
        HFLightningCLI,
        add_training_arguments,
        build_run,
        lightning_overrides,
        resolve_ckpt_path,
        training_arguments,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    main()
