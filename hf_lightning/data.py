"""The DataModule: transformers' datasets handling on Lightning dataloaders (§4.8, §5.4).

One Lightning training batch is one *accumulation group*: the ``GA`` micro-batches transformers
fetches before an optimizer step (``Trainer.get_batch_samples``). ``HFBatchSampler`` yields the
group's indices in transformers' order and ``GroupCollator`` splits the collated group back into
micro-batches. So Lightning's batch index, ``global_step``, ``max_steps``, progress bar and
loggers all count optimizer steps, and the loss can be normalised over the whole group.
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
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, Sampler, SequentialSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, TrainingArguments, default_data_collator
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import RemoveColumnsCollator, has_length, seed_worker, unwrap_peft_model
from typing_extensions import override

from .arguments import check_train_dataset
from .state import strategy_name

try:  # accelerate's sampler is the one transformers.Trainer ends up iterating (§4.8)
    from accelerate.data_loader import SeedableRandomSampler
except ImportError:  # pragma: no cover - accelerate is a dependency
    SeedableRandomSampler = None  # type: ignore[assignment]

__all__ = ["HFDataModule", "HFBatchSampler", "GroupCollator", "MicroBatchGroup", "signature_columns", "default_collator"]

log = logging.getLogger(__name__)


class MicroBatchGroup(list):
    """The micro-batches of one optimizer step, in order."""


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


class GroupCollator:
    """Collate the samples of one accumulation group into its micro-batches.

    Only the epoch's last micro-batch can be short, so splitting the group's samples every
    ``batch_size`` samples recovers transformers' micro-batches exactly.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any], batch_size: int) -> None:
        self.collate_fn = collate_fn
        self.batch_size = batch_size

    def __call__(self, samples: list[Any]) -> MicroBatchGroup:
        return MicroBatchGroup(
            self.collate_fn(samples[i : i + self.batch_size]) for i in range(0, len(samples), self.batch_size)
        )


