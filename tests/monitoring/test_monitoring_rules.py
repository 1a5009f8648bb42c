"""The alert rules: promtool's checks and unit tests, and names that really exist."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from imdb_deploy.monitoring import MONITORING_DIR, RULES_FILE

from .conftest import api_metric_names, known_metric_names, load_rules, promql_metric_names

RULES_TEST_FILE = MONITORING_DIR / "alerts_test.yml"


def alert_names() -> list[str]:
    """The names of the alerts in alerts.yml."""
    return [rule["alert"] for rule in load_rules() if "alert" in rule]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=MONITORING_DIR)


def test_promtool_check_rules(require_tool: Callable[[str], str]) -> None:
    result = _run(require_tool("promtool"), "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_test_rules(require_tool: Callable[[str], str]) -> None:
    result = _run(require_tool("promtool"), "test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_api_metric_names_are_read_from_its_source(repo_root: Path) -> None:
    # The parser itself, against names the API is known to expose.
    metrics = repo_root / "services" / "api" / "src" / "imdb_api" / "metrics.py"
    names = api_metric_names(metrics.read_text())
    assert {
        "imdb_api_requests_total",
        "imdb_api_request_duration_seconds_bucket",
        "imdb_api_predicted_rating_sum",
        "imdb_api_model_info",
        "imdb_api_ready",
        "imdb_api_errors_total",
    } <= names
    assert "imdb_api_requests" not in names  # counters are exposed with `_total`


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="b c"}[5m]))', {"a_bucket"}),
        ("a / on (env) group_left (v) b > 1e3 and c", {"a", "b", "c"}),
        ('histogram_quantile(0.95, x:y:z{e=~"$environment"}[$__rate_interval])', {"x:y:z"}),
        ("time() - t < 3600 or up == bool 0", {"t", "up"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_every_rule_selects_existing_series(repo_root: Path) -> None:
    known = known_metric_names(repo_root)
    for rule in load_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = set(alert_names())
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown not firing"


def test_every_alert_has_severity_and_summary() -> None:
    for rule in load_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]
