"""The benchmark entry point, on a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imdb_trainer.benchmark import main


@pytest.mark.integration
def test_benchmark_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    argv = ["--rows", "6000", "--out", str(out), "--threads", "1", "--enforce"]
    code = main([*argv, "--workdir", str(tmp_path / "work")])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["rated_titles"] == 6000
    assert (tmp_path / "work" / "artifact" / "manifest.json").is_file()
    assert results["ingest_rows_per_s"] > 0
    assert results["train"]["wall_s"] > 0
    assert results["train"]["peak_rss_mb"] > 0
    assert results["predictor"]["single_row_us"]["median"] > 0
    assert results["targets"]["met"] is True
    assert "trainer benchmark" in capsys.readouterr().out
