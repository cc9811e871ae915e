"""``HFProgressBar``: one training bar over the run's optimizer steps with the epoch, "Evaluation" and
"Prediction" bars (transformers' names), on the build_trainer path and on a plain ``lightning.Trainer``."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import pytest
import torch

import hf_lightning
from hf_lightning.callbacks.progress import HFProgressBar, epoch_postfix, loop_description
from helpers import make_args
from tiny import RegressionDataset, TinyReg


@pytest.mark.parametrize(
    "description,names,index,expected",
    [
        ("Evaluation", None, 0, "Evaluation"),
        ("Evaluation", ["validation"], 0, "Evaluation"),
        ("Evaluation", ["a", "b"], 1, "Evaluation (b)"),
        ("Prediction", None, 2, "Prediction"),
        ("Evaluation", ["a", "b"], 5, "Evaluation"),  # more loaders than names: no made-up name
    ],
)
def test_loop_description(description, names, index, expected):
    assert loop_description(description, names, index) == expected


@pytest.mark.parametrize("epoch,expected", [(None, {}), (0.0, {"epoch": "0.00"}), (1.5, {"epoch": "1.50"}), (2, {"epoch": "2.00"})])
def test_epoch_postfix(epoch, expected):
    assert epoch_postfix(epoch) == expected


def frames(text: str) -> list[str]:
    """Every state a tqdm bar drew (tqdm redraws with carriage returns), without the blank clearing lines."""
    return [f.strip() for f in re.split(r"[\r\n]", text.replace("\x1b[A", "")) if f.strip()]


def bar_frames(text: str, name: str) -> list[str]:
    return [f for f in frames(text) if f.startswith(f"{name}:")]


def test_one_training_bar_over_max_steps_with_the_epoch_and_named_eval_and_predict_bars(tmp_path, capsys):
    """Two epochs of 4 optimizer steps: one bar counting 0..8 (transformers' ``max_steps``), the epoch shown as
    transformers counts it, evaluation bars named "Evaluation", the test loop (transformers' predict()) "Prediction"."""
    args = make_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2, logging_steps=2, eval_strategy="epoch",
                     disable_tqdm=False, learning_rate=1e-2)
    trainer = hf_lightning.build_trainer(args)
    assert sum(isinstance(cb, HFProgressBar) for cb in trainer.callbacks) == 1
    module = hf_lightning.HFModule(TinyReg(), args)
    data = hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8, seed=1),
                                     test_dataset=RegressionDataset(8, seed=2))
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    out = capsys.readouterr().out

    training = bar_frames(out, "Training")
    assert training and all(re.search(r"\| ?\d+/8 \[", f) for f in training), training  # one bar, total = max_steps
    steps = [int(re.search(r"(\d+)/8", f).group(1)) for f in training]
    assert steps == sorted(steps) and steps[-1] == 8  # never reset at an epoch boundary
    epochs = [float(m.group(1)) for f in training if (m := re.search(r"epoch=(\d+\.\d\d)", f))]
    assert epochs == sorted(epochs) and {1.0, 2.0} <= set(epochs), epochs  # transformers' epoch: 0.25 per step here
    assert any("8/8" in f and "epoch=2.00" in f and "loss=" in f and "lr=" in f for f in training)
    assert not [f for f in frames(out) if f.startswith("Epoch ")], "Lightning's per-epoch bar is back"

    evaluation = bar_frames(out, "Evaluation")
    assert evaluation and any("1/1" in f for f in evaluation)  # 8 samples, eval batches of 8
    prediction = bar_frames(out, "Prediction")
    assert prediction and any("1/1" in f for f in prediction)
    assert not any(word in out for word in ("Validation", "Testing", "DataLoader 0", "Sanity"))


def test_dict_eval_sets_are_named(tmp_path, capsys):
    args = make_args(tmp_path, per_device_train_batch_size=8, max_steps=1, eval_strategy="steps", eval_steps=1, disable_tqdm=False)
    trainer = hf_lightning.build_trainer(args)
    data = hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(8),
                                     eval_dataset={"dev": RegressionDataset(4, seed=1), "ood": RegressionDataset(4, seed=2)})
    trainer.fit(hf_lightning.HFModule(TinyReg(), args), datamodule=data)
    out = capsys.readouterr().out
    assert bar_frames(out, "Evaluation (dev)") and bar_frames(out, "Evaluation (ood)")


class _Plain(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["input_x"]).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(RegressionDataset(12), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_without_the_flow_callback_the_bar_counts_lightning_steps(tmp_path, capsys):
    """On a plain ``lightning.Trainer`` without hf_lightning's callbacks: still one bar, over Lightning's step estimate."""
    trainer = pl.Trainer(max_epochs=2, callbacks=[HFProgressBar()], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(_Plain())
    training = bar_frames(capsys.readouterr().out, "Training")
    assert training and all("/6 [" in f for f in training)
    assert "6/6" in training[-1] and "epoch=2.00" in training[-1], training[-1]
