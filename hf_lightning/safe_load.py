"""Reading ``torch.distributed.checkpoint`` (DCP) folders without running code from them.

DCP's own reader unpickles ``.metadata`` with plain :mod:`pickle` and loads every non-tensor entry
(optimizer hyper-parameters, ``param_groups``) with ``torch.load(weights_only=False)``: a sharded
checkpoint from elsewhere (``pytorch_model_fsdp_0/``, ``optimizer_0/``) could run any code. Here:

- ``.metadata`` goes through an allow-list unpickler that knows only DCP's own metadata classes,
  ``torch.Size``, dtypes, layouts and ``pathlib`` paths (what ``dcp.save`` writes); anything else is
  refused with an error naming the file and the global it asked for;
- non-tensor entries load with ``torch.load(weights_only=True)`` (numbers, strings, containers);
- tensor entries were already weights-only in torch; their errors are reported with the folder.

No Lightning import; no process group needed (``consolidate`` reads on one process).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from .hf_format import CheckpointError, describe_load_error

__all__ = ["read_dcp_metadata", "SafeFileSystemReader", "SafeLoadPlanner", "dcp_load", "DCP_METADATA_FILE"]

DCP_METADATA_FILE = ".metadata"

_DCP_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    # older torch releases kept the tensor properties in the sharded-tensor package
    "torch.distributed._shard.sharded_tensor.metadata": {"TensorProperties", "MEM_FORMAT_ENCODING"},
    "torch.distributed._shard.metadata": {"ShardMetadata"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def _allowed(module: str, name: str) -> bool:
    if name in _DCP_METADATA_CLASSES.get(module, ()):
        return True
    # dtypes are pickled as the attribute of the torch module (``torch.float32``)
    return module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only the classes ``dcp.save`` puts into ``.metadata``."""

    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise CheckpointError(
                f"{self._path}: refused to load. A torch.distributed.checkpoint metadata file may only hold DCP's "
                f"metadata classes, tensor sizes and dtypes, and this one asks for the global `{module}.{name}`."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self._path}: refused to load, a DCP metadata file holds no persistent ids (got {pid!r}).")


def read_dcp_metadata(path: str | os.PathLike) -> Any:
    """``.metadata`` of a DCP folder (or the file itself) as DCP's ``Metadata``, read with the allow-list unpickler."""
    path = Path(path)
    file = path / DCP_METADATA_FILE if path.is_dir() else path
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f, str(file)).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found; {file.parent} is not a torch.distributed.checkpoint folder.") from None
    except Exception as error:  # truncated or not a pickle at all
        raise CheckpointError(f"{file}: not a readable torch.distributed.checkpoint metadata file ({type(error).__name__}: {error}).") from error
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{file}: holds a {type(metadata).__name__}, not torch.distributed.checkpoint's Metadata.")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's ``FileSystemReader`` reading ``.metadata`` with the allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if hasattr(self, "_get_metadata_path"):  # torch >= 2.6: also per-rank metadata files
            path = self._get_metadata_path(kwargs.get("rank"))
        else:  # pragma: no cover - older torch
            path = Path(str(self.path)) / DCP_METADATA_FILE
        metadata = read_dcp_metadata(path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, loading non-tensor entries with ``torch.load(weights_only=True)``."""

    def __init__(self, *args: Any, folder: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._folder = folder

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{self._folder}: entry `{fqn}` {describe_load_error(error)}") from error
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


def dcp_load(state: dict[str, Any], folder: str | os.PathLike) -> None:
    """``dcp.load(state, folder)`` in place, without code from the folder; errors name the folder.

    A collective under a process group (every rank calls it); without one it reads in this process.
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    if not (folder / DCP_METADATA_FILE).is_file():
        raise CheckpointError(f"{folder}: not a torch.distributed.checkpoint folder (no {DCP_METADATA_FILE}).")
    read_dcp_metadata(folder)  # refused or unreadable metadata: named here (DCP would fold the error into an AssertionError)
    reader = SafeFileSystemReader(str(folder))
    planner = SafeLoadPlanner(folder=str(folder))
    try:
        dcp.load(state, storage_reader=reader, planner=planner, no_dist=not _distributed())
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as error:  # CheckpointException is a BaseException
        inner = _first_checkpoint_error(error)
        if inner is not None:
            raise inner from error
        raise CheckpointError(f"{folder}: could not be read as a torch.distributed.checkpoint ({_short(error)}).") from error


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _first_checkpoint_error(error: BaseException) -> CheckpointError | None:
    """DCP wraps the errors of each rank (``CheckpointException``); find ours inside."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, CheckpointError):
            return current
        if isinstance(current, BaseException):
            stack += [current.__cause__, current.__context__]
            failures = getattr(current, "failures", None)
            if isinstance(failures, dict):
                stack += list(failures.values())
        elif isinstance(current, (tuple, list)):
            stack += list(current)
    return None


def _short(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
