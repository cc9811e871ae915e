"""Turn a sharded FSDP checkpoint into weights ``from_pretrained`` loads, in one process.

A sharded checkpoint (``pytorch_model_fsdp_0/``, written through ``torch.distributed.checkpoint`` by
hf_lightning or by transformers/accelerate) needs no process group and no knowledge of the world
size that wrote it: the shards are read into full tensors on CPU and saved with the model's own
``save_pretrained``, so tied weights (``lm_head`` and the embeddings) come out as transformers writes
them. The whole model is held in memory once, on CPU.

    python -m hf_lightning.consolidate output/checkpoint-500            # writes into the checkpoint
    python -m hf_lightning.consolidate output/checkpoint-500 -o export/ --config base-model/
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

__all__ = ["consolidate", "load_sharded_weights", "main"]

_METADATA_FILES = ("config.json", "generation_config.json")


def load_sharded_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full state dict stored in a ``pytorch_model_fsdp_0/`` folder (keys without the ``model.`` wrapper).

    Reads with ``torch.distributed.checkpoint`` into CPU tensors allocated from the folder's metadata,
    so any number of writing ranks works and no process group is needed. Nothing in the folder can
    run code: ``.metadata`` is unpickled with an allow-list and the shards load weights-only
    (``safe_load``).
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from .hf_format import CheckpointError
    from .safe_load import dcp_load, read_dcp_metadata

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: not a torch.distributed.checkpoint folder (no .metadata file).")
    metadata = read_dcp_metadata(folder)  # allow-listed unpickling: no code from the checkpoint runs
    state: dict[str, torch.Tensor] = {}
    for key, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            state[key] = torch.empty(item.size, dtype=item.properties.dtype)
    if not state:
        raise CheckpointError(f"{folder}: holds no tensors.")
    dcp_load(state, folder)
    # accelerate saves {"model": state_dict}; the flattened keys are "model.<name>"
    if all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    return state


def _model_class(config: object) -> type | None:
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name.removeprefix("FSDP"), None)
        if cls is not None:
            return cls
    return None


def consolidate(
    checkpoint_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for the sharded weights of ``checkpoint_dir``.

    Args:
        checkpoint_dir: a ``checkpoint-N`` folder holding ``pytorch_model_fsdp_0/`` (or that folder itself).
        output_dir: where to write; default ``checkpoint_dir`` itself (``from_pretrained(checkpoint_dir)`` then works).
        config: a folder with ``config.json`` (or the file) when the checkpoint has none, as
            transformers' own sharded checkpoints; hf_lightning's carry their config.

    Returns the output folder. Tokenizer files found in the checkpoint are copied along.
    """
    from transformers import AutoConfig

    from .fsdp_checkpoint import FSDP_MODEL_DIR, share_tied
    from .hf_format import SAFE_WEIGHTS_NAME, CheckpointError

    source = Path(checkpoint_dir)
    shards = source if (source / ".metadata").is_file() else source / FSDP_MODEL_DIR
    if not shards.is_dir():
        raise CheckpointError(f"{source}: no `{FSDP_MODEL_DIR}/` folder; this is not a sharded FSDP checkpoint.")
    checkpoint = shards.parent
    target = Path(output_dir) if output_dir is not None else checkpoint
    target.mkdir(parents=True, exist_ok=True)
    config_source = Path(config) if config is not None else checkpoint
    config_file = config_source if config_source.is_file() else config_source / "config.json"
    state = load_sharded_weights(shards)
    if not config_file.is_file():
        if config is not None:
            raise CheckpointError(f"{config_file}: not found; `config` must be a folder with config.json or the file.")
        import safetensors.torch

        # A plain nn.Module (no config): its state dict as transformers' Trainer writes one.
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(target / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        return target
    try:
        model_config = AutoConfig.from_pretrained(str(config_file), trust_remote_code=False)  # never code from the checkpoint
    except (ValueError, OSError, KeyError) as error:
        raise CheckpointError(
            f"{config_file}: not a config transformers can build without running code from the checkpoint ({error})."
        ) from error
    cls = _model_class(model_config)
    if cls is None:
        raise CheckpointError(
            f"{config_file}: `architectures` {getattr(model_config, 'architectures', None)} names no transformers "
            "model class; cannot rebuild the model to save it."
        )
    with torch.device("meta"):
        model = cls(model_config)
    model.save_pretrained(str(target), state_dict=share_tied(model, state))
    for name in os.listdir(checkpoint):
        if name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "chat_template", "preprocessor_config")):
            if not (target / name).exists():
                shutil.copy2(checkpoint / name, target / name)
    if config is not None and config_source.is_dir():
        generation = config_source / "generation_config.json"
        if generation.is_file() and not (target / "generation_config.json").exists():
            shutil.copy2(generation, target / "generation_config.json")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-lightning consolidate",
        description="Turn a sharded FSDP checkpoint (pytorch_model_fsdp_0/) into model.safetensors + config.json.",
    )
    parser.add_argument("checkpoint", help="a checkpoint-N folder holding pytorch_model_fsdp_0/")
    parser.add_argument("-o", "--output-dir", default=None, help="where to write (default: into the checkpoint)")
    parser.add_argument("--config", default=None, help="folder with config.json (or the file) if the checkpoint has none")
    options = parser.parse_args(argv)
    from .hf_format import CheckpointError

    try:
        target = consolidate(options.checkpoint, options.output_dir, config=options.config)
    except CheckpointError as error:
        print(f"hf-lightning consolidate: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {target / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
