"""The real server process: startup, readiness, metrics under promtool, SIGTERM drain, workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

from .conftest import MOVIE, Reply, ServerProcess, http

pytestmark = pytest.mark.integration

StartServer = Callable[..., ServerProcess]


def promtool_check(promtool: str, exposition: bytes) -> None:
    done = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def test_serves_predictions_and_valid_metrics(
    start_server: StartServer, artifact: Path, require_tool: Callable[[str], str]
) -> None:
    promtool = require_tool("promtool")
    server = start_server("--artifact", str(artifact))
    server.wait_ready()
    predicted = http(server.url + "/predict", MOVIE, headers={"X-Request-ID": "proc-1"})
    assert predicted.status == 200
    assert predicted.headers["x-request-id"] == "proc-1"
    assert http(server.url + "/predict", {"primaryTitle": 1}).status == 422
    assert http(server.url + "/predict/batch", {"movies": [MOVIE] * 3}).status == 200
    metrics = http(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b'imdb_api_predictions_total{endpoint="/predict/batch"} 3.0' in metrics.body
    promtool_check(promtool, metrics.body)
    assert server.terminate() == 0
    access = [line for line in server.log_lines() if line.get("request_id") == "proc-1"]
    assert access[0]["logger"] == "imdb_api.access"
    assert {"method": "POST", "path": "/predict", "status": 200}.items() <= access[0].items()


def test_sigterm_drains_in_flight_requests_then_exits_0(
    start_server: StartServer, artifact: Path
) -> None:
    grace = 8.0
    server = start_server(
        "--artifact", str(artifact), "--debug-delay-s", "1.5", "--graceful-shutdown-s", str(grace)
    )
    server.wait_ready()
    results: list[Reply] = []
    slow = threading.Thread(target=lambda: results.append(http(server.url + "/predict", MOVIE)))
    slow.start()
    time.sleep(0.4)  # the request is now sleeping inside the handler
    signalled = time.monotonic()
    server.process.send_signal(15)
    time.sleep(0.4)
    assert server.process.poll() is None, "exited before the in-flight request finished"
    assert refused(server.port), "still accepting connections while draining"
    slow.join(10)
    assert results[0].status == 200
    assert results[0].json()["averageRating"] >= 1.0
    assert server.process.wait(grace + 5) == 0
    assert time.monotonic() - signalled < grace
    messages = [line["msg"] for line in server.log_lines()]
    assert "received SIGTERM: draining" in messages


def test_requests_beyond_the_grace_period_are_cancelled(
    start_server: StartServer, artifact: Path
) -> None:
    server = start_server(
        "--artifact", str(artifact), "--debug-delay-s", "20", "--graceful-shutdown-s", "1"
    )
    server.wait_ready()
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(http(server.url + "/predict", MOVIE, timeout=30))
        except OSError as exc:  # the connection is closed without an answer
            outcome.append(exc)

    slow = threading.Thread(target=call)
    slow.start()
    time.sleep(0.4)
    signalled = time.monotonic()
    assert server.terminate(timeout=10) == 0
    assert time.monotonic() - signalled < 5
    slow.join(10)
    assert (outcome and not isinstance(outcome[0], Reply)) or outcome[0].status >= 500


def test_a_tampered_artifact_starts_unready_and_says_why(
    start_server: StartServer, artifact_copy: Path
) -> None:
    (artifact_copy / "model.onnx").write_bytes(b"not a model")
    server = start_server("--artifact", str(artifact_copy))
    server.wait_healthy()
    deadline = time.monotonic() + 10
    while http(server.url + "/ready").json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ready = http(server.url + "/ready")
    assert ready.status == 503
    assert "model.onnx was modified (sha256 mismatch)" in ready.json()["reasons"]
    assert http(server.url + "/predict", MOVIE).status == 503
    assert server.terminate() == 0
    failures = [line for line in server.log_lines() if line["level"] == "error"]
    assert any("model.onnx was modified" in str(line.get("problems")) for line in failures)


def test_a_streamed_oversized_body_is_refused_before_it_ends(
    start_server: StartServer, artifact: Path
) -> None:
    server = start_server("--artifact", str(artifact), "--max-body-bytes", "10000")
    server.wait_ready()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(
            b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        answer = b""
        conn.settimeout(0.05)
        while sent < 1_000_000 and not answer:
            conn.sendall(b"400\r\n" + b" " * 0x400 + b"\r\n")
            sent += 0x400
            try:
                answer = conn.recv(4096)
            except TimeoutError:
                continue
    assert answer.startswith(b"HTTP/1.1 413")
    assert sent < 100_000
    assert server.terminate() == 0


def test_port_in_use_exits_1(start_server: StartServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = start_server(port=taken.getsockname()[1])
        assert server.process.wait(30) == 1


def test_workers_share_the_port_and_aggregate_metrics(
    start_server: StartServer, artifact: Path, require_tool: Callable[[str], str]
) -> None:
    promtool = require_tool("promtool")
    server = start_server("--artifact", str(artifact), "--workers", "2")
    server.wait_ready()
    for _ in range(20):
        assert http(server.url + "/predict", MOVIE).status == 200
    # A new connection per request: with SO_REUSEPORT the kernel spreads them over both workers.
    metrics = http(server.url + "/metrics").body
    promtool_check(promtool, metrics)
    line = next(
        line
        for line in metrics.decode().splitlines()
        if line.startswith('imdb_api_predictions_total{endpoint="/predict"}')
    )
    assert float(line.rsplit(" ", 1)[1]) == 20.0
    assert b"imdb_api_model_info{" in metrics
    assert server.terminate() == 0
    assert refused(server.port)


def worker_pids(server: ServerProcess) -> list[int]:
    """The supervisor's worker processes (spawned children), oldest first."""
    pid = server.process.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def restarts(server: ServerProcess) -> float:
    """imdb_api_worker_restarts_total, as any worker answers it (-1: the connection was reset,
    it had been accepted by a worker just killed)."""
    try:
        metrics = http(server.url + "/metrics").body.decode()
    except (OSError, HTTPException):
        return -1.0
    line = next(x for x in metrics.splitlines() if x.startswith("imdb_api_worker_restarts_total "))
    return float(line.rsplit(" ", 1)[1])


