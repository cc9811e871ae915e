"""The dependency versions hf_lightning is tested with, checked when it is imported.

``pyproject.toml`` declares the same ranges (a test keeps them equal), and
``scripts/check_dependency_range.sh`` runs the core differential tests on the oldest and the newest
allowed versions. A version outside a range fails at import with an error naming the installed and
the required versions, instead of failing later in an obscure place (transformers 5.0 lacks
``trainer_pt_utils.safe_globals``; 5.10 to 5.22 have no ``activation_checkpointing``).
``HF_LIGHTNING_SKIP_VERSION_CHECK=1`` turns the error into a warning, for trying other versions.
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata

__all__ = ["SUPPORTED", "UnsupportedVersionError", "version_problems", "check_versions"]

# distribution name -> the range hf_lightning is tested with (keep pyproject.toml's dependencies equal)
SUPPORTED = {
    "transformers": ">=5.23,<5.25",
    "lightning": ">=2.5,<2.7",
    "torch": ">=2.13",
}

SKIP_ENV = "HF_LIGHTNING_SKIP_VERSION_CHECK"


class UnsupportedVersionError(ImportError):
    """An installed dependency is outside the range hf_lightning is tested with."""


def version_problems(installed: dict[str, str | None], supported: dict[str, str] = SUPPORTED) -> list[str]:
    """Pure: ``{"transformers": "5.10.4", ...}`` against the supported ranges -> one line per problem."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    problems = []
    for name, spec in supported.items():
        version = installed.get(name)
        if version is None:
            problems.append(f"{name} is not installed; hf_lightning needs {name}{spec}.")
            continue
        try:
            ok = SpecifierSet(spec).contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append(f"{name} {version} is installed; hf_lightning {_own_version()} needs {name}{spec}.")
    return problems


def _own_version() -> str:
    try:
        return metadata.version("hf-lightning")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "0.1.0"


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> None:
    """Raise ``UnsupportedVersionError`` (or warn, with ``HF_LIGHTNING_SKIP_VERSION_CHECK=1``) for versions out of range."""
    problems = version_problems({name: _installed(name) for name in SUPPORTED})
    if not problems:
        return
    fix = "Install supported versions: pip install " + " ".join(f"'{name}{spec}'" for name, spec in SUPPORTED.items() if name != "torch")
    message = " ".join(problems) + f" {fix} (or set {SKIP_ENV}=1 to try anyway)."
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        warnings.warn(message, stacklevel=3)
        return
    raise UnsupportedVersionError(message)
