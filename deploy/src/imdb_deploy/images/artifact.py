"""The model artifact an API image bakes in: the one `nox -s train` published, verified.

A release pins its model by baking the verified artifact into the API image (/opt/model): the
release tag names the model (images/release.py), the build verifies the artifact with the
serving code, and the API verifies it again at start (/ready). There is no default model: a
release without a trained artifact is refused (the tests train small ones of their own).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


class ArtifactError(RuntimeError):
    """No artifact could be found or trained."""


def trainer_executable() -> str:
    found = shutil.which("imdb-trainer") or shutil.which(
        "imdb-trainer", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise ArtifactError("`imdb-trainer` is not installed; pass --artifact DIR")
    return found


def run_trainer(*args: str) -> None:
    """`imdb-trainer --quiet ARGS`, quietly; ArtifactError with its stderr when it fails."""
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [trainer_executable(), "--quiet", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ArtifactError(f"imdb-trainer {args[0]} failed:\n{result.stderr[-2000:]}")


def verify_artifact(path: Path) -> None:
    """`imdb-trainer verify PATH` on this machine (raises ArtifactError when it fails)."""
    run_trainer("verify", str(path))
