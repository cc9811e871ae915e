"""A training run for the kill -9 test: saves at every step (a few MB each), resumes from the last checkpoint.

Usage: python kill_target.py OUTPUT_DIR
"""

from __future__ import annotations

import sys

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

import hf_lightning
import hf_lightning.checkpoint_folders


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 2000, (n, 16), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main(output_dir: str) -> None:
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=8, max_steps=30, save_strategy="steps",
                             save_steps=1, save_total_limit=3, logging_steps=1, report_to="none", disable_tqdm=True,
                             use_cpu=True)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=2000)
    trainer = hf_lightning.Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Tokens(),
                                   enable_progress_bar=False, enable_model_summary=False)
    resume = hf_lightning.checkpoint_folders.find_last_checkpoint(output_dir) is not None
    trainer.train(resume_from_checkpoint=True if resume else None)


if __name__ == "__main__":
    main(sys.argv[1])
