"""The data path: transformers' dataloaders, one Lightning batch per optimizer step (§4.8, §5.4).

Dataloaders are built as ``Trainer._get_dataloader`` builds them (column removal, samplers, worker
seeding) and sharded by accelerate's own ``prepare_data_loader`` with Lightning's ranks, so each rank
iterates exactly the micro-batches it would iterate under transformers.Trainer.

``GroupedLoader`` turns such a loader into one Lightning batch per optimizer step: a
``MicroBatchGroup`` that draws its ``gradient_accumulation_steps`` micro-batches from the epoch's
iterator only when the training step starts, the way ``Trainer.get_batch_samples`` draws them. So
Lightning's batch index, ``global_step``, ``max_steps`` and progress bar count optimizer steps, and a
collator that draws random numbers (MLM masking) sees the random state it sees under transformers:
accelerate's loader collates one micro-batch ahead, and nothing else runs between.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, TrainingArguments, default_data_collator
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import RemoveColumnsCollator, has_length, seed_worker, unwrap_peft_model
from typing_extensions import override

from . import distributed
from .arguments import check_train_dataset
from .state import strategy_name

__all__ = [
    "HFDataModule",
    "GroupedLoader",
    "MicroBatchGroup",
    "signature_columns",
    "default_collator",
    "build_dataloader",
    "prepare_for_ranks",
]

log = logging.getLogger(__name__)


def default_collator(processing_class: Any) -> Callable:
    """``DataCollatorWithPadding`` for a tokenizer/feature extractor, ``default_data_collator`` otherwise."""
    if processing_class is not None and isinstance(processing_class, (PreTrainedTokenizerBase, SequenceFeatureExtractor)):
        return DataCollatorWithPadding(processing_class)
    return default_data_collator


def signature_columns(model: torch.nn.Module, label_names: Sequence[str]) -> list[str]:
    """The forward parameters of ``model`` (PEFT unwrapped) plus ``label``, ``label_ids`` and the label names."""
    inspected = unwrap_peft_model(model)
    columns = list(inspect.signature(inspected.forward).parameters.keys())
    return columns + list({"label", "label_ids", *label_names} - set(columns))


# ------------------------------------------------------------------------------------ building


def prepare_for_ranks(loader: DataLoader, args: TrainingArguments, trainer: pl.Trainer | None) -> DataLoader:
    """accelerate's ``prepare_data_loader`` as transformers' accelerator calls it, with Lightning's ranks.

    The seedable sampler replaces a ``RandomSampler``; with several processes each rank gets its shard
    of the batches (``BatchSamplerShard``, even batches) or of an iterable dataset. Lightning moves the
    batches to the device, so the loader does not.
    """
    from accelerate.data_loader import DataLoaderShard, prepare_data_loader

    if isinstance(loader, DataLoaderShard):
        return loader
    world, rank = distributed.data_ranks(trainer)
    config = args.accelerator_config
    return prepare_data_loader(
        loader,
        device=None,
        num_processes=world,
        process_index=rank,
        split_batches=config.split_batches,
        put_on_device=False,
        rng_types=None,  # the seedable sampler is seeded alike on every rank: nothing to synchronise
        dispatch_batches=False,
        even_batches=config.even_batches,
        use_seedable_sampler=config.use_seedable_sampler,
        data_seed=args.data_seed,
        non_blocking=config.non_blocking,
    )


def _remove_unused_columns(dataset: Any, columns: list[str], description: str, model_name: str) -> Any:
    """``Trainer._remove_unused_columns`` for a ``datasets.Dataset``, with the columns named in the error."""
    ignored = [c for c in dataset.column_names if c not in columns]
    kept = [c for c in columns if c in dataset.column_names]
    if not kept:
        raise ValueError(
            f"No columns in the dataset match the model's forward method signature: ({', '.join(columns)}). "
            f"The following columns have been ignored: [{', '.join(ignored)}]. "
            "Please check the dataset and model. You may need to set `remove_unused_columns=False` in `TrainingArguments`. "
            f"(hf_lightning: the {description} dataset has the columns {dataset.column_names}; {model_name}.forward "
            "takes none of them. Tokenize the text first, or rename the columns to the model's inputs.)"
        )
    if ignored:
        log.info("Columns of the %s dataset not used by %s.forward, removed: %s", description, model_name, ignored)
    return dataset.remove_columns(ignored)


class _RemoveColumnsCollator(RemoveColumnsCollator):
    """transformers' ``RemoveColumnsCollator``, testing a sample's columns against a set: transformers scans the
    signature list for every key of every sample, a few microseconds per batch and step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = frozenset(self.signature_columns)

    def _remove_columns(self, feature: Any) -> Any:
        if isinstance(feature, dict) and feature.keys() <= self._allowed:
            return dict(feature)  # nothing to remove, nothing to log; a copy, as transformers returns
        return super()._remove_columns(feature)


