"""Blue-green deploys for real: the deploy code over SSH against a two-host sandbox fleet.

Every check of what is served goes through each host's nginx. Each fault case ends with the
environment on one version and serving, the lock released (or expired) and an audit entry.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.orchestrator import DeployError
from imdb_deploy.sandbox import __main__ as sandbox_cli
from tests.sandbox.conftest import SECRET_VARIABLE, Sandbox
from tests.support import serving

pytestmark = pytest.mark.sandbox


def ensure_live(box: Sandbox, version: str) -> None:
    """Start a case from a known state: `version` live on every host."""
    if box.served_versions() != [version] * len(box.environment.hosts):
        deployer = box.orchestrator()
        try:
            deployer.deploy(version)
        finally:
            deployer.close()
    assert box.served_versions() == [version] * len(box.environment.hosts)


def last_audit(box: Sandbox) -> dict[str, object]:
    deployer = box.orchestrator()
    try:
        return deployer.audit_log(1)[-1]
    finally:
        deployer.close()


def assert_settled(box: Sandbox, version: str, result: str) -> None:
    """One version served everywhere, no lock held, and the audit says how it ended."""
    assert box.served_versions() == [version] * len(box.environment.hosts)
    deployer = box.orchestrator()
    try:
        assert deployer.lock_info() is None
        entry = deployer.audit_log(1)[-1]
    finally:
        deployer.close()
    assert entry["result"] == result, entry


def test_deploy_redeploy_and_rollback(sandbox: Sandbox) -> None:
    releases = sandbox.releases
    deployer = sandbox.orchestrator()
    try:
        outcome = deployer.deploy(releases.v1)
        assert outcome.result == "ok"
        assert sandbox.served_versions() == [releases.v1] * 2

        deployer.deploy(releases.v2)
        assert sandbox.served_versions() == [releases.v2] * 2
        again = deployer.deploy(releases.v2)  # idempotent: nothing to do, nothing touched
        assert again.detail.startswith("already live")
        assert not [e for e in again.events if e.host != "*"]
        rows = deployer.status()
        assert [(r["version"], r["kept"], r["healthy"]) for r in rows] == [
            (releases.v2, releases.v1, True)
        ] * 2

        sandbox.lines.clear()
        rolled = deployer.rollback()
        assert rolled.to_version == releases.v1
        assert any("started: kept" in line for line in sandbox.lines), "not the fast path"
        assert sandbox.served_versions() == [releases.v1] * 2

        deployer.rollback(version=releases.v2)
        assert sandbox.served_versions() == [releases.v2] * 2
        actions = [(e["action"], e["result"], e["to_version"]) for e in deployer.audit_log(5)]
        assert actions == [
            ("deploy", "ok", releases.v1),
            ("deploy", "ok", releases.v2),
            ("deploy", "ok", releases.v2),
            ("rollback", "ok", releases.v1),
            ("rollback", "ok", releases.v2),
        ]
        # The secret reached the container, through a private file, and no log line or record.
        secret = os.environ[SECRET_VARIABLE]
        host = sandbox.environment.hosts[0]
        runner = deployer.runners[host.name]
        name = sandbox.environment.container_name(rows[0]["colour"])  # type: ignore[arg-type]
        env = runner.run(f"podman inspect --format '{{{{json .Config.Env}}}}' {name}").stdout
        assert f"IMDB_API_E2E_TOKEN={secret}" in json.loads(env)
        env_file = sandbox.environment.layout(host).env_file(str(rows[0]["colour"]))
        assert runner.run(f"stat -c %a {env_file}").stdout.strip() == "600"
        assert secret not in "\n".join(sandbox.lines)
        assert secret not in json.dumps(deployer.audit_log(50))

        # Nothing to do when the version is live... unless a live container is gone (a host
        # restart): then it is deployed again.
        first = sandbox.environment.hosts[0]
        live = sandbox.environment.container_name(str(deployer.status()[0]["colour"]))
        deployer.runners[first.name].run(f"podman rm --force {live}")
        healed = deployer.deploy(releases.v2)
        assert [e for e in healed.events if e.step == "switched" and e.host == first.name]
        assert sandbox.served_versions() == [releases.v2] * 2
    finally:
        deployer.close()


@pytest.mark.parametrize(
    ("role", "reason"),
    [
        ("never_ready", "not ready within"),
        ("tampered", "model.onnx"),
        ("mislabelled", "serves model"),
        ("corrupt", "Digest did not match"),
    ],
)
def test_a_broken_release_leaves_the_previous_one_serving(
    sandbox: Sandbox, role: str, reason: str
) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    deployer = sandbox.orchestrator()
    try:
        with pytest.raises(DeployError, match=reason):
            deployer.deploy(getattr(sandbox.releases, role))
        # Nothing of the broken release is left running.
        for host in sandbox.environment.hosts:
            listing = deployer.runners[host.name].run(commands.list_containers(sandbox.environment))
            running = [c for c in json.loads(listing.stdout or "[]") if c["State"] == "running"]
            assert len(running) == 1, running
    finally:
        deployer.close()
    assert_settled(sandbox, sandbox.releases.v1, "failed")


def test_ssh_connection_dropped_mid_deploy(sandbox: Sandbox) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    victim = sandbox.fleet.hosts[1]
    dropped: list[int] = []

    def drop_while_waiting(host: str, step: str) -> None:
        # The readiness wait is one long command: cut the link while it runs.
        if host == victim.name and step == "started" and not dropped:
            timer = threading.Timer(
                1.0, lambda: dropped.append(sandbox.fleet.drop_connections(victim))
            )
            timer.start()

    deployer = sandbox.orchestrator(on_step=drop_while_waiting)
    try:
        with pytest.raises(DeployError, match="connection lost"):
            deployer.deploy(sandbox.releases.v2)
    finally:
        deployer.close()
    assert dropped
    assert dropped[0] >= 1
    assert_settled(sandbox, sandbox.releases.v1, "failed")


def test_one_host_unreachable(sandbox: Sandbox) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    victim = sandbox.fleet.hosts[1]
    sandbox.fleet.stop_ssh(victim)
    try:
        deployer = sandbox.orchestrator()
        try:
            with pytest.raises(DeployError, match=f"{victim.name}: cannot connect"):
                deployer.deploy(sandbox.releases.v2)
        finally:
            deployer.close()
        # The unreachable host still serves the old release; the other host has the audit entry.
        assert sandbox.served_versions() == [sandbox.releases.v1] * 2
        assert last_audit(sandbox)["result"] == "refused"
    finally:
        sandbox.fleet.start_ssh(victim)
    assert_settled(sandbox, sandbox.releases.v1, "refused")


def test_a_concurrent_deploy_is_refused_and_told_who_holds_the_lock(sandbox: Sandbox) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    refusals: list[str] = []
    once = threading.Lock()

    def second_deploy(host: str, step: str) -> None:
        # Both hosts reach "ready" in parallel threads: only the first one tries.
        if step == "ready" and once.acquire(blocking=False):
            other = sandbox.orchestrator()
            try:
                other.deploy(sandbox.releases.v2)
            except DeployError as exc:
                refusals.append(str(exc))
            finally:
                other.close()

    deployer = sandbox.orchestrator(on_step=second_deploy)
    try:
        deployer.deploy(sandbox.releases.v2)
    finally:
        deployer.close()
    assert len(refusals) == 1
    assert "is locked by" in refusals[0]
    assert '"action": "deploy"' in refusals[0]
    assert sandbox.releases.v2 in refusals[0]
    assert_settled(sandbox, sandbox.releases.v2, "ok")
    results = [e["result"] for e in sandbox.orchestrator().audit_log(2)]
    assert results == ["refused", "ok"]


def test_a_killed_deploy_expires_and_the_next_one_repairs_its_half_done_switch(
    sandbox: Sandbox,
) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    command = [
        sys.executable, "-m", "imdb_deploy.bluegreen", "deploy",
        "--version", sandbox.releases.v2, str(sandbox.toml),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "switched:" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=30)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "".join(seen)

    deployer = sandbox.orchestrator()
    try:
        lock = deployer.lock_info()
        assert lock is not None
        assert lock["version"] == sandbox.releases.v2
        assert any(row["interrupted_switch"] for row in deployer.status())
        with pytest.raises(DeployError, match="is locked by"):
            deployer.deploy(sandbox.releases.v2)
        # Nobody renews the dead deploy's lock: it expires after its TTL.
        time.sleep(max(0.0, float(str(lock["expires_in_s"]))) + 1.5)
        sandbox.lines.clear()
        deployer.deploy(sandbox.releases.v2)
    finally:
        deployer.close()
    assert any("took over an expired lock" in line for line in sandbox.lines)
    assert any("recovered" in line for line in sandbox.lines)
    assert_settled(sandbox, sandbox.releases.v2, "ok")


def test_an_invalid_nginx_config_fails_the_switch_and_setup_repairs_it(sandbox: Sandbox) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    victim = sandbox.environment.hosts[1]
    site = Path(str(sandbox.environment.layout(victim).site_conf))
    site.write_text(site.read_text() + "\nthis is not nginx;\n")
    deployer = sandbox.orchestrator()
    try:
        with pytest.raises(DeployError, match="nginx refused the switch"):
            deployer.deploy(sandbox.releases.v2)
        assert_settled(sandbox, sandbox.releases.v1, "failed")
        deployer.setup()  # rewrites the site config
        deployer.deploy(sandbox.releases.v2)
    finally:
        deployer.close()
    assert_settled(sandbox, sandbox.releases.v2, "ok")


def test_a_benchmark_regression_rolls_back_automatically(sandbox: Sandbox) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    deployer = sandbox.orchestrator()
    try:
        with pytest.raises(DeployError, match=r"benchmark regression .* rolled back to"):
            deployer.deploy(sandbox.releases.slow)
        outcome = deployer.outcome
    finally:
        deployer.close()
    assert outcome is not None
    assert outcome.result == "rolled_back"
    assert outcome.benchmark is not None
    assert outcome.benchmark["rolled_back"] is True
    hosts = outcome.benchmark["hosts"]
    assert isinstance(hosts, dict)
    for figures in hosts.values():
        assert figures["verdict"] == "regression"
        assert figures["baseline"]["version"] == sandbox.releases.v1
        assert figures["p95_ms"] >= 150
    assert_settled(sandbox, sandbox.releases.v1, "rolled_back")


# ---- zero downtime -------------------------------------------------------------------------

WRK_SCRIPT = textwrap.dedent("""\
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '{"primaryTitle": "Load", "startYear": 2001, "runtimeMinutes": 95, ' ..
               '"genres": ["Drama"], "isAdult": false}'
    done = function(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        '{"requests": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
        '"timeout": %d, "max_ms": %.2f, "p99_ms": %.2f}\\n',
        summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
        latency.max / 1000, latency:percentile(99) / 1000))
    end
    """)


def under_load(
    box: Sandbox, tmp_path: Path, seconds: int, action: Callable[[], object]
) -> list[dict[str, float]]:
    """Run `action` while wrk sends /predict requests through every host's nginx."""
    wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is needed (deploy/system-packages.sh installs it)"
    script = tmp_path / "predict.lua"
    script.write_text(WRK_SCRIPT)
    loads = [
        subprocess.Popen(
            [
                wrk,
                "-t1",
                "-c4",
                f"-d{seconds}s",
                "--timeout=5s",
                "-s",
                str(script),
                f"http://{box.environment.http_address(host)}/predict",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for host in box.environment.hosts
    ]
    time.sleep(1.0)  # load is flowing before the deploy starts
    try:
        action()
    finally:
        outputs = [load.communicate(timeout=seconds + 30)[0] for load in loads]
    results = []
    for output in outputs:
        summary = json.loads(output.strip().splitlines()[-1])
        print(f"wrk: {summary}")
        results.append(summary)
    return results


def test_zero_dropped_requests_during_deploy_and_rollback(sandbox: Sandbox, tmp_path: Path) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    # The benchmark gate would measure under this test's own load and call it a regression.
    quiet = sandbox.environment.model_copy(
        update={"benchmark": sandbox.environment.benchmark.model_copy(update={"enabled": False})}
    )
    deployer = sandbox.orchestrator(quiet)
    try:
        for name, action in (
            ("deploy", lambda: deployer.deploy(sandbox.releases.v2)),
            ("rollback", deployer.rollback),
        ):
            results = under_load(sandbox, tmp_path, 20, action)
            total = sum(r["requests"] for r in results)
            failed = sum(
                r[k] for r in results for k in ("connect", "read", "write", "status", "timeout")
            )
            worst = max(r["max_ms"] for r in results)
            print(f"{name}: {total} requests, {failed} failed, worst latency {worst:.1f} ms")
            assert failed == 0, results
            assert total >= 10_000, results
    finally:
        deployer.close()
    assert_settled(sandbox, sandbox.releases.v1, "ok")


# ---- the commands people and CI run ------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A Slack-style incoming webhook on loopback that keeps what it was sent."""

    received: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_nox_cli_and_fab_drive_the_same_deploys_and_notify(sandbox: Sandbox) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    fab = Path(sys.executable).parent / "fab"
    toml = str(sandbox.toml)
    with serving(_Receiver) as receiver:
        webhook = f"http://{receiver}/hooks/secret-path"
        environ = {**os.environ, "MLOPS_SLACK_WEBHOOK_URL": webhook}
        deploy = subprocess.run(
            [sys.executable, "-m", "imdb_deploy.bluegreen", "deploy", "--version",
             sandbox.releases.v2, toml],
            capture_output=True, text=True, env=environ, timeout=300, check=False,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "notification slack: sent" in deploy.stdout
        status = subprocess.run(
            [str(fab), "status", "--env", toml, "--json"],
            capture_output=True, text=True, env=environ, timeout=120, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        rows = json.loads(status.stdout)
        assert [(r["version"], r["healthy"]) for r in rows] == [(sandbox.releases.v2, True)] * 2
        rollback = subprocess.run(
            [str(fab), "rollback", "--env", toml],
            capture_output=True, text=True, env=environ, timeout=300, check=False,
        )  # fmt: skip
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    texts = [str(message["text"]) for message in _Receiver.received]
    assert len(texts) == 2, texts
    assert f"deploy of {sandbox.releases.v2} to e2e: ok" in texts[0]
    assert "rollback" in texts[1]
    assert "secret-path" not in deploy.stdout + rollback.stdout
    assert_settled(sandbox, sandbox.releases.v1, "ok")


def test_prune_keeps_the_live_release_and_the_rollback_target(sandbox: Sandbox) -> None:
    releases = sandbox.releases
    ensure_live(sandbox, releases.v2)
    ensure_live(sandbox, releases.v1)  # live v1, kept v2
    tight = sandbox.environment.model_copy(update={"keep_releases": 1})
    deployer = sandbox.orchestrator(tight)
    try:
        before = deployer.read_state(tight.hosts[0]).releases
        protected = deployer.prune()
        assert protected == {releases.v1, releases.v2}
        for host in tight.hosts:
            state = deployer.read_state(host)
            assert state.releases == [v for v in before if v in protected]
            runner = deployer.runners[host.name]
            for version in before:
                present = runner.run(commands.image_exists(tight.image_ref(version)), check=False)
                assert present.ok == (version in protected), version
    finally:
        deployer.close()
    assert_settled(sandbox, releases.v1, "ok")
    assert last_audit(sandbox)["action"] == "prune"


def test_sandbox_status_lists_every_host_for_scripts(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_live(sandbox, sandbox.releases.v1)
    assert sandbox_cli.status([sandbox.environment], as_json=True) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["host"], r["environment"], r["version"], r["healthy"]) for r in rows] == [
        (host.name, "e2e", sandbox.releases.v1, True) for host in sandbox.environment.hosts
    ]
    assert {r["http"] for r in rows} == {
        f"http://{sandbox.environment.http_address(h)}" for h in sandbox.environment.hosts
    }
    assert sandbox_cli.status([sandbox.environment], as_json=False) == 0
    table = capsys.readouterr().out
    assert "e2e-1" in table
    assert sandbox.releases.v1 in table
