"""Subclass bodies for the override-point differential tests, shared by the one- and two-process tests.

Each body is a mixin written once; ``subclass(Body, base)`` applies it to ``transformers.Trainer`` or
``hf_lightning.Trainer`` (``class Custom(Body, base)``), so ``super()`` inside the body reaches the
base exactly as it would in a user's subclass. Every body changes something observable (the loss,
the weights, the logs, the predictions or the files) and records its calls in ``CALLS``, so an
override that is silently ignored, or called at another moment, shows up in the comparison.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers import default_data_collator

CALLS: list[tuple] = []
"""What the bodies saw, in call order (reset between runs)."""


def subclass(body: type, base: type) -> type:
    return type(f"{body.__name__}{base.__name__}", (body, base), {})


class CustomLoss:
    """A different loss (3·MSE + MAE), in training and inside prediction_step."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        CALLS.append(("compute_loss", model.training, return_outputs, num_items_in_batch is not None, len(inputs["labels"])))
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"]
        loss = 3 * ((logits - labels) ** 2).mean() + (logits - labels).abs().mean()
        return (loss, outputs) if return_outputs else loss


class SuperTrainingStep:
    """``super().training_step`` (so the gradients are transformers'), with the returned (logged) loss halved."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        CALLS.append(("training_step", self.state.global_step, self.current_gradient_accumulation_steps))
        return super().training_step(model, inputs, num_items_in_batch) / 2


class OwnTrainingStep:
    """Its own forward and ``self.accelerator.backward`` with a loss scaled by 0.25: other gradients."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        CALLS.append(("training_step", self.state.global_step, self.accelerator.num_processes, self.accelerator.sync_gradients))
        model.train()
        outputs = model(**inputs)
        loss = 0.25 * outputs["loss"] / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()


class CustomPredictionStep:
    """Negated logits (what compute_metrics and predict() see)."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        CALLS.append(("prediction_step", prediction_loss_only, ignore_keys))
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        return loss, None if logits is None else -logits, labels


class CustomEvaluationLoop:
    """An extra metric out of every evaluation/prediction loop."""

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        CALLS.append(("evaluation_loop", description, prediction_loss_only, metric_key_prefix))
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics[f"{metric_key_prefix}_samples"] = float(output.num_samples)
        return output


class QuestionAnsweringStyleEvaluate:
    """The QA example's recipe: run the loop without compute_metrics, post-process, log, fire on_evaluate."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        CALLS.append(("evaluate", metric_key_prefix, self.state.global_step))
        dataloader = self.get_eval_dataloader(eval_dataset)
        compute_metrics, self.compute_metrics = self.compute_metrics, None
        try:
            output = self.evaluation_loop(dataloader, description="Evaluation", prediction_loss_only=None,
                                          ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self.compute_metrics = compute_metrics
        predictions = torch.as_tensor(output.predictions)
        metrics = {f"{metric_key_prefix}_mean_prediction": float(predictions.mean()), f"{metric_key_prefix}_count": len(predictions)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class CustomPredict:
    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        CALLS.append(("predict", metric_key_prefix))
        output = super().predict(test_dataset, ignore_keys, metric_key_prefix)
        output.metrics[f"{metric_key_prefix}_custom"] = 1.0
        return output


class CustomLoaders:
    """Own dataloaders: training in dataset order with batches of 3; evaluation/prediction on the first 10 samples."""

    def get_train_dataloader(self):
        CALLS.append(("get_train_dataloader",))
        return DataLoader(self.train_dataset, batch_size=3, shuffle=False, collate_fn=default_data_collator)

    def get_eval_dataloader(self, eval_dataset=None):
        CALLS.append(("get_eval_dataloader",))
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return DataLoader(torch.utils.data.Subset(dataset, range(10)), batch_size=5, collate_fn=default_data_collator)

    def get_test_dataloader(self, test_dataset):
        CALLS.append(("get_test_dataloader",))
        subset = torch.utils.data.Subset(test_dataset, range(10))
        return DataLoader(subset, batch_size=4, sampler=SequentialSampler(subset), collate_fn=default_data_collator)


class CustomOptimizer:
    """SGD with momentum and a 1/(1+step) schedule instead of AdamW and linear decay."""

    def create_optimizer(self, model=None):
        CALLS.append(("create_optimizer",))
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.learning_rate, momentum=0.9)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        CALLS.append(("create_scheduler", num_training_steps))
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lambda step: 1.0 / (1 + step))
        return self.lr_scheduler


class NoDecay:
    """No parameter gets weight decay (with weight_decay=0.5 that changes the weights)."""

    def get_decay_parameter_names(self, model):
        CALLS.append(("get_decay_parameter_names",))
        return []


class CustomLog:
    """Every record gets a key; the record's keys are remembered."""

    def log(self, logs, start_time=None):
        logs["custom"] = self.state.global_step * 10
        logs["model_training"] = int(self.model.training)  # eval records: the model is still in eval mode (TRL reads it)
        CALLS.append(("log", tuple(sorted(logs))))
        super().log(logs, start_time)


class CustomSaveModel:
    """The model files plus a marker file, through save_model (as transformers' _save_checkpoint calls it)."""

    def save_model(self, output_dir=None, _internal_call=False):
        CALLS.append(("save_model", _internal_call))
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            with open(os.path.join(output_dir or self.args.output_dir, "custom_save_model.txt"), "w") as f:
                f.write(str(self.state.global_step))