def build_dataloader(
    dataset: Any,
    args: TrainingArguments,
    *,
    collator: Callable,
    batch_size: int,
    sampler: Any,
    columns: list[str] | None,
    model_name: str,
    description: str,
    training: bool,
    rank: int = 0,
) -> DataLoader:
    """``Trainer._get_dataloader`` before ``accelerator.prepare``: column removal, loader settings, worker seeding."""
    if args.remove_unused_columns and columns is not None:
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(dataset, datasets.Dataset):
            dataset = _remove_unused_columns(dataset, columns, description, model_name)
        else:
            collator = _RemoveColumnsCollator(
                data_collator=collator, signature_columns=columns, logger=log, model_name=model_name, description=description
            )
    params: dict[str, Any] = {
        "batch_size": batch_size,
        "collate_fn": collator,
        "num_workers": args.dataloader_num_workers,
        "pin_memory": bool(args.dataloader_pin_memory and torch.cuda.is_available()),
        "persistent_workers": args.dataloader_persistent_workers,
        "multiprocessing_context": args.dataloader_multiprocessing_context,
        "prefetch_factor": args.dataloader_prefetch_factor,
        "in_order": args.dataloader_in_order,
    }
    if not isinstance(dataset, IterableDataset):
        if sampler is not None:
            params["sampler"] = sampler
        params["drop_last"] = args.dataloader_drop_last
        if training:
            params["worker_init_fn"] = partial(seed_worker, num_workers=args.dataloader_num_workers, rank=rank)
    return DataLoader(dataset, **params)


def train_sampler(dataset: Any, args: TrainingArguments, processing_class: Any) -> Any:
    """``Trainer._get_train_sampler``: random (made seedable by accelerate), sequential or length-grouped."""
    if dataset is None or not has_length(dataset):
        return None
    strategy = strategy_name(args.train_sampling_strategy)
    if strategy == "group_by_length":
        model_input_name = processing_class.model_input_names[0] if processing_class is not None else None
        return LengthGroupedSampler(
            args.train_batch_size * args.gradient_accumulation_steps,
            dataset=dataset,
            lengths=_lengths(dataset, args),
            model_input_name=model_input_name,
        )
    if strategy == "sequential":
        return SequentialSampler(dataset)
    return RandomSampler(dataset)


def eval_sampler(dataset: Any, args: TrainingArguments, processing_class: Any, *, world_size: int) -> Any:
    """``Trainer._get_eval_sampler``: sequential on one process (length-grouped with group_by_length)."""
    if dataset is None or not has_length(dataset):
        return None
    if strategy_name(args.train_sampling_strategy) == "group_by_length":
        model_input_name = processing_class.model_input_names[0] if processing_class is not None else None
        seed = args.data_seed if args.data_seed is not None else args.seed
        return LengthGroupedSampler(
            args.eval_batch_size,
            dataset=dataset,
            lengths=_lengths(dataset, args),
            model_input_name=model_input_name,
            generator=torch.Generator().manual_seed(seed),
        )
    return SequentialSampler(dataset) if world_size <= 1 else None


def _lengths(dataset: Any, args: TrainingArguments) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return None
    if isinstance(dataset, datasets.Dataset) and args.length_column_name in dataset.column_names:
        return dataset[args.length_column_name]
    return None


# ------------------------------------------------------------------------------------ grouping


class _EpochIterator:
    """One epoch's micro-batch iterator, shared by that epoch's groups."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None
        self.exhausted = False

    def take(self, count: int) -> list[Any]:
        if self.iterator is None:
            self.iterator = iter(self.loader)
        batches: list[Any] = []
        for _ in range(count):
            try:
                batches.append(next(self.iterator))
            except StopIteration:
                self.exhausted = True
                break
        return batches


class MicroBatchGroup:
    """The micro-batches of one optimizer step, drawn from the epoch's iterator by ``fetch()``.

    Lightning prefetches its next batch before running the current step; a group costs nothing until
    ``fetch()`` is called, so the micro-batches are collated exactly when transformers collates them.
    """

    __slots__ = ("_source", "size", "index", "_batches")

    def __init__(self, source: _EpochIterator | None, size: int, index: int, batches: list[Any] | None = None) -> None:
        self._source = source
        self.size = size
        self.index = index
        self._batches = batches

    @classmethod
    def of(cls, batches: list[Any]) -> MicroBatchGroup:
        """A group of micro-batches already at hand."""
        return cls(None, len(batches), 0, list(batches))

    def fetch(self) -> list[Any]:
        """The group's micro-batches (fewer at the end of an unsized epoch; none past its end)."""
        if self._batches is None:
            self._batches = self._source.take(self.size) if self._source is not None else []
        return self._batches

    @property
    def end_of_data(self) -> bool:
        """The epoch's iterator ran out while this group was drawn (unsized data)."""
        return self._source is not None and self._source.exhausted

    def __len__(self) -> int:
        return len(self._batches) if self._batches is not None else self.size

    def __repr__(self) -> str:
        return f"MicroBatchGroup(index={self.index}, size={self.size}, fetched={self._batches is not None})"


