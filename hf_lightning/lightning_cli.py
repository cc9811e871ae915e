"""The config subcommands of ``hf-lightning`` (``fit``, ``validate``, ``test``, ``predict``), on LightningCLI.

A config has four groups::

    model:    ModelSpec           which model (pretrained name/folder + task, or a config), metrics
    data:     DataSpec            which data, columns, tokenization, collator
    args:     TrainingArguments   every transformers field, under its HF name, with its HF default and help
    trainer:  Lightning overrides accelerator, strategy, devices, precision, loggers, callbacks

The three objects are built the way a Python user builds them: ``HFModule(model, args)``,
``HFDataModule(args, ...)`` and ``build_trainer(args, **overrides)``, so a YAML run and the same
``TrainingArguments`` in Python are the same run. The entry point, the top-level help and the
subcommand table are in :mod:`hf_lightning.cli`, which imports this module only for these four.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import json
import logging
import os
import re
import shutil
import sys
import textwrap
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from jsonargparse import DefaultHelpFormatter, Namespace
from jsonargparse._common import debug_mode_active
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.profilers import Profiler
from lightning.pytorch.strategies import Strategy
from transformers import TrainerCallback, TrainingArguments

from .arguments import validate_arguments
from .cli import CONFIG_SUBCOMMANDS, PROG, SUBCOMMANDS, USAGE
from .console import lightning_banners_muted
from .specs import ConfigError, DataSpec, ModelSpec

if TYPE_CHECKING:  # imported where a run needs them, not for --help
    from .data import HFDataModule
    from .module import HFModule

__all__ = [
    "HFLightningCLI",
    "HFArgumentParser",
    "build_run",
    "lightning_overrides",
    "training_arguments",
    "resolve_ckpt_path",
]

log = logging.getLogger(__name__)


def lightning_overrides(
    accelerator: str | Accelerator | None = None,
    strategy: str | Strategy | None = None,
    devices: list[int] | str | int | None = None,
    num_nodes: int | None = None,
    precision: str | int | None = None,
    logger: Logger | list[Logger] | None = None,
    callbacks: list[Callback | TrainerCallback] | None = None,
    enable_progress_bar: bool | None = None,
    enable_model_summary: bool | None = None,
    profiler: Profiler | str | None = None,
    detect_anomaly: bool | None = None,
    sync_batchnorm: bool | None = None,
) -> dict[str, Any]:
    """Lightning settings on top of the ones ``build_trainer`` derives from ``args`` (unset: derived from ``args``).

    Args:
        accelerator: cpu, gpu, tpu, mps, auto or an Accelerator (default: cpu if ``args.use_cpu``, else Lightning's auto).
        strategy: auto, ddp, fsdp, deepspeed_stage_2, ... or a Strategy (default: DDP built from ``args.ddp_*`` on several devices).
        devices: number of devices, a list of indices, or auto.
        num_nodes: number of machines.
        precision: Lightning precision (32-true, bf16-mixed, 16-mixed, bf16-true, ...), overriding ``args.bf16``/``args.fp16``.
        logger: Lightning loggers added to those of ``args.report_to``.
        callbacks: Lightning Callbacks and transformers TrainerCallbacks (e.g. ``transformers.EarlyStoppingCallback``).
        enable_progress_bar: show Lightning's progress bar (default: ``not args.disable_tqdm``).
        enable_model_summary: print the model summary at the start (default: off).
        profiler: simple, advanced, pytorch or a Profiler.
        detect_anomaly: torch autograd anomaly detection.
        sync_batchnorm: synchronise batch norm layers across processes.
    """
    return {k: v for k, v in locals().items() if v is not None}


# ------------------------------------------------------------------------- TrainingArguments


def add_training_arguments(parser: LightningArgumentParser, key: str = "args", *, command: str | None = None) -> None:
    """Every ``TrainingArguments`` field as ``--args.<field>``, with transformers' default and help text.

    With ``command`` (the subcommand's ``--help``), the group lists the field names only, and
    ``--args.help [FIELD]`` prints the fields' full help: 114 fields take 500 lines.
    """
    parser.add_class_arguments(TrainingArguments, key, instantiate=False, sub_configs=True)
    helps = {f.name: " ".join(str(f.metadata.get("help", "")).split()) for f in dataclasses.fields(TrainingArguments)}
    fields = []
    for action in parser._actions:
        name = action.dest.removeprefix(f"{key}.")
        if not action.dest.startswith(f"{key}.") or name not in helps:
            continue
        fields.append(name)
        action.help = helps[name].replace("%", "%%")
        # not argparse.SUPPRESS, which would also drop the field from --print_config and the saved config.yaml
        action.hidden_in_help = command is not None  # type: ignore[attr-defined]
    for action in parser._actions:  # the nested help of dataclass fields (--args.parallelism_config.help)
        if action.dest.startswith(f"{key}.") and action.dest.endswith(".help"):
            action.hidden_in_help = command is not None  # type: ignore[attr-defined]
    if command is None:
        return
    group = parser.groups[key]
    group.title = f"transformers.TrainingArguments, every field as --{key}.FIELD VALUE, with transformers' default"
    names = textwrap.fill(", ".join(fields), width=min(100, shutil.get_terminal_size().columns) - 2, initial_indent="  ", subsequent_indent="  ")
    group.description = f"Their help: {PROG} {command} --{key}.help, or --{key}.help FIELD for one.\n{names}"
    group.add_argument(f"--{key}.help", action=TrainingArgumentsHelp, command=command, key=key, fields=fields)


class TrainingArgumentsHelp(argparse._HelpAction):
    """``--args.help [FIELD]``: transformers' help of every ``TrainingArguments`` field, or of one; then exit."""

    def __init__(self, option_strings: list[str], *, command: str, key: str, fields: list[str], **kwargs: Any) -> None:
        kwargs.update(dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs="?", metavar="FIELD")
        kwargs["help"] = "Show the help of every TrainingArguments field, or of FIELD, and exit"
        argparse.Action.__init__(self, option_strings, **kwargs)
        self.command, self.key, self.fields = command, key, fields

    def __call__(self, parser: Any, namespace: Any, value: Any, option_string: str | None = None) -> None:
        if value is not None and value not in self.fields:
            close = difflib.get_close_matches(value, self.fields, n=3)
            parser.error(f"{option_string}: {value!r} is not a TrainingArguments field" + (f"; did you mean {', '.join(close)}?" if close else "."))
        usage = f"{PROG} {self.command} [--{self.key}.FIELD VALUE ...]"
        full = HFArgumentParser(prog=PROG, usage=usage, description=f"transformers.TrainingArguments, as --{self.key}.FIELD VALUE or in the config's {self.key}: group.", add_help=False)
        add_training_arguments(full, self.key)
        if value is not None:
            for action in full._actions:
                action.hidden_in_help = action.dest != f"{self.key}.{value}"
        full.groups[self.key].title = f"TrainingArguments field{'' if value else 's'}"
        full.print_help()
        parser.exit()


def _enum_choices() -> dict[str, type[enum.Enum]]:
    hints = typing.get_type_hints(TrainingArguments)
    found = {}
    for name, hint in hints.items():
        for candidate in typing.get_args(hint) or (hint,):
            if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
                found[name] = candidate
    return found


def training_arguments(values: dict[str, Any]) -> TrainingArguments:
    """``TrainingArguments(**values)``; every error names the ``args.<field>`` key."""
    problems = []
    for name, choices in _enum_choices().items():
        value = values.get(name)
        if isinstance(value, str) and value not in {c.value for c in choices}:
            problems.append(f"args.{name}: {value!r} is not one of {[c.value for c in choices]}.")
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        return TrainingArguments(**values)
    except (ValueError, TypeError, ImportError) as error:
        raise ConfigError(f"args (TrainingArguments): {error}") from error


# ----------------------------------------------------------------------------- checkpoints


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """``last`` -> the newest ``checkpoint-N`` of ``output_dir`` (None, i.e. a fresh start, when there is none);
    ``best`` -> the run's ``best_model_checkpoint``; anything else must be a checkpoint folder."""
    if ckpt_path is None:
        return None
    from . import checkpoint_folders, hf_format

    if ckpt_path == "last":
        last = checkpoint_folders.find_last_checkpoint(output_dir)
        if last is None:
            log.warning("--ckpt_path last: no checkpoint-N in %s yet, starting from the beginning.", output_dir)
        return last
    if ckpt_path == "best":
        last = checkpoint_folders.find_last_checkpoint(output_dir)
        state = hf_format.read_trainer_state(last) if last else None
        best = getattr(state, "best_model_checkpoint", None)
        if best is None:
            raise ConfigError(f"ckpt_path: 'best' needs a run with `metric_for_best_model`; no best checkpoint recorded in {output_dir}.")
        return best
    if not os.path.exists(ckpt_path):
        raise ConfigError(f"ckpt_path: {ckpt_path!r} does not exist (a checkpoint-N folder, 'last' or 'best').")
    return ckpt_path


# ------------------------------------------------------------------------------ the parser

SUBCOMMAND_USAGE = (
    "{prog} {name} [-h] [-c CONFIG] [--print_config] [--{{model,data,args,trainer}}.KEY VALUE ...] [--ckpt_path CKPT_PATH]"
)

_KNOWN_SUBCLASSES = re.compile(r", known subclasses: [^)]*")


class HFHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help without the list of every importable subclass after a class-typed option (150
    torchmetrics classes after ``--model.metrics``): ``--<key>.help`` without a value lists them instead.
    Options marked ``hidden_in_help`` are left out of the help only (their group lists them by name)."""

    def _get_help_string(self, action: Any) -> str:
        return _KNOWN_SUBCLASSES.sub("", super()._get_help_string(action))

    def add_argument(self, action: Any) -> None:
        if not getattr(action, "hidden_in_help", False):  # the TrainingArguments fields, listed by name (--args.help)
            super().add_argument(action)


class HFArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are three lines: a short usage line, the error, and the help command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HFHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:  # type: ignore[override]
        if not self.exit_on_error or debug_mode_active():  # jsonargparse raises instead of exiting
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
        message = message.strip() + _overlap_hints(message)
        name = getattr(parser, "hf_subcommand", None)
        sys.stderr.write(
            f"usage: {usage}\nerror: {message}\n"
            f"For the options and their help: {PROG}{' ' + name if name else ''} --help\n"
        )
        self.exit(2)


def _overlap_hints(message: str) -> str:
    """One line per Lightning setting in ``message`` that TrainingArguments owns (``trainer.max_epochs`` -> ``args.num_train_epochs``)."""
    from . import overlaps

    hints = dict.fromkeys(overlaps.cli_hint(name) for name in re.findall(r"\btrainer\.(\w+)", message))
    return "".join(f"\n{hint}" for hint in hints if hint)


def _list_classes_on_bare_help(parser: LightningArgumentParser, command: str) -> None:
    """``--model.metrics.help`` (and ``--trainer.callbacks.help``, ...) without a class: the known classes, one a line.

    jsonargparse would show the base class's own arguments; the list used to be printed after the option in
    ``--help`` instead (150 lines for torchmetrics).
    """
    for action in parser._actions:
        if type(action).__name__ == "_ActionHelpClassPath" and action.nargs != 0:
            action.nargs = "?"  # a class is optional: without one, the list
            action.print_help = _ClassListHelp(action, command)


class _ClassListHelp:
    """Replaces the ``print_help`` of one jsonargparse ``--<key>.help`` action: no value lists the known classes."""

    def __init__(self, action: Any, command: str) -> None:
        self.action, self.command, self.original = action, command, action.print_help
        self.base = " or ".join(action._basename.strip("{}").split(","))  # "Metric", "Callback or TrainerCallback"
        action.help = f"List the known {self.base} classes, or show the arguments of one (a class name or import path); then exit."

    def __call__(self, call_args: tuple) -> None:
        from jsonargparse._typehints import get_all_subclass_paths

        parser, _, value, option = call_args
        if value is not None:
            return self.original(call_args)
        names = get_all_subclass_paths(self.action._typehint, closed_types=False)
        example = names[0].rsplit(".", 1)[-1] if names else "CLASS"
        sys.stdout.write(
            f"Known {self.base} classes for {option.removesuffix('.help')} (any other importable subclass works too):\n"
            + "".join(f"  {name}\n" for name in names)
            + f"The arguments of one: {PROG} {self.command} {option} {example}\n"
        )
        parser.exit()


# --------------------------------------------------------------------------------- the CLI


class HFLightningCLI(LightningCLI):
    """LightningCLI whose model, data and trainer come from ``ModelSpec``, ``DataSpec``, ``TrainingArguments``.

    The ``trainer`` Lightning builds is ``build_trainer(args, **trainer_overrides)``; Lightning's own
    seeding, optimizer arguments and model/datamodule registries are off, because transformers'
    ``args`` define them (``args.seed``, ``args.optim``, ``args.lr_scheduler_type``).
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        parser_kwargs = {
            "prog": PROG,
            "usage": USAGE,
            "description": "Train transformers models with Lightning, from a config file.",
            **{name: {"description": SUBCOMMANDS[name].summary, "usage": SUBCOMMAND_USAGE.format(prog=PROG, name=name)} for name in CONFIG_SUBCOMMANDS},
        }
        for key, value in (kwargs.pop("parser_kwargs", None) or {}).items():
            parser_kwargs[key] = {**parser_kwargs[key], **value} if isinstance(parser_kwargs.get(key), dict) else value
        self.training_args: TrainingArguments | None = None
        self.built: Any = None
        super().__init__(
            trainer_class=pl.Trainer,
            parser_class=HFArgumentParser,
            parser_kwargs=parser_kwargs,
            seed_everything_default=False,
            auto_configure_optimizers=False,
            load_from_checkpoint_support=False,
            args=args,
            run=run,
            **kwargs,
        )

    # ------------------------------------------------------------------------------ parser

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's four, without ``weights_only``: checkpoint-N folders are always read with ``weights_only=True``."""
        return {name: skip | {"weights_only"} for name, skip in LightningCLI.subcommands().items()}

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Lightning's subcommands, with hf-lightning's one-line help instead of Lightning's Trainer docstrings."""
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands(help=f"see also `{PROG} consolidate --help`")
        for name in self.subcommands():
            subparser = self._prepare_subcommand_parser(pl.Trainer, name, **kwargs.get(name, {}))
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=SUBCOMMANDS[name].summary)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        self._building = subcommand  # for add_core_arguments_to_parser
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.hf_subcommand = subcommand  # type: ignore[attr-defined]
        for group in parser._action_groups:
            for action in group._group_actions:
                if action.dest == "ckpt_path":
                    action.help = SUBCOMMANDS[subcommand].ckpt_path
                    group.title = "checkpoint-N"
        _list_classes_on_bare_help(parser, subcommand)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's, without its warning about ``args`` and ``sys.argv`` both given: ``hf-lightning`` passes ``sys.argv[1:]`` as ``args``."""
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _run_subcommand(self, subcommand: str) -> None:
        with lightning_banners_muted():
            super()._run_subcommand(subcommand)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """No ``--seed_everything``: transformers seeds from ``args.seed``."""

    def _set_seed(self) -> None:
        """Lightning would seed (randomly, without ``--seed_everything``); ``build_run``/``build_trainer`` seed from ``args.seed``."""

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(ModelSpec, "model", sub_configs=True)
        parser.add_class_arguments(DataSpec, "data", sub_configs=True)
        add_training_arguments(parser, "args", command=getattr(self, "_building", None))
        parser.add_function_arguments(lightning_overrides, "trainer", sub_configs=True)

    # ------------------------------------------------------------------------- instantiation

    def _search_dirs(self, config: Any) -> list[str]:
        """Folders of the ``--config`` files, to resolve relative data/model paths written in them."""
        files = config.get("config") or []
        return [os.path.dirname(os.path.abspath(str(getattr(f, "absolute", f)))) for f in files if f is not None]

    def instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        parser = self._parser(self.subcommand)
        try:
            self.config_init = self.parser.instantiate_classes(self.config)
            self.training_args = training_arguments(config["args"].as_dict())
            self.model, self.datamodule = build_run(
                self._get(self.config_init, "model"),
                self._get(self.config_init, "data"),
                self.training_args,
                stage=self.subcommand or "fit",
                search_dirs=self._search_dirs(config),
                run=self,
            )
            self.trainer = self.instantiate_trainer()
        except ConfigError as error:
            parser.error(str(error))

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        from . import overlaps
        from .builder import build_trainer

        overrides = dict(self._get(self.config_init, "trainer") or {})
        overrides = {k: v for k, v in overrides.items() if v is not None}
        overrides.update(kwargs)
        callbacks = list(overrides.pop("callbacks", None) or [])
        if self.save_config_callback is not None and self.subcommand is not None:
            callbacks.append(
                self.save_config_callback(self._parser(self.subcommand), self.config[self.subcommand], **self.save_config_kwargs)
            )
        # lightning.Trainer settings the config leaves at their defaults are not asked for (overlaps.py's rule)
        overrides = {k: v for k, v in overrides.items() if k not in overlaps.LIGHTNING_DEFAULTS or v != overlaps.LIGHTNING_DEFAULTS[k]}
        try:
            return build_trainer(self.training_args, callbacks=callbacks, **overrides)  # type: ignore[arg-type]
        except ValueError as error:
            raise ConfigError(str(error)) from error

    # ---------------------------------------------------------------------------- subcommands

    def _ckpt(self, ckpt_path: str | None) -> str | None:
        try:
            return resolve_ckpt_path(ckpt_path, str(self.training_args.output_dir))  # type: ignore[union-attr]
        except ConfigError as error:
            self._parser(self.subcommand).error(str(error))
            raise  # pragma: no cover - error() exits

    def fit(self, model: HFModule, datamodule: HFDataModule, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """Train; writes checkpoint-N folders, logs and the final model (``from_pretrained``-loadable) to ``args.output_dir``."""
        from .callbacks.checkpoint import export_model

        self.trainer.fit(model, datamodule=datamodule, ckpt_path=self._ckpt(ckpt_path), **kwargs)
        output_dir = str(self.training_args.output_dir)  # type: ignore[union-attr]
        export_model(self.trainer, model, output_dir)
        flow = self.flow
        summary = flow.last_train_output.metrics if flow.last_train_output is not None else {}
        evals = [e for e in flow.state.log_history if any(k.startswith("eval_") and k.endswith("loss") for k in e)]
        self._write_results("train", summary)
        if evals:
            self._write_results("eval", {k: v for k, v in evals[-1].items() if k != "step"})
        self._report_fit(output_dir, evals[-1] if evals else {})

    def validate(self, model: HFModule, datamodule: HFDataModule, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """Evaluate on the eval split(s); prints and writes ``eval_results.json``."""
        kwargs.pop("verbose", None)
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=self._ckpt(ckpt_path), verbose=False, **kwargs)
        metrics = dict(self.flow.last_eval_metrics)
        self._write_results("eval", metrics)
        self._print(json.dumps(metrics, indent=2))

    def test(self, model: HFModule, datamodule: HFDataModule, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """transformers' ``predict()`` on the test split: ``test_*`` metrics, written to ``test_results.json``."""
        self._predict(model, datamodule, ckpt_path, prefix="test", save_predictions=False, **kwargs)

    def predict(self, model: HFModule, datamodule: HFDataModule, ckpt_path: str | None = None, **kwargs: Any) -> None:
        """Predictions for the test split: ``predictions.npy`` (+ ``predicted_labels.txt`` for classification) and ``predict_results.json``."""
        kwargs.pop("return_predictions", None)
        self._predict(model, datamodule, ckpt_path, prefix="predict", save_predictions=True, **kwargs)

    def _predict(self, model: HFModule, datamodule: HFDataModule, ckpt_path: str | None, *, prefix: str, save_predictions: bool, **kwargs: Any) -> None:
        import numpy as np

        kwargs.pop("verbose", None)
        model.test_prefix = prefix
        self.trainer.test(model, datamodule=datamodule, ckpt_path=self._ckpt(ckpt_path), verbose=False, **kwargs)
        _, result = self.flow.last_predictions[0]
        self._write_results(prefix, result.metrics)
        output_dir = str(self.training_args.output_dir)  # type: ignore[union-attr]
        if save_predictions and self.trainer.is_global_zero:
            predictions = result.predictions[0] if isinstance(result.predictions, tuple) else result.predictions
            np.save(os.path.join(output_dir, "predictions.npy"), predictions)
            id2label = getattr(getattr(model.model, "config", None), "id2label", None)
            if self.built is not None and self.built.task == "sequence-classification" and id2label:
                with open(os.path.join(output_dir, "predicted_labels.txt"), "w") as f:
                    f.writelines(f"{id2label[int(i)]}\n" for i in np.asarray(predictions).argmax(-1))
            self._print(f"predictions: {os.path.join(output_dir, 'predictions.npy')}")
        self._print(json.dumps(result.metrics, indent=2))

    # ------------------------------------------------------------------------------ reporting

    @property
    def flow(self) -> Any:
        from .callbacks.flow import HFFlowCallback

        return next(cb for cb in self.trainer.callbacks if isinstance(cb, HFFlowCallback))

    def _print(self, text: str) -> None:
        if self.trainer.is_global_zero:
            print(text, flush=True)

    def _write_results(self, split: str, metrics: dict[str, Any]) -> None:
        """``<split>_results.json`` in ``output_dir``, like transformers' ``Trainer.save_metrics``."""
        if not self.trainer.is_global_zero or not metrics:
            return
        output_dir = str(self.training_args.output_dir)  # type: ignore[union-attr]
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"{split}_results.json"), "w") as f:
            json.dump(metrics, f, indent=4, sort_keys=True)

    def _report_fit(self, output_dir: str, last_eval: dict[str, Any]) -> None:
        checkpoints = sorted(
            (d for d in os.listdir(output_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.rsplit("-", 1)[-1])
        ) if os.path.isdir(output_dir) else []
        lines = [f"hf-lightning fit: {self.flow.state.global_step} optimizer steps"]
        shown = {k: round(v, 4) for k, v in last_eval.items() if k.startswith("eval_") and isinstance(v, float) and "runtime" not in k and "per_second" not in k}
        if shown:
            lines.append(f"  last evaluation (step {last_eval.get('step')}): {shown}")
        if self.flow.state.best_model_checkpoint:
            lines.append(f"  best checkpoint: {self.flow.state.best_model_checkpoint} ({self.training_args.metric_for_best_model}={self.flow.state.best_metric:.4g})")  # type: ignore[union-attr]
        lines.append(f"  checkpoints: {', '.join(os.path.join(output_dir, c) for c in checkpoints) or 'none'}")
        for logger in self.trainer.loggers:
            if type(logger).__name__ == "TensorBoardLogger":
                lines.append(f"  TensorBoard logs: {logger.log_dir}  (tensorboard --logdir {os.path.dirname(logger.log_dir)})")
        lines.append(f"  final model: {output_dir}  (AutoModel*.from_pretrained({output_dir!r}))")
        self._print("\n".join(lines))


@dataclasses.dataclass
class BuiltRun:
    """What the config built, kept on the CLI for scripts: the task, the raw model, the tokenizer, the label names."""

    task: str | None
    model: Any
    tokenizer: Any
    labels: list[Any] | None


def build_run(
    model_spec: ModelSpec,
    data_spec: DataSpec,
    args: TrainingArguments,
    *,
    stage: str = "fit",
    search_dirs: Sequence[str] = (),
    run: HFLightningCLI | None = None,
) -> tuple[HFModule, HFDataModule]:
    """``HFModule`` + ``HFDataModule`` from the config, built like a transformers example script would."""
    from transformers.trainer_utils import set_seed

    from .data import HFDataModule
    from .module import HFModule

    problems = model_spec.problems() + data_spec.problems()
    if problems:
        raise ConfigError("\n".join(problems))
    task = model_spec.resolved_task()
    raw = data_spec.load(search_dirs, seed=args.seed)
    tokenizer = data_spec.load_tokenizer(model_spec, search_dirs)
    # The labels decide the head's size, so read them before building the model (run_glue does the same).
    labels = data_spec.label_names(raw, task)
    set_seed(args.seed)  # the head's initialisation, as transformers' example scripts seed before loading
    model = model_spec.build(labels=labels, search_dirs=search_dirs)
    data = data_spec.build(raw, tokenizer, task, model=model, stages=(stage,))
    module = HFModule(
        model,
        args,
        compute_metrics=model_spec.compute_metrics,
        preprocess_logits_for_metrics=model_spec.preprocess_logits_for_metrics,
        processing_class=tokenizer,
        metrics=model_spec.metrics or None,
    )
    datamodule = HFDataModule(
        args, train_dataset=data.train, eval_dataset=data.eval, test_dataset=data.test, data_collator=data.collator, processing_class=tokenizer
    )
    if stage == "fit":
        try:  # what transformers.Trainer checks once it has the datasets
            validate_arguments(
                args,
                has_train_dataset=True,
                train_dataset_has_length=True,
                has_eval_dataset=data.eval is not None,
                compute_metrics=model_spec.compute_metrics,
            )
        except ValueError as error:
            raise ConfigError(f"{error}\n(data: eval split {data_spec.eval_split or 'validation'!r} -> {'found' if data.eval is not None else 'none'})") from error
    if run is not None:
        run.built = BuiltRun(task=task, model=model, tokenizer=tokenizer, labels=labels)
    return module, datamodule
