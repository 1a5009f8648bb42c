"""The supervisor's restart budget and its restart count in /metrics, without processes (the
real kill-a-worker cases are in test_api_process.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_api import metrics
from imdb_api.server import CrashLoop


def test_restarts_are_allowed_up_to_the_limit_within_the_window() -> None:
    budget = CrashLoop(limit=2, window_s=60)
    assert budget.allow(0.0)
    assert budget.allow(10.0)
    assert not budget.allow(20.0)  # a third within 60 s: a crash loop
    assert budget.allow(61.0)  # the first one left the window
    assert len(budget.restarts) == 3


def test_a_limit_of_zero_never_replaces_a_worker() -> None:
    assert not CrashLoop(limit=0, window_s=60).allow(0.0)


def restarts_sample() -> float:
    (family,) = metrics.RestartsCollector().collect()
    (sample,) = [s for s in family.samples if s.name == "imdb_api_worker_restarts_total"]
    return float(sample.value)


def test_the_restart_count_is_what_the_supervisor_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROCESS_ENV, str(tmp_path))
    assert restarts_sample() == 0.0  # nothing recorded yet
    metrics.record_restarts(3)
    assert restarts_sample() == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [metrics.RESTARTS_FILE]  # no temp left
    (tmp_path / metrics.RESTARTS_FILE).write_text("garbage")
    assert restarts_sample() == 0.0


def test_without_a_supervisor_there_are_no_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROCESS_ENV, raising=False)
    metrics.record_restarts(5)  # nowhere to record: a no-op
    assert restarts_sample() == 0.0
