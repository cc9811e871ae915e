"""Peak memory of each rank while an FSDP2 checkpoint is saved, against the model's size (not a test).

Trains a Llama of ~34M parameters (128.5 MiB in fp32; AdamW adds twice that) for one step with
``FSDP2Strategy`` on CPU, saves ``checkpoint-1``, and samples every rank's resident memory (RSS,
``/proc/self/statm``, after ``malloc_trim``) every millisecond during the save. Reported per rank:
RSS before the save and the peak increase during it; the tensor bytes of the state the rank holds
for the save (model + optimizer; a DTensor counts as its local shard) and how much of that is a copy
rather than a view of live parameters; next to the bytes of the whole model and of one shard.

    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_save_memory.py --state-dict-type sharded
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_save_memory.py --state-dict-type full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    """Highest RSS seen between ``start`` and ``stop``, sampled from a thread every millisecond."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def start(self) -> int:
        self.baseline = self.peak = rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self.baseline

    def stop(self) -> int:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, rss())
        return self.peak


class Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        ids = torch.arange(16) % 8000 + i
        return {"input_ids": ids, "labels": ids}


def _local_tensors(obj: object) -> list[torch.Tensor]:
    """Every tensor in a nested structure; a DTensor counts as its local shard."""
    found: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        local = getattr(obj, "to_local", None)
        found.append(local() if callable(local) else obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            found += _local_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found += _local_tensors(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dict-type", choices=["sharded", "full"], default="sharded")
    parser.add_argument("--out", default=None)
    options = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    import hf_lightning
    from hf_lightning.callbacks.checkpoint import HFCheckpoint
    from hf_lightning.distributed import FSDP2Strategy

    config = LlamaConfig(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
        vocab_size=8192, max_position_embeddings=64, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = options.out or tempfile.mkdtemp(prefix="fsdp_mem_")
    args = TrainingArguments(
        output_dir=out, report_to="none", disable_tqdm=True, use_cpu=True, max_steps=1, save_strategy="steps",
        save_steps=1, per_device_train_batch_size=2, logging_steps=1, remove_unused_columns=False,
    )
    samples: dict[str, int] = {}
    original = HFCheckpoint.save

    def measured_save(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        import ctypes
        import gc

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed pages back, so the baseline is what is really held
        sampler = PeakSampler()
        samples["before"] = sampler.start()
        started = time.perf_counter()
        try:
            return original(self, trainer, pl_module)
        finally:
            samples["peak"] = sampler.stop()
            samples["seconds_x1000"] = int(1000 * (time.perf_counter() - started))

    HFCheckpoint.save = measured_save  # type: ignore[method-assign]
    original_strategy_save = FSDP2Strategy.save_checkpoint

    def inspected_save(self, checkpoint, filepath, storage_options=None):  # type: ignore[no-untyped-def]
        # What this rank holds for the save: tensor bytes in the gathered/sharded state dicts, and how
        # much of it is new memory (not a view of a live parameter or optimizer state).
        live = {t.untyped_storage().data_ptr() for t in _local_tensors(list(self.model.parameters()))}
        for optimizer in self.optimizers:
            live |= {t.untyped_storage().data_ptr() for t in _local_tensors(list(optimizer.state.values()))}
        held = _local_tensors([checkpoint.get("state_dict", {}), checkpoint.get("optimizer_states", [])])
        samples["held_bytes"] = sum(t.numel() * t.element_size() for t in held)
        samples["copied_bytes"] = sum(t.numel() * t.element_size() for t in held if t.untyped_storage().data_ptr() not in live)
        return original_strategy_save(self, checkpoint, filepath, storage_options)

    FSDP2Strategy.save_checkpoint = inspected_save  # type: ignore[method-assign]
    trainer = hf_lightning.Trainer(
        model=model, args=args, train_dataset=Tokens(), accelerator="cpu", devices=int(os.environ.get("WORLD_SIZE", 1)),
        strategy=FSDP2Strategy(state_dict_type=options.state_dict_type), enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.train()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    report = {
        "rank": rank,
        "state_dict_type": options.state_dict_type,
        "model_params_MB": round(param_bytes / MB, 1),
        "one_shard_params_MB": round(param_bytes / world / MB, 1),
        "adamw_state_MB_per_rank": round(2 * param_bytes / world / MB, 1),
        "rss_before_save_MB": round(samples["before"] / MB, 1),
        "peak_increase_during_save_MB": round((samples["peak"] - samples["before"]) / MB, 1),
        "state_held_for_save_MB": round(samples["held_bytes"] / MB, 1),
        "of_which_copies_MB": round(samples["copied_bytes"] / MB, 1),
        "save_seconds": samples["seconds_x1000"] / 1000,
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
