"""Blue-green deploys for real, as operators run them: under load, from the command line, two
at once, one killed half-way, against a broken nginx configuration.

As in test_sandbox_deploy.py: the deploy code over SSH against a two-host sandbox fleet, every
case ending on one version served, no lock held and an audit entry. Cases that only need a
change deploy whichever good version is not live, so none pays a deploy to reach a start.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from imdb_deploy.bluegreen.errors import DeployError
from tests.sandbox.conftest import Sandbox, failed_requests, under_load
from tests.support import serving

pytestmark = pytest.mark.integration


# ---- zero downtime -------------------------------------------------------------------------


def test_zero_dropped_requests_during_deploy_and_rollback(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.ensure_live(sandbox.releases.v1)
    # The benchmark gate would measure under this test's own load and call it a regression.
    quiet = sandbox.environment.model_copy(
        update={"benchmark": sandbox.environment.benchmark.model_copy(update={"enabled": False})}
    )
    hosts = len(sandbox.environment.hosts)
    deployer = sandbox.orchestrator(quiet)
    try:
        for name, action in (
            ("deploy", lambda: deployer.deploy(sandbox.releases.v2)),
            ("rollback", deployer.rollback),
        ):
            results, seconds = under_load(sandbox, tmp_path, action)
            total = sum(r["requests"] for r in results)
            failed = failed_requests(results)
            worst = max(r["max_ms"] for r in results)
            rate = total / seconds / hosts
            print(
                f"{name}: {total} requests in {seconds:.1f} s ({rate:.0f}/s per host), "
                f"{failed} failed, worst latency {worst:.1f} ms"
            )
            assert failed == 0, results
            # Load flowed the whole time (here about 600/s per host): not a trickle.
            assert rate >= 250, results
    finally:
        deployer.close()
    sandbox.assert_settled(sandbox.releases.v1, "ok")


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
    sandbox.ensure_live(sandbox.releases.v1)
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
    sandbox.assert_settled(sandbox.releases.v1, "ok")


def test_a_concurrent_deploy_is_refused_and_told_who_holds_the_lock(sandbox: Sandbox) -> None:
    _, target = sandbox.live_and_other()
    refusals: list[str] = []
    once = threading.Lock()

    def second_deploy(host: str, step: str) -> None:
        # Both hosts reach "ready" in parallel threads: only the first one tries.
        if step == "ready" and once.acquire(blocking=False):
            other = sandbox.orchestrator()
            try:
                other.deploy(target)
            except DeployError as exc:
                refusals.append(str(exc))
            finally:
                other.close()

    deployer = sandbox.orchestrator(on_step=second_deploy)
    try:
        deployer.deploy(target)
    finally:
        deployer.close()
    assert len(refusals) == 1
    assert "is locked by" in refusals[0]
    assert '"action": "deploy"' in refusals[0]
    assert target in refusals[0]
    sandbox.assert_settled(target, "ok")
    results = [e["result"] for e in sandbox.orchestrator().audit_log(2)]
    assert results == ["refused", "ok"]


def test_a_killed_deploy_expires_and_the_next_one_repairs_its_half_done_switch(
    sandbox: Sandbox,
) -> None:
    _, target = sandbox.live_and_other()
    command = [
        sys.executable, "-m", "imdb_deploy.bluegreen", "deploy",
        "--version", target, str(sandbox.toml),
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
        assert lock["version"] == target
        assert any(row["interrupted_switch"] for row in deployer.status())
        with pytest.raises(DeployError, match="is locked by"):
            deployer.deploy(target)
        # Nobody renews the dead deploy's lock: it expires after its TTL.
        time.sleep(max(0.0, float(str(lock["expires_in_s"]))) + 1.5)
        sandbox.lines.clear()
        deployer.deploy(target)
    finally:
        deployer.close()
    assert any("took over an expired lock" in line for line in sandbox.lines)
    assert any("recovered" in line for line in sandbox.lines)
    sandbox.assert_settled(target, "ok")


def test_an_invalid_nginx_config_fails_the_switch_and_setup_repairs_it(sandbox: Sandbox) -> None:
    live, target = sandbox.live_and_other()
    victim = sandbox.environment.hosts[1]
    site = Path(str(sandbox.environment.layout(victim).site_conf))
    site.write_text(site.read_text() + "\nthis is not nginx;\n")
    deployer = sandbox.orchestrator()
    try:
        with pytest.raises(DeployError, match="nginx refused the switch"):
            deployer.deploy(target)
        sandbox.assert_settled(live, "failed")
        changed = deployer.setup()  # rewrites the site config, and only that
        assert changed == {sandbox.environment.hosts[0].name: [], victim.name: ["nginx site"]}
        deployer.deploy(target)
    finally:
        deployer.close()
    sandbox.assert_settled(target, "ok")


def test_setup_a_second_time_changes_nothing_and_says_so(sandbox: Sandbox) -> None:
    deployer = sandbox.orchestrator()
    try:
        deployer.setup()
        sandbox.lines.clear()
        assert deployer.setup() == {host.name: [] for host in sandbox.environment.hosts}
        entries = deployer.audit_log(2)
    finally:
        deployer.close()
    ready = [line for line in sandbox.lines if "ready for deploys" in line]
    assert len(ready) == len(sandbox.environment.hosts)
    assert all(line.endswith("nothing changed") for line in ready), ready
    # Each run is audited, with what it changed per host.
    assert [(e["action"], e["result"]) for e in entries] == [("setup", "ok"), ("setup", "ok")]
    hosts = [host.name for host in sandbox.environment.hosts]
    assert entries[-1]["detail"] == "; ".join(f"{name}: nothing changed" for name in hosts)


def test_setup_waits_for_no_deploy_it_is_refused_while_one_holds_the_lock(
    sandbox: Sandbox,
) -> None:
    """Setup changes what deploys rely on (nginx's site, the deploy side): under the lock."""
    holder = sandbox.orchestrator()
    deployer = sandbox.orchestrator()
    outcome = holder._begin("deploy", "v-held")
    held = holder.new_lock(outcome)
    try:
        held.acquire(holder.holder(outcome))
        with pytest.raises(DeployError, match="lock"):
            deployer.setup()
    finally:
        held.release()
        held.close()
        holder.close()
        deployer.close()
