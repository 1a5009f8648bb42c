"""The CLI's pure parts and the orchestrator's host-free parts: approval, rollback targets, audit
entries, redaction; and, with a runner that runs the host commands in a local shell on temporary
roots (no SSH), the lock, status, unlock and audit paths of the orchestrator."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
import pytest

from imdb_deploy.bluegreen import cli, commands, hostsetup, loadcheck
from imdb_deploy.bluegreen.config import SSH_KEY_VAR, Environment, ReaderSettings
from imdb_deploy.bluegreen.errors import ApprovalError, DeployError, LockHeldError
from imdb_deploy.bluegreen.layout import HostLayout
from imdb_deploy.bluegreen.lock import EnvironmentLock
from imdb_deploy.bluegreen.orchestrator import (
    Event,
    Orchestrator,
    Outcome,
    _previous_common_release,
)
from imdb_deploy.bluegreen.runner import HostRunner, RemoteError, Result
from imdb_deploy.bluegreen.state import HostState
from tests.support import free_port, serving

LOCAL_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def make_env(
    root: Path | None = None,
    *,
    approval: dict[str, object] | None = None,
    hosts: list[dict[str, object]] | None = None,
    name: str = "production",
) -> Environment:
    return Environment.model_validate(
        {
            "name": name,
            "sandbox": root is not None,
            "image": "registry.example/mlops-imdb-api",
            "deploy_root": str(root or "/srv/mlops-imdb"),
            "ssh": {"known_hosts": "/nonexistent/known_hosts"},
            "approval": approval or {},
            "app": {"secrets": {"IMDB_API_TOKEN": "TEST_API_TOKEN"}},
            "lock": {"ttl_s": 60, "heartbeat_s": 10},
            "hosts": hosts
            or [{"name": "h1", "address": "127.0.0.1"}, {"name": "h2", "address": "127.0.0.1"}],
        }
    )


def orchestrator(
    environment: Environment, environ: dict[str, str] | None = None
) -> tuple[Orchestrator, list[str]]:
    lines: list[str] = []
    return Orchestrator(environment, environ=environ or {}, echo=lines.append), lines


def no_confirm(prompt: str) -> str:
    raise AssertionError(f"asked for confirmation: {prompt}")


STATES: dict[str, HostState | None] = {
    "h1": HostState("blue", {"blue": "v1"}, ["v1"]),
    "h2": HostState(),
}

# ---- approval ----------------------------------------------------------------------------------


def test_no_approval_needed() -> None:
    orch, _ = orchestrator(make_env())
    assert orch.check_approval("v2", STATES, approve=False, confirm=no_confirm) == "not required"
    assert orch.check_approval("v2", STATES, approve=True, confirm=no_confirm) == "not required"


def test_approve_flag_without_a_github_environment() -> None:
    orch, _ = orchestrator(make_env(approval={"required": True}))
    assert orch.check_approval("v2", STATES, approve=True, confirm=no_confirm) == "--approve"


PROTECTED = {"required": True, "github_environment": "production"}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"MLOPS_GITHUB_ENVIRONMENT": "production"},  # not in Actions
        {"GITHUB_ACTIONS": "true"},
        {"GITHUB_ACTIONS": "true", "MLOPS_GITHUB_ENVIRONMENT": "staging"},
        {"GITHUB_ACTIONS": "1", "MLOPS_GITHUB_ENVIRONMENT": "production"},
    ],
)
def test_approve_flag_refused_outside_the_protected_github_environment(
    environ: dict[str, str],
) -> None:
    orch, _ = orchestrator(make_env(approval=PROTECTED), environ)
    with pytest.raises(ApprovalError, match="only from a GitHub Actions job") as error:
        orch.check_approval("v2", STATES, approve=True, confirm=no_confirm)
    assert "'production'" in str(error.value)


def test_approve_flag_accepted_in_the_protected_github_environment() -> None:
    environ = {"GITHUB_ACTIONS": "true", "MLOPS_GITHUB_ENVIRONMENT": "production"}
    orch, _ = orchestrator(make_env(approval=PROTECTED), environ)
    how = orch.check_approval("v2", STATES, approve=True, confirm=no_confirm)
    assert how == "--approve in GitHub environment production"


def test_approval_reads_the_given_environ_not_the_process_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("MLOPS_GITHUB_ENVIRONMENT", "production")
    orch, _ = orchestrator(make_env(approval=PROTECTED), {})
    with pytest.raises(ApprovalError):
        orch.check_approval("v2", STATES, approve=True, confirm=no_confirm)


@pytest.mark.parametrize("approval", [{"required": True}, PROTECTED])
def test_typing_the_environment_name_approves(
    monkeypatch: pytest.MonkeyPatch, approval: dict[str, object]
) -> None:
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    orch, _ = orchestrator(make_env(approval=approval))
    prompts: list[str] = []

    def confirm(prompt: str) -> str:
        prompts.append(prompt)
        return "  production\n"

    assert orch.check_approval("v2", STATES, approve=False, confirm=confirm) == (
        "confirmed by octocat"
    )
    (prompt,) = prompts
    assert "Deploy v2 to production" in prompt
    assert "h1: v1 -> v2" in prompt
    assert "h2: (none) -> v2" in prompt
    assert prompt.rstrip().endswith("Type the environment name to approve:")


@pytest.mark.parametrize("answer", ["", "y", "yes", "PRODUCTION", "production-1", "staging"])
def test_anything_else_refuses(answer: str) -> None:
    orch, _ = orchestrator(make_env(approval={"required": True}))
    with pytest.raises(ApprovalError, match="production: not approved"):
        orch.check_approval("v2", STATES, approve=False, confirm=lambda prompt: answer)


def test_no_terminal_and_no_confirm_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("production\n"))
    orch, _ = orchestrator(make_env(approval={"required": True}))
    with pytest.raises(ApprovalError, match="needs approval: run in a terminal"):
        orch.check_approval("v2", STATES, approve=False)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_asks_with_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt: "production")
    orch, _ = orchestrator(make_env(approval={"required": True}))
    assert orch.check_approval("v2", STATES, approve=False).startswith("confirmed by ")


# ---- rollback target ---------------------------------------------------------------------------


def _states(*lives: str | None) -> dict[str, HostState]:
    return {
        f"h{i}": HostState("blue" if v else None, {"blue": v} if v else {})
        for i, v in enumerate(lives, 1)
    }


@pytest.mark.parametrize(
    ("histories", "lives", "expected"),
    [
        ([["v1", "v2", "v3"], ["v1", "v2", "v3"]], ("v3", "v3"), "v2"),
        ([["v1", "v2", "v3"], ["v1", "v3"]], ("v3", "v3"), "v1"),  # v2 missing on h2
        ([["v1", "v2", "v3"], ["v1", "v2"]], ("v3", "v2"), "v1"),  # half-done: both lives out
        ([["v1", "v2", "v3", "v4"], ["v2", "v1", "v3", "v4"]], ("v4", "v4"), "v3"),
        ([["v3", "v1", "v2"]], ("v2",), "v1"),  # history order is the order they went live
        ([["v3"], ["v3"]], ("v3", "v3"), None),  # nothing before the live one
        ([["v1", "v2"], ["v3", "v4"]], ("v2", "v4"), None),  # nothing in common
        ([], (), None),
    ],
)
def test_previous_common_release(
    histories: list[list[str]], lives: tuple[str, ...], expected: str | None
) -> None:
    assert _previous_common_release(histories, _states(*lives)) == expected


# ---- outcome, audit entry, timeline ------------------------------------------------------------


def make_outcome() -> Outcome:
    return Outcome(
        id="abc123def456",
        action="deploy",
        environment="staging",
        user="octocat",
        started="2026-11-26T13:45:22+00:00",
        from_versions={"h1": "v1", "h2": None},
        to_version="v2",
        result="failed",
        detail="prepare failed",
        seconds=12.5,
        events=[
            Event(0.1, "h1", "pull", "registry.example/mlops-imdb-api:v2"),
            Event(3.25, "*", "failed", "prepare failed", ok=False),
        ],
    )


def test_audit_entry_is_the_outcome_without_its_events() -> None:
    outcome = make_outcome()
    entry = outcome.audit_entry()
    assert entry == {
        "id": "abc123def456",
        "action": "deploy",
        "environment": "staging",
        "user": "octocat",
        "started": "2026-11-26T13:45:22+00:00",
        "from_versions": {"h1": "v1", "h2": None},
        "to_version": "v2",
        "to_digest": None,
        "signed_by": "",
        "release": None,
        "skipped": [],  # every host: not a --partial release
        "result": "failed",
        "detail": "prepare failed",
        "seconds": 12.5,
    }
    assert json.loads(json.dumps(entry)) == entry
    from_versions = entry["from_versions"]
    assert isinstance(from_versions, dict)
    from_versions["h1"] = "changed"
    assert outcome.from_versions["h1"] == "v1"  # a copy, not the outcome's own


def test_save_outcome_writes_the_timeline(tmp_path: Path) -> None:
    outcome = make_outcome()
    path = cli.save_outcome(outcome, tmp_path / "reports" / "deploys")
    assert path.name == "staging-20261126T134522Z-deploy-abc123def456.json"
    data = json.loads(path.read_text())
    assert {k: v for k, v in data.items() if k not in ("events", "benchmark")} == (
        outcome.audit_entry()
    )
    assert data["benchmark"] is None  # no gate ran
    assert data["events"] == [
        {"at": 0.1, "host": "h1", "step": "pull",
         "detail": "registry.example/mlops-imdb-api:v2", "ok": True},
        {"at": 3.25, "host": "*", "step": "failed", "detail": "prepare failed", "ok": False},
    ]  # fmt: skip


def test_step_redacts_secrets_in_the_echo_and_the_timeline() -> None:
    environ = {
        "TEST_API_TOKEN": "tok-abcdef-123",
        SSH_KEY_VAR: "ssh-private-key-material",
        "NOT_SECRET": "harmless-value",
    }
    orch, lines = orchestrator(make_env(), environ)
    orch.outcome = make_outcome()
    orch.outcome.events.clear()
    orch.step("h1", "pull", "token tok-abcdef-123, key ssh-private-key-material, harmless-value")
    (line,) = lines
    assert "tok-abcdef-123" not in line
    assert "ssh-private-key-material" not in line
    assert "token ***, key ***, harmless-value" in line
    assert orch.outcome.events[0].detail == "token ***, key ***, harmless-value"


def test_failed_steps_are_marked() -> None:
    orch, lines = orchestrator(make_env())
    orch.step("h2", "switch", "nginx -t refused", ok=False)
    orch.step("h2", "switched")
    assert "FAILED switch: nginx -t refused" in lines[0]
    assert lines[1].rstrip().endswith("h2             switched")


# ---- built_version, status_table ---------------------------------------------------------------


RECORD = {
    "release": "20261126.133341-22a474db-t0123456789ab", "commit": "c" * 40,
    "tree": "0123456789ab" * 3, "dirty": False, "created": "2026-11-26T13:33:41Z", "source": "https://example.org/x",
    "model": {"version": "20261126.133341-22a474db", "manifest_sha256": "d" * 64,
              "data_fingerprint": "e" * 64, "metrics": {}},
    "images": {"api": {"reference": "r/api:t", "digest": "sha256:" + "f" * 64}},
}  # fmt: skip


def test_built_release_reads_the_release_record(tmp_path: Path) -> None:
    record = tmp_path / "release.json"
    record.write_text(json.dumps(RECORD))
    assert cli.built_release(record) == (RECORD["release"], "sha256:" + "f" * 64)


def test_target_release_prefers_what_was_given_then_what_was_built(tmp_path: Path) -> None:
    record = tmp_path / "release.json"
    record.write_text(json.dumps(RECORD))
    built = (RECORD["release"], "sha256:" + "f" * 64)
    assert cli.target_release(None, None, record) == built
    assert cli.target_release(str(RECORD["release"]), None, record) == built
    assert cli.target_release("other", None, record) == ("other", None)  # hosts or registry
    assert cli.target_release("other", "sha256:1", record) == ("other", "sha256:1")
    assert cli.target_release("other", None, tmp_path / "none.json") == ("other", None)


@pytest.mark.parametrize(
    "content",
    [
        None,  # no file
        "",
        "not json",
        "[]",
        '{"release": "x"}',
        json.dumps({**RECORD, "images": {}}),  # built, never pushed
        json.dumps({**RECORD, "model": "m"}),
    ],
)
def test_built_release_errors_clearly(tmp_path: Path, content: str | None) -> None:
    record = tmp_path / "release.json"
    if content is not None:
        record.write_text(content)
    with pytest.raises(cli.CliError) as error:
        cli.built_release(record)
    assert str(record) in str(error.value)
    assert "--version" in str(error.value)


def test_status_table() -> None:
    rows: list[dict[str, object]] = [
        {"host": "h1", "ssh": "10.0.0.1:22", "http": "http://10.0.0.1:80", "reachable": True,
         "colour": "blue", "version": "v2", "healthy": True},
        {"host": "h2", "ssh": "10.0.0.2:22", "http": "http://10.0.0.2:80", "reachable": True,
         "colour": None, "version": None, "healthy": False, "interrupted_switch": True},
        {"host": "h3", "ssh": "10.0.0.3:22", "http": "http://10.0.0.3:80", "reachable": False,
         "healthy": False, "error": "h3: cannot connect to 10.0.0.3:22: refused"},
    ]  # fmt: skip
    header, rule, h1, h2, h3, error = cli.status_table(rows).splitlines()
    assert header.split() == ["host", "ssh", "http", "colour", "release", "health"]
    assert set(rule) == {"-"}
    assert h1.split() == ["h1", "10.0.0.1:22", "http://10.0.0.1:80", "blue", "v2", "ok"]
    assert h2.split()[:6] == ["h2", "10.0.0.2:22", "http://10.0.0.2:80", "-", "-", "DOWN"]
    assert "(interrupted switch: the next deploy or rollback repairs it)" in h2
    assert h3.split() == ["h3", "10.0.0.3:22", "http://10.0.0.3:80", "-", "-", "UNREACHABLE"]
    assert error == "    h3: cannot connect to 10.0.0.3:22: refused"


def test_status_table_names_the_release_digest_and_commit() -> None:
    row: dict[str, object] = {
        "host": "h1", "ssh": "a:22", "http": "http://a", "reachable": True, "colour": "blue",
        "version": "m-t0123", "digest": "sha256:abc", "commit": "c0ffee", "model_version": "m",
        "healthy": True,
    }  # fmt: skip
    lines = cli.status_table([row]).splitlines()
    assert lines[2].split()[4] == "m-t0123"
    assert lines[3].split() == [
        "digest", "sha256:abc", "commit", "c0ffee", "model", "m", "unsigned"
    ]  # fmt: skip
    signed = cli.status_table([{**row, "signed_by": "F" * 40}]).splitlines()
    assert signed[3].split()[-3:] == ["signed", "by", "F" * 40]


def test_status_table_without_hosts_is_just_the_header() -> None:
    assert len(cli.status_table([]).splitlines()) == 2


# ---- main: usage and configuration errors exit 2 -----------------------------------------------


def test_unknown_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "no-such-env"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no environment 'no-such-env'")
    assert "'staging'" in err  # the available ones
    assert "Traceback" not in err


def test_invalid_environment_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(
        'image = "x/y"\ncolor = "blue"\n[ssh]\nknown_hosts = "/k"\n'
        '[[hosts]]\nname = "h1"\naddress = "10.0.0.1"\n'
    )
    assert cli.main(["lock", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:")
    assert "color" in err


def test_unreadable_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("image = \n")
    assert cli.main(["audit", "--limit", "3", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_deploy_without_a_version_or_a_built_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "local.toml"
    path.write_text(
        f'image = "x/y"\ndeploy_root = "{tmp_path}"\n[ssh]\nknown_hosts = "/k"\n'
        '[[hosts]]\nname = "h1"\naddress = "192.0.2.1"\n'
    )
    monkeypatch.setattr(cli, "RELEASE_RECORD", tmp_path / "none.json")
    monkeypatch.setattr(cli.built_release, "__defaults__", (tmp_path / "none.json",))
    monkeypatch.setattr(cli.target_release, "__defaults__", (tmp_path / "none.json",))
    assert cli.main(["deploy", str(path)]) == 2
    captured = capsys.readouterr()
    assert "error: no --version given and no release recorded" in captured.err
    assert "timeline:" not in captured.out  # nothing started


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["deploy"],
        ["bogus", "staging"],
        ["audit", "--limit", "many", "staging"],
        ["status", "--version", "v1", "staging"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_run_refuses_an_unknown_action() -> None:
    with pytest.raises(cli.CliError, match="unknown action 'explode'"):
        cli.run("explode", make_env())


# ---- the orchestrator against local roots ------------------------------------------------------


class LocalRunner(HostRunner):
    """Runs a host's commands in a local shell (sandbox roots are local paths anyway)."""

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        done = subprocess.run(
            ["sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout_s or 30,
            check=False,
            env=LOCAL_ENV,
        )
        result = Result(done.stdout, done.stderr, done.returncode)
        if check and not result.ok:
            raise RemoteError(self.name, self.redact(f"exited {result.exit_code}: {done.stderr}"))
        return result

    def put_text(self, path: PurePosixPath, text: str, mode: int = 0o644) -> None:
        target = Path(str(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def close(self) -> None:
        pass


@pytest.fixture
def ready_server() -> Iterator[str]:
    """An nginx stand-in that answers every GET with 200; yields host:port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as address:
        yield address


def local_orchestrator(
    environment: Environment, environ: dict[str, str] | None = None
) -> tuple[Orchestrator, list[str]]:
    lines: list[str] = []
    orch = Orchestrator(
        environment, environ=environ or {}, echo=lines.append, runner_factory=LocalRunner
    )
    return orch, lines


def sandbox(tmp_path: Path, hosts: int = 2) -> Environment:
    return make_env(
        tmp_path / "roots",
        name="sandbox-test",
        hosts=[{"name": f"h{i}", "address": "127.0.0.1"} for i in range(1, hosts + 1)],
    )


def lock_record(layout: HostLayout) -> str:
    out = subprocess.run(
        ["sh", "-c", commands.lock_show(layout)], capture_output=True, text=True, check=True
    ).stdout
    return [*out.splitlines(), "", "", ""][2]


def new_outcome(user: str, deploy_id: str) -> Outcome:
    return Outcome(deploy_id, "deploy", "sandbox-test", user, "2026-11-26T13:45:22+00:00", {}, "v2")


def take_lock(orch: Orchestrator, user: str, deploy_id: str) -> EnvironmentLock:
    """`user`'s deploy `deploy_id` takes the environment's lock, as a release does."""
    outcome = new_outcome(user, deploy_id)
    lock = orch.new_lock(outcome)
    lock.acquire(orch.holder(outcome))
    return lock


def test_lock_round_trip_through_the_orchestrator(tmp_path: Path) -> None:
    env = sandbox(tmp_path)
    alice, alice_lines = local_orchestrator(env)
    assert alice.lock_info() is None

    alices = take_lock(alice, "alice", "dep-a")
    assert "2 host(s), expires after 60 s" in alice_lines[-1]
    info = alice.lock_info()
    assert info is not None
    assert (info["holder"], info["deploy_id"], info["version"]) == ("alice", "dep-a", "v2")
    assert 55 <= int(str(info["expires_in_s"])) <= 60

    bob, _ = local_orchestrator(env)
    with pytest.raises(LockHeldError, match="is locked by") as error:
        take_lock(bob, "bob", "dep-b")
    assert '"holder": "alice"' in str(error.value)
    assert "fab unlock --env sandbox-test" in str(error.value)

    alices.release()
    assert alice.lock_info() is None
    take_lock(bob, "bob", "dep-b")
    assert bob.lock_info() is not None


def test_a_refused_lock_releases_the_hosts_already_taken(tmp_path: Path) -> None:
    env = sandbox(tmp_path, hosts=3)
    h1, h2, h3 = (env.layout(host) for host in env.hosts)
    foreign = commands.lock_acquire(h2, {"holder": "carol"}, "token-carol", 60)
    subprocess.run(["sh", "-c", foreign], check=True, capture_output=True)

    orch, _ = local_orchestrator(env)
    with pytest.raises(LockHeldError, match=r"\(on h2\)"):
        take_lock(orch, "alice", "dep-a")
    assert lock_record(h1) == ""  # taken (or never reached), then given back
    assert json.loads(lock_record(h2)) == {"holder": "carol"}
    assert lock_record(h3) == ""


def test_an_expired_lock_is_taken_over_and_reported(tmp_path: Path) -> None:
    env = sandbox(tmp_path)
    for host in env.hosts:
        layout = env.layout(host)
        stale = commands.lock_acquire(layout, {"holder": "dead"}, "token-dead", 60)
        subprocess.run(["sh", "-c", stale], check=True, capture_output=True)
        Path(str(layout.root), "lock.expires").write_text("1\n")

    orch, lines = local_orchestrator(env)
    take_lock(orch, "alice", "dep-a")
    takeovers = [line for line in lines if "took over an expired lock" in line]
    assert len(takeovers) == 2
    assert all('"holder": "dead"' in line for line in takeovers)
    info = orch.lock_info()
    assert info is not None
    assert info["holder"] == "alice"


def test_unlock_releases_every_host_and_is_audited(tmp_path: Path) -> None:
    env = sandbox(tmp_path)
    holder, _ = local_orchestrator(env)
    take_lock(holder, "alice", "dep-a")

    admin, _ = local_orchestrator(env)
    released = admin.unlock("deploy runner died")
    assert [json.loads(record)["holder"] for record in released] == ["alice", "alice"]
    assert admin.lock_info() is None
    assert admin.unlock() == []  # nothing left: still fine, and audited

    entries = admin.audit_log(limit=10)  # the same entries on both hosts, merged
    assert [entry["action"] for entry in entries] == ["unlock", "unlock"]
    assert {str(entry["detail"]).split(";")[0] for entry in entries} == {
        "deploy runner died",
        "forced",
    }
    for host in env.hosts:
        assert len(Path(str(env.layout(host).audit_log)).read_text().splitlines()) == 2


def test_audit_log_merges_hosts_and_keeps_the_newest(tmp_path: Path) -> None:
    env = sandbox(tmp_path)
    h1, h2 = (env.layout(host) for host in env.hosts)
    entries = [
        {"id": f"id{i}", "result": "ok", "started": f"2026-01-0{i}T00:00:00+00:00"}
        for i in range(1, 6)
    ]

    def append(layout: HostLayout, entry: dict[str, str]) -> None:
        subprocess.run(["sh", "-c", commands.audit_append(layout, entry)], check=True)

    for entry in entries[:4]:
        append(h1, entry)
    for entry in [entries[2], entries[4]]:  # h2 missed some, has a newer one
        append(h2, entry)
    with Path(str(h2.audit_log)).open("a") as log:
        log.write("not json\n")

    orch, _ = local_orchestrator(env)
    assert [e["id"] for e in orch.audit_log(limit=10)] == ["id1", "id2", "id3", "id4", "id5"]
    assert [e["id"] for e in orch.audit_log(limit=2)] == ["id4", "id5"]


def test_audit_entries_are_redacted_on_the_hosts(tmp_path: Path) -> None:
    env = sandbox(tmp_path)
    orch, _ = local_orchestrator(env, {"TEST_API_TOKEN": "tok-abcdef-123"})
    orch.unlock("pasted tok-abcdef-123 by mistake")
    for host in env.hosts:
        log = Path(str(env.layout(host).audit_log)).read_text()
        assert "tok-abcdef-123" not in log
        assert "pasted *** by mistake" in log


@pytest.mark.parametrize("secret", ['pa"ss-word', "back\\slash-1", "pässwort-1"])
def test_audit_entries_are_redacted_whatever_the_secret_contains(
    tmp_path: Path, secret: str
) -> None:
    env = sandbox(tmp_path)
    orch, _ = local_orchestrator(env, {"TEST_API_TOKEN": secret})
    orch.unlock(f"pasted {secret} by mistake")
    details = [str(entry["detail"]) for entry in orch.audit_log()]
    assert details
    assert not [detail for detail in details if secret in detail]


def test_status_reports_health_state_and_interrupted_switches(
    tmp_path: Path, ready_server: str, require_tool: Callable[[str], str]
) -> None:
    require_tool("curl")
    env = make_env(
        tmp_path / "roots",
        name="sandbox-test",
        hosts=[
            {"name": "h1", "address": "127.0.0.1", "http_address": ready_server},
            {"name": "h2", "address": "127.0.0.1", "http_address": f"127.0.0.1:{free_port()}"},
            {"name": "h3", "address": "127.0.0.1", "http_address": ready_server},
        ],
    )
    h1, h2, h3 = (env.layout(host) for host in env.hosts)
    for layout in (h1, h2, h3):
        Path(str(layout.root)).mkdir(parents=True)
    state = HostState("green", {"blue": "v1", "green": "v2"}, ["v1", "v2"])
    Path(str(h1.state_file)).write_text(state.dump())
    Path(str(h2.journal)).write_text('{"deploy_id": "x", "to_colour": "blue", "version": "v1"}')
    Path(str(h3.state_file)).write_text("{ corrupt")

    orch, _ = local_orchestrator(env)
    rows = orch.status()
    assert [row["host"] for row in rows] == ["h1", "h2", "h3"]
    one, two, three = rows
    assert one["http"] == f"http://{ready_server}"
    assert (one["reachable"], one["healthy"], one["colour"], one["version"], one["kept"]) == (
        True, True, "green", "v2", "v1",
    )  # fmt: skip
    assert one["interrupted_switch"] is False
    assert (two["reachable"], two["healthy"], two["colour"], two["version"]) == (
        True, False, None, None,
    )  # fmt: skip
    assert two["interrupted_switch"] is True
    assert (three["reachable"], three["healthy"]) == (False, False)
    assert "state.json is not a valid record" in str(three["error"])

    table = cli.status_table(rows)
    assert " ok" in table.splitlines()[2]
    assert "DOWN (interrupted switch" in table.splitlines()[3]
    assert "UNREACHABLE" in table.splitlines()[4]


def test_local_runner_is_what_the_orchestrator_uses(tmp_path: Path) -> None:
    """Guard for the tests above: no SSH runner was built behind their back."""
    orch, _ = local_orchestrator(sandbox(tmp_path))
    assert all(type(runner) is LocalRunner for runner in orch.runners.values())
    result = orch.runners["h1"].run(f"echo {shlex.quote('it works')}")
    assert result == Result("it works\n", "", 0)


def test_setup_writes_a_file_only_when_its_content_or_mode_differs(tmp_path: Path) -> None:
    orch, _ = local_orchestrator(sandbox(tmp_path, hosts=1))
    runner = orch.runners[orch.environment.hosts[0].name]
    path = PurePosixPath(str(tmp_path / "roots" / "site.conf"))
    Path(str(path)).parent.mkdir(parents=True)
    assert hostsetup.put(runner, path, "server {}\n")  # missing: written
    assert not hostsetup.put(runner, path, "server {}\n")  # the same: left alone
    assert hostsetup.put(runner, path, "server { listen 1; }\n")  # other content: written
    assert hostsetup.put(runner, path, "server { listen 1; }\n", mode=0o600)  # other mode: written
    assert Path(str(path)).stat().st_mode & 0o777 == 0o600
    assert not hostsetup.put(runner, path, "server { listen 1; }\n", mode=0o600)


def test_benchmark_history_keeps_the_kept_releases_and_travels_as_a_file(tmp_path: Path) -> None:
    """A host 1,000 releases old: its record stays `keep_releases` long, newest last, and is
    uploaded (an argument that long passed Linux's limit after about 700 releases)."""
    orch, _ = local_orchestrator(sandbox(tmp_path, hosts=1))
    host = orch.environment.hosts[0]
    path = Path(str(orch.environment.layout(host).benchmarks))
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = loadcheck.Measurement(100, 0, 2.0, 1.0, 2.0, 3.0)
    path.write_text(json.dumps({f"r{n}": figures.as_dict() for n in range(1000)}))
    commands_run: list[str] = []
    runner = orch.runners[host.name]
    original = runner.run

    def spy(command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        commands_run.append(command)
        return original(command, timeout_s=timeout_s, check=check)

    runner.run = spy  # type: ignore[method-assign]
    orch._save_benchmark(host, "r500", figures)  # a release measured again moves to the end
    kept = json.loads(path.read_text())
    assert list(kept) == [*(f"r{n}" for n in range(996, 1000)), "r500"]
    assert len(kept) == orch.environment.keep_releases
    assert all(len(command) < 4096 for command in commands_run)


def test_a_light_sandbox_host_leaves_no_unit_in_this_machines_boot(tmp_path: Path) -> None:
    """Light hosts are this machine's sshds: a restore unit of theirs would start a test's
    containers at this machine's next boot, and the hosts of one environment would share it."""
    orch, lines = local_orchestrator(sandbox(tmp_path, hosts=1))
    host = orch.environment.hosts[0]
    assert orch.environment.shares_this_machine
    assert hostsetup.HostSetup(orch).restore(host, orch.runners[host.name], str(tmp_path)) == []
    assert any("a light sandbox host has no boot of its own: no unit" in line for line in lines)
    machines = orch.environment.model_copy(update={"sandbox_hosts": "machine"})
    assert not machines.shares_this_machine


def with_setup(environment: Environment, **setup: object) -> Environment:
    ssh = environment.ssh.model_copy(update={"user": "deploy"})
    settings = environment.setup.model_copy(update=setup)
    return environment.model_copy(update={"ssh": ssh, "setup": settings})


def test_the_deploy_users_key_comes_from_the_file_named_or_the_deployers_secret(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "deploy.pub"
    key_file.write_text("ssh-ed25519 AAAAC3Nza deploy@ci\n\n")
    named = with_setup(sandbox(tmp_path), user="root", authorized_key=key_file)
    orch, _ = local_orchestrator(named)
    assert hostsetup.HostSetup(orch).deploy_public_key() == "ssh-ed25519 AAAAC3Nza deploy@ci\n"
    # None named: the public half of the private key CD holds in $MLOPS_DEPLOY_SSH_KEY.
    pem = io.StringIO()
    generated = paramiko.RSAKey.generate(1024)
    generated.write_private_key(pem)
    from_secret, _ = local_orchestrator(
        with_setup(sandbox(tmp_path), user="root"), {SSH_KEY_VAR: pem.getvalue()}
    )
    assert hostsetup.HostSetup(from_secret).deploy_public_key() == (
        f"ssh-rsa {generated.get_base64()} mlops-imdb deploy\n"
    )
    nothing, _ = local_orchestrator(with_setup(sandbox(tmp_path), user="root"))
    with pytest.raises(DeployError, match=r"set setup\.authorized_key or"):
        hostsetup.HostSetup(nothing).deploy_public_key()
    missing, _ = local_orchestrator(
        with_setup(sandbox(tmp_path), user="root", authorized_key=tmp_path / "gone.pub")
    )
    with pytest.raises(DeployError, match="the deploy user's public key"):
        hostsetup.HostSetup(missing).deploy_public_key()


class RecordingRoot:
    """A stand-in root login for one function's unit test: answers useradd and getent as a
    host would, records the commands and the files."""

    name = "h1"

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.files: dict[PurePosixPath, tuple[str, int]] = {}

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        self.commands.append(command)
        answers = {"id -u": "created\n", "getent passwd": "/home/mlops-read\n"}
        out = next((text for start, text in answers.items() if command.startswith(start)), "")
        return Result(out, "", 0)

    def put_text(self, path: PurePosixPath, text: str, mode: int = 0o644) -> None:
        self.files[path] = (text, mode)


def with_reader(environment: Environment, **reader: Any) -> Environment:
    return environment.model_copy(update={"reader": ReaderSettings(user="mlops-read", **reader)})


def test_setup_makes_the_reader_with_its_one_key_restricted_in_a_file_root_owns(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "read.pub"
    key_file.write_text("ssh-ed25519 AAAAC3Nza reader@laptop\n")
    environment = with_reader(with_setup(sandbox(tmp_path), user="root"), authorized_key=key_file)
    orch, _ = local_orchestrator(environment)
    root, host = RecordingRoot(), environment.hosts[0]
    assert hostsetup.HostSetup(orch).reader(host, root) == ["user mlops-read", "reader key"]
    home = PurePosixPath("/home/mlops-read")
    text, mode = root.files[home / ".ssh" / "authorized_keys"]
    layout = environment.layout(host)
    assert (text, mode) == (commands.reader_authorized_keys(layout, key_file.read_text()), 0o644)
    # Root's before the key goes in and after: the reader cannot change its restriction.
    assert root.commands.count(commands.root_owned_ssh_dir(home)) == 2
    # No key file and no private key in $MLOPS_READ_SSH_KEY: refused, saying what to set.
    keyless, _ = local_orchestrator(with_reader(with_setup(sandbox(tmp_path), user="root")))
    with pytest.raises(DeployError, match=r"reader user: set reader\.authorized_key or"):
        hostsetup.HostSetup(keyless).reader(host, RecordingRoot())


def test_a_reader_without_root_to_make_it_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    deploy_only = with_setup(sandbox(tmp_path), user=None)  # a non-root deploy user, no admin
    orch, _ = local_orchestrator(with_reader(deploy_only, identity_file=tmp_path / "read"))
    with pytest.raises(DeployError, match="only root makes the reader 'mlops-read'"):
        hostsetup.HostSetup(orch).provision(orch.environment.hosts[0])


def test_the_audit_records_the_login_and_key_beside_the_claimed_actor(tmp_path: Path) -> None:
    orch, _ = local_orchestrator(sandbox(tmp_path))
    orch._audit({"id": "a1", "user": "claimed-by-github-actor"})
    (entry,) = orch.audit_log()
    assert entry["user"] == "claimed-by-github-actor"
    assert entry["login"] == orch.environment.deploy_user
    assert entry["key"] == "agent"  # this environment names no key: the SSH agent's


def test_audit_verify_finds_the_line_edited_on_one_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orch, _ = local_orchestrator(sandbox(tmp_path))
    for n in range(4):
        orch._audit({"id": f"a{n}", "action": "deploy", "result": "ok"})
    assert orch.verify_audit() == {"h1": "4 entries chain", "h2": "4 entries chain"}
    assert cli._audit(orch, 20, verify=True) == 0
    log = Path(str(orch.environment.layout(orch.environment.hosts[1]).audit_log))
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"result":"ok"', '"result":"failed"')
    log.write_text("\n".join(lines) + "\n")
    found = orch.verify_audit()
    assert found["h1"] == "4 entries chain"
    assert found["h2"].startswith("BROKEN at line 3: its prev")
    assert cli._audit(orch, 20, verify=True) == 1
    assert "h2: BROKEN at line 3" in capsys.readouterr().out
    log.write_text("\n".join(lines[:2]) + "\n")  # cut short: chains, but ends elsewhere
    log.write_text(log.read_text().replace('"result":"failed"', '"result":"ok"'))
    assert "end in different entries" in orch.verify_audit()["*"]