class ContextManagers:
    """Counts the forwards run inside ``compute_loss_context_manager`` and ``autocast_smart_context_manager``."""

    def compute_loss_context_manager(self):
        CALLS.append(("compute_loss_context_manager",))
        return super().compute_loss_context_manager()

    def autocast_smart_context_manager(self, cache_enabled=True):
        CALLS.append(("autocast_smart_context_manager",))

        @contextlib.contextmanager
        def recording():
            CALLS.append(("inside_autocast",))
            yield

        return recording()


class ConstantFlos:
    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        CALLS.append(("floating_point_ops",))
        return 1000


class CustomPrepareInputs:
    """``_prepare_inputs`` (TRL's GRPO and RLOO trainers override it): doubled inputs, in training and evaluation."""

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        CALLS.append(("_prepare_inputs", self.model.training, len(inputs["labels"])))
        return {**inputs, "input_x": 2 * inputs["input_x"]}


class CustomNumItems:
    """``_get_num_items_in_batch``: the micro-batches of each optimizer step and each evaluation batch it counts."""

    def _get_num_items_in_batch(self, batch_samples, device):
        CALLS.append(("_get_num_items_in_batch", len(batch_samples), [len(b["labels"]) for b in batch_samples], str(device)))
        return super()._get_num_items_in_batch(batch_samples, device)


class CustomClipGradNorm:
    """``_clip_grad_norm``: gradients halved before transformers' clipping; the logged grad_norm is its return value."""

    def _clip_grad_norm(self, model):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(0.5)
        norm = super()._clip_grad_norm(model)
        CALLS.append(("_clip_grad_norm", self.state.global_step, round(float(norm), 4)))
        return norm


class CustomLearningRate:
    """``_get_learning_rate``: the logged learning rate, scaled (the optimizer's is unchanged)."""

    def _get_learning_rate(self):
        CALLS.append(("_get_learning_rate", self.state.global_step))
        return 10 * super()._get_learning_rate()


class CustomSave:
    """``_save`` (what transformers' save_model calls): the model files plus a marker, in every checkpoint."""

    def _save(self, output_dir=None, state_dict=None):
        # hf_lightning writes a checkpoint into a temporary folder, renamed to checkpoint-N once complete
        folder = os.path.basename(str(output_dir))
        CALLS.append(("_save", (re.search(r"checkpoint-\d+", folder) or re.search(".*", folder)).group()))
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # transformers calls _save on every rank; its own returns at once off the writer
            with open(os.path.join(output_dir or self.args.output_dir, "custom_save.txt"), "w") as f:
                f.write(str(self.state.global_step))


class CustomSaveCheckpoint:
    """``_save_checkpoint`` (TRL's trainers write a model card there): a file in output_dir at each save, then super()."""

    def _save_checkpoint(self, model, trial):
        CALLS.append(("_save_checkpoint", self.state.global_step, trial))
        with open(os.path.join(self.args.output_dir, "saves.txt"), "a") as f:
            f.write(f"{self.state.global_step}\n")
        super()._save_checkpoint(model, trial)


class CopiedLogSaveEvaluate:
    """``_maybe_log_save_evaluate`` copied from transformers 5 with one more key in each training log, as research code
    copies it to log more losses: it reads and resets ``tr_loss`` in place and keeps the trainer's counters itself."""

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=None):
        from transformers.trainer_pt_utils import nested_gather

        control = self.control
        CALLS.append(("_maybe_log_save_evaluate", self.state.global_step, epoch, control.should_log, control.should_evaluate, control.should_save))
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            tr_loss_scalar = nested_gather(tr_loss, self.args.parallel_mode).mean().item()
            tr_loss -= tr_loss
            window = self.state.global_step - self._globalstep_last_logged
            logs = {"loss": tr_loss_scalar / window}
            if grad_norm is not None:
                logs["grad_norm"] = grad_norm.item() if isinstance(grad_norm, torch.Tensor) else grad_norm
            logs["learning_rate"] = learning_rate if learning_rate is not None else self._get_learning_rate()
            logs["window"] = window
            self._total_loss_scalar += tr_loss_scalar
            self._globalstep_last_logged = self.state.global_step
            self.store_flos()
            self.log(logs, start_time)
        if self.control.should_evaluate:
            metrics = self._evaluate(trial, ignore_keys_for_eval)
            is_new_best_metric = self._determine_best_metric(metrics=metrics, trial=trial)
            if self.args.save_strategy == "best":
                self.control.should_save = is_new_best_metric
        if self.control.should_save:
            self._save_checkpoint(model, trial)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)


class WrappedLogSaveEvaluate:
    """``_maybe_log_save_evaluate`` around ``super()``: records its arguments, skips the evaluation at step 3."""

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=None):
        CALLS.append((
            "_maybe_log_save_evaluate", self.state.global_step, epoch, round(float(tr_loss), 5), round(float(grad_norm), 5),
            learning_rate, getattr(model, "module", model) is self.model, trial,  # transformers hands DDP's wrapper over ignore_keys_for_eval, self._globalstep_last_logged,
        ))
        if self.state.global_step == 3:
            self.control.should_evaluate = False
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=learning_rate)
        CALLS.append(("after", self._globalstep_last_logged, round(self._total_loss_scalar, 5), float(tr_loss)))


BODIES = {
    cls.__name__: cls
    for cls in (
        CustomLoss, SuperTrainingStep, OwnTrainingStep, CustomPredictionStep, CustomEvaluationLoop,
        QuestionAnsweringStyleEvaluate, CustomPredict, CustomLoaders, CustomOptimizer, NoDecay, CustomLog,
        CustomSaveModel, ContextManagers, ConstantFlos, CustomPrepareInputs, CustomNumItems, CustomClipGradNorm,
        CustomLearningRate, CustomSave, CustomSaveCheckpoint, CopiedLogSaveEvaluate, WrappedLogSaveEvaluate,
    )
}
