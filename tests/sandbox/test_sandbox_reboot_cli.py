"""`python -m imdb_deploy.sandbox reboot HOST`: what it says and returns, with a stand-in fleet
(the real reboot is tested against real machines in test_sandbox_machines.py)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest

from imdb_deploy.bluegreen.config import Environment
from imdb_deploy.sandbox import __main__ as sandbox_cli
from imdb_deploy.sandbox.fleet import SandboxError, SandboxHost
from tests.support import free_port, serving


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


@dataclass
class StandInFleet:
    hosts: tuple[SandboxHost, ...]
    then: Callable[[], None] = lambda: None
    rebooted: list[str] = field(default_factory=list)

    def host(self, name: str) -> SandboxHost:
        return next(host for host in self.hosts if host.name == name)

    def reboot(self, host: SandboxHost, timeout: float = 60.0) -> float:
        self.rebooted.append(host.name)
        self.then()
        return 0.5


def environment(http_address: str) -> Environment:
    return Environment.model_validate(
        {
            "name": "machines",
            "image": "registry.example/mlops-imdb-api",
            "ssh": {"known_hosts": "/nonexistent/known_hosts"},
            "hosts": [{"name": "m-1", "address": "127.0.0.1", "http_address": http_address}],
        }
    )


def fleet_host() -> SandboxHost:
    return SandboxHost("m-1", "127.0.0.1", 2222, PurePosixPath("/srv/x"), kind="machine")


def test_a_rebooted_host_that_serves_again_is_timed(capsys: pytest.CaptureFixture[str]) -> None:
    with serving(Ready) as address:
        fleet = StandInFleet((fleet_host(),))
        assert sandbox_cli.reboot([environment(address)], fleet, "m-1") == 0
    assert fleet.rebooted == ["m-1"]
    out = capsys.readouterr().out
    assert "m-1: rebooted; sshd answered after 0.5 s" in out
    assert f"m-1: serving again (http://{address}/ready)" in out


def test_a_host_that_served_nothing_is_not_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    fleet = StandInFleet((fleet_host(),))
    assert sandbox_cli.reboot([environment(address)], fleet, "m-1") == 0
    assert "served no release before the reboot" in capsys.readouterr().out


def test_a_host_that_stops_serving_fails_the_reboot(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_cli, "REBOOT_SERVING_TIMEOUT_S", 0.5)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    address = f"127.0.0.1:{server.server_address[1]}"

    def power_gone() -> None:  # it served before the reboot, and never again
        server.shutdown()
        server.server_close()
        thread.join()

    fleet = StandInFleet((fleet_host(),), then=power_gone)
    assert sandbox_cli.reboot([environment(address)], fleet, "m-1") == 1
    assert "did not answer 200 within 0.5 s" in capsys.readouterr().out


def test_unknown_hosts_and_failed_reboots_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    fleet = StandInFleet((fleet_host(),))
    assert sandbox_cli.reboot([environment("127.0.0.1:9")], fleet, "nope") == 2
    assert "no sandbox host 'nope'" in capsys.readouterr().out

    def fail() -> None:
        raise SandboxError("m-1 is a light host: only machine hosts reboot")

    failing = StandInFleet((fleet_host(),), then=fail)
    assert sandbox_cli.reboot([environment("127.0.0.1:9")], failing, "m-1") == 1
    assert "only machine hosts reboot" in capsys.readouterr().err


def test_reboot_needs_a_host_name() -> None:
    with pytest.raises(SystemExit) as exit_info:
        sandbox_cli.main(["reboot"])
    assert exit_info.value.code == 2
