"""Run transformers' own Trainer test suite with ``hf_lightning.Trainer`` standing in for ``transformers.Trainer``.

The upstream files are copied into a temporary folder (they are never part of this project) next to a
``conftest.py`` that makes ``transformers.Trainer``/``transformers.trainer.Trainer`` resolve to
``hf_lightning.Trainer`` (on CPU, one device, no progress bar) before the test modules import it.
The test bodies are left as they are.

    python scripts/upstream_trainer_tests.py                        # against hf_lightning
    python scripts/upstream_trainer_tests.py --stock                # against transformers.Trainer itself
    python scripts/upstream_trainer_tests.py -- -k resume -x        # extra pytest arguments after --
    python scripts/upstream_trainer_tests.py --compare              # both, then the tests that pass only on stock

``--upstream`` points at another copy of ``tests/trainer`` (default: ``../shared/upstream/transformers/tests/trainer``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_UPSTREAM = ROOT.parent / "shared" / "upstream" / "transformers" / "tests" / "trainer"

CONFTEST = '''
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import transformers.testing_utils  # importing it replaces the lazy `transformers` module in sys.modules
transformers = sys.modules["transformers"]

for _name in ("GlueDataset", "GlueDataTrainingArguments"):   # gone from transformers 5.24; only a @slow test uses them
    if not hasattr(transformers, _name):
        setattr(transformers, _name, type(_name, (), {}))

if os.environ.get("UPSTREAM_STOCK") != "1":
    import functools
    import hf_lightning

    class _UpstreamTrainer(hf_lightning.Trainer):
        """hf_lightning.Trainer with the defaults the upstream suite runs under (CPU, one device, no bar)."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("accelerator", "cpu")
            kwargs.setdefault("devices", 1)
            kwargs.setdefault("enable_progress_bar", False)
            super().__init__(*args, **kwargs)

    _UpstreamTrainer.__name__ = _UpstreamTrainer.__qualname__ = "Trainer"
    import transformers.trainer
    transformers = sys.modules["transformers"]
    transformers.Trainer = _UpstreamTrainer
    transformers.trainer.Trainer = _UpstreamTrainer
'''

REPORT = '''
import json, os

_results = {}

def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "skipped" if report.skipped else report.outcome
        _results[report.nodeid] = outcome

def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["UPSTREAM_REPORT"], "w") as f:
        json.dump(_results, f, indent=1, sort_keys=True)
'''


def run(upstream: Path, stock: bool, pytest_args: list[str], workdir: Path) -> dict[str, str]:
    tests = workdir / "tests"
    shutil.copytree(upstream.parent, tests, dirs_exist_ok=True)
    for folder in (tests, tests / "trainer"):
        (folder / "__init__.py").touch()
    (tests / "conftest.py").write_text(CONFTEST + REPORT)
    report = workdir / ("stock.json" if stock else "hf_lightning.json")
    env = dict(os.environ, UPSTREAM_STOCK="1" if stock else "0", UPSTREAM_REPORT=str(report), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(workdir),
               "-W", "ignore::DeprecationWarning", str(tests / "trainer"), *pytest_args]
    subprocess.run(command, cwd=workdir, env=env, check=False)
    return json.loads(report.read_text()) if report.exists() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM, help="transformers' tests/trainer folder")
    parser.add_argument("--stock", action="store_true", help="run against transformers.Trainer itself")
    parser.add_argument("--compare", action="store_true", help="run both and list what passes on stock only")
    parser.add_argument("--json", type=Path, help="write {test: [stock, hf_lightning]} here (with --compare)")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier --compare: compare against its stock results")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    options = parser.parse_args()
    if not options.upstream.is_dir():
        parser.error(f"--upstream {options.upstream}: not a folder with transformers' tests/trainer")
    with tempfile.TemporaryDirectory(prefix="upstream-trainer-") as tmp:
        if not options.compare and options.baseline is None:
            results = run(options.upstream, options.stock, options.pytest_args, Path(tmp))
            counts = {k: list(results.values()).count(k) for k in ("passed", "failed", "skipped")}
            print(f"{'stock transformers' if options.stock else 'hf_lightning'}: {counts}")
            return 0 if counts["failed"] == 0 else 1
        if options.baseline is not None:
            stock = {test: outcomes[0] for test, outcomes in json.loads(options.baseline.read_text()).items()}
        else:
            stock = run(options.upstream, True, options.pytest_args, Path(tmp) / "stock")
        ours = run(options.upstream, False, options.pytest_args, Path(tmp) / "ours")
    passing = sorted(t for t, o in stock.items() if o == "passed")
    lost = [t for t in passing if ours.get(t) != "passed"]
    print(f"pass on stock transformers: {len(passing)}; also on hf_lightning: {len(passing) - len(lost)} "
          f"({100 * (len(passing) - len(lost)) / max(len(passing), 1):.1f}%)")
    for test in lost:
        print(f"  only stock: {test} ({ours.get(test, 'not run')})")
    if options.json:
        options.json.write_text(json.dumps({t: [stock.get(t), ours.get(t)] for t in sorted(set(stock) | set(ours))}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
