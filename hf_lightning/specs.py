"""What a config file names: the model (``ModelSpec``) and the data (``DataSpec``).

Two plain dataclasses, one line of help per field (jsonargparse turns them into ``--help``), that
build the pieces ``HFModule``/``HFDataModule`` take: a ``PreTrainedModel`` loaded by task or Auto
class, a tokenizer, tokenized datasets and the collator the task needs. The preprocessing follows
transformers' example scripts (run_glue, run_ner, run_clm, run_mlm, run_summarization, run_qa).
Errors name the config key (``model.task``, ``data.text_column``...), because that is what the
person holding the config file can fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torchmetrics import Metric

from .preprocessing import PREPROCESSORS

__all__ = ["ModelSpec", "DataSpec", "ConfigError", "TASKS", "BuiltData", "resolve_path", "config_problems", "config_fields"]

log = logging.getLogger(__name__)

Task = Literal[
    "sequence-classification", "token-classification", "causal-lm", "masked-lm", "seq2seq", "question-answering"
]

TASKS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "question-answering": "AutoModelForQuestionAnswering",
}

COLLATORS = ("default", "padding", "token-classification", "language-modeling", "masked-language-modeling", "seq2seq")


class ConfigError(ValueError):
    """A problem in the config, with the key to fix in the message."""


def resolve_path(value: str, search_dirs: Sequence[str] = ()) -> str:
    """``pkg:<package>/<sub/path>`` -> the folder inside an installed package; a relative path is looked up
    next to the config file first (``search_dirs``), else left relative to the current directory."""
    if value.startswith("pkg:"):
        package, _, sub = value[4:].partition("/")
        try:
            module = importlib.import_module(package)
        except ImportError as error:
            raise ConfigError(f"{value!r}: package {package!r} is not installed ({error}).") from error
        return os.path.join(os.path.dirname(module.__file__ or ""), sub)
    if os.path.isabs(value):
        return value
    for folder in search_dirs:
        candidate = os.path.join(folder, value)
        if os.path.exists(candidate):
            return candidate
    return value


# Keys every config accepts besides its class's fields: what ``PretrainedConfig.__post_init__`` consumes, and the
# attributes that were ``PretrainedConfig.__init__`` parameters before transformers 5 and that model code still
# reads from any config (T5 reads ``decoder_start_token_id``, encoder-decoders ``tie_encoder_decoder``...).
CONFIG_COMMON_KEYS = frozenset({
    "num_labels", "torch_dtype", "attn_implementation", "experts_implementation", "output_attentions", "name_or_path",
    "rope_scaling", "rope_theta", "per_layer_config",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "tie_word_embeddings",
    "is_decoder", "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder", "tokenizer_class",
    "prefix", "task_specific_params", "finetuning_task", "pruned_heads", "torchscript",
})


def config_fields(config_class: type) -> set[str]:
    """The keys ``config_class(**kwargs)`` knows: its fields (dataclass fields, or ``__init__`` parameters for an
    older-style config) and the names of its ``attribute_map`` (``hidden_size`` for T5's ``d_model``)."""
    if dataclasses.is_dataclass(config_class):
        names = {f.name for f in dataclasses.fields(config_class)}
    else:
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        parameters = inspect.signature(config_class.__init__).parameters.values()
        names = {p.name for p in parameters if p.kind not in kinds and p.name != "self"}
    return names | set(getattr(config_class, "attribute_map", {}) or {})


def config_problems(config: dict[str, Any]) -> list[str]:
    """Keys of ``model.config`` its ``model_type``'s config class doesn't know, each with the closest field.

    transformers keeps an unknown key as a stray attribute and builds the default size (a typo ``hiden_size``
    gives a 768-wide BERT), and drops generation settings (``max_length``, ``num_beams``...) without a word.
    """
    from transformers import GenerationConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else " (see transformers' CONFIG_MAPPING)."
        return [f"model.config.model_type: {model_type!r} is not a transformers model type{hint}"]
    config_class = CONFIG_MAPPING[model_type]
    fields = config_fields(config_class)
    generation = set(GenerationConfig._get_default_generation_params()) - fields
    problems = []
    for key in config:
        if key == "model_type" or key in fields or key in CONFIG_COMMON_KEYS:
            continue
        if key in generation:
            problems.append(f"model.config.{key}: a generation setting, which transformers drops from a model config "
                            "(it belongs to the model's GenerationConfig).")
            continue
        close = difflib.get_close_matches(key, sorted(fields | CONFIG_COMMON_KEYS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        problems.append(f"model.config.{key}: {config_class.__name__} (model_type {model_type!r}) has no field {key!r}{hint}")
    if problems:
        own = sorted(fields - config_fields(PretrainedConfig))
        aliases = getattr(config_class, "attribute_map", {}) or {}
        shown = [f"{name} (= {aliases[name]})" if name in aliases else name for name in own]
        problems.append(f"  {config_class.__name__}'s fields: {', '.join(shown)}; and those of every config "
                        f"({', '.join(sorted(config_fields(PretrainedConfig) | CONFIG_COMMON_KEYS))}).")
    return problems


@dataclass
class ModelSpec:
    """The model: a pretrained name or folder loaded with an Auto class, or a config to build from scratch.

    Args:
        name_or_path: Hub name or local folder for ``from_pretrained`` (``pkg:<package>/<folder>`` for a folder inside an installed package).
        task: picks the Auto class: sequence-classification, token-classification, causal-lm, masked-lm, seq2seq, question-answering.
        auto_class: an Auto class name (``AutoModelForCausalLM``) or import path, instead of ``task``.
        config: a config dict with ``model_type`` to build a randomly initialised model from scratch (no ``name_or_path``).
        num_labels: number of labels of a classification head (default: counted from the data's labels).
        dtype: weights dtype for ``from_pretrained``/``from_config``: float32, bfloat16, float16 or auto.
        from_pretrained_kwargs: more keyword arguments for ``from_pretrained`` (revision, attn_implementation, ...).
        compute_metrics: import path of an ``EvalPrediction -> dict`` function, as for transformers.Trainer.
        preprocess_logits_for_metrics: import path of a ``(logits, labels) -> logits`` function applied per eval batch.
        metrics: torchmetrics by name (``{accuracy: {class_path: torchmetrics...MulticlassAccuracy, init_args: ...}}``), logged as ``eval_<name>``.
    """

    name_or_path: str | None = None
    task: Task | None = None
    auto_class: str | None = None
    config: dict[str, Any] | None = None
    num_labels: int | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = None
    from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    metrics: dict[str, Metric] | None = None

    def problems(self) -> list[str]:
        found = []
        if self.name_or_path is None and self.config is None:
            found.append("model.name_or_path: set a pretrained name/folder, or `model.config` to build a model from scratch.")
        if self.name_or_path is not None and self.config is not None:
            found.append("model.config: builds a model from scratch and can't be combined with `model.name_or_path`.")
        if self.config is not None and "model_type" not in self.config:
            found.append(f"model.config: needs a `model_type` (e.g. bert, llama, t5); got keys {sorted(self.config)}.")
        elif self.config is not None:
            found.extend(config_problems(self.config))
        if self.task is None and self.auto_class is None:
            found.append(f"model.task: set one of {list(TASKS)} (or `model.auto_class`).")
        return found

    def resolved_task(self) -> str | None:
        if self.task is not None:
            return self.task
        for task, name in TASKS.items():
            if self.auto_class is not None and self.auto_class.rsplit(".", 1)[-1] == name:
                return task
        return None

    def auto(self) -> Any:
        name = self.auto_class or TASKS[self.task]  # type: ignore[index]
        import transformers

        if "." in name:
            module, _, attr = name.rpartition(".")
            target = getattr(importlib.import_module(module), attr, None)
        else:
            target = getattr(transformers, name, None)
        if target is None:
            raise ConfigError(f"model.auto_class: {name!r} is not a transformers Auto class or an importable class.")
        return target

    def build(self, *, labels: list[Any] | None = None, search_dirs: Sequence[str] = ()) -> Any:
        """The model; ``labels`` (from the data) fill ``num_labels``/``id2label`` of classification heads."""
        import torch
        from transformers import AutoConfig

        auto = self.auto()
        kwargs: dict[str, Any] = {}
        task = self.resolved_task()
        if labels is not None and task in ("sequence-classification", "token-classification"):
            if self.num_labels is not None and self.num_labels < len(labels) and labels != [None]:
                raise ConfigError(
                    f"model.num_labels={self.num_labels} but the data has {len(labels)} labels: {labels[:20]}."
                )
            if labels == [None]:  # float labels: regression
                kwargs.update(num_labels=1, problem_type="regression")
            else:
                kwargs.update(
                    num_labels=self.num_labels or len(labels),
                    id2label={i: str(label) for i, label in enumerate(labels)},
                    label2id={str(label): i for i, label in enumerate(labels)},
                )
        elif self.num_labels is not None:
            kwargs["num_labels"] = self.num_labels
        if self.dtype is not None:
            dtype: Any = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        else:
            dtype = None
        if self.name_or_path is not None:
            path = resolve_path(self.name_or_path, search_dirs)
            extra = dict(self.from_pretrained_kwargs)
            if dtype is not None:
                extra["dtype"] = dtype
            try:
                return auto.from_pretrained(path, **kwargs, **extra)
            except OSError as error:
                raise ConfigError(f"model.name_or_path: can't load {self.name_or_path!r}: {error}") from error
        config_kwargs = dict(self.config or {})
        model_type = config_kwargs.pop("model_type")
        try:
            config = AutoConfig.for_model(model_type, **config_kwargs, **kwargs)
        except ValueError as error:
            raise ConfigError(f"model.config.model_type: {error}") from error
        return auto.from_config(config, **({"dtype": dtype} if dtype not in (None, "auto") else {}))


@dataclass
class BuiltData:
    """What ``DataSpec.build`` returns: tokenized splits, the collator and the tokenizer."""

    train: Any = None
    eval: Any = None
    test: Any = None
    collator: Any = None
    tokenizer: Any = None
    labels: list[Any] | None = None


@dataclass
class DataSpec:
    """The data: where it comes from, which columns hold text and labels, how to tokenize, the collator.

    Args:
        path: ``load_dataset`` path: csv, json, parquet or text (with ``data_files``), a local folder, or a Hub dataset name.
        name: ``load_dataset`` configuration name.
        data_files: files for ``load_dataset``: one path, a list, or ``{split: path(s)}``; relative paths may be relative to the config file.
        load_from_disk: a folder written by ``Dataset(Dict).save_to_disk``, instead of ``path``.
        load_dataset_kwargs: more keyword arguments for ``load_dataset``.
        train_split: split to train on.
        eval_split: split(s) to evaluate on; a list gives a dict of eval sets (``eval_<split>_*`` metrics); default ``validation`` if present.
        test_split: split for ``test``/``predict``; default ``test`` if present.
        eval_fraction: carve this fraction of the train split out as the eval set when there is no eval split (seeded by ``args.seed``).
        max_train_samples: keep only the first N training examples.
        max_eval_samples: keep only the first N examples of each eval/test set.
        text_column: input text (a list of words for token classification, the question for QA); default ``text``/``sentence``/the first string column.
        text_pair_column: second text of a pair (sentence pairs; the context for QA).
        label_column: labels: class (int or string), per-word tags, answers for QA; default ``label``/``labels``.
        target_column: target text of seq2seq.
        source_prefix: text put before every seq2seq input (T5's ``summarize: ``).
        tokenizer: tokenizer name or folder (default: the model's ``name_or_path``).
        tokenizer_kwargs: more keyword arguments for ``AutoTokenizer.from_pretrained``.
        max_length: truncation length of inputs (and the block size of grouped LM texts).
        max_target_length: truncation length of seq2seq targets (default ``max_length``).
        truncation: truncate inputs to ``max_length``.
        padding: pad when tokenizing (``max_length``, ``longest``); default no: the collator pads each batch.
        group_texts: for causal-lm/masked-lm, concatenate texts and cut them into ``max_length`` blocks (run_clm/run_mlm).
        doc_stride: overlap between chunks of long QA contexts.
        collator: default (by task), padding, token-classification, language-modeling, masked-language-modeling or seq2seq.
        collator_kwargs: more keyword arguments for the collator (``mlm_probability``, ``pad_to_multiple_of``, ...).
        num_proc: processes for ``Dataset.map``.
    """

    path: str | None = None
    name: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    load_from_disk: str | None = None
    load_dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str | list[str] | None = None
    test_split: str | None = None
    eval_fraction: float | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    target_column: str | None = None
    source_prefix: str = ""
    tokenizer: str | None = None
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = None
    max_target_length: int | None = None
    truncation: bool = True
    padding: bool | Literal["longest", "max_length", "do_not_pad"] = False
    group_texts: bool = True
    doc_stride: int = 128
    collator: str = "default"
    collator_kwargs: dict[str, Any] = field(default_factory=dict)
    num_proc: int | None = None

    # ------------------------------------------------------------------------------- loading

    def problems(self) -> list[str]:
        found = []
        if self.path is None and self.load_from_disk is None and self.data_files is None:
            found.append("data.path: set a dataset (`path`, `data_files` or `load_from_disk`).")
        if self.path is not None and self.load_from_disk is not None:
            found.append("data.load_from_disk: can't be combined with `data.path`.")
        if self.collator not in COLLATORS:
            found.append(f"data.collator: {self.collator!r} is not one of {list(COLLATORS)}.")
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            found.append(f"data.eval_fraction: must be in (0, 1), got {self.eval_fraction}.")
        return found

    def load(self, search_dirs: Sequence[str] = (), seed: int = 42) -> Any:
        """The raw ``DatasetDict``."""
        import datasets

        if self.load_from_disk is not None:
            folder = resolve_path(self.load_from_disk, search_dirs)
            try:
                raw = datasets.load_from_disk(folder)
            except FileNotFoundError as error:
                raise ConfigError(f"data.load_from_disk: {error}") from error
            if isinstance(raw, datasets.Dataset):
                raw = datasets.DatasetDict({self.train_split: raw})
        else:
            files = self._resolved_files(search_dirs)
            path = self.path or _builder_for(files)
            try:
                raw = datasets.load_dataset(path, self.name, data_files=files, **self.load_dataset_kwargs)
            except FileNotFoundError as error:
                raise ConfigError(f"data.data_files / data.path: {error}") from error
            except ValueError as error:
                raise ConfigError(f"data.path={path!r}: {error}") from error
            if isinstance(raw, datasets.Dataset):
                raw = datasets.DatasetDict({self.train_split: raw})
        if self.eval_fraction is not None and self.train_split in raw and self._eval_names(raw, fit=True) == []:
            parts = raw[self.train_split].train_test_split(test_size=self.eval_fraction, seed=seed)
            raw[self.train_split], raw["validation"] = parts["train"], parts["test"]
        return raw

    def _resolved_files(self, search_dirs: Sequence[str]) -> Any:
        files = self.data_files
        if files is None:
            return None
        if isinstance(files, str):
            return resolve_path(files, search_dirs)
        if isinstance(files, list):
            return [resolve_path(f, search_dirs) for f in files]
        return {split: (resolve_path(f, search_dirs) if isinstance(f, str) else [resolve_path(x, search_dirs) for x in f]) for split, f in files.items()}

    def _eval_names(self, raw: Any, fit: bool) -> list[str]:
        if self.eval_split is None:
            return ["validation"] if "validation" in raw else []
        names = [self.eval_split] if isinstance(self.eval_split, str) else list(self.eval_split)
        missing = [n for n in names if n not in raw]
        if missing:
            raise ConfigError(f"data.eval_split: {missing} not in the dataset's splits {list(raw)}.")
        return names

    # --------------------------------------------------------------------------- preprocessing

    def build(self, raw: Any, tokenizer: Any, task: str | None, *, model: Any = None, stages: Sequence[str] = ("fit",)) -> BuiltData:
        """Tokenize the splits ``stages`` need (fit: train+eval, validate: eval, test/predict: test)."""
        out = BuiltData(tokenizer=tokenizer)
        wanted: dict[str, Any] = {}
        if "fit" in stages:
            if self.train_split not in raw:
                raise ConfigError(f"data.train_split: {self.train_split!r} not in the dataset's splits {list(raw)}.")
            wanted["train"] = raw[self.train_split]
        if "fit" in stages or "validate" in stages:
            names = self._eval_names(raw, fit=True)
            if "validate" in stages and not names:
                raise ConfigError(f"data.eval_split: `validate` needs an eval split; the dataset has {list(raw)}.")
            if names:
                wanted["eval"] = {n: raw[n] for n in names} if isinstance(self.eval_split, list) else raw[names[0]]
        if "test" in stages or "predict" in stages:
            name = self.test_split or ("test" if "test" in raw else None)
            if name is None or name not in raw:
                raise ConfigError(f"data.test_split: {name!r} not in the dataset's splits {list(raw)}.")
            wanted["test"] = raw[name]
        preprocess = PREPROCESSORS.get(task or "", None)
        if preprocess is None:
            raise ConfigError(f"model.task: can't prepare data for task {task!r}; use one of {list(TASKS)}.")
        columns = self._columns(self._reference(raw), task)  # type: ignore[arg-type]
        out.labels, encoded = self._labels(raw, task)
        label2id = None if encoded or not out.labels or out.labels == [None] else _label_mapping(out.labels, model)
        for key, dataset in wanted.items():
            limit = self.max_train_samples if key == "train" else self.max_eval_samples
            if isinstance(dataset, dict):
                out.eval = {n: self._map(preprocess, _take(d, limit), tokenizer, columns, label2id) for n, d in dataset.items()}
                continue
            setattr(out, key, self._map(preprocess, _take(dataset, limit), tokenizer, columns, label2id))
        out.collator = self._collator(task, tokenizer, model)
        return out

    def _reference(self, raw: Any) -> Any:
        return raw[self.train_split] if self.train_split in raw else next(iter(raw.values()))

    def _labels(self, raw: Any, task: str | None) -> tuple[list[Any] | None, bool]:
        if task not in ("sequence-classification", "token-classification"):
            return None, False
        reference = self._reference(raw)
        return _label_list(reference, self._columns(reference, task)["label"], task)

    def label_names(self, raw: Any, task: str | None) -> list[Any] | None:
        """The classes of a classification task (ClassLabel names or sorted distinct values); ``[None]`` for regression."""
        return self._labels(raw, task)[0]

    def _map(self, preprocess: Callable, dataset: Any, tokenizer: Any, columns: dict[str, str | None], label2id: Any) -> Any:
        function = preprocess(self, tokenizer, columns, label2id)
        return dataset.map(function, batched=True, remove_columns=dataset.column_names, num_proc=self.num_proc, desc="Tokenizing")

    def _columns(self, dataset: Any, task: str) -> dict[str, str | None]:
        names = dataset.column_names
        text = self.text_column or _first_present(names, ["text", "sentence", "tokens", "question", "content", "document"])
        if text is None:
            text = next((c for c in names if dataset.features[c].dtype == "string"), None) if hasattr(dataset, "features") else None
        label_defaults = {
            "token-classification": ["ner_tags", "tags", "labels", "label"],
            "question-answering": ["answers"],
        }.get(task, ["label", "labels"])
        label = self.label_column or _first_present(names, label_defaults)
        pair = self.text_pair_column or (_first_present(names, ["context"]) if task == "question-answering" else None)
        target = self.target_column or (_first_present(names, ["target", "summary", "labels"]) if task == "seq2seq" else None)
        problems = []
        for key, value in (("text_column", text), ("text_pair_column", pair), ("label_column", label), ("target_column", target)):
            explicit = getattr(self, key)
            if explicit is not None and explicit not in names:
                problems.append(f"data.{key}: {explicit!r} is not a column; the dataset has {names}.")
        if self.text_column is None and text is None:
            problems.append(f"data.text_column: no text column found; the dataset has {names}.")
        if task == "seq2seq" and target is None:
            problems.append(f"data.target_column: seq2seq needs a target text column; the dataset has {names}.")
        if task == "question-answering" and (pair is None or label is None):
            problems.append(f"data.text_pair_column / data.label_column: QA needs a context and an answers column; the dataset has {names}.")
        if problems:
            raise ConfigError("\n".join(problems))
        return {"text": text, "pair": pair, "label": label, "target": target}

    def _collator(self, task: str | None, tokenizer: Any, model: Any) -> Any:
        from transformers import (
            DataCollatorForLanguageModeling,
            DataCollatorForSeq2Seq,
            DataCollatorForTokenClassification,
            DataCollatorWithPadding,
            default_data_collator,
        )

        name = self.collator
        if name == "default":
            name = {
                "token-classification": "token-classification",
                "causal-lm": "default" if self.group_texts else "language-modeling",
                "masked-lm": "masked-language-modeling",
                "seq2seq": "seq2seq",
            }.get(task or "", "padding")
        kwargs = dict(self.collator_kwargs)
        if name == "default":
            return default_data_collator
        if name == "padding":
            return DataCollatorWithPadding(tokenizer, **kwargs)
        if name == "token-classification":
            return DataCollatorForTokenClassification(tokenizer, **kwargs)
        if name == "language-modeling":
            return DataCollatorForLanguageModeling(tokenizer, mlm=False, **kwargs)
        if name == "masked-language-modeling":
            return DataCollatorForLanguageModeling(tokenizer, mlm=True, **kwargs)
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, **kwargs)

    def load_tokenizer(self, model_spec: ModelSpec, search_dirs: Sequence[str] = ()) -> Any:
        from transformers import AutoTokenizer

        source = self.tokenizer or model_spec.name_or_path
        if source is None:
            raise ConfigError("data.tokenizer: needed when the model is built from `model.config` (a tokenizer name or folder).")
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_path(source, search_dirs), **self.tokenizer_kwargs)
        except (OSError, ValueError) as error:
            key = "data.tokenizer" if self.tokenizer else "model.name_or_path"
            raise ConfigError(f"{key}: can't load a tokenizer from {source!r}: {error}") from error
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # causal LMs ship without one; run_clm does the same
        return tokenizer


def _builder_for(files: Any) -> str:
    """``csv``/``json``/``parquet``/``text`` from the data files' extension."""
    first = files
    while isinstance(first, (list, dict)):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    extension = os.path.splitext(str(first))[1].lstrip(".").lower()
    builder = {"jsonl": "json", "txt": "text", "tsv": "csv"}.get(extension, extension)
    if builder not in ("csv", "json", "parquet", "text", "arrow"):
        raise ConfigError(f"data.path: can't tell the format of {first!r}; set `data.path` to csv, json, parquet or text.")
    return builder


def _first_present(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _take(dataset: Any, limit: int | None) -> Any:
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def _label_list(dataset: Any, column: str | None, task: str) -> tuple[list[Any] | None, bool]:
    """``(label names, already encoded)``: ClassLabel names (encoded as ints), or the sorted distinct
    values (run_glue/run_ner), ``[None]`` for float labels (regression)."""
    if column is None or column not in dataset.column_names:
        return None, False
    feature = dataset.features[column]
    inner = getattr(feature, "feature", None) if task == "token-classification" else feature
    if inner is not None and hasattr(inner, "names"):
        return list(inner.names), True
    values = dataset[column]
    if task == "token-classification":
        values = [v for row in values for v in row]
    if values and isinstance(values[0], float):
        return [None], False
    return sorted(set(values)), False


def _label_mapping(labels: list[Any], model: Any) -> dict[Any, int]:
    """label -> class index: the model's own ``label2id`` when it names every label (a fine-tuned model), else the sorted order."""
    known = getattr(getattr(model, "config", None), "label2id", None) or {}
    if known and all(str(label) in known for label in labels):
        return {label: int(known[str(label)]) for label in labels}
    return {label: i for i, label in enumerate(labels)}
