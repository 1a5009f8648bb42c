"""The monitoring stack for real: imdb-api, Prometheus and the Pushgateway on 127.0.0.1.

A real API process serves a small trained artifact; Prometheus and the Pushgateway run as
`MonitoringStack` runs them, Prometheus scraping the API every second with the generated
configuration and loading alerts.yml; the Pushgateway receives real deploy markers. The test then
asks Prometheus' HTTP API for what operators will look at. The stack's own behaviour with the
real binaries (reload, a taken port, the CLI) is checked here too; test_monitoring_stack_lifecycle
covers the rest with stand-ins.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.bluegreen.config import Environment, load_environment
from imdb_deploy.engine.processes import ManagedProcess, wait_until
from imdb_deploy.monitoring.cli import main
from imdb_deploy.monitoring.markers import (
    DeployMarker,
    MarkerSettings,
    TrainingReference,
    record_deploy,
)
from imdb_deploy.monitoring.stack import MonitoringError, MonitoringStack
from imdb_trainer.cli import main as trainer_main
from imdb_trainer.generate import generate
from tests.support import free_port

from .conftest import load_rules, monitoring_stack, stack_on_free_ports, write_environment

pytestmark = pytest.mark.integration

ENVIRONMENT = "monitoring-itest"
# Bounded waits: the whole module stays well under a minute.
START_TIMEOUT_S = 20.0
SERIES_TIMEOUT_S = 30.0
MOVIE: dict[str, Any] = {
    "primaryTitle": "The Long Night",
    "originalTitle": "The Long Night",
    "titleType": "movie",
    "isAdult": False,
    "startYear": 1994,
    "runtimeMinutes": 142,
    "genres": ["Crime", "Drama"],
}


def http_json(url: str, payload: Any = None, timeout: float = 5.0) -> Any:
    """GET (or POST JSON) `url` on 127.0.0.1 and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Stack:
    """The running processes' addresses and what the API serves."""

    api: str
    prometheus: str
    pushgateway: str
    manifest: dict[str, Any]
    monitoring: MonitoringStack
    environments: list[Environment]

    def predict(self, count: int) -> None:
        """Send `count` single-movie predictions."""
        for year in range(1990, 1990 + count):
            answer = http_json(self.api + "/predict", MOVIE | {"startYear": year})
            assert "averageRating" in answer

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector Prometheus has for `promql` now."""
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = http_json(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, check: Callable[[list[dict[str, Any]]], bool]) -> None:
        """Wait (bounded) until the query's result passes `check`; predictions keep flowing,
        so that rates over the newest scrapes are not zero."""
        seen: list[list[dict[str, Any]]] = [[]]

        def ready() -> bool:
            self.predict(1)
            seen[0] = self.query(promql)
            return bool(seen[0]) and check(seen[0])

        assert wait_until(ready, SERIES_TIMEOUT_S, interval=0.5), f"{promql}: {seen[0]}"


def _start(process: ManagedProcess, argv: list[str], url: str, env: dict[str, str]) -> None:
    process.start(argv, env)
    if not wait_until(lambda: answers(url), START_TIMEOUT_S, interval=0.1):
        raise AssertionError(f"{process.name} did not answer {url}:\n{process.log_tail()}")


@pytest.fixture
def tools(require_tool: Callable[[str], str]) -> None:
    """Skip (fail under CI=true) without the Debian packages' binaries."""
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, require_tool: Callable[[str], str]
) -> Iterator[Stack]:
    """The API on a small artifact, a Pushgateway, and Prometheus scraping both."""
    require_tool("prometheus")
    require_tool("prometheus-pushgateway")
    base = tmp_path_factory.mktemp("monitoring-stack")
    data, artifact = base / "data", base / "artifact"
    generate(data, rows=5000, seed=11)
    train = ["--quiet", "train", "--data", str(data), "--out", str(artifact), "--no-report"]
    assert trainer_main([*train, "--num-rounds", "60"]) == 0
    manifest = json.loads((artifact / "manifest.json").read_text())

    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IMDB_API_")}
    api = ManagedProcess("api", base / "state")
    with contextlib.ExitStack() as running:
        running.callback(api.stop)
        api_argv = [sys.executable, "-m", "imdb_api.cli", "--host", "127.0.0.1"]
        api_argv += ["--port", str(api_port), "--artifact", str(artifact)]
        api_argv += ["--no-access-log"]
        _start(api, api_argv, api_url + "/ready", environment)
        # The generated configuration, for an environment whose one host is this API.
        toml = write_environment(
            base, ENVIRONMENT, [("local-1", "127.0.0.1", f"127.0.0.1:{api_port}")]
        )
        environments = [load_environment(str(toml))]
        monitoring = running.enter_context(
            monitoring_stack(base / "monitoring", environments, interval="1s")
        )
        urls = monitoring.urls()
        yield Stack(
            api_url, urls["prometheus"], urls["pushgateway"], manifest, monitoring, environments
        )


