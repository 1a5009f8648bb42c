"""Shared helpers of the monitoring tests: environment files, a recording HTTP server, and the
monitoring stack (Prometheus and the Pushgateway) on free ports."""

from __future__ import annotations

import ast
import contextlib
import http.server
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from imdb_deploy.bluegreen.config import Environment
from imdb_deploy.monitoring import RULES_FILE
from imdb_deploy.monitoring.markers import (
    DeployMarker,
    TrainingReference,
    marker_exposition,
    reference_exposition,
)
from imdb_deploy.monitoring.stack import DEFAULT_TIMEOUT_S, MonitoringStack
from tests.support import free_port

ENVIRONMENT_TOML = """\
description = "monitoring test environment"
image = "127.0.0.1:5000/mlops-imdb-api"

[ssh]
known_hosts = "known_hosts"

[nginx]
port = 8080

{hosts}
"""


def write_environment(directory: Path, name: str, hosts: list[tuple[str, str, str | None]]) -> Path:
    """`<directory>/<name>.toml` with (host name, address, http_address or None) hosts."""
    blocks = []
    for host, address, http_address in hosts:
        block = f'[[hosts]]\nname = "{host}"\naddress = "{address}"\n'
        if http_address is not None:
            block += f'http_address = "{http_address}"\n'
        blocks.append(block)
    path = directory / f"{name}.toml"
    path.write_text(ENVIRONMENT_TOML.format(hosts="\n".join(blocks)))
    return path


@dataclass
class Recorded:
    """One request the recording server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingServer:
    """An HTTP server on 127.0.0.1 that records requests and answers as told.

    `mode`: "answer" replies `status` with `reply`; "hang" accepts and never answers (until the
    test ends); "trickle" sends its status line one byte every 0.2 s, never finishing in time.
    """

    server: http.server.ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    status: int = 200
    reply: bytes = b"{}"
    mode: str = "answer"
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


def _handler(state: list[RecordingServer]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            server = state[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            server.requests.append(
                Recorded(self.command, self.path, dict(self.headers.items()), body)
            )
            if server.mode == "hang":
                server.release.wait(30)
                return
            if server.mode == "trickle":
                for byte in b"HTTP/1.1 200 OK\r\n":
                    if server.release.wait(0.2):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                return
            self.send_response(server.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(server.reply)))
            self.end_headers()
            self.wfile.write(server.reply)

        do_GET = do_POST = do_PUT = _any  # noqa: N815 - BaseHTTPRequestHandler's names

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test asserts on `requests`, not on stderr."""

    return Handler


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    """A RecordingServer on a free 127.0.0.1 port, shut down (and released) after the test."""
    state: list[RecordingServer] = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server = RecordingServer(httpd)
    state.append(server)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


# ---------------------------------------------------------------- the monitoring stack


def stack_on_free_ports(
    state_dir: Path,
    *,
    prometheus_command: Sequence[str] = ("prometheus",),
    pushgateway_command: Sequence[str] = ("prometheus-pushgateway",),
    timeout: float = DEFAULT_TIMEOUT_S,
) -> MonitoringStack:
    """A MonitoringStack (not started) on two free 127.0.0.1 ports, its state in `state_dir`."""
    prometheus = free_port()
    pushgateway = free_port()
    while pushgateway == prometheus:
        pushgateway = free_port()
    return MonitoringStack(
        state_dir,
        f"127.0.0.1:{prometheus}",
        f"127.0.0.1:{pushgateway}",
        prometheus_command=prometheus_command,
        pushgateway_command=pushgateway_command,
        timeout=timeout,
    )


@contextlib.contextmanager
def monitoring_stack(
    state_dir: Path, environments: Sequence[Environment], interval: str = "1s"
) -> Iterator[MonitoringStack]:
    """The real Prometheus and Pushgateway on free ports (`MonitoringStack.up`), state under
    `state_dir`, scraping `environments` every `interval`; stopped on exit."""
    stack = stack_on_free_ports(state_dir)
    try:
        stack.up(environments, interval)
        yield stack
    finally:
        stack.down()


# ---------------------------------------------------------------- metric names


def api_metric_names(metrics_source: str) -> set[str]:
    """The series names the API exposes, read from the source of imdb_api/metrics.py.

    Parsed, not imported and rendered: a histogram without observations and the info metric of
    a model that is not loaded are absent from an exposition, but their names are still real.
    """
    suffixes = {
        "Counter": ("_total",),
        "CounterMetricFamily": ("_total",),
        "Histogram": ("_bucket", "_sum", "_count"),
        "Summary": ("_sum", "_count"),
        "Gauge": ("",),
        "GaugeMetricFamily": ("",),
        "InfoMetricFamily": ("_info",),
    }
    names: set[str] = set()
    for node in ast.walk(ast.parse(metrics_source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        kind = node.func.id if isinstance(node.func, ast.Name) else ""
        first = node.args[0]
        if kind not in suffixes or not isinstance(first, ast.Constant):
            continue
        name = str(first.value)
        # prometheus_client adds `_total` to a counter's name, after removing a given one.
        base = name.removesuffix("_total") if kind.startswith("Counter") else name
        names.update(base + suffix for suffix in suffixes[kind])
    return names


_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
    | {"group_left", "group_right"}
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small scanner, enough for our queries).

    Strings, label matchers, ranges, grouping clauses and Grafana variables are removed first;
    of the identifiers left, those followed by `(` are functions or aggregations.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()[:1]
        if before.isalnum() or before in "._" or after == "(":
            continue  # part of a number (1e3), or a function / aggregation
        if match.group() not in _PROMQL_KEYWORDS:
            names.add(match.group())
    return names


# Series Prometheus makes itself: `up` per target, ALERTS per alert.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


def load_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml, recording and alerting."""
    document = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def pushed_metric_names() -> set[str]:
    """The names the deploy pushes to the Pushgateway (from the real expositions)."""
    marker = DeployMarker("env", "v1", "ok")
    reference = TrainingReference("v1", 6.0, 0.7, ((0.25, 5.5), (0.75, 6.5)), 100)
    text = marker_exposition(marker) + reference_exposition(reference)
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def known_metric_names(repo_root: Path) -> set[str]:
    """Everything a rule or a panel may select: the API's, the deploy's, the recording rules',
    and Prometheus' own series."""
    metrics = repo_root / "services" / "api" / "src" / "imdb_api" / "metrics.py"
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    return (
        api_metric_names(metrics.read_text()) | pushed_metric_names() | recorded | PROMETHEUS_SERIES
    )