def test_a_dying_worker_is_replaced_while_the_other_keeps_answering(
    start_server: StartServer, artifact: Path
) -> None:
    server = start_server("--artifact", str(artifact), "--workers", "2")
    server.wait_ready()
    first = worker_pids(server)
    assert len(first) == 2
    assert restarts(server) == 0

    answers: list[int] = []
    stop = threading.Event()

    def load() -> None:  # a new connection per request, bounded in time and count
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline and len(answers) < 20_000:
            try:
                answers.append(http(server.url + "/predict", MOVIE).status)
            except (OSError, HTTPException):
                # reset or cut short: queued on, or half answered by, the killed worker
                answers.append(0)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.5)
        os.kill(first[0], signal.SIGKILL)
        killed_at = len(answers)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = worker_pids(server)
            if len(pids) == 2 and first[0] not in pids and restarts(server) == 1:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # the new worker loads its model and joins the port
    finally:
        stop.set()
        loader.join()
    assert server.process.poll() is None, "the service stopped"
    replaced = worker_pids(server)
    assert first[1] in replaced
    assert len(replaced) == 2
    assert restarts(server) == 1
    after = answers[killed_at:]
    # Only what the killed worker had accepted fails; the rest is answered (by either worker).
    assert after.count(200) >= 50, after[:20]
    assert after.count(0) <= 5, after.count(0)
    assert set(after) <= {200, 0}
    assert server.terminate() == 0


def test_a_crash_loop_stops_the_service(start_server: StartServer, artifact: Path) -> None:
    server = start_server(
        "--artifact", str(artifact), "--workers", "2",
        env={"IMDB_API_WORKER_RESTART_LIMIT": "1", "IMDB_API_WORKER_RESTART_WINDOW_S": "60"},
    )  # fmt: skip
    server.wait_ready()
    os.kill(worker_pids(server)[0], signal.SIGKILL)  # replaced: the one restart allowed
    deadline = time.monotonic() + 30
    while restarts(server) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(worker_pids(server)[0], signal.SIGKILL)  # a second death within the window
    assert server.process.wait(30) == 1
    assert b"crash loop: stopping the service" in server.log.read_bytes()
