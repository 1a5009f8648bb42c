"""Shared, session-scoped data and artifact for the trainer tests (generated once, small)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_trainer.cli import main
from imdb_trainer.generate import generate

ROWS = 6000


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gzipped data set of 6000 rated titles (about half of them movies)."""
    out = tmp_path_factory.mktemp("data")
    generate(out, rows=ROWS, seed=7)
    return out


@pytest.fixture(scope="session")
def trained(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact trained through the CLI on `generated`, report included. Do not modify."""
    out = tmp_path_factory.mktemp("artifacts") / "champion"
    code = main(["--quiet", "train", "--data", str(generated), "--out", str(out)])
    assert code == 0
    return out
