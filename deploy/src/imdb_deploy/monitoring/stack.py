"""A local monitoring stack: Prometheus and the Pushgateway as background processes.

`MonitoringStack(state_dir).up(environments)` writes Prometheus' configuration for the
environments (scrape.prometheus_config, with the Pushgateway's job, and the rules of
deploy/monitoring/alerts.yml), starts the Pushgateway and Prometheus unless they already run, and
returns once both answer `/-/ready`. Calling it again only rewrites the configuration and asks the
running Prometheus to reload it (`POST /-/reload`, hence `--web.enable-lifecycle`): same
processes, same data. `down()` stops both; the data stays for the next `up()`.

Everything lives under `state_dir`:

    prometheus.yml, alerts.yml                 the configuration, rewritten by every up()
    tsdb/                                      Prometheus' time series
    pushgateway.metrics                        the pushed groups (deploy markers), kept on stop
    prometheus.pid.json, prometheus.log        the processes (engine.processes.ManagedProcess)
    pushgateway.pid.json, pushgateway.log

Both listen on loopback addresses only: the lifecycle endpoints (`/-/reload`, `/-/quit`) and the
Pushgateway's API have no authentication. A port something else listens on is reported before
anything is started; a process that exits (a port bound but not listened on: "address already in
use") or does not answer in time is reported with the end of its log, and whatever that `up()`
started is stopped again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from imdb_deploy.bluegreen.config import Environment
from imdb_deploy.engine.processes import ManagedProcess, wait_until
from imdb_deploy.monitoring import RULES_FILE
from imdb_deploy.monitoring.scrape import prometheus_config, render
from imdb_deploy.programs import Program

PROMETHEUS: Final[str] = "prometheus"
PUSHGATEWAY: Final[str] = "pushgateway"
DEFAULT_PROMETHEUS: Final[str] = "127.0.0.1:9090"
DEFAULT_PUSHGATEWAY: Final[str] = "127.0.0.1:9091"
DEFAULT_INTERVAL: Final[str] = "5s"
# Prometheus replays its write-ahead log before it is ready: allow for a full tsdb.
DEFAULT_TIMEOUT_S: Final[float] = 30.0
CONFIG_FILE: Final[str] = "prometheus.yml"
# What to install when a binary is missing (both are Debian packages).
_PACKAGES: Final[dict[str, str]] = {
    PROMETHEUS: "prometheus",
    PUSHGATEWAY: "prometheus-pushgateway",
}
# Local HTTP only: an http_proxy in the environment must not see these requests.
_LOCAL_HTTP: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MonitoringError(RuntimeError):
    """The stack could not be brought up, reloaded or stopped; the message says why."""


def listen_address(address: str) -> tuple[str, int]:
    """(host, port) of `127.x.y.z:port`; ValueError for anything else (loopback only)."""
    host, colon, port_text = address.rpartition(":")
    try:
        if not colon or not port_text.isdigit():
            raise ValueError
        port = int(port_text)
        loopback = ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        raise ValueError(f"not an IPv4 host:port: {address!r} (e.g. 127.0.0.1:9090)") from None
    if not loopback:
        # The lifecycle and push APIs are unauthenticated: never offer them to the network.
        raise ValueError(f"{address}: the monitoring stack listens on 127.0.0.0/8 only")
    if not 0 < port < 65536:
        raise ValueError(f"{address}: port out of range")
    return host, port


def write_config_files(
    environments: Sequence[Environment],
    out: Path,
    *,
    interval: str = DEFAULT_INTERVAL,
    pushgateway: str | None = None,
) -> list[Path]:
    """Write `out/prometheus.yml` for the environments and the rules it loads beside it.

    Each file is replaced in one step, so a Prometheus reloading meanwhile reads whole files.
    Raises scrape.ScrapeConfigError for what Prometheus would reject (before writing anything).
    """
    text = render(
        prometheus_config(
            environments, interval=interval, rule_files=[RULES_FILE.name], pushgateway=pushgateway
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    config_path, rules_path = out / CONFIG_FILE, out / RULES_FILE.name
    _replace(rules_path, RULES_FILE.read_text())
    _replace(config_path, text)
    return [config_path, rules_path]


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


@dataclass(frozen=True)
class _Service:
    """One of the two processes: what runs it and where it listens."""

    name: str
    address: str
    argv: tuple[str, ...]
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{self.address}"


class MonitoringStack:
    """Prometheus and the Pushgateway on loopback addresses, their state under `state_dir`.

    `prometheus_command` and `pushgateway_command` are the commands that run them (their flags
    are appended); the defaults are the Debian packages' binaries on PATH.
    """

    def __init__(
        self,
        state_dir: Path,
        prometheus: str = DEFAULT_PROMETHEUS,
        pushgateway: str = DEFAULT_PUSHGATEWAY,
        *,
        prometheus_command: Sequence[Program] = ("prometheus",),
        pushgateway_command: Sequence[Program] = ("prometheus-pushgateway",),
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if listen_address(prometheus) == listen_address(pushgateway):
            raise ValueError(f"Prometheus and the Pushgateway cannot share {prometheus}")
        if not prometheus_command or not pushgateway_command:
            raise ValueError("a command needs at least its program")
        # Absolute: the paths are part of the processes' argv, by which they are recognised.
        self.state_dir = state_dir.resolve()
        self.prometheus = prometheus
        self.pushgateway = pushgateway
        self.prometheus_command = tuple(prometheus_command)
        self.pushgateway_command = tuple(pushgateway_command)
        self.timeout = timeout

    def __repr__(self) -> str:
        return (
            f"MonitoringStack({str(self.state_dir)!r}, prometheus={self.prometheus!r}, "
            f"pushgateway={self.pushgateway!r})"
        )

    @property
    def config_file(self) -> Path:
        """The prometheus.yml that up() writes."""
        return self.state_dir / CONFIG_FILE

    def urls(self) -> dict[str, str]:
        """`{"prometheus": "http://...", "pushgateway": "http://..."}`, as configured."""
        return {PROMETHEUS: f"http://{self.prometheus}", PUSHGATEWAY: f"http://{self.pushgateway}"}

    def _services(self) -> tuple[_Service, _Service]:
        """Pushgateway first: Prometheus scrapes it, so it starts first and stops last."""
        state = self.state_dir
        pushgateway = _Service(
            PUSHGATEWAY,
            self.pushgateway,
            (
                *self.pushgateway_command,
                f"--web.listen-address={self.pushgateway}",
                f"--persistence.file={state / 'pushgateway.metrics'}",
            ),
            ManagedProcess(PUSHGATEWAY, state),
        )
        prometheus = _Service(
            PROMETHEUS,
            self.prometheus,
            (
                *self.prometheus_command,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={state / 'tsdb'}",
                f"--web.listen-address={self.prometheus}",
                "--web.enable-lifecycle",
            ),
            ManagedProcess(PROMETHEUS, state),
        )
        return pushgateway, prometheus

    # ------------------------------------------------------------ up

    def up(
        self, environments: Sequence[Environment], interval: str = DEFAULT_INTERVAL
    ) -> dict[str, str]:
        """Configure for `environments`, start what does not run, wait until both answer.

        Idempotent: a process already running with the same command line is kept, and
        Prometheus reloads the rewritten configuration. One running with another command line
        (other addresses or binaries) is restarted. On failure, whatever this call started is
        stopped again and MonitoringError says why, with the end of the process's log.
        Returns the URLs (see `urls`).
        """
        services = self._services()
        for service in services:
            program = service.argv[0]
            if shutil.which(program) is None:
                raise MonitoringError(
                    f"{service.name}: `{program}` not found on PATH "
                    f"(Debian: apt-get install {_PACKAGES[service.name]})"
                )
        # The configuration first: a bad interval must not leave half a stack running.
        write_config_files(
            environments, self.state_dir, interval=interval, pushgateway=self.pushgateway
        )
        running: dict[str, int] = {}
        for service in services:
            pid = service.process.running_pid()
            if pid is not None and _recorded_argv(service.process) != list(service.argv):
                service.process.stop()
                pid = None
            if pid is not None:
                running[service.name] = pid
        for service in services:
            if service.name not in running:
                self._check_free(service)
        started: list[tuple[_Service, int]] = []
        try:
            for service in services:
                pid = running.get(service.name)
                if pid is None:
                    pid = service.process.start(service.argv)
                    started.append((service, pid))
                elif service.name == PROMETHEUS:
                    self._reload(service)
                self._wait_ready(service, pid)
        except BaseException:
            for service, pid in reversed(started):
                _terminate(pid)
                service.process.pid_file.unlink(missing_ok=True)
            raise
        return self.urls()

    def _check_free(self, service: _Service) -> None:
        """Raise unless nothing listens on the service's address (a refused connection)."""
        host, port = listen_address(service.address)
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError:
            return
        raise MonitoringError(
            f"{service.name}: {service.address} is taken by another process, not this stack's "
            f"{service.name} (state in {self.state_dir}); stop it or choose another address "
            f"(`ss -ltnp 'sport = :{port}'` shows who listens)"
        )

    def _reload(self, service: _Service) -> None:
        """Ask the running Prometheus to read its configuration again; raise if it refuses."""
        status, said = _http("POST", f"{service.url}/-/reload", self.timeout)
        if status != 200:
            raise MonitoringError(
                f"{service.name} at {service.url} did not reload {self.config_file} "
                f"({'HTTP ' + str(status) if status else 'no answer'}: {said}); it keeps its "
                f"previous configuration.\n{service.process.log_tail()}"
            )

    def _wait_ready(self, service: _Service, pid: int) -> None:
        """Wait until `/-/ready` answers 200; raise (with the log tail) if `pid` exits first."""
        # By PID, not running_pid(): right after the spawn the child's command line reads empty.
        url = f"{service.url}/-/ready"
        wait_until(
            lambda: _exited(pid) or _http("GET", url, 1.0)[0] == 200,
            self.timeout,
            interval=0.1,
        )
        if _exited(pid):
            raise MonitoringError(
                f"{service.name} exited before answering on {service.address}; the end of "
                f"{service.process.log_file}:\n{service.process.log_tail()}"
            )
        status, said = _http("GET", url, 1.0)
        if status != 200:
            raise MonitoringError(
                f"{service.name} did not answer {url} within {self.timeout:g} s "
                f"({'HTTP ' + str(status) if status else 'no answer'}: {said}); the end of "
                f"{service.process.log_file}:\n{service.process.log_tail()}"
            )

    # ------------------------------------------------------------ down and status

    def down(self) -> list[str]:
        """Stop Prometheus, then the Pushgateway; what was stopped (`prometheus 1234`)."""
        stopped: list[str] = []
        for service in reversed(self._services()):
            pid = service.process.running_pid()
            if service.process.stop():
                stopped.append(f"{service.name} {pid}")
        return stopped

    def status(self) -> dict[str, object]:
        """`running` (both processes run), `urls` and `pids` (None when not running).

        The URL of a running process is where it listens (from its recorded command line),
        which may differ from this object's addresses.
        """
        urls = self.urls()
        pids: dict[str, int | None] = {}
        for service in reversed(self._services()):
            pid = service.process.running_pid()
            pids[service.name] = pid
            if pid is not None:
                address = _flag(_recorded_argv(service.process), "--web.listen-address")
                if address is not None:
                    urls[service.name] = f"http://{address}"
        return {
            "running": all(pid is not None for pid in pids.values()),
            "urls": urls,
            "pids": pids,
            "state_dir": str(self.state_dir),
        }


