"""The Grafana dashboard and its provisioning: structure, queries, and names that exist."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imdb_deploy.monitoring import MONITORING_DIR

from .conftest import known_metric_names, promql_metric_names

GRAFANA_DIR = MONITORING_DIR / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Grafana's variables, replaced by what Grafana would put there, so promtool can parse the query.
GRAFANA_VARIABLES = {"$environment": ".*", "$__rate_interval": "1m", "$__range": "1h"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    data = json.loads((GRAFANA_DIR / "dashboard.json").read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows are only headings)."""
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) of every PromQL query: panel targets, annotations and variables."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # `label_values(SELECTOR, LABEL)` is Grafana's, not PromQL: its selector is.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match is not None, variable["query"]
            yield f"variable {variable['name']}", match.group(1)


def test_dashboard_basics(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "mlops-imdb-api"
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_templated_datasource_and_environment(dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    environment = variables["environment"]
    assert environment["datasource"] == DATASOURCE
    assert environment["multi"] is True
    assert environment["includeAll"] is True
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            # Every panel follows the environment picker.
            assert 'environment=~"$environment"' in target["expr"], panel["title"]


def test_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    by_title = {panel["title"]: panel for panel in panels(dashboard)}
    exprs = {title: [t["expr"] for t in panel["targets"]] for title, panel in by_title.items()}

    assert "imdb_api_requests_total" in exprs["Request rate"][0]
    assert "rate(" in exprs["Request rate"][0]
    latency = exprs["Latency p50 / p95 / p99"]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile},") and "_duration_seconds_bucket" in e
            for e in latency
        ), quantile
    assert 'status=~"5.."' in exprs["Error rate (5xx share)"][0]
    distribution = by_title["Predicted rating distribution"]
    assert distribution["type"] == "heatmap"
    assert distribution["targets"][0]["format"] == "heatmap"
    assert "imdb_api_predicted_rating_bucket" in exprs["Predicted rating distribution"][0]
    assert "imdb_api_model_info" in exprs["Deployed version"][0]


def test_deploy_markers_are_annotations(dashboard: dict[str, Any]) -> None:
    annotations = {item["name"]: item for item in dashboard["annotations"]["list"]}
    pushed = annotations["Deploys (Pushgateway)"]
    assert pushed["datasource"] == DATASOURCE
    assert "imdb_deploy_last_timestamp_seconds" in pushed["expr"]
    # The series' value is the deploy's Unix time: Grafana places the marker there (in ms).
    assert pushed["useValueForTime"] is True
    assert pushed["expr"].endswith("* 1000")
    # The markers `record_deploy` posts to Grafana's annotation API, by their tag.
    native = annotations["Deploys (Grafana)"]
    assert native["target"]["type"] == "tags"
    assert native["target"]["tags"] == ["deploy"]


def test_every_query_selects_existing_series(dashboard: dict[str, Any], repo_root: Path) -> None:
    known = known_metric_names(repo_root)
    for where, expr in queries(dashboard):
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: unknown {names - known}"


def test_every_query_is_valid_promql(
    dashboard: dict[str, Any], tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    """promtool parses each query, as a recording rule, with Grafana's variables filled in."""
    rules = []
    for index, (_, query) in enumerate(queries(dashboard)):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query:{index}", "expr": expr})
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning() -> None:
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert (datasource["type"], datasource["isDefault"]) == ("prometheus", True)
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