class HFBatchSampler(Sampler[list[int]]):
    """Yields, per optimizer step, the indices of its ``GA`` micro-batches (fewer for an epoch's last step).

    The order is the one transformers.Trainer iterates: the wrapped ``sampler`` cut into micro-batches
    of ``batch_size`` by a ``BatchSampler``, then, with several processes, accelerate's own
    ``BatchSamplerShard`` (what ``accelerator.prepare`` wraps the dataloader in), so each rank gets
    the micro-batches it would get under transformers.Trainer with the same world size.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        *,
        batch_size: int,
        gradient_accumulation_steps: int,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self._skip_groups = 0
        micro: Any = BatchSampler(sampler, batch_size, drop_last)
        if num_replicas > 1:
            from accelerate.data_loader import BatchSamplerShard

            micro = BatchSamplerShard(micro, num_processes=num_replicas, process_index=rank, split_batches=False, even_batches=True)
        self._micro_batches = micro

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches this rank sees per epoch (``len(train_dataloader)`` in transformers)."""
        return len(self._micro_batches)

    @property
    def groups_per_epoch(self) -> int:
        m = self.micro_batches_per_epoch
        return max(math.ceil(m / self.gradient_accumulation_steps), 1) if m else 0

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped sampler (the permutation of epoch ``e`` uses ``seed + e``)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def skip_groups_once(self, groups: int) -> None:
        """Skip the first ``groups`` optimizer steps of the next epoch only (resume, §1.6)."""
        self._skip_groups = groups

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip_groups = self._skip_groups, 0
        ga = self.gradient_accumulation_steps
        group: list[int] = []
        count = done = 0
        for micro in self._micro_batches:
            group.extend(micro)
            count += 1
            if count == ga:
                if done >= skip:
                    yield group
                done += 1
                group, count = [], 0
        if group and done >= skip:
            yield group

    def __len__(self) -> int:
        return self.groups_per_epoch


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
        train_dataset: Dataset | Any | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | Any | None = None,
        test_dataset: Dataset | Any | None = None,
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
        self._signature_columns: list[str] | None = None
        self.train_batch_sampler: HFBatchSampler | None = None

    # ------------------------------------------------------------------------------- model info

    def _lightning_trainer(self) -> pl.Trainer | None:
        # LightningDataModule keeps its trainer in `self.trainer` (None until the Trainer attaches it).
        return getattr(self, "trainer", None)

    def _model_and_labels(self) -> tuple[torch.nn.Module | None, list[str]]:
        trainer = self._lightning_trainer()
        module = trainer.lightning_module if trainer is not None else None
        if module is None:
            return None, list(self.args.label_names or [])
        model = getattr(module, "model", module)
        label_names = getattr(module, "label_names", None) or list(self.args.label_names or [])
        return model, label_names

    def _columns(self) -> list[str] | None:
        if self._signature_columns is None:
            model, label_names = self._model_and_labels()
            if model is None:
                return None
            self._signature_columns = signature_columns(model, label_names)
        return self._signature_columns

    def _prepare(self, dataset: Any, description: str) -> tuple[Any, Callable]:
        """``_remove_unused_columns`` for ``datasets.Dataset``, ``RemoveColumnsCollator`` otherwise."""
        collator = self.data_collator
        if not self.args.remove_unused_columns:
            return dataset, collator
        columns = self._columns()
        if columns is None:
            return dataset, collator
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(dataset, datasets.Dataset):
            ignored = [c for c in dataset.column_names if c not in columns]
            kept = [c for c in columns if c in dataset.column_names]
            if not kept:
                raise ValueError(
                    f"No column of the {description} dataset matches the model's forward signature {columns}; "
                    f"the dataset has {dataset.column_names}. Tokenize it first, rename columns, or set "
                    "`remove_unused_columns=False`."
                )
            if ignored:
                log.info("Columns of the %s dataset not used by the model's forward, removed: %s", description, ignored)
            return dataset.remove_columns(ignored), collator
        model, _ = self._model_and_labels()
        return dataset, RemoveColumnsCollator(
            data_collator=collator,
            signature_columns=columns,
            logger=log,
            model_name=type(model).__name__,
            description=description,
        )

    # ---------------------------------------------------------------------------- dataloaders

    def _loader_kwargs(self, *, training: bool) -> dict[str, Any]:
        args = self.args
        kwargs: dict[str, Any] = {
            "num_workers": args.dataloader_num_workers,
            "pin_memory": bool(args.dataloader_pin_memory and torch.cuda.is_available()),
        }
        if args.dataloader_num_workers > 0:
            kwargs["persistent_workers"] = args.dataloader_persistent_workers
            if args.dataloader_prefetch_factor is not None:
                kwargs["prefetch_factor"] = args.dataloader_prefetch_factor
            if args.dataloader_multiprocessing_context is not None:
                kwargs["multiprocessing_context"] = args.dataloader_multiprocessing_context
            if "in_order" in inspect.signature(DataLoader.__init__).parameters:
                kwargs["in_order"] = args.dataloader_in_order
        if training:
            kwargs["worker_init_fn"] = partial(seed_worker, num_workers=args.dataloader_num_workers, rank=self._rank())
        return kwargs

    def _world(self) -> int:
        trainer = self._lightning_trainer()
        return trainer.world_size if trainer is not None else 1

    def _rank(self) -> int:
        trainer = self._lightning_trainer()
        return trainer.global_rank if trainer is not None else 0

    def _train_sampler(self, dataset: Any) -> Sampler[int]:
        strategy = strategy_name(self.args.train_sampling_strategy)
        if strategy == "group_by_length":
            lengths = None
            try:
                import datasets

                if isinstance(dataset, datasets.Dataset) and self.args.length_column_name in dataset.column_names:
                    lengths = dataset[self.args.length_column_name]
            except ImportError:  # pragma: no cover
                pass
            model_input_name = self.processing_class.model_input_names[0] if self.processing_class is not None else None
            return LengthGroupedSampler(
                self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps,
                dataset=dataset,
                lengths=lengths,
                model_input_name=model_input_name,
            )
        if strategy == "sequential":
            return SequentialSampler(dataset)
        if SeedableRandomSampler is not None:
            return SeedableRandomSampler(dataset, data_seed=self.args.data_seed)
        return RandomSampler(dataset)  # pragma: no cover

    @override
    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Training needs a `train_dataset`; none was given to HFDataModule/Trainer.")
        check_train_dataset(self.train_dataset, self._columns() if self.args.remove_unused_columns else None, self._model_and_labels()[1], self._model_and_labels()[0])  # issue 13
        dataset, collator = self._prepare(self.train_dataset, "training")
        bs, ga = self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps
        if isinstance(dataset, IterableDataset) or not has_length(dataset):
            # Unsized data: a group is GA*bs consecutive samples (of this rank's shard), as transformers fetches them.
            from .distributed import shard_iterable

            self.train_batch_sampler = None
            dataset = shard_iterable(dataset, batch_size=bs, drop_last=self.args.dataloader_drop_last, world_size=self._world(), rank=self._rank())
            return DataLoader(dataset, batch_size=bs * ga, collate_fn=GroupCollator(collator, bs), drop_last=False, **self._loader_kwargs(training=True))
        self.train_batch_sampler = HFBatchSampler(
            self._train_sampler(dataset),
            batch_size=bs,
            gradient_accumulation_steps=ga,
            drop_last=self.args.dataloader_drop_last,
            num_replicas=self._world(),
            rank=self._rank(),
        )
        return DataLoader(
            dataset,
            batch_sampler=self.train_batch_sampler,
            collate_fn=GroupCollator(collator, bs),
            **self._loader_kwargs(training=True),
        )

    def _eval_loader(self, dataset: Any, description: str) -> DataLoader:
        dataset, collator = self._prepare(dataset, description)
        bs = self.args.per_device_eval_batch_size
        kwargs = self._loader_kwargs(training=False)
        from .distributed import eval_batch_sampler, eval_sampler, shard_iterable

        drop_last, world, rank = self.args.dataloader_drop_last, self._world(), self._rank()
        if isinstance(dataset, IterableDataset) or not has_length(dataset):
            dataset = shard_iterable(dataset, batch_size=bs, drop_last=drop_last, world_size=world, rank=rank)
            return DataLoader(dataset, batch_size=bs, collate_fn=collator, **kwargs)
        sampler = eval_sampler(dataset, self.args, self.processing_class, world_size=world, rank=rank)
        if world <= 1:
            return DataLoader(dataset, batch_size=bs, sampler=sampler, collate_fn=collator, drop_last=drop_last, **kwargs)
        # Several processes: each evaluates its shard of the batches, as accelerate's prepared dataloader does.
        batches = eval_batch_sampler(sampler, batch_size=bs, drop_last=drop_last, world_size=world, rank=rank)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collator, **kwargs)

    @override
    def val_dataloader(self) -> DataLoader | dict[str, DataLoader] | list:
        if self.eval_dataset is None:
            return []  # no eval dataset: Lightning skips validation (eval_strategy="no" was validated up front)
        if isinstance(self.eval_dataset, Mapping):
            return {name: self._eval_loader(ds, f"evaluation ({name})") for name, ds in self.eval_dataset.items()}
        return self._eval_loader(self.eval_dataset, "evaluation")

    @override
    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            raise ValueError("Prediction needs a `test_dataset`; none was given to HFDataModule.")
        return self._eval_loader(self.test_dataset, "test")

    def num_examples(self, split: str) -> int | None:
        """Length of the train/eval/test dataset, or None if unsized."""
        dataset = {"train": self.train_dataset, "test": self.test_dataset}.get(split)
        return len(dataset) if dataset is not None and has_length(dataset) else None
