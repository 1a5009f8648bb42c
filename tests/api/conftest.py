"""Shared fixtures of the API tests: one small trained artifact, clients, real server processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from imdb_api.app import Api
from imdb_api.model_state import ModelState
from imdb_api.settings import Settings
from imdb_trainer.cli import main as trainer_main
from imdb_trainer.generate import generate
from tests.support import free_port

ROWS = 20_000
MOVIE: dict[str, Any] = {
    "primaryTitle": "The Long Night: Part II",
    "originalTitle": "La Longue Nuit",
    "titleType": "movie",
    "isAdult": False,
    "startYear": 1994,
    "runtimeMinutes": 142,
    "genres": ["Crime", "Drama"],
}


@pytest.fixture(scope="session")
def api_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated title.basics/title.ratings files (20k rated titles)."""
    out = tmp_path_factory.mktemp("api-data")
    generate(out, rows=ROWS, seed=11)
    return out


@pytest.fixture(scope="session")
def artifact(api_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact trained once for all API tests. Do not modify: copy it (`artifact_copy`)."""
    out = tmp_path_factory.mktemp("api-artifacts") / "model"
    args = ["--quiet", "train", "--data", str(api_data), "--out", str(out), "--no-report"]
    assert trainer_main([*args, "--num-rounds", "60"]) == 0
    return out


@pytest.fixture
def artifact_copy(artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the artifact that a test may damage."""
    target = tmp_path / "artifact"
    shutil.copytree(artifact, target)
    return target


def make_api(artifact: Path | None, **overrides: Any) -> Api:
    """An Api whose artifact has already been verified (synchronously)."""
    settings = Settings(**({"artifact": artifact, "access_log": False} | overrides))
    state = ModelState(
        settings.artifact, threads=settings.onnx_threads, release_file=settings.release_file
    )
    state.load()
    return Api(settings, state)


@pytest.fixture(scope="session")
def api(artifact: Path) -> Api:
    """The app on the shared artifact, with the benchmark's no-op route."""
    return make_api(artifact, benchmark_noop=True)


@pytest.fixture(scope="session")
def client(api: Api) -> Iterator[TestClient]:
    """A TestClient of `api` (lifespan run)."""
    with TestClient(api) as test_client:
        yield test_client


@dataclass
class Reply:
    """A finished HTTP exchange with a real server."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return orjson.loads(self.body)


def http(
    url: str,
    payload: Any = None,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """GET (no body) or POST (JSON `payload` or raw `data`) with the standard library."""
    if payload is not None:
        data = orjson.dumps(payload)
        headers = {"content-type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


@dataclass
class ServerProcess:
    """`imdb-api` running as a real process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until /health answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            try:
                if http(self.url + "/health", timeout=1.0).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not healthy in {timeout}s:\n{self.log.read_text()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until /ready is 200."""
        self.wait_healthy(timeout)
        deadline = time.monotonic() + timeout
        while http(self.url + "/ready").status != 200:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.stopped = True
        return code

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        lines = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                lines.append(orjson.loads(line))
        return lines


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """`start_server(*flags, env=None)` runs `python -m imdb_api.cli --port P *flags`."""
    started: list[ServerProcess] = []

    def start(
        *flags: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> ServerProcess:
        port = port or free_port()
        log = tmp_path / f"server-{len(started)}.log"
        command = [sys.executable, "-m", "imdb_api.cli", "--host", "127.0.0.1", "--port", str(port)]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("IMDB_API_")}
        environment.update(env or {})
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*command, *flags], stdout=sink, stderr=subprocess.STDOUT, env=environment
            )
        server = ServerProcess(process, port, log)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
