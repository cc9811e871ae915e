"""Execute a notebook top to bottom and store its outputs, stamped with the code they came from.

    python scripts/run_notebook.py                                  # notebooks/quickstart.ipynb, in place
    python scripts/run_notebook.py notebooks/quickstart.ipynb -o /tmp/run.ipynb
    python scripts/run_notebook.py --parameters "MAX_STEPS = 2"     # replace the `parameters` cell (not for committing)

Every code cell gets ``metadata.hf_lightning.source_sha256``: the SHA-256 of the source that produced its
outputs, and the notebook ``metadata.hf_lightning.run``: the wall and CPU seconds of the run (at its defaults). ``tests/test_notebook.py`` checks the committed notebook against it, so an edited cell whose outputs
were not regenerated fails the tests. The notebook runs with its folder as working directory, offline, in
this Python's ``python3`` kernel; the wall and CPU time of the run (kernel included) are printed at the end.

So that the stored outputs read the same from any machine, paths of this environment in them are written
as ``<venv>`` (this Python's prefix) and ``<checkout>``, and tqdm's "IProgress not found" warning (there
when ipywidgets is not installed, which decides how bars look, not what the notebook does) is not recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
STAMP_KEY = "hf_lightning"  # cell.metadata[STAMP_KEY]["source_sha256"]


def source_digest(source: str | list[str]) -> str:
    """SHA-256 of a cell's source, independent of how nbformat splits it into lines."""
    text = "".join(source) if isinstance(source, list) else source
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


def stamp(notebook: Any) -> None:
    """Record, in each code cell's metadata, the digest of the source its outputs come from."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.metadata[STAMP_KEY] = {"source_sha256": source_digest(cell.source)}


def stale_cells(notebook: Any) -> list[str]:
    """Code cells whose stored outputs don't belong to their current source (or that were never executed)."""
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        recorded = cell.metadata.get(STAMP_KEY, {}).get("source_sha256")
        first_line = (cell.source.splitlines() or [""])[0][:60]
        if recorded is None or cell.get("execution_count") is None:
            problems.append(f"cell {index} ({first_line!r}): never executed by scripts/run_notebook.py")
        elif recorded != source_digest(cell.source):
            problems.append(f"cell {index} ({first_line!r}): source changed since its outputs were produced")
    return problems


def portable(notebook: Any) -> None:
    """Write this environment's paths in the text outputs as ``<venv>`` and ``<checkout>``."""
    replacements = [(str(Path(sys.prefix).resolve()), "<venv>"), (str(Path(sys.prefix)), "<venv>"), (str(ROOT), "<checkout>")]
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                for old, new in replacements:
                    output["text"] = output["text"].replace(old, new)


def ensure_python3_kernel() -> None:
    """Register ipykernel's ``python3`` kernel for this Python when the machine has none."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)


def execute(notebook: Any, *, cwd: Path, timeout: int = 600) -> None:
    """Run every cell in a fresh ``python3`` kernel (offline, this checkout first on ``sys.path``)."""
    from nbclient import NotebookClient

    ensure_python3_kernel()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False, coalesce_streams=True,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=DEFAULT_NOTEBOOK, help="the notebook (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of over the notebook")
    parser.add_argument("--parameters", help="source for the cell tagged `parameters` (default: keep the notebook's)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default: %(default)s)")
    options = parser.parse_args(argv)

    import nbformat

    notebook = nbformat.read(options.notebook, as_version=4)
    if options.parameters is not None:
        cell = next((c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])), None)
        if cell is None:
            parser.error(f"--parameters: {options.notebook} has no cell tagged `parameters`")
        cell.source = options.parameters
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    execute(notebook, cwd=options.notebook.resolve().parent, timeout=options.timeout)
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    portable(notebook)
    stamp(notebook)
    if options.parameters is None:  # a run at the notebook's own defaults: what the intro's runtime claim rests on
        notebook.metadata[STAMP_KEY] = {"run": {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "cpu_count": os.cpu_count()}}
    nbformat.validate(notebook)
    nbformat.write(notebook, options.output or options.notebook)
    print(f"{options.notebook}: executed in {wall:.1f} s wall, {cpu:.1f} s CPU (this process and the kernel); "
          f"wrote {options.output or options.notebook}")
    return 0


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
