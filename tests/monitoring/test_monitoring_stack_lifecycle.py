"""MonitoringStack's lifecycle with stand-ins for Prometheus and the Pushgateway.

The stand-in is a small Python HTTP server run as `python fake.py --fake.mode=... <flags>`: it
listens on `--web.listen-address`, answers `/-/ready` and `POST /-/reload`, and logs every request
(to the process's log, which the tests read). Its modes: `serve`, `unready` (503 on /-/ready),
`exit` (gives up at once). A reload is refused with 500 while the file `--fake.reject` exists.
The real binaries are exercised by test_monitoring_stack (marked `monitoring`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from imdb_deploy.bluegreen.config import Environment, load_environment
from imdb_deploy.monitoring.cli import main
from imdb_deploy.monitoring.stack import (
    MonitoringError,
    MonitoringStack,
    listen_address,
)
from tests.support import free_port

from .conftest import stack_on_free_ports, write_environment

FAKE = """\
import http.server
import pathlib
import sys

flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if "=" in arg)
mode = flags["fake.mode"]
if mode == "exit":
    print("fake: giving up", flush=True)
    sys.exit(3)
host, port = flags["web.listen-address"].rsplit(":", 1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(503 if mode == "unready" else 200, b"not yet" if mode == "unready" else b"")

    def do_POST(self):
        rejected = pathlib.Path(flags["fake.reject"]).exists()
        self.answer(500 if rejected else 200, b"bad config" if rejected else b"")

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.HTTPServer((host, int(port)), Handler)
print("fake: listening", flush=True)
server.serve_forever()
"""

StackFactory = Callable[..., MonitoringStack]


@pytest.fixture
def environments(tmp_path: Path) -> list[Environment]:
    """One environment whose one host nobody serves (nothing scrapes it here)."""
    toml = write_environment(tmp_path, "unit", [("unit-1", "127.0.0.1", "127.0.0.1:9")])
    return [load_environment(str(toml))]


@pytest.fixture
def reject_file(tmp_path: Path) -> Path:
    """While this file exists, the stand-in Prometheus refuses reloads."""
    return tmp_path / "reject-reload"


@pytest.fixture
def make_stack(tmp_path: Path, reject_file: Path) -> Iterator[StackFactory]:
    """`make_stack(prometheus_mode="serve", timeout=5.0)`: a stack of stand-ins on free ports,
    state in tmp_path/state; every stack made is brought down after the test."""
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    made: list[MonitoringStack] = []

    def make(prometheus_mode: str = "serve", timeout: float = 5.0) -> MonitoringStack:
        def command(mode: str) -> tuple[str, ...]:
            return (
                sys.executable,
                str(fake),
                f"--fake.mode={mode}",
                f"--fake.reject={reject_file}",
            )

        stack = stack_on_free_ports(
            tmp_path / "state",
            prometheus_command=command(prometheus_mode),
            pushgateway_command=command("serve"),
            timeout=timeout,
        )
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.down()


def _requests(stack: MonitoringStack, name: str, request: str) -> int:
    return (stack.state_dir / f"{name}.log").read_text().count(request)


def _pids(stack: MonitoringStack) -> dict[str, int | None]:
    pids = stack.status()["pids"]
    assert isinstance(pids, dict)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_starts_both_and_a_second_up_reloads_the_same_processes(
    make_stack: StackFactory, environments: list[Environment], tmp_path: Path
) -> None:
    stack = make_stack()
    assert stack.status()["running"] is False

    urls = stack.up(environments, interval="2s")

    assert urls == {
        "prometheus": f"http://{stack.prometheus}",
        "pushgateway": f"http://{stack.pushgateway}",
    }
    status = stack.status()
    assert status["running"] is True
    assert status["urls"] == urls
    pids = _pids(stack)
    assert all(pids.values())
    config = yaml.safe_load(stack.config_file.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert (stack.state_dir / "alerts.yml").is_file()
    assert [job["job_name"] for job in config["scrape_configs"]] == ["imdb-api-unit", "pushgateway"]
    assert config["scrape_configs"][1]["static_configs"] == [{"targets": [stack.pushgateway]}]
    assert _requests(stack, "prometheus", "POST /-/reload") == 0

    other = write_environment(tmp_path, "other", [("other-1", "127.0.0.1", "127.0.0.1:9")])
    assert stack.up([*environments, load_environment(str(other))]) == urls

    assert _pids(stack) == pids  # the same processes ...
    assert _requests(stack, "prometheus", "POST /-/reload") == 1  # ... told to reload
    assert _requests(stack, "pushgateway", "POST") == 0
    config = yaml.safe_load(stack.config_file.read_text())
    assert config["global"]["scrape_interval"] == "5s"  # the default interval
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert jobs == ["imdb-api-unit", "imdb-api-other", "pushgateway"]

    stopped = stack.down()
    assert stopped == [f"prometheus {pids['prometheus']}", f"pushgateway {pids['pushgateway']}"]
    assert _pids(stack) == {"prometheus": None, "pushgateway": None}
    assert stack.down() == []


def test_a_process_running_with_other_flags_is_restarted(
    make_stack: StackFactory, environments: list[Environment]
) -> None:
    first = make_stack()
    first.up(environments)
    old = _pids(first)
    # The same state directory, Prometheus on another port.
    moved = MonitoringStack(
        first.state_dir,
        f"127.0.0.1:{free_port()}",
        first.pushgateway,
        prometheus_command=first.prometheus_command,
        pushgateway_command=first.pushgateway_command,
    )
    moved.up(environments)
    new = _pids(moved)
    assert new["pushgateway"] == old["pushgateway"]
    assert new["prometheus"] != old["prometheus"]
    assert old["prometheus"] is not None
    assert not _alive(old["prometheus"])
    # status() reports where the process listens, whichever object asks.
    assert first.status()["urls"] == moved.urls()
    moved.down()


def test_a_port_someone_else_listens_on_is_refused_before_anything_starts(
    make_stack: StackFactory, environments: list[Environment]
) -> None:
    stack = make_stack()
    host, port = listen_address(stack.prometheus)
    with socket.socket() as holder:
        holder.bind((host, port))
        holder.listen()
        started = time.monotonic()
        with pytest.raises(MonitoringError, match=f"{stack.prometheus} is taken by another"):
            stack.up(environments)
        assert time.monotonic() - started < 2
    assert _pids(stack) == {"prometheus": None, "pushgateway": None}
    assert not (stack.state_dir / "pushgateway.log").exists()  # never started


def test_a_port_bound_by_someone_else_stops_what_up_started(
    make_stack: StackFactory, environments: list[Environment]
) -> None:
    stack = make_stack()
    host, port = listen_address(stack.prometheus)
    # Bound but not listening: connections are refused, so only the bind itself fails.
    with socket.socket() as holder:
        holder.bind((host, port))
        with pytest.raises(MonitoringError, match="prometheus exited before answering") as raised:
            stack.up(environments)
    assert "Address already in use" in str(raised.value)  # the log's tail
    assert _pids(stack) == {"prometheus": None, "pushgateway": None}
    assert _requests(stack, "pushgateway", "GET /-/ready") >= 1  # it had been started


def test_a_process_that_exits_is_reported_with_its_log(
    make_stack: StackFactory, environments: list[Environment]
) -> None:
    stack = make_stack(prometheus_mode="exit")
    with pytest.raises(MonitoringError, match=r"(?s)exited before answering.*fake: giving up"):
        stack.up(environments)
    assert stack.status()["running"] is False


def test_a_process_that_never_gets_ready_is_stopped_after_the_timeout(
    make_stack: StackFactory, environments: list[Environment]
) -> None:
    # Long enough for the healthy stand-in to start on a busy machine (a fake Python process).
    stack = make_stack(prometheus_mode="unready", timeout=2)
    started = time.monotonic()
    with pytest.raises(
        MonitoringError, match=r"prometheus did not answer .*/-/ready within 2 s \(HTTP 503"
    ):
        stack.up(environments)
    assert time.monotonic() - started < 15
    assert _pids(stack) == {"prometheus": None, "pushgateway": None}


def test_a_refused_reload_is_an_error_and_keeps_the_processes(
    make_stack: StackFactory, environments: list[Environment], reject_file: Path
) -> None:
    stack = make_stack()
    stack.up(environments)
    pids = _pids(stack)
    reject_file.touch()
    with pytest.raises(MonitoringError, match=r"did not reload .*HTTP 500: bad config"):
        stack.up(environments)
    assert _pids(stack) == pids  # nothing this call started, nothing stopped


def test_a_missing_binary_is_named_with_its_package(
    tmp_path: Path, environments: list[Environment]
) -> None:
    stack = MonitoringStack(tmp_path, prometheus_command=["no-such-prometheus-binary"])
    with pytest.raises(MonitoringError, match=r"`no-such-prometheus-binary` not found.*install"):
        stack.up(environments)
    assert not stack.config_file.exists()  # checked before anything is written


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("localhost:9090", "not an IPv4 host:port"),
        ("127.0.0.1", "not an IPv4 host:port"),
        ("127.0.0.1:http", "not an IPv4 host:port"),
        ("0.0.0.0:9090", "127.0.0.0/8 only"),
        ("10.1.2.3:9090", "127.0.0.0/8 only"),
        ("127.0.0.1:0", "port out of range"),
        ("127.0.0.1:70000", "port out of range"),
    ],
)
def test_addresses_are_loopback_host_and_port(address: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        listen_address(address)


def test_the_stack_needs_two_addresses_and_commands(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot share"):
        MonitoringStack(tmp_path, "127.0.0.1:9090", "127.0.0.1:9090")
    with pytest.raises(ValueError, match="at least its program"):
        MonitoringStack(tmp_path, pushgateway_command=[])
    stack = MonitoringStack(tmp_path / "relative" / "..")
    assert stack.state_dir == tmp_path.resolve()
    assert repr(stack) == (
        f"MonitoringStack({str(tmp_path.resolve())!r}, prometheus='127.0.0.1:9090', "
        "pushgateway='127.0.0.1:9091')"
    )


def test_up_checks_the_interval_before_starting(
    make_stack: StackFactory, environments: list[Environment]
) -> None:
    stack = make_stack()
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        stack.up(environments, interval="5x")
    assert _pids(stack) == {"prometheus": None, "pushgateway": None}


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--state", str(tmp_path)]
    assert main(["up", "no-such-environment", *state]) == 2
    assert "no-such-environment" in capsys.readouterr().err
    assert main(["up", *state, "--prometheus", "10.0.0.1:9090"]) == 2
    assert "127.0.0.0/8 only" in capsys.readouterr().err


def test_cli_status_and_down_of_a_stack_that_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state", str(tmp_path)]
    assert main(["status", *state]) == 3
    assert capsys.readouterr().out.splitlines() == ["prometheus: stopped", "pushgateway: stopped"]
    assert main(["status", *state, "--json"]) == 3
    assert '"running": false' in capsys.readouterr().out
    assert main(["down", *state]) == 0
    assert capsys.readouterr().out == ""