class GroupedLoader:
    """A micro-batch loader seen as one batch per optimizer step (the last group of an epoch is short).

    Args:
        loader: the micro-batch loader (what ``Trainer.get_train_dataloader`` returns).
        gradient_accumulation_steps: micro-batches per optimizer step.
    """

    def __init__(self, loader: Any, gradient_accumulation_steps: int) -> None:
        self.loader = loader
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._skip_groups = 0
        self._skip_from: Any = None

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size, sampler, ... of the wrapped loader
        if name in ("loader", "__setstate__", "state_dict", "load_state_dict"):
            raise AttributeError(name)  # no dataloader state in Lightning's checkpoint: the position comes from global_step
        return getattr(self.loader, name)

    @property
    def micro_batches_per_epoch(self) -> int | None:
        """``len(train_dataloader)`` in transformers; None for unsized data."""
        return len(self.loader) if has_length(self.loader) else None

    def __len__(self) -> int:
        micro = self.micro_batches_per_epoch
        if micro is None:
            raise TypeError("the training data has no length")
        return max(math.ceil(micro / self.gradient_accumulation_steps), 1) if micro else 0

    def set_epoch(self, epoch: int) -> None:
        """What ``Trainer._run_epoch`` does before iterating: ``set_epoch`` on the loader and its sharded sampler."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        underlying = getattr(getattr(self.loader, "batch_sampler", None), "batch_sampler", None)
        if hasattr(underlying, "set_epoch"):
            underlying.set_epoch(epoch)

    def skip_groups_once(self, groups: int) -> None:
        """Skip the first ``groups`` optimizer steps of the next epoch only (resume, §1.6), without collating them."""
        self._skip_groups = groups

    def __iter__(self) -> Iterator[MicroBatchGroup]:
        ga = self.gradient_accumulation_steps
        skip, self._skip_groups = self._skip_groups, 0
        loader = self.loader
        if skip:
            from accelerate import skip_first_batches

            loader = skip_first_batches(self.loader, skip * ga)
        source = _EpochIterator(loader)
        micro = self.micro_batches_per_epoch
        if micro is None:
            index = skip
            while not source.exhausted:
                yield MicroBatchGroup(source, ga, index)
                index += 1
            return
        groups = len(self)
        remainder = micro % ga or ga
        for index in range(skip, groups):
            yield MicroBatchGroup(source, ga if index < groups - 1 else remainder, index)


def micro_batches(batch: Any) -> tuple[list[Any], MicroBatchGroup | None]:
    """The micro-batches of one Lightning training batch: a group's, or the batch itself (plain dataloaders)."""
    if isinstance(batch, MicroBatchGroup):
        return batch.fetch(), batch
    return [batch], None


# ---------------------------------------------------------------------------------- datamodule


