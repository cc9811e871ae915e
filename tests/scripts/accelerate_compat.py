"""Under torchrun: read hf_lightning's FSDP checkpoints with accelerate's own loaders, and back.

transformers.Trainer resumes an FSDP checkpoint with ``accelerate.utils.load_fsdp_model`` and
``load_fsdp_optimizer`` (and saves with their ``save_`` twins). Their FSDP2 code paths run on CPU,
so this script checks both directions without a GPU:

1. accelerate loads hf_lightning's sharded and full checkpoints into an FSDP2 model + optimizer;
   the gathered weights and Adam moments must equal what hf_lightning wrote;
2. accelerate saves (sharded and full) and hf_lightning's loaders read those folders back.

Writes ``OUT/compat.json`` (rank 0) with the largest differences found.

    torchrun --standalone --nproc_per_node 2 accelerate_compat.py --sharded CKPT --full CKPT --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def build(rank_mesh):
    from transformers import LlamaForCausalLM, TrainingArguments

    from hf_lightning import fsdp_units
    from hf_lightning.hooks import TrainerHooks
    from tiny import tiny_llama_config

    torch.manual_seed(123)  # different from the trained weights: loading must overwrite everything
    model = LlamaForCausalLM(tiny_llama_config())
    fsdp_units.shard_model(model, rank_mesh)
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True, learning_rate=5e-3)
    optimizer = TrainerHooks(model, args).create_optimizer()
    return model, optimizer


def plugin(kind: str):
    from torch.distributed.fsdp import StateDictType

    state_type = StateDictType.SHARDED_STATE_DICT if kind == "sharded" else StateDictType.FULL_STATE_DICT
    full = kind == "full"
    return SimpleNamespace(
        state_dict_type=state_type,
        fsdp_version=2,
        state_dict_config=SimpleNamespace(offload_to_cpu=full, rank0_only=full),
        optim_state_dict_config=SimpleNamespace(offload_to_cpu=full, rank0_only=full),
    )


def accelerator():
    rank = dist.get_rank()
    return SimpleNamespace(
        process_index=rank, num_processes=dist.get_world_size(), is_fsdp2=True, is_main_process=rank == 0, wait_for_everyone=dist.barrier
    )


def full_model(model) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def max_diff(a: dict, b: dict) -> float:
    keys = set(a) & set(b)
    if set(a) != set(b) or not keys:
        return float("inf")
    return max(((a[k].float() - b[k].float()).abs().max().item() for k in keys), default=0.0)


def moments(osd: dict) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value for name, state in osd["state"].items() for key, value in state.items() if torch.is_tensor(value)}


def run(sharded: str, full: str, out: str) -> None:
    """The checks above; call on every rank with the default process group initialised."""
    from accelerate.utils.fsdp_utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer
    from torch.distributed.device_mesh import init_device_mesh

    from hf_lightning import distributed, fsdp_checkpoint, hf_format
    from hf_lightning.consolidate import load_sharded_weights

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    rank = dist.get_rank()
    report: dict = {}
    full_dir, sharded_dir, out_dir = Path(full), Path(sharded), Path(out)

    # What hf_lightning wrote, as reference tensors.
    written_full_weights = hf_format.load_torch(full_dir / distributed.FSDP_MODEL_FILE)
    written_full_moments = moments(hf_format.load_torch(full_dir / "optimizer.bin"))
    written_sharded_weights = load_sharded_weights(sharded_dir / distributed.FSDP_MODEL_DIR)
    report["num_weights"], report["num_moments"] = len(written_full_weights), len(written_full_moments)

    for kind, folder, weights in (("full", full_dir, written_full_weights), ("sharded", sharded_dir, written_sharded_weights)):
        # 1. accelerate reads hf_lightning's folder.
        model, optimizer = build(mesh)
        load_fsdp_model(plugin(kind), accelerator(), model, str(folder))
        load_fsdp_optimizer(plugin(kind), accelerator(), optimizer, model, str(folder))
        gathered, osd = full_model(model), full_optimizer(model, optimizer)
        if rank == 0:
            report[f"accelerate_reads_{kind}_weights"] = max_diff(weights, gathered)
            report[f"accelerate_reads_{kind}_moments_vs_full_run"] = max_diff(written_full_moments, moments(osd))
        # 2. accelerate writes, hf_lightning reads back into a fresh model.
        target = out_dir / f"accelerate_{kind}"
        if rank == 0:
            target.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        save_fsdp_model(plugin(kind), accelerator(), model, str(target))
        save_fsdp_optimizer(plugin(kind), accelerator(), optimizer, model, str(target))
        dist.barrier()
        fresh, fresh_optimizer = build(mesh)
        root = torch.nn.Module()
        root.model = fresh  # hf_lightning's loaders work on the LightningModule, which holds the model as `model`
        if kind == "sharded":
            fsdp_checkpoint.load_sharded_model(root, target / distributed.FSDP_MODEL_DIR)
            fsdp_checkpoint.load_sharded_optimizer(root, fresh_optimizer, target / distributed.FSDP_OPTIMIZER_DIR)
        else:
            fsdp_checkpoint.load_full_model(root, target, is_zero=rank == 0)
            fsdp_checkpoint.load_full_optimizer(root, fresh_optimizer, target / "optimizer.bin", is_zero=rank == 0)
        back, back_osd = full_model(fresh), full_optimizer(fresh, fresh_optimizer)
        if rank == 0:
            report[f"hf_lightning_reads_accelerate_{kind}_weights"] = max_diff(gathered, back)
            report[f"hf_lightning_reads_accelerate_{kind}_moments"] = max_diff(moments(osd), moments(back_osd))
            report[f"accelerate_{kind}_files"] = sorted(os.listdir(target))
    if rank == 0:
        with open(out_dir / "compat.json", "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sharded", required=True)
    parser.add_argument("--full", required=True)
    parser.add_argument("--out", required=True)
    options = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    run(options.sharded, options.full, options.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
