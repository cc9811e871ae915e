"""How long a checkpoint save blocks training: synchronous vs ``async_save=True`` (CPU, no GPU needed).

A BERT of about 9M parameters (36 MB of weights, 108 MB with Adam's state) trains for a few steps
and saves at every step. The time spent inside ``HFCheckpoint.save`` on the training thread is what
training waits for. Not a test: run it by hand and read the numbers.

    PYTHONPATH=. python benchmarks/async_checkpoint_save.py [--steps 8] [--hidden 384] [--save-steps 1] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

import hf_lightning
import hf_lightning.checkpoint_folders
from hf_lightning.callbacks.checkpoint import HFCheckpoint


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, vocab, (n, 32), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def run(async_save: bool, steps: int, hidden: int, save_steps: int, output_dir: str) -> dict:
    blocked: list[float] = []
    waited: list[float] = []
    original, original_wait = HFCheckpoint.save, HFCheckpoint.wait

    def timed(self, trainer, pl_module):
        waited.append(0.0)
        start = time.perf_counter()
        result = original(self, trainer, pl_module)
        blocked.append(time.perf_counter() - start)
        return result

    def timed_wait(self):
        start = time.perf_counter()
        original_wait(self)
        if waited:
            waited[-1] += time.perf_counter() - start

    HFCheckpoint.save, HFCheckpoint.wait = timed, timed_wait
    try:
        torch.manual_seed(0)
        config = BertConfig(hidden_size=hidden, num_hidden_layers=4, num_attention_heads=4, intermediate_size=4 * hidden,
                            vocab_size=5000)
        model = BertForSequenceClassification(config)
        params = sum(p.numel() for p in model.parameters())
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=4, max_steps=steps, save_strategy="steps",
                                 save_steps=save_steps, save_total_limit=2, logging_steps=steps, report_to="none", disable_tqdm=True,
                                 use_cpu=True)
        trainer = hf_lightning.Trainer(model=model, args=args, train_dataset=Tokens(4 * steps, 5000), async_save=async_save,
                                       enable_progress_bar=False, enable_model_summary=False)
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    finally:
        HFCheckpoint.save, HFCheckpoint.wait = original, original_wait
    last = hf_lightning.checkpoint_folders.find_last_checkpoint(output_dir)
    size = sum(os.path.getsize(os.path.join(last, f)) for f in os.listdir(last))
    return {"params": params, "checkpoint_mb": size / 2**20, "blocked": blocked, "waited": waited[: len(blocked)], "total": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--save-steps", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for async_save in (False, True, False, True):  # twice each, to see the spread
        with tempfile.TemporaryDirectory(dir=options.dir) as output_dir:
            result = run(async_save, options.steps, options.hidden, options.save_steps, output_dir)
        blocked = result["blocked"][1:]  # the first save pays one-off costs (thread start, imports)
        waited = result["waited"][1:]
        print(
            f"async_save={async_save!s:5}  params={result['params'] / 1e6:.1f}M  checkpoint={result['checkpoint_mb']:.0f} MB  "
            f"blocking per save: min {min(blocked) * 1000:.0f} ms, median {statistics.median(blocked) * 1000:.0f} ms, "
            f"max {max(blocked) * 1000:.0f} ms, "
            f"of which waiting for the previous save: median {statistics.median(waited) * 1000:.0f} ms  "
            f"whole run {result['total']:.2f} s"
        )


if __name__ == "__main__":
    main()
