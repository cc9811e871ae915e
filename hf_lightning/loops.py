"""Evaluation runs on Lightning's loops, and the override points that need Lightning.

``run_evaluation`` is transformers' ``evaluation_loop`` on Lightning: it runs Lightning's validation
(or test) loop over one dataloader, inside ``fit`` (the fit loop's own validation loop, between two
training steps) or outside it (``lightning.Trainer.validate``/``test``), and returns transformers'
``EvalLoopOutput``. ``HFModule`` computes each batch through the host's ``prediction_step``.

``LightningHooks`` completes ``TrainerHooks`` for ``HFModule`` used on its own: the dataloader getters
read ``HFDataModule``, ``evaluation_loop`` is ``run_evaluation``, ``save_model`` exports through the
strategy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from transformers.trainer_utils import EvalLoopOutput

from .data import GroupedLoader, HFDataModule
from .hooks import TrainerHooks

__all__ = ["EvalRequest", "EvalLoader", "EvalRuns", "run_evaluation", "LightningHooks", "unwrap_loader"]


@dataclass
class EvalRequest:
    """What ``evaluation_loop`` asked of the next validation/test run (None: Lightning started it itself)."""

    description: str
    prediction_loss_only: bool | None
    ignore_keys: list[str] | None
    metric_key_prefix: str
    output: EvalLoopOutput | None = None


class EvalLoader:
    """A dataloader handed to Lightning as is: not a ``DataLoader``, so Lightning re-samples nothing.

    accelerate has already sharded it over the ranks; Lightning would otherwise swap its sampler for
    a ``DistributedSampler`` when ``use_distributed_sampler`` is on.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        # A generator: Lightning calls iter() to check the loader; a DataLoader's iterator would draw its seed
        # from the global RNG right then, not when the evaluation starts as under transformers.
        yield from self.loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "__setstate__", "state_dict", "load_state_dict"):
            raise AttributeError(name)  # no dataloader state in Lightning's checkpoint: the position comes from global_step
        return getattr(self.loader, name)


def unwrap_loader(loader: Any) -> Any:
    """The dataloader inside an ``EvalLoader``/``GroupedLoader`` (what transformers' callbacks are given)."""
    while isinstance(loader, (EvalLoader, GroupedLoader)):
        loader = loader.loader
    return loader


def run_evaluation(
    trainer: pl.Trainer,
    module: Any,
    datamodule: Any,
    dataloader: Any,
    *,
    description: str,
    prediction_loss_only: bool | None,
    ignore_keys: list[str] | None,
    metric_key_prefix: str,
) -> EvalLoopOutput:
    """``Trainer.evaluation_loop`` on Lightning: one pass over ``dataloader``, on every rank.

    ``description`` is ``"Prediction"`` for ``predict()`` (Lightning's test loop) and anything else for an
    evaluation (Lightning's validation loop).
    """
    _log_evaluation_start(dataloader, description, module.args.per_device_eval_batch_size)
    request = EvalRequest(description, prediction_loss_only, ignore_keys, metric_key_prefix)
    module.eval_request = request
    loader = dataloader if isinstance(dataloader, EvalLoader) else EvalLoader(dataloader)
    testing = description == "Prediction"
    try:
        if trainer.training and trainer.state.fn == "fit" and not testing:
            _validate_inside_fit(trainer, datamodule, loader)
        else:
            if not isinstance(datamodule, HFDataModule):
                raise TypeError("hf_lightning evaluates through an HFDataModule; this run has none.")
            datamodule.pending_loader = loader
            try:
                if testing:
                    trainer.test(module, datamodule=datamodule, verbose=False)
                else:
                    trainer.validate(module, datamodule=datamodule, verbose=False)
            finally:
                datamodule.pending_loader = None
    finally:
        module.eval_request = None
    # transformers' evaluation_loop leaves the model in eval mode until the next training_step calls model.train();
    # Lightning's loops put it back in training mode. Code that runs after an evaluation reads the mode (TRL's
    # `log` tells evaluation records from training ones by `self.model.training`).
    module.model.eval()
    if request.output is None:
        raise RuntimeError(f"The {description.lower()} loop ran no batch: is the dataloader empty?")
    return request.output


def _log_evaluation_start(dataloader: Any, description: str, batch_size: int) -> None:
    """The lines transformers' ``evaluation_loop`` logs before its first batch."""
    from transformers import trainer
    from transformers.trainer_utils import has_length

    trainer.logger.info(f"\n***** Running {description} *****")
    loader = unwrap_loader(dataloader)
    if has_length(loader):
        try:
            trainer.logger.info(f"  Num examples = {len(loader.dataset)}")
        except (TypeError, AttributeError):
            trainer.logger.info(f"  Num examples = {len(loader) * batch_size}")
    else:
        trainer.logger.info("  Num examples: Unknown")
    trainer.logger.info(f"  Batch size = {batch_size}")


