"""notebooks/quickstart.ipynb runs top to bottom (nbclient), at a small size: train, evaluate, plot, reload, predict."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def ensure_python3_kernel() -> None:
    """Register ipykernel's ``python3`` kernel in this environment when a fresh machine has none."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f"TRAIN_SAMPLES = 64\nEVAL_SAMPLES = 32\nBATCH_SIZE = 8\nMAX_STEPS = 10\nOUTPUT_DIR = {str(tmp_path)!r}"
    ensure_python3_kernel()
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    NotebookClient(notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "eval accuracy:" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the TensorBoard plot was not drawn"
    tags = next(o["data"]["text/plain"] for o in reversed(outputs) if "train/loss" in str(o.get("data", {}).get("text/plain", "")))
    for tag in ("train/loss", "train/learning_rate", "eval/loss", "eval/accuracy"):
        assert tag in tags
    last = next(c for c in reversed(notebook.cells) if c.cell_type == "code")
    printed = "".join(o.get("text", "") for o in last.get("outputs", []) if o.output_type == "stream" and o.get("name") == "stdout")
    lines = [line for line in printed.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.split()[0] in ("positive", "negative") for line in lines), printed
    assert os.path.exists(tmp_path / "final" / "model.safetensors")
