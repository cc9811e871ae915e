"""Declared dependency ranges are the tested ones, and an unsupported version fails at import (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hf_lightning._versions import SUPPORTED, version_problems

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "installed, problems",
    [
        ({"transformers": "5.24.0", "lightning": "2.6.6", "torch": "2.13.0"}, 0),
        ({"transformers": "5.0.0", "lightning": "2.6.6", "torch": "2.13.0"}, 1),
        ({"transformers": "5.22.2", "lightning": "2.4.0", "torch": "2.13.0"}, 2),
        ({"transformers": "6.0.0", "lightning": "2.6.6", "torch": "2.13.0"}, 1),
        ({"transformers": None, "lightning": "2.6.6", "torch": "2.13.0"}, 1),
    ],
)
def test_version_problems_table(installed, problems):
    found = version_problems(installed)
    assert len(found) == problems, found
    for line in found:
        name = line.split(" ", 1)[0]
        assert f"needs {name}{SUPPORTED[name]}" in line
        if installed.get(name):
            assert f"{name} {installed[name]} is installed" in line


def test_pyproject_declares_the_supported_ranges():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d for d in dependencies}
    for name, spec in SUPPORTED.items():
        assert declared[name].replace(" ", "") == f"{name}{spec}", (declared[name], spec)


FAKE = """
import importlib.metadata as m
real = m.version
m.version = lambda name: "5.10.4" if name == "transformers" else real(name)
try:
    import hf_lightning
    print("imported")
except ImportError as error:
    print(type(error).__name__, error)
"""


def _run(env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-W", "always", "-c", FAKE], capture_output=True, text=True, timeout=120, env=env)


def test_unsupported_version_fails_at_import_with_both_versions():
    result = _run({"HF_LIGHTNING_SKIP_VERSION_CHECK": "0"})
    assert result.stdout.startswith("UnsupportedVersionError transformers 5.10.4 is installed; hf_lightning"), result.stdout + result.stderr
    assert f"needs transformers{SUPPORTED['transformers']}" in result.stdout and "pip install" in result.stdout


def test_the_check_can_be_turned_into_a_warning():
    result = _run({"HF_LIGHTNING_SKIP_VERSION_CHECK": "1"})
    assert result.stdout.strip().endswith("imported") and "transformers 5.10.4 is installed" in result.stderr
