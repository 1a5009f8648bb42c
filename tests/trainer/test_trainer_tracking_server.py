"""Tracking against a real `mlflow server` on 127.0.0.1 (sqlite store, artifacts proxied into
tmp_path): `imdb-trainer train` with MLFLOW_TRACKING_URI logs params, metrics, tags, the report
and the artifact, and `imdb-trainer track-release` tags the run with its release."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from imdb_model.artifact import verify_artifact
from imdb_trainer.tracking import run_record_path
from tests.support import free_port

pytestmark = pytest.mark.integration

# Nothing leaves the machine: no telemetry from client or server, no proxy for loopback. The
# server's job runner is off: it serves GenAI jobs we do not use, and its worker processes
# outlive a server that was sent SIGTERM.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Creating the sqlite schema and importing the server take 15-25 s on two cores.
STARTUP_TIMEOUT_S = 180.0
DIGEST = "sha256:" + "0123456789abcdef" * 4
TRAINER = [sys.executable, "-m", "imdb_trainer.cli", "--quiet"]


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server` and where it keeps its log."""

    url: str
    log: Path


def session_members(leader: int) -> list[psutil.Process]:
    """The processes of the session that `leader` leads (started with start_new_session)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(process.pid) == leader:
                members.append(process)
    return members


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, then kill, by PID, whatever of its session is still running (the
    uvicorn worker it started, for one)."""
    members = session_members(server.pid)
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)
    for process in members + session_members(server.pid):
        with contextlib.suppress(psutil.Error):
            process.kill()
            process.wait(10)


def wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /health until it answers 200; fail with the log's tail if the server dies or is
    too slow."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), direct.open(f"{url}/health", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.25)
    pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S:g} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, require: Callable[[bool, str], None]
) -> Iterator[MlflowServer]:
    """`mlflow server` on a free 127.0.0.1 port, with a sqlite store and proxied artifacts."""
    require(
        importlib.util.find_spec("mlflow.server") is not None,
        "the full mlflow package (the `test` group), for `mlflow server`",
    )
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    require(mlflow is not None, "the `mlflow` command beside this Python")
    assert mlflow is not None
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        mlflow, "server",
        "--backend-store-uri", f"sqlite:///{root / 'runs.sqlite'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **QUIET_ENV},
            cwd=root,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server, log)
        yield MlflowServer(url, log)
    finally:
        stop(server)


def trainer(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRAINER, *argv], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_train_logs_the_run_and_track_release_tags_it(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in QUIET_ENV.items():
        monkeypatch.setenv(name, value)  # for the client below, in this process
    from mlflow.tracking import MlflowClient  # noqa: PLC0415  (after the quiet settings)

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_EXPERIMENT_NAME": "integration",
    }
    data, out = tmp_path / "data", tmp_path / "artifacts" / "model"
    generated = trainer("generate", "--rows", "3000", "--seed", "7", "--out", str(data), env=env)
    assert generated.returncode == 0, generated.stderr
    trained = trainer("train", "--data", str(data), "--out", str(out), env=env)
    assert trained.returncode == 0, trained.stderr + mlflow_server.log.read_text()[-3000:]
    manifest = verify_artifact(out).manifest  # tracking added nothing to the artifact
    record = json.loads(run_record_path(out).read_text())
    assert record["manifest_sha256"] == manifest["manifest_sha256"]

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == manifest["version"]
    assert client.get_experiment(run.info.experiment_id).name == "integration"
    fingerprint = manifest["data"]["fingerprint"]
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["data_fingerprint"] == fingerprint
    assert params["num_rounds"] == "200"
    assert params["learning_rate"] == "0.15"
    assert params["title_types"] == "movie"
    assert params["lightgbm.num_leaves"] == "31"
    test_metrics = manifest["metrics"]["test"]
    assert metrics["test.model.rmse"] == pytest.approx(test_metrics["model"]["rmse"])
    assert metrics["test.linear_baseline.r2"] == pytest.approx(
        test_metrics["linear_baseline"]["r2"]
    )
    assert metrics["valid.model.rows"] == manifest["metrics"]["valid"]["model"]["rows"]
    assert tags["data_fingerprint"] == fingerprint
    assert tags["artifact_version"] == manifest["version"]
    assert tags["manifest_sha256"] == manifest["manifest_sha256"]
    assert tags["gate"] == "passed"

    reports = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert reports == {f"report/{p.name}" for p in (out / "report").iterdir()}
    assert "report/report.md" in reports
    # The uploaded artifact is the published one, file for file: it verifies after download.
    downloaded = client.download_artifacts(run.info.run_id, "artifact", str(tmp_path / "dl"))
    assert verify_artifact(downloaded).manifest == manifest

    released = trainer(
        "track-release", "--artifact", str(out), "--release", "v-it", "--digest", DIGEST, env=env
    )
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["run_id"] == run.info.run_id
    tags = client.get_run(run.info.run_id).data.tags
    assert (tags["release"], tags["release_digest"]) == ("v-it", DIGEST)
    assert tags["released_at"]