# ---------------------------------------------------------------- helpers


def _recorded_argv(process: ManagedProcess) -> list[str] | None:
    try:
        return [str(arg) for arg in json.loads(process.pid_file.read_text())["argv"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _flag(argv: Sequence[str] | None, name: str) -> str | None:
    for arg in argv or ():
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    return None


def _http(method: str, url: str, timeout: float) -> tuple[int | None, str]:
    """(status, start of the body) of a request to a local URL; (None, reason) without one."""
    request = urllib.request.Request(url, method=method)  # noqa: S310 - http://127.x only
    try:
        with _LOCAL_HTTP.open(request, timeout=timeout) as response:
            return int(response.status), response.read(300).decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(300).decode("utf-8", "replace").strip()
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a broken answer
        return None, str(getattr(exc, "reason", exc))


def _exited(pid: int) -> bool:
    """Whether `pid` has exited. A child of ours is left unreaped (WNOWAIT): its PID cannot be
    handed to another process while we may still signal it; `_terminate` reaps it."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # not our child: ask the kernel
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1]
        except (OSError, IndexError):
            return True
        return state.startswith(("Z", "X"))
    return info is not None


def _terminate(pid: int, patience: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, until `pid` (a child this call started) is gone; then reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if _exited(pid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_until(lambda: _exited(pid), patience, interval=0.05):
            break
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
