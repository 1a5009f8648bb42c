"""Blue-green deploys for real, by release: good ones, broken ones, a slow one, retention.

The deploy code over SSH against a two-host sandbox fleet; every check of what is served goes
through each host's nginx. Each fault case ends with the environment on one version and
serving, the lock released (or expired) and an audit entry. The cases share one fleet and run
in this order so that each starts from what the one before left live (a deploy to reach a
starting state costs about 10 s). test_sandbox_operations.py has the operator's cases, on a
fleet of its own when the integration session runs them in parallel.
"""

from __future__ import annotations

import http.client
import json
import os
import threading

import pytest

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import Orchestrator
from imdb_deploy.sandbox import __main__ as sandbox_cli
from tests.sandbox.conftest import SECRET_VARIABLE, Sandbox

pytestmark = pytest.mark.integration


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


def test_prune_keeps_the_live_release_and_the_rollback_target(sandbox: Sandbox) -> None:
    releases = sandbox.releases
    sandbox.ensure_live(releases.v2)
    sandbox.ensure_live(releases.v1)  # live v1, kept v2
    tight = sandbox.environment.model_copy(update={"keep_releases": 1})
    deployer = sandbox.orchestrator(tight)
    try:
        earlier = deployer.read_state(tight.hosts[0])
        before = earlier.releases
        protected = deployer.prune()
        assert protected == {releases.v1, releases.v2}
        for host in tight.hosts:
            state = deployer.read_state(host)
            assert state.releases == [v for v in before if v in protected]
            runner = deployer.runners[host.name]
            for version in before:
                image = tight.image_ref(version, earlier.digests[version])  # run by digest
                present = runner.run(commands.image_exists(image), check=False)
                assert present.ok == (version in protected), version
    finally:
        deployer.close()
    sandbox.assert_settled(releases.v1, "ok")
    assert sandbox.last_audit()["action"] == "prune"


@pytest.mark.parametrize(
    ("role", "reason"),
    [
        ("never_ready", "not ready within"),
        ("tampered", "model.onnx"),
        ("mislabelled", "serves release"),
        ("corrupt", "Digest did not match"),
        # Refused by the hosts' engines (policy.json), whatever the deploy code does:
        ("unsigned", "A signature was required, but no signature exists"),
        ("foreign", "Source image rejected"),
        ("moved", "Source image rejected"),
    ],
)
def test_a_broken_release_leaves_the_previous_one_serving(
    sandbox: Sandbox, role: str, reason: str
) -> None:
    """And a failed deploy costs nothing: status (live, kept, releases, passed) and every
    container are as before, the kept release, the rollback target, included."""
    releases = sandbox.releases
    sandbox.ensure_live(releases.v1)
    deployer = sandbox.orchestrator()
    try:
        if any(row["kept"] is None for row in deployer.status()):  # a rollback target to lose
            deployer.deploy(releases.v2)
            deployer.deploy(releases.v1)
        before = (deployer.status(), _containers(sandbox, deployer))
        broken = getattr(releases, role)
        with pytest.raises(DeployError, match=reason):
            deployer.deploy(broken)
        assert (deployer.status(), _containers(sandbox, deployer)) == before
        # Nothing of the broken release is left running, nor its image on the disk.
        image = sandbox.environment.image_ref(broken, deployer.digests.get(broken))
        for host in sandbox.environment.hosts:
            runner = deployer.runners[host.name]
            listing = runner.run(commands.list_containers(sandbox.environment))
            running = [c for c in json.loads(listing.stdout or "[]") if c["State"] == "running"]
            assert len(running) == 1, running
            assert not runner.run(commands.image_exists(image), check=False).ok, image
    finally:
        deployer.close()
    sandbox.assert_settled(sandbox.releases.v1, "failed")


def _containers(sandbox: Sandbox, deployer: Orchestrator) -> dict[str, list[tuple[str, str]]]:
    """Per host, every container of the environment (running or not) and its image."""
    found = {}
    for host in sandbox.environment.hosts:
        listing = deployer.runners[host.name].run(commands.list_containers(sandbox.environment))
        found[host.name] = sorted(
            (str(c["Names"]), str(c["ImageID"])) for c in json.loads(listing.stdout or "[]")
        )
    return found


def test_the_hosts_engine_itself_requires_the_signature(sandbox: Sandbox) -> None:
    """setup installed the policy in each host's engine configuration: a pull by hand, outside
    the deploy code, is refused for an unsigned image and accepted for a signed one."""
    environment, releases = sandbox.environment, sandbox.releases
    deployer = sandbox.orchestrator()
    try:
        host = environment.hosts[0]
        runner = deployer.runners[host.name]
        policy = json.loads(runner.run("cat ~/.config/containers/policy.json").stdout)
        (requirement,) = policy["transports"]["docker"][environment.image]
        assert requirement["type"] == "signedBy"
        unsigned = runner.run(
            commands.pull(f"{environment.image}:{releases.unsigned}"), check=False
        )
        assert not unsigned.ok
        assert "A signature was required, but no signature exists" in unsigned.stderr
        digest = deployer._digest_of(releases.v2)
        layout = environment.layout(host)
        fetched = runner.run(commands.fetch_signatures(environment, digest, layout))
        assert fetched.stdout.strip() == "signatures fetched"
        runner.run(commands.pull(environment.image_ref(releases.v2, digest)))
    finally:
        deployer.close()


def _get(address: str, path: str, source: str) -> tuple[int, bytes]:
    """GET through a host's nginx from the loopback address `source`."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5, source_address=(source, 0))
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_the_public_port_serves_the_api_only(sandbox: Sandbox) -> None:
    """/metrics for the monitoring addresses only (here 127.0.0.1), the documentation not at
    all; the API itself for everyone."""
    sandbox.ensure_live(sandbox.releases.v1)
    address = sandbox.environment.http_address(sandbox.environment.hosts[0])
    stranger = "127.0.0.2"
    assert _get(address, "/model/info", stranger)[0] == 200
    assert _get(address, "/ready", stranger)[0] == 200
    assert _get(address, "/metrics", stranger)[0] == 403
    status, body = _get(address, "/metrics", "127.0.0.1")
    assert status == 200
    assert b"# TYPE" in body
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert _get(address, path, "127.0.0.1")[0] == 404, path


def test_ssh_connection_dropped_mid_deploy(sandbox: Sandbox) -> None:
    sandbox.ensure_live(sandbox.releases.v1)
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
    sandbox.assert_settled(sandbox.releases.v1, "failed")


def test_one_host_unreachable(sandbox: Sandbox) -> None:
    sandbox.ensure_live(sandbox.releases.v1)
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
        assert sandbox.last_audit()["result"] == "refused"
    finally:
        sandbox.fleet.start_ssh(victim)
    sandbox.assert_settled(sandbox.releases.v1, "refused")


def test_sandbox_status_lists_every_host_for_scripts(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.ensure_live(sandbox.releases.v1)
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


def test_a_benchmark_regression_rolls_back_automatically(sandbox: Sandbox) -> None:
    sandbox.ensure_live(sandbox.releases.v1)
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
    sandbox.assert_settled(sandbox.releases.v1, "rolled_back")