class HFDataModule(pl.LightningDataModule):
    """Datasets, collators and samplers exactly as transformers.Trainer builds them.

    Args:
        args: the transformers TrainingArguments (batch sizes, accumulation, drop_last, workers, seeds).
        train_dataset: a ``datasets.Dataset`` or torch dataset for ``fit``.
        eval_dataset: a dataset, or a dict of named datasets (metrics become ``eval_<name>_*``).
        test_dataset: a dataset for ``test``/``predict``.
        data_collator: the collator; default ``DataCollatorWithPadding`` with a tokenizer, else ``default_data_collator``.
        processing_class: the tokenizer/processor, used for the default collator and group_by_length.
    """

    def __init__(
        self,
        args: TrainingArguments,
        *,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        test_dataset: Any = None,
        data_collator: Callable | None = None,
        processing_class: Any = None,
    ) -> None:
        super().__init__()
        self.args = args
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.test_dataset = test_dataset
        self.processing_class = processing_class
        self.data_collator = data_collator if data_collator is not None else default_collator(processing_class)
        self.source: Any = None
        """The object whose ``get_train_dataloader()`` builds the training loader (the facade); default: this."""
        self.pending_loader: Any = None
        """The loader the next validation/test run iterates (set by ``loops.run_evaluation``)."""

    @property
    def trainer(self) -> pl.Trainer | None:
        """The ``lightning.Trainer`` this datamodule is attached to (Lightning sets it in ``fit``)."""
        return self.__dict__.get("_trainer")

    @trainer.setter
    def trainer(self, trainer: pl.Trainer | None) -> None:
        self.__dict__["_trainer"] = trainer
        if isinstance(trainer, pl.Trainer):
            from .callbacks.checkpoint import install_checkpoint_connector

            # attached before fit chooses its ckpt_path: "last" means the newest checkpoint-N of output_dir
            install_checkpoint_connector(trainer)

    # ------------------------------------------------------------------------------- model info

    def _lightning_trainer(self) -> pl.Trainer | None:
        return getattr(self, "trainer", None)

    def _hooks(self) -> Any:
        trainer = self._lightning_trainer()
        module = trainer.lightning_module if trainer is not None else None
        return getattr(module, "hooks", None)

    def _columns_and_name(self) -> tuple[list[str] | None, str]:
        hooks = self._hooks()
        model = getattr(hooks, "model", None)
        if model is None:
            return None, "the model"
        set_columns = getattr(hooks, "_set_signature_columns_if_needed", None)
        if callable(set_columns):  # a transformers.Trainer: its subclasses name their own columns (TRL's DPOTrainer does)
            set_columns()
            if getattr(hooks, "_signature_columns", None) is not None:
                return list(hooks._signature_columns), type(model).__name__
        return signature_columns(model, list(getattr(hooks, "label_names", None) or self.args.label_names or [])), type(model).__name__

    def _build(self, dataset: Any, *, description: str, training: bool) -> DataLoader:
        trainer = self._lightning_trainer()
        world, rank = distributed.data_ranks(trainer)
        columns, model_name = self._columns_and_name()
        if training:
            sampler = train_sampler(dataset, self.args, self.processing_class)
            batch_size = self.args.per_device_train_batch_size
        else:
            sampler = eval_sampler(dataset, self.args, self.processing_class, world_size=world)
            batch_size = self.args.per_device_eval_batch_size
        loader = build_dataloader(
            dataset, self.args, collator=self.data_collator, batch_size=batch_size, sampler=sampler, columns=columns,
            model_name=model_name, description=description, training=training, rank=rank,
        )
        return prepare_for_ranks(loader, self.args, trainer)

    # ---------------------------------------------------- transformers' getters (the default source)

    def get_train_dataloader(self) -> DataLoader:
        """``Trainer.get_train_dataloader`` for ``train_dataset``."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        return self._build(self.train_dataset, description="Training", training=True)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """``Trainer.get_eval_dataloader``: a dataset, a name of ``eval_dataset``, or ``eval_dataset`` itself."""
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset.")
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        elif eval_dataset is None:
            eval_dataset = self.eval_dataset
        return self._build(eval_dataset, description="Evaluation", training=False)

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        """``Trainer.get_test_dataloader``."""
        return self._build(test_dataset, description="test", training=False)

    # ----------------------------------------------------------------------- Lightning's hooks

    @override
    def train_dataloader(self) -> GroupedLoader:
        from .hooks import overrides

        source = self.source if self.source is not None else self
        # A get_train_dataloader of the user's (sentence-transformers') picks the columns itself: check only for emptiness.
        prunes_columns = self.args.remove_unused_columns and not overrides(type(source), "get_train_dataloader")
        check_train_dataset(source.train_dataset, *self._columns_and_name(), prunes_columns, getattr(self._hooks(), "label_names", None) or self.args.label_names)  # issue 13
        return GroupedLoader(source.get_train_dataloader(), self.args.gradient_accumulation_steps)

    @override
    def val_dataloader(self) -> Any:
        if self.pending_loader is not None:
            return self.pending_loader
        if self.eval_dataset is None:
            return []  # no eval dataset: nothing to validate
        if isinstance(self.eval_dataset, Mapping):
            return {name: self.get_eval_dataloader(name) for name in self.eval_dataset}
        return self.get_eval_dataloader()

    @override
    def test_dataloader(self) -> Any:
        if self.pending_loader is not None:
            return self.pending_loader
        if self.test_dataset is None:
            raise ValueError("Prediction needs a `test_dataset`; none was given to HFDataModule.")
        return self.get_test_dataloader(self.test_dataset)
