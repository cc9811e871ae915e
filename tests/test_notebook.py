"""notebooks/quickstart.ipynb: committed with the outputs of its current cells, and it runs top to bottom.

``scripts/run_notebook.py`` executes the notebook at its defaults and stamps each code cell with the SHA-256
of the source its outputs came from; the first tests check the committed file against those stamps and the
claims of its text. The last one executes it at a small size (nbclient): train, evaluate, plot, reload, predict.
"""

from __future__ import annotations

import importlib.util
import os
import re

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_notebook", os.path.join(ROOT, "scripts", "run_notebook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


@pytest.fixture(scope="module")
def committed():
    return nbformat.read(NOTEBOOK, as_version=4)


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _text(cell, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream" and o.get("name") == name)


def _plain(cell) -> str:
    return "".join(o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []) if "data" in o)


# ------------------------------------------------------------------------------ the committed file


def test_stored_outputs_belong_to_the_current_cells(committed):
    """Edit a code cell without `python scripts/run_notebook.py`, and this fails."""
    assert runner.stale_cells(committed) == []
    cells = _code_cells(committed)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))  # one run, top to bottom
    errors = [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    assert errors == []


@pytest.mark.parametrize(
    "source,stale",
    [
        ("x = 1", False),
        ("x = 2", True),  # edited after the run
        ("x = 1\n", True),
    ],
)
def test_the_stamp_catches_an_edited_cell(source, stale):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", execution_count=1)])
    runner.stamp(notebook)
    notebook.cells[0].source = source
    assert bool(runner.stale_cells(notebook)) == stale
    unstamped = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    assert runner.stale_cells(unstamped) == ["cell 0 ('x = 1'): never executed by scripts/run_notebook.py"]


def test_committed_outputs_show_the_run(committed):
    """Plots included, and the numbers the text states are the ones the stored run measured."""
    outputs = [o for cell in _code_cells(committed) for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the TensorBoard plot is not stored"
    parameters = next(c for c in committed.cells if "parameters" in c.metadata.get("tags", []))
    steps = int(re.search(r"one epoch \((\d+) steps\)", parameters.source).group(1))
    train = next(c for c in _code_cells(committed) if "trainer.train()" in c.source)
    assert f"global_step={steps}," in _plain(train)
    intro = committed.cells[0].source
    assert f"{steps} optimizer steps of training" in intro
    run = committed.metadata["hf_lightning"]["run"]
    assert "about half a minute on 2 cores" in intro
    assert run["wall_seconds"] < 60 and run["cpu_count"] <= 2, run  # the issue: under 60 s at its defaults on 2 cores
    evaluate = next(c for c in _code_cells(committed) if "trainer.evaluate()" in c.source)
    accuracy = float(re.search(r"eval accuracy: ([0-9.]+)", _text(evaluate)).group(1))
    assert accuracy > 0.8, "the stored run did not learn the task"
    stored = "".join(_text(c, "stderr") + _text(c) for c in _code_cells(committed))
    assert not re.search(r"(^|\s)/\S*site-packages", stored), "a path of the machine that ran it"  # run_notebook.portable


# ------------------------------------------------------------------------------------ it runs


def test_quickstart_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f"TRAIN_SAMPLES = 64\nEVAL_SAMPLES = 32\nBATCH_SIZE = 8\nMAX_STEPS = 10\nTHREADS = 1\nOUTPUT_DIR = {str(tmp_path)!r}"
    runner.execute(notebook, cwd=os.path.dirname(NOTEBOOK), timeout=240)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "eval accuracy:" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the TensorBoard plot was not drawn"
    tags = next(o["data"]["text/plain"] for o in reversed(outputs) if "train/loss" in str(o.get("data", {}).get("text/plain", "")))
    for tag in ("train/loss", "train/learning_rate", "eval/loss", "eval/accuracy"):
        assert tag in tags
    last = next(c for c in reversed(notebook.cells) if c.cell_type == "code")
    lines = [line for line in _text(last).splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.split()[0] in ("positive", "negative") for line in lines), lines
    assert os.path.exists(tmp_path / "final" / "model.safetensors")