def _validate_inside_fit(trainer: pl.Trainer, datamodule: Any, loader: Any) -> None:
    """Run the fit loop's validation loop now, over ``loader``, and go back to training (what Lightning's
    training epoch loop does when it validates, with the dataloader asked for afresh)."""
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    if isinstance(datamodule, HFDataModule):
        datamodule.pending_loader = loader
        val_loop._combined_loader = None  # make setup_data ask the datamodule for the loader again
    connector = trainer._logger_connector
    first_loop_iter = connector._first_loop_iter
    trainer.validating = True
    try:
        val_loop.run()
    finally:
        trainer.training = True
        connector._first_loop_iter = first_loop_iter
        if isinstance(datamodule, HFDataModule):
            datamodule.pending_loader = None
            val_loop._combined_loader = None


class LightningHooks(TrainerHooks):
    """``TrainerHooks`` for ``HFModule`` on its own: datasets from ``HFDataModule``, evaluation on Lightning's loops."""

    module: Any = None

    @property
    def _trainer(self) -> pl.Trainer | None:
        return None if self.module is None else self.module._trainer

    @property
    def datamodule(self) -> Any:
        trainer = self._trainer
        return None if trainer is None else trainer.datamodule

    @property
    def train_dataset(self) -> Any:
        return getattr(self.datamodule, "train_dataset", None)

    @property
    def eval_dataset(self) -> Any:
        return getattr(self.datamodule, "eval_dataset", None)

    @property
    def data_collator(self) -> Any:
        return getattr(self.datamodule, "data_collator", None)

    def _require_datamodule(self, what: str) -> HFDataModule:
        datamodule = self.datamodule
        if not isinstance(datamodule, HFDataModule):
            raise TypeError(
                f"{what} needs the run's datasets: pass an `hf_lightning.HFDataModule` to `fit`/`validate` "
                f"(this run has {type(datamodule).__name__ if datamodule is not None else 'plain dataloaders'})."
            )
        return datamodule

    def get_train_dataloader(self) -> Any:
        return self._require_datamodule("get_train_dataloader()").get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return self._require_datamodule("get_eval_dataloader()").get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        return self._require_datamodule("get_test_dataloader()").get_test_dataloader(test_dataset)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        return run_evaluation(
            self._trainer,
            self.module,
            self.datamodule,
            dataloader,
            description=description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Weights, config, tokenizer and ``training_args.bin``, gathered through the strategy (rank 0 writes)."""
        from .callbacks.checkpoint import export_model

        export_model(self._trainer, self.module, str(output_dir if output_dir is not None else self.args.output_dir))


class EvalRuns:
    """The evaluation runs of one ``HFModule``: an ``EvalAccumulator`` per dataloader of the running loop.

    Each batch goes through the host's ``prediction_step``; the accumulator does the rest of
    ``evaluation_loop`` (gathering, containers, ``compute_metrics``).
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.runs: dict[int, tuple[str, Any, Any]] = {}
        self.current_gather: Any = None

    def _trainer(self) -> pl.Trainer:
        return self.module.trainer

    def _loaders(self, stage: str) -> Any:
        trainer = self._trainer()
        return trainer.val_dataloaders if stage == "validate" else trainer.test_dataloaders

    def dataloader(self, stage: str, index: int) -> Any:
        loaders = self._loaders(stage)
        if isinstance(loaders, dict):
            return list(loaders.values())[index]
        if isinstance(loaders, (list, tuple)):
            return loaders[index]
        return loaders

    def _dataset_len(self, stage: str, index: int) -> int | None:
        from transformers.trainer_utils import has_length

        loader = unwrap_loader(self.dataloader(stage, index))
        dataset = getattr(loader, "dataset", None)
        if has_length(dataset):
            return len(dataset)
        return None

    def _num_batches(self, stage: str, index: int) -> float:
        trainer = self._trainer()
        counts = trainer.num_val_batches if stage == "validate" else trainer.num_test_batches
        return counts[index] if index < len(counts) else float("inf")

    def _prefix(self, stage: str, index: int) -> str:
        request = self.module.eval_request
        if request is not None:
            return request.metric_key_prefix
        loaders = self._loaders(stage)
        base = "eval" if stage == "validate" else getattr(self.module, "test_prefix", "test")
        return f"{base}_{list(loaders)[index]}" if isinstance(loaders, dict) else base

    def _run(self, stage: str, index: int) -> tuple[str, Any, Any]:
        run = self.runs.get(index)
        if run is not None:
            return run
        from . import distributed
        from .evaluation import EvalAccumulator

        module, hooks, args = self.module, self.module.hooks, self.module.args
        request = module.eval_request
        prediction = request.description == "Prediction" if request is not None else stage == "test"
        if request is not None:
            loss_only = request.prediction_loss_only
        else:  # what evaluate()/predict() pass when Lightning started the loop itself
            loss_only = True if (hooks.compute_metrics is None and not prediction) else None
        loss_only = args.prediction_loss_only if loss_only is None else loss_only
        trainer = self._trainer()
        if args.eval_use_gather_object and trainer.world_size > 1:
            raise ValueError(
                "`eval_use_gather_object=True` with several processes is not supported: evaluation outputs are "
                "gathered as tensors. Return tensors from the model, or evaluate on one process."
            )
        gather = distributed.EvalGather(
            trainer.strategy, remainder=distributed.gather_remainder(unwrap_loader(self.dataloader(stage, index)))
        )
        accumulator = EvalAccumulator(
            prefix=self._prefix(stage, index),
            eval_batch_size=args.eval_batch_size,
            compute_metrics=hooks.compute_metrics,
            preprocess_logits_for_metrics=hooks.preprocess_logits_for_metrics,
            include_for_metrics=list(args.include_for_metrics or []),
            batch_eval_metrics=args.batch_eval_metrics,
            eval_accumulation_steps=args.eval_accumulation_steps,
            eval_do_concat_batches=args.eval_do_concat_batches,
            logging_nan_inf_filter=args.logging_nan_inf_filter,
            keep_predictions=not args.batch_eval_metrics or prediction,
            # the host's gather_function: accelerator.gather_for_metrics (drops what evens out the last batch), or
            # accelerator.gather, which Seq2SeqTrainer sets for its evaluate()/predict()
            gather=lambda data: (getattr(hooks, "gather_function", None) or hooks.accelerator.gather_for_metrics)(data),
            pad=gather.pad,
        )
        # torchmetrics need the logits even when no compute_metrics asks for predictions; they are not kept then.
        accumulator.prediction_loss_only = loss_only and module.metrics is None  # type: ignore[attr-defined]
        accumulator.torchmetrics_only = loss_only and module.metrics is not None  # type: ignore[attr-defined]
        accumulator.start_time = time.time()  # type: ignore[attr-defined]
        run = (accumulator.prefix, accumulator, gather)
        self.runs[index] = run
        return run

    def step(self, batch: Any, batch_idx: int, dataloader_idx: int, stage: str) -> None:
        """One evaluation batch: the host's ``prediction_step``, torchmetrics, gathering."""
        module = self.module
        prefix, accumulator, gather = self._run(stage, dataloader_idx)
        request = module.eval_request
        ignore_keys = request.ignore_keys if request is not None else None
        is_last = batch_idx + 1 >= self._num_batches(stage, dataloader_idx)
        gather.begin_batch(is_last)
        self.current_gather = gather
        loss, logits, labels = module.hooks.prediction_step(
            module.model, batch, accumulator.prediction_loss_only, ignore_keys=ignore_keys  # type: ignore[attr-defined]
        )
        if module.metrics is not None and logits is not None and labels is not None:
            module.metrics.update(dataloader_idx, logits, labels)
            if accumulator.torchmetrics_only:  # type: ignore[attr-defined]
                logits = labels = None
        main_input = batch.get(module.main_input_name) if isinstance(batch, dict) or hasattr(batch, "keys") else None
        accumulator.add(batch, loss, logits, labels, main_input=main_input, is_last=is_last)
        self.current_gather = None

    def finish(self, stage: str, index: int) -> tuple[str, Any, float] | None:
        """Close the evaluation of one dataloader: ``(prefix, EvalResult, start_time)``. A collective."""
        run = self.runs.pop(index, None)
        if run is None:
            return None
        prefix, accumulator, _ = run
        hooks = self.module.hooks
        result = accumulator.finish(self._dataset_len(stage, index), model_preparation_time=getattr(hooks, "model_preparation_time", None))
        if self.module.metrics is not None:  # after compute_metrics' keys, as if it had returned them
            result.metrics.update(self.module.metrics.compute(index, prefix))
        return prefix, result, accumulator.start_time  # type: ignore[attr-defined]

    def pending(self) -> list[int]:
        return sorted(self.runs)