def test_prometheus_scrapes_the_api_and_the_deploy_markers(stack: Stack) -> None:
    version = stack.manifest["version"]
    stack.predict(5)
    marker = DeployMarker(ENVIRONMENT, version, "ok")
    report = record_deploy(
        marker,
        MarkerSettings(pushgateway=stack.pushgateway, timeout=5.0),
        TrainingReference.from_manifest(stack.manifest),
    )
    assert report.ok, report.describe()

    selector = f'environment="{ENVIRONMENT}"'
    stack.wait_for(f'up{{{selector}, job="imdb-api-{ENVIRONMENT}"}}', lambda r: _value(r) == 1)
    stack.wait_for(
        f'imdb_api_requests_total{{{selector}, route="/predict", status="200"}}',
        lambda r: _value(r) >= 5,
    )
    stack.wait_for(f"imdb_api_predicted_rating_count{{{selector}}}", lambda r: _value(r) >= 5)
    stack.wait_for(
        f'imdb_api_model_info{{{selector}, host="local-1", version="{version}"}}',
        lambda r: _value(r) == 1,
    )
    # The marker keeps its own job and environment through honor_labels.
    stack.wait_for(
        f'imdb_deploy_last_timestamp_seconds{{{selector}, job="imdb_deploy", version="{version}",'
        ' action="deploy", result="ok"}',
        lambda r: _value(r) == pytest.approx(marker.timestamp),
    )
    stack.wait_for(f"imdb_deploy_result{{{selector}}}", lambda r: _value(r) == 1)
    # The drift rules join the pushed reference with the version the API reports: this is the
    # end-to-end proof that their labels meet.
    mean = stack.manifest["prediction_distribution"]["mean"]
    stack.wait_for(
        f"environment:imdb_model_training_rating_mean:served{{{selector}}}",
        lambda r: _value(r) == pytest.approx(mean),
    )
    stack.wait_for(
        f"environment:imdb_api_predicted_rating:mean_rate30m{{{selector}}}",
        lambda r: 1.0 <= _value(r) <= 10.0,
    )


def test_the_alert_rules_are_loaded(stack: Stack) -> None:
    expected = {rule.get("alert") or rule["record"] for rule in load_rules()}
    seen: dict[str, str] = {}

    def evaluated() -> bool:
        answer = http_json(stack.prometheus + "/api/v1/rules")
        rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
        seen.clear()
        seen.update({rule["name"]: rule["health"] for rule in rules})
        return set(seen) == expected and all(health == "ok" for health in seen.values())

    assert wait_until(evaluated, SERIES_TIMEOUT_S, interval=0.5), seen


def test_a_failed_deploy_fires_its_alert(stack: Stack) -> None:
    environment = f"{ENVIRONMENT}-failed"
    marker = DeployMarker(environment, "v-broken", "failed")
    settings = MarkerSettings(pushgateway=stack.pushgateway, timeout=5.0)
    assert record_deploy(marker, settings).ok

    # ImdbDeployFailed has no `for`: it fires at the first evaluation after the scrape.
    stack.wait_for(
        f'ALERTS{{alertname="ImdbDeployFailed", environment="{environment}",'
        ' alertstate="firing", version="v-broken"}',
        lambda r: _value(r) == 1,
    )


def test_up_again_reloads_the_running_prometheus(stack: Stack) -> None:
    before = stack.monitoring.status()
    log = stack.monitoring.state_dir / "prometheus.log"
    loaded = log.read_text().count("Completed loading of configuration file")

    started = time.monotonic()
    assert stack.monitoring.up(stack.environments, "1s") == stack.monitoring.urls()
    assert time.monotonic() - started < 5

    assert stack.monitoring.status() == before  # the same processes
    assert before["running"] is True
    assert log.read_text().count("Completed loading of configuration file") == loaded + 1


def test_a_port_bound_by_another_process_is_a_clear_error(tools: None, tmp_path: Path) -> None:
    stack = stack_on_free_ports(tmp_path / "monitoring")
    host, port = stack.prometheus.rsplit(":", 1)
    toml = write_environment(tmp_path, "taken", [("taken-1", "127.0.0.1", "127.0.0.1:9")])
    environments = [load_environment(str(toml))]
    # Bound without listening: the probe's connection is refused, so Prometheus itself finds
    # the port taken and exits.
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        started = time.monotonic()
        with pytest.raises(MonitoringError, match="prometheus exited before answering") as raised:
            stack.up(environments)
        assert time.monotonic() - started < 10
        assert "address already in use" in str(raised.value)
        # The Pushgateway this call started is stopped again.
        assert stack.status()["pids"] == {"prometheus": None, "pushgateway": None}

        holder.listen()
        with pytest.raises(MonitoringError, match=f"{stack.prometheus} is taken by another"):
            stack.up(environments)


def test_the_cli_runs_the_stack(
    tools: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addresses = stack_on_free_ports(tmp_path)
    state = ["--state", str(tmp_path / "monitoring")]
    flags = ["--prometheus", addresses.prometheus, "--pushgateway", addresses.pushgateway]
    try:
        # No ENV: the sandbox environments.
        assert main(["up", *state, *flags, "--interval", "2s"]) == 0
        out = capsys.readouterr().out
        assert f"prometheus: http://{addresses.prometheus} (scraping sandbox-" in out
        assert main(["status", *state, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["running"] is True
        assert status["urls"] == addresses.urls()

        # Another process on the port of a stopped stack: exit 1, the reason on stderr.
        assert main(["down", *state]) == 0
        assert capsys.readouterr().out.startswith("stopped: prometheus ")
        host, port = addresses.prometheus.rsplit(":", 1)
        with socket.socket() as holder:
            # The stopped Prometheus left connections in TIME_WAIT on the port.
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind((host, int(port)))
            holder.listen()
            assert main(["up", *state, *flags]) == 1
        assert "is taken by another process" in capsys.readouterr().err
        assert main(["status", *state]) == 3
        assert capsys.readouterr().out.splitlines() == [
            "prometheus: stopped",
            "pushgateway: stopped",
        ]
    finally:
        MonitoringStack(tmp_path / "monitoring").down()


def _value(result: list[dict[str, Any]]) -> float:
    """The value of a one-series instant vector."""
    assert len(result) == 1, result
    return float(result[0]["value"][1])
