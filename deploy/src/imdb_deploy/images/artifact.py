"""The model artifact an API image bakes in: given, or a small demo one trained once.

A release pins its model by baking the verified artifact into the API image (/opt/model): the
image tag is the model version, the build verifies the artifact with the serving code, and the
API verifies it again at start (/ready). Without `--artifact`, a demo artifact is trained from
generated data (fixed seed) with the `imdb-trainer` CLI and cached under the state directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DEMO_ROWS = 3000
DEMO_SEED = 7


class ArtifactError(RuntimeError):
    """No artifact could be found or trained."""


def trainer_executable() -> str:
    found = shutil.which("imdb-trainer") or shutil.which(
        "imdb-trainer", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise ArtifactError("`imdb-trainer` is not installed; pass --artifact DIR")
    return found


def _trainer(*args: str) -> None:
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [trainer_executable(), "--quiet", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ArtifactError(f"imdb-trainer {args[0]} failed:\n{result.stderr[-2000:]}")


def demo_artifact(state: Path, rows: int = DEMO_ROWS, seed: int = DEMO_SEED) -> Path:
    """Train (once) and verify a small artifact on generated data; returns its directory."""
    target = state / f"demo-artifact-{rows}-{seed}"
    if (target / "manifest.json").is_file():
        _trainer("verify", str(target))
        return target
    data = state / f"demo-data-{rows}-{seed}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    _trainer("generate", "--out", str(data), "--rows", str(rows), "--seed", str(seed))
    _trainer("train", "--data", str(data), "--out", str(target))
    _trainer("verify", str(target))
    return target


def verify_artifact(path: Path) -> None:
    """`imdb-trainer verify PATH` on this machine (raises ArtifactError when it fails)."""
    _trainer("verify", str(path))
