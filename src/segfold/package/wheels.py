"""The wheels of an offline package: segfold's own, built from the repository, and downloaded dependencies.

Dependencies are fetched with pip (``pip download --no-deps --only-binary=:all:``), pinned to the
version installed here so that the kernel runs what was tested, for the Kaggle image's Python and
platform when the config names them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from segfold.errors import ConfigError

# What a wheel of segfold is built from (the rest of the repository is not part of the package).
SOURCE_FILES = ("pyproject.toml", "requirements.txt", "README.md")


def _pip(args: Sequence[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"{what} failed: {' | '.join(tail)}")


def build_own_wheel(repo: Path, dest: Path) -> Path:
    """Build segfold's wheel from ``repo`` (its ``src/`` and packaging files) into ``dest``, offline.

    The sources are copied to a temporary folder first, so the build leaves nothing in the repository.
    """
    before = set(dest.glob("segfold-*.whl"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCE_FILES:
            shutil.copy2(repo / name, Path(tmp) / name)
        shutil.copytree(repo / "src", Path(tmp) / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(dest), tmp],
             "building segfold's wheel")
    built = sorted(set(dest.glob("segfold-*.whl")) - before) or sorted(dest.glob("segfold-*.whl"))
    return built[-1]


def requirement(name: str) -> str:
    """``name==<installed version>`` when the distribution is installed here, else ``name``."""
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def download_wheels(names: Sequence[str], dest: Path, find_links: Sequence[str | os.PathLike] = (),
                    python_version: str | None = None, platform: str | None = None) -> list[Path]:
    """Download the wheels of ``names`` (no dependencies; pinned to the installed versions) into ``dest``.

    Raises:
        ConfigError: pip found no wheel for one of them (the message names it).
    """
    target: list[str] = []
    if python_version:
        target += ["--python-version", python_version]
    if platform:
        target += ["--platform", platform]
    links = [arg for folder in find_links for arg in ("--find-links", str(folder))]
    for name in names:
        spec = requirement(name)
        _pip(["download", "--no-deps", "--only-binary=:all:", "--dest", str(dest), *links, *target, spec],
             f"downloading the wheel of {spec} (package.wheels; set package.find_links to a folder holding it "
             "when no registry is reachable)")
    return sorted(dest.glob("*.whl"))
