"""Artifact versioning, provenance and atomic publication."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "imdb-model",
    "imdb-trainer",
    "numpy",
    "polars",
    "lightgbm",
    "scikit-learn",
    "onnx",
    "onnxruntime",
)


class OutputExistsError(Exception):
    """The artifact directory already exists and overwriting was not asked for."""


def make_version(created: datetime, fingerprint: str) -> str:
    """`YYYYMMDD.HHMMSS-<first 8 hex digits of the data fingerprint>`, in UTC.

    Sorts chronologically as plain text, says when the model was built, and tells at a glance
    whether two artifacts were trained on the same data.
    """
    return f"{created:%Y%m%d.%H%M%S}-{fingerprint[:8]}"


def git_revision(directory: Path) -> dict[str, object]:
    """The commit of the working tree at `directory` and whether it had local changes."""
    git = shutil.which("git")
    if git is None:
        return {"revision": None, "dirty": None}
    try:
        revision = subprocess.run(  # noqa: S603  (fixed arguments, no shell)
            [git, "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(  # noqa: S603
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": revision, "dirty": bool(status.strip())}


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the model."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_target(out: Path, overwrite: bool) -> None:
    """Fail early, before any work, when publishing would be refused."""
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists (use --overwrite to replace it)")


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh directory beside `out` (same file system, so the final rename is atomic).

    Removed on exit unless `publish` moved it into place.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: Path, overwrite: bool) -> None:
    """Move the staged artifact to `out` with a rename: readers see all of it or none of it.

    Replacing an existing artifact renames the old one aside first, then removes it; if the second
    rename failed, the old artifact is put back.
    """
    check_target(out, overwrite)
    # mkdtemp makes the directory private; the API may run as another user and must read it.
    stage.chmod(0o755)
    if not out.exists():
        stage.rename(out)
        return
    aside = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(aside)
    try:
        stage.rename(out)
    except OSError:
        aside.rename(out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
