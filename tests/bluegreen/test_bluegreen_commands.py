"""The command builders, checked by running the shell they produce wherever that is safe locally:
the lock and the audit log on a temporary root, the readiness wait against a local HTTP server,
nginx's own `-t` on the generated config; and by parsing the container command line."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from ipaddress import IPv4Network
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from imdb_deploy.bluegreen import auditlog, commands
from imdb_deploy.bluegreen.config import Environment, load_environment
from imdb_deploy.bluegreen.layout import HostLayout
from imdb_deploy.bluegreen.runner import AsRoot, RemoteError, Result
from imdb_deploy.supply_chain import signing
from tests.support import free_port, serving

# Subprocesses must not send loopback requests through a proxy of the machine running the tests.
LOCAL_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def sh(
    command: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
        env=dict(LOCAL_ENV if env is None else env),
    )


def make_env(
    root: Path, *, mode: str = "own", host: Mapping[str, object] | None = None
) -> Environment:
    """A one-host sandbox environment rooted in `root` (already absolute: no resolution)."""
    return Environment.model_validate(
        {
            "name": "test-env",
            "sandbox": True,
            "image": "registry.example/mlops-imdb-api",
            "deploy_root": str(root),
            "ssh": {"known_hosts": str(root / "known_hosts")},
            "nginx": {"mode": mode, "port": 18080, "user": pwd.getpwuid(os.geteuid()).pw_name},
            "app": {
                "ports": {"blue": 9101, "green": 9102},
                "settings": {"IMDB_API_LOG_LEVEL": "setting-value-debug"},
                "secrets": {"IMDB_API_TOKEN": "TEST_API_TOKEN"},
                "stop_timeout_s": 12.7,
            },
            "hosts": [{"name": "h1", "address": "127.0.0.1", **(host or {})}],
        }
    )


@pytest.fixture
def layout(tmp_path: Path) -> HostLayout:
    return HostLayout(PurePosixPath(tmp_path / "root"))


def local(path: PurePosixPath) -> Path:
    return Path(str(path))


# ---- the lock ----------------------------------------------------------------------------------

ALICE: dict[str, object] = {
    "holder": "alice",
    "deploy_id": "d-1",
    "note": 'it\'s "quoted", $HOME, `id` and \\ too',
    "pid": 42,
}
BOB: dict[str, object] = {"holder": "bob", "deploy_id": "d-2"}


def lock_state(layout: HostLayout) -> tuple[int, int, str]:
    """`lock_show` parsed: (host clock, expiry, record)."""
    out = sh(commands.lock_show(layout))
    assert out.returncode == 0, out.stderr
    now, expires, record = [*out.stdout.splitlines(), "", "", ""][:3]
    return int(now), int(expires), record


def test_lock_show_on_a_free_lock(layout: HostLayout) -> None:
    local(layout.root).mkdir(parents=True)
    now, expires, record = lock_state(layout)
    assert abs(now - time.time()) < 5
    assert (expires, record) == (0, "")


def test_lock_acquire_is_refused_while_held(layout: HostLayout) -> None:
    first = sh(commands.lock_acquire(layout, ALICE, "token-alice", 60))
    assert (first.returncode, first.stdout) == (0, "acquired\n"), first.stderr
    now, expires, record = lock_state(layout)
    assert json.loads(record) == ALICE
    assert 59 <= expires - now <= 60

    second = sh(commands.lock_acquire(layout, BOB, "token-bob", 60))
    assert second.returncode == commands.LOCK_HELD
    assert json.loads(second.stdout) == ALICE  # who holds it, to tell the one refused
    assert json.loads(lock_state(layout)[2]) == ALICE  # unchanged


def test_lock_acquire_creates_the_root(layout: HostLayout) -> None:
    assert not local(layout.root).exists()
    assert sh(commands.lock_acquire(layout, ALICE, "t", 60)).stdout == "acquired\n"
    assert local(layout.root).is_dir()


def test_lock_renew_only_for_the_holder(layout: HostLayout) -> None:
    sh(commands.lock_acquire(layout, ALICE, "token-alice", 60))
    expires_file = local(layout.root) / "lock.expires"
    soon = int(time.time()) + 5
    expires_file.write_text(f"{soon}\n")

    wrong = sh(commands.lock_renew(layout, "token-bob", 600))
    assert wrong.returncode == commands.LOCK_HELD
    assert int(expires_file.read_text()) == soon

    right = sh(commands.lock_renew(layout, "token-alice", 600))
    assert right.returncode == 0, right.stderr
    assert int(expires_file.read_text()) >= soon + 590


def test_an_expired_lock_is_not_renewed_even_for_its_holder(layout: HostLayout) -> None:
    """Past its expiry anyone could have taken it meanwhile: the holder must stop, not renew."""
    sh(commands.lock_acquire(layout, ALICE, "token-alice", 60))
    expires_file = local(layout.root) / "lock.expires"
    expired = int(time.time()) - 1
    expires_file.write_text(f"{expired}\n")

    renewal = sh(commands.lock_renew(layout, "token-alice", 600))
    assert renewal.returncode == commands.LOCK_EXPIRED
    assert int(expires_file.read_text()) == expired


def test_lock_renew_without_a_lock_is_refused(layout: HostLayout) -> None:
    assert sh(commands.lock_renew(layout, "token-alice", 60)).returncode == commands.LOCK_HELD


def test_an_expired_lock_is_taken_over(layout: HostLayout) -> None:
    sh(commands.lock_acquire(layout, ALICE, "token-alice", 60))
    (local(layout.root) / "lock.expires").write_text(f"{int(time.time()) - 5}\n")

    takeover = sh(commands.lock_acquire(layout, BOB, "token-bob", 60))
    assert takeover.returncode == 0, takeover.stderr
    first, stale = takeover.stdout.splitlines()
    assert first == "expired"
    assert json.loads(stale) == ALICE  # the stale holder, for the timeline
    assert json.loads(lock_state(layout)[2]) == BOB

    # The old holder lost it: it can neither renew nor release bob's lock.
    assert sh(commands.lock_renew(layout, "token-alice", 60)).returncode == commands.LOCK_HELD
    assert sh(commands.lock_release(layout, "token-alice")).returncode == 0
    assert json.loads(lock_state(layout)[2]) == BOB


def test_lock_release_leaves_someone_elses_lock(layout: HostLayout) -> None:
    sh(commands.lock_acquire(layout, ALICE, "token-alice", 60))
    assert sh(commands.lock_release(layout, "token-bob")).returncode == 0
    assert json.loads(lock_state(layout)[2]) == ALICE

    assert sh(commands.lock_release(layout, "token-alice")).returncode == 0
    assert lock_state(layout)[1:] == (0, "")
    assert sh(commands.lock_acquire(layout, BOB, "token-bob", 60)).stdout == "acquired\n"


def test_lock_force_release_removes_any_lock(layout: HostLayout) -> None:
    sh(commands.lock_acquire(layout, ALICE, "token-alice", 60))
    forced = sh(commands.lock_force_release(layout))
    assert forced.returncode == 0
    assert json.loads(forced.stdout) == ALICE  # what it removed
    assert lock_state(layout)[1:] == (0, "")
    assert sh(commands.lock_acquire(layout, BOB, "token-bob", 60)).stdout == "acquired\n"

    sh(commands.lock_force_release(layout))
    again = sh(commands.lock_force_release(layout))
    assert (again.returncode, again.stdout) == (0, "")


def test_concurrent_acquires_have_exactly_one_winner(layout: HostLayout) -> None:
    local(layout.root).mkdir(parents=True)

    def acquire(i: int) -> subprocess.CompletedProcess[str]:
        holder = {"holder": f"user-{i}"}
        return sh(commands.lock_acquire(layout, holder, f"token-{i}", 60))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(acquire, range(8)))
    winners = [r for r in results if r.returncode == 0]
    assert len(winners) == 1
    assert winners[0].stdout == "acquired\n"
    winner = json.loads(lock_state(layout)[2])
    for refused in (r for r in results if r.returncode != 0):
        assert refused.returncode == commands.LOCK_HELD
        assert json.loads(refused.stdout) == winner


# ---- the audit log -----------------------------------------------------------------------------

AWKWARD_ENTRIES: list[dict[str, object]] = [
    {"id": "a1", "detail": "it's \"quoted\" and 'single'"},
    {"id": "a2", "detail": "$(touch pwned) `touch pwned2` ${HOME} $HOME"},
    {"id": "a3", "detail": "line one\nline two\r\n\ttabbed", "n": 3, "none": None},
    {"id": "a4", "detail": "naïve \u2013 ✓ \\ backslash \\n literal %s %n 100%", "list": [1, "x"]},
]


def unchained(line: str) -> dict[str, object]:
    entry = json.loads(line)
    del entry["prev"]
    return dict(entry)


def test_audit_append_round_trips_awkward_values(tmp_path: Path, layout: HostLayout) -> None:
    for entry in AWKWARD_ENTRIES:
        result = sh(commands.audit_append(layout, entry), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    lines = local(layout.audit_log).read_text().splitlines()
    assert [unchained(line) for line in lines] == AWKWARD_ENTRIES
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


def test_audit_read_gives_the_newest_lines(layout: HostLayout) -> None:
    assert sh(commands.audit_read(layout, 5)).stdout == ""  # no log yet: nothing, no error
    for entry in AWKWARD_ENTRIES:
        sh(commands.audit_append(layout, entry))
    newest = sh(commands.audit_read(layout, 2)).stdout.splitlines()
    assert [unchained(line) for line in newest] == AWKWARD_ENTRIES[-2:]


def test_each_audit_entry_carries_the_hash_of_the_line_before(layout: HostLayout) -> None:
    for entry in AWKWARD_ENTRIES:
        sh(commands.audit_append(layout, entry))
    lines = local(layout.audit_log).read_text().splitlines()
    prevs = [json.loads(line)["prev"] for line in lines]
    assert prevs == [auditlog.line_hash(None), *map(auditlog.line_hash, lines[:-1])]
    assert auditlog.chain_break(lines) is None
    assert sh(commands.audit_whole(layout)).stdout.splitlines() == lines


@pytest.mark.parametrize(
    ("tamper", "line"),
    [
        (lambda lines: [*lines[:1], lines[1].replace("a2", "a9"), *lines[2:]], 3),  # edited
        (lambda lines: [lines[0], *lines[2:]], 2),  # removed
        (lambda lines: [*lines[:2], '{"id":"x","prev":"0"}', *lines[2:]], 3),  # inserted
        (lambda lines: [*lines[:3], '{"id":"x"}'], 4),  # appended without the chain
        (lambda lines: [*lines[:2], "not json"], 3),
    ],
)
def test_a_changed_audit_log_shows_where(
    layout: HostLayout, tamper: Callable[[list[str]], list[str]], line: int
) -> None:
    for entry in AWKWARD_ENTRIES:
        sh(commands.audit_append(layout, entry))
    lines = local(layout.audit_log).read_text().splitlines()
    found = auditlog.chain_break(tamper(lines))
    assert found is not None
    assert found.line == line


def test_entries_from_before_the_chain_began_are_accepted(layout: HostLayout) -> None:
    local(layout.audit_log).parent.mkdir(parents=True, exist_ok=True)
    local(layout.audit_log).write_text('{"id":"old1"}\n{"id":"old2"}\n')
    sh(commands.audit_append(layout, {"id": "new"}))
    assert auditlog.chain_break(local(layout.audit_log).read_text().splitlines()) is None


def test_concurrent_writers_chain_one_after_the_other(layout: HostLayout) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: sh(commands.audit_append(layout, {"id": f"w{n}"})), range(24)))
    lines = local(layout.audit_log).read_text().splitlines()
    assert len(lines) == 24
    assert auditlog.chain_break(lines) is None


# ---- files and directories ---------------------------------------------------------------------


def test_make_directories_restricts_the_env_dir(layout: HostLayout) -> None:
    assert sh(commands.make_directories(layout)).returncode == 0
    assert local(layout.nginx_dir).is_dir()
    assert local(layout.env_dir).stat().st_mode & 0o777 == 0o700
    assert sh(commands.make_directories(layout)).returncode == 0  # safe to repeat


def test_install_backup_restore_and_read_file(tmp_path: Path) -> None:
    weird = tmp_path / "dir with 'quotes' and $x"
    weird.mkdir()
    target, temporary, backup = weird / "upstream.conf", weird / ".tmp", weird / "backup"
    target.write_text("old\n")
    temporary.write_text("new\n")
    posix = PurePosixPath

    assert sh(commands.backup_file(posix(target), posix(backup))).returncode == 0
    assert sh(commands.install_file(posix(temporary), posix(target), 0o600)).returncode == 0
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert not temporary.exists()
    assert sh(commands.read_file(posix(target))).stdout == "new\n"

    assert sh(commands.restore_file(posix(backup), posix(target))).returncode == 0
    assert target.read_text() == "old\n"
    missing = sh(commands.read_file(posix(weird / "missing.json")))
    assert (missing.returncode, missing.stdout) == (0, "")


def test_env_file_is_sorted_and_literal() -> None:
    values = {"IMDB_API_B": "two words", "IMDB_API_A": "x=y 'q' \"dq\" $HOME #no-comment"}
    assert commands.env_file(values) == (
        "IMDB_API_A=x=y 'q' \"dq\" $HOME #no-comment\nIMDB_API_B=two words\n"
    )
    assert commands.env_file({}) == ""


@pytest.mark.parametrize("value", ["line\nbreak", "carriage\rreturn", "trailing\n"])
def test_env_file_refuses_multi_line_values(value: str) -> None:
    with pytest.raises(ValueError, match="IMDB_API_TOKEN: values in an env file cannot span"):
        commands.env_file({"IMDB_API_OK": "fine", "IMDB_API_TOKEN": value})


def test_check_tools_names_the_missing_packages(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    sh_path = "/bin/sh"
    missing = subprocess.run(
        [sh_path, "-c", commands.check_tools()],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(empty)},
    )
    assert missing.stdout.split() == ["podman", "runc", "nginx", "curl", "util-linux"]

    full = tmp_path / "full-bin"
    full.mkdir()
    for tool in commands.HOST_PACKAGES:
        (full / tool).write_text("#!/bin/sh\n")
        (full / tool).chmod(0o755)
    present = subprocess.run(
        [sh_path, "-c", commands.check_tools()],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(full)},
    )
    assert present.stdout == ""


def test_install_packages_quotes_every_name() -> None:
    command = commands.install_packages(["podman", "util-linux", "x; rm -rf /"])
    apt = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"
    assert command.startswith(f"{apt} update -qq && {apt} install")
    assert shlex.split(command.split("&&")[1])[-3:] == ["podman", "util-linux", "x; rm -rf /"]


# ---- containers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("colour", "port"), [("blue", 9101), ("green", 9102)])
def test_run_container_argv(tmp_path: Path, colour: str, port: int) -> None:
    env = make_env(tmp_path)
    host = env.hosts[0]
    layout = env.layout(host)
    argv = shlex.split(commands.run_container(env, host, colour, "v20260101.1", layout))
    assert argv[:3] == ["podman", "run", "--detach"]
    assert argv[-1] == "registry.example/mlops-imdb-api:v20260101.1"
    for flag in [
        f"--name=mlops-imdb-api-test-env-{colour}",
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--restart=on-failure:5",  # a crash is restarted by the engine; a deploy's stop is not
        "--stop-timeout=12",
        f"--env-file={layout.env_file(colour)}",
        "--env=IMDB_API_HOST=127.0.0.1",
        f"--env=IMDB_API_PORT={port}",
        "--label=io.mlops-imdb.environment=test-env",
        f"--label=io.mlops-imdb.colour={colour}",
        "--label=io.mlops-imdb.version=v20260101.1",
    ]:
        assert flag in argv
    assert str(layout.env_file(colour)).endswith(f"/env/{colour}.env")
    assert commands.restart_policy(0) == "--restart=no"
    # Only the colour's address comes on the command line; every other setting via the file.
    assert [a for a in argv if a.startswith("--env=")] == [
        "--env=IMDB_API_HOST=127.0.0.1",
        f"--env=IMDB_API_PORT={port}",
    ]


def test_run_container_never_carries_settings_or_secrets(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    host = env.hosts[0]
    values = env.app_environment({"TEST_API_TOKEN": "sup3r-s3cret-t0ken"})
    assert values["IMDB_API_TOKEN"] == "sup3r-s3cret-t0ken"
    for colour in ("blue", "green"):
        command = commands.run_container(env, host, colour, "v1", env.layout(host))
        for name, value in values.items():
            assert value not in command
            assert name not in command


def test_run_container_listens_on_the_hosts_bind_address(tmp_path: Path) -> None:
    env = make_env(tmp_path, host={"app_bind": "127.0.0.21"})
    host = env.hosts[0]
    argv = shlex.split(commands.run_container(env, host, "blue", "v1", env.layout(host)))
    assert "--env=IMDB_API_HOST=127.0.0.21" in argv
    assert commands.colour_url(env, host, "green", "/ready") == "http://127.0.0.21:9102/ready"


def test_container_commands() -> None:
    stop = ["podman", "stop", "--ignore", "--time", "29", "c-1"]
    assert shlex.split(commands.stop_container("c-1", 29.9)) == stop
    remove = ["podman", "rm", "--force", "--ignore", "--time", "5", "c 1"]
    assert shlex.split(commands.remove_container("c 1")) == remove
    assert shlex.split(commands.image_labels("img:v1"))[-2:] == ["{{json .Labels}}", "img:v1"]
    assert shlex.split(commands.pull("img:v1")) == ["podman", "pull", "--quiet", "img:v1"]


def test_list_containers_filters_on_the_environment_label(tmp_path: Path) -> None:
    argv = shlex.split(commands.list_containers(make_env(tmp_path)))
    assert argv[-2:] == ["--filter", "label=io.mlops-imdb.environment=test-env"]


# ---- nginx -------------------------------------------------------------------------------------


def test_nginx_commands_point_an_own_nginx_at_its_prefix(tmp_path: Path) -> None:
    env = make_env(tmp_path / "with-dash.and.dots")
    layout = env.layout(env.hosts[0])
    own_args = ["-c", str(layout.nginx_conf), "-p", f"{layout.nginx_dir}/"]
    assert shlex.split(commands.nginx_test(env, layout)) == ["nginx", "-t", "-q", *own_args]
    assert shlex.split(commands.nginx_reload(env, layout)) == ["nginx", "-s", "reload", *own_args]
    assert commands.site_path(env, layout) == layout.site_conf


def test_nginx_commands_for_the_system_nginx(tmp_path: Path) -> None:
    env = make_env(tmp_path, mode="system")
    layout = env.layout(env.hosts[0])
    assert commands.nginx_test(env, layout) == "nginx -t -q"
    assert commands.nginx_reload(env, layout) == "nginx -s reload"
    assert commands.site_path(env, layout) == PurePosixPath(
        "/etc/nginx/conf.d/mlops-imdb-test-env.conf"
    )


@pytest.fixture
def fake_nginx(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose `nginx` only records its arguments, one call a line."""
    bin_dir, log = tmp_path / "fake-bin", tmp_path / "nginx-calls"
    bin_dir.mkdir()
    script = bin_dir / "nginx"
    script.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    script.chmod(0o755)
    return {**LOCAL_ENV, "PATH": f"{bin_dir}:/usr/bin:/bin"}, log


def test_nginx_ensure_running_starts_a_stopped_own_nginx_and_reloads_a_running_one(
    tmp_path: Path, fake_nginx: tuple[dict[str, str], Path]
) -> None:
    path_env, log = fake_nginx
    env = make_env(tmp_path / "root")
    layout = env.layout(env.hosts[0])
    local(layout.nginx_dir).mkdir(parents=True)
    own = f"-c {layout.nginx_conf} -p {layout.nginx_dir}/"
    command = commands.nginx_ensure_running(env, layout)

    assert sh(command, env=path_env).stdout == "started\n"  # no pid file: start
    local(layout.nginx_pid).write_text("999999999\n")  # a pid that cannot be alive: start
    assert sh(command, env=path_env).stdout == "started\n"
    local(layout.nginx_pid).write_text(f"{os.getpid()}\n")  # alive: reload
    assert sh(command, env=path_env).stdout == "running\n"
    assert log.read_text().splitlines() == [own, own, f"-s reload {own}"]


@pytest.mark.parametrize(("colour", "port"), [("blue", 9101), ("green", 9102)])
def test_upstream_conf_names_the_colours_port(tmp_path: Path, colour: str, port: int) -> None:
    env = make_env(tmp_path, host={"app_bind": "127.0.0.21"})
    text = commands.upstream_conf(env, env.hosts[0], colour)
    servers = [line for line in text.splitlines() if not line.startswith("#")]
    assert servers == [f"server 127.0.0.21:{port};"]
    assert f"live colour: {colour}" in text


def test_site_conf_proxies_the_public_port_to_the_upstream(tmp_path: Path) -> None:
    env = make_env(tmp_path, host={"http_address": "127.0.0.21:8080"})
    layout = env.layout(env.hosts[0])
    text = commands.site_conf(env, env.hosts[0], layout)
    assert "listen 127.0.0.21:8080;" in text
    assert "upstream mlops_imdb_test_env {" in text
    assert "proxy_pass http://mlops_imdb_test_env;" in text
    assert f"include {layout.upstream_conf};" in text


def _location(text: str, where: str) -> list[str]:
    """The directives of one `location <where> { ... }` block of a site config."""
    body = text.split(f"location {where} {{\n", 1)[1].split("\n    }", 1)[0]
    return [line.strip() for line in body.splitlines()]


def test_the_public_port_serves_the_api_only(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    text = commands.site_conf(env, env.hosts[0], env.layout(env.hosts[0]))
    metrics = _location(text, "= /metrics")
    assert metrics[:2] == ["allow 127.0.0.0/8;", "deny all;"]
    assert "proxy_pass http://mlops_imdb_test_env;" in metrics
    assert _location(text, commands.DOCS_LOCATION) == ["return 404;"]
    assert "proxy_pass http://mlops_imdb_test_env;" in _location(text, "/")
    # Opened on purpose: the monitoring network reads /metrics, the docs are public.
    opened = env.model_copy(
        update={
            "nginx": env.nginx.model_copy(
                update={"metrics_allow": (IPv4Network("10.9.0.0/16"),), "public_docs": True}
            )
        }
    )
    text = commands.site_conf(opened, opened.hosts[0], opened.layout(opened.hosts[0]))
    assert _location(text, "= /metrics")[:2] == ["allow 10.9.0.0/16;", "deny all;"]
    assert "proxy_pass http://mlops_imdb_test_env;" in _location(text, commands.DOCS_LOCATION)


def write_nginx_files(env: Environment, colour: str) -> HostLayout:
    host = env.hosts[0]
    layout = env.layout(host)
    assert sh(commands.make_directories(layout)).returncode == 0
    local(layout.nginx_conf).write_text(commands.nginx_main_conf(env, layout))
    local(layout.site_conf).write_text(commands.site_conf(env, host, layout))
    local(layout.upstream_conf).write_text(commands.upstream_conf(env, host, colour))
    return layout


@pytest.mark.parametrize("colour", ["blue", "green"])
def test_generated_nginx_config_passes_nginx_t(
    tmp_path: Path, require_tool: Callable[[str], str], colour: str
) -> None:
    require_tool("nginx")
    env = make_env(tmp_path / "root", host={"http_address": f"127.0.0.1:{free_port()}"})
    layout = write_nginx_files(env, colour)
    checked = sh(commands.nginx_test(env, layout))
    assert checked.returncode == 0, checked.stderr

    # The check the switch relies on does refuse a broken upstream.
    local(layout.upstream_conf).write_text("# live colour: none\n")
    refused = sh(commands.nginx_test(env, layout))
    assert refused.returncode != 0
    assert "no servers are inside upstream" in refused.stderr


@pytest.mark.parametrize("name", ["sandbox-staging", "sandbox-production"])
def test_real_sandbox_nginx_config_passes_nginx_t(
    tmp_path: Path, require_tool: Callable[[str], str], name: str
) -> None:
    """The sandbox's own nginx config, exactly as `setup` writes it (as root, `user X;` needs a
    user and a group named X: `nobody` failed on Debian, whose group is `nogroup`)."""
    require_tool("nginx")
    env = load_environment(name, repo_root=tmp_path)
    layout = write_nginx_files(env, "blue")
    checked = sh(commands.nginx_test(env, layout))
    assert checked.returncode == 0, checked.stderr


# ---- HTTP on the host --------------------------------------------------------------------------


@contextmanager
def serve(status_for: Callable[[int], int]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server; the n-th request (from 1) gets `status_for(n)`. Yields its base URL
    and the requests it saw."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body_in: bytes) -> None:
            with lock:
                seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "body": body_in,
                        "content-type": self.headers.get("content-type"),
                    }
                )
                status = status_for(len(seen))
            body = json.dumps({"status": status, "version": "v9"}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            self._answer(self.rfile.read(int(self.headers.get("content-length") or 0)))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as address:
        yield f"http://{address}", seen


def test_wait_ready_waits_for_consecutive_passes(require_tool: Callable[[str], str]) -> None:
    require_tool("curl")
    with serve(lambda n: 503 if n <= 2 else 200) as (url, seen):
        result = sh(commands.wait_ready(f"{url}/ready", passes=2, interval_s=0.05, timeout_s=10))
    assert result.returncode == 0, result.stderr
    assert len(seen) == 4  # two refusals, then exactly the two passes needed
    assert {request["path"] for request in seen} == {"/ready"}


def test_wait_ready_restarts_the_count_after_a_failure(require_tool: Callable[[str], str]) -> None:
    require_tool("curl")
    with serve(lambda n: 200 if n % 2 else 503) as (url, seen):
        started = time.monotonic()
        result = sh(commands.wait_ready(url, passes=2, interval_s=0.05, timeout_s=0.5))
    assert result.returncode == 1
    assert len(seen) >= 3
    assert time.monotonic() - started < 5


def test_wait_ready_gives_up_on_a_closed_port(require_tool: Callable[[str], str]) -> None:
    require_tool("curl")
    started = time.monotonic()
    url = f"http://127.0.0.1:{free_port()}/ready"
    result = sh(commands.wait_ready(url, passes=1, interval_s=0.1, timeout_s=0.3))
    assert result.returncode == 1
    assert time.monotonic() - started < 3


def test_http_get_and_post_json(require_tool: Callable[[str], str]) -> None:
    require_tool("curl")
    body = [{"primaryTitle": 'It\'s "Quoted" $HOME', "genres": ["Drama"], "startYear": None}]
    with serve(lambda n: 200 if n < 3 else 503) as (url, seen):
        got = sh(commands.http_get(f"{url}/model/info"))
        posted = sh(commands.http_post_json(f"{url}/predict/batch", body))
        failed = sh(commands.http_get(f"{url}/model/info"))
    assert got.returncode == 0
    assert json.loads(got.stdout)["version"] == "v9"
    assert posted.returncode == 0
    assert seen[1]["method"] == "POST"
    assert seen[1]["content-type"] == "application/json"
    assert json.loads(seen[1]["body"]) == body
    assert failed.returncode != 0  # -f: an HTTP error is a failed command


def test_urls(tmp_path: Path) -> None:
    env = make_env(tmp_path, host={"http_address": "127.0.0.21:8080"})
    host = env.hosts[0]
    assert commands.public_url(env, host, "/ready") == "http://127.0.0.21:8080/ready"
    assert commands.colour_url(env, host, "blue", "/ready") == "http://127.0.0.1:9101/ready"


def test_q_makes_one_shell_word() -> None:
    for value in ["plain", "with space", "it's", "$HOME", "`id`", "a\nb", ""]:
        assert shlex.split(f"x {commands.q(value)}") == ["x", value]


# ---- pulls: free space first, transient failures told apart -------------------------------------

STAND_IN_PODMAN = """#!/bin/sh
case "$1 $2" in
  "image exists") exit "$IMAGE_EXISTS" ;;
  "info --format") echo "$GRAPHROOT" ;;
  "pull --quiet") echo "$3" >> "$PULLS" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.mark.parametrize(
    ("exists", "min_free_mb", "exit_code", "stdout"),
    [
        (0, 10**9, 0, "present\n"),  # present: no pull, so no disk check either
        (1, 0, 0, "pulled\n"),
        (1, 10**9, commands.DISK_LOW, ""),  # a petabyte free is asked for: refused, not pulled
    ],
)
def test_ensure_image_checks_the_engines_free_space_before_a_pull(
    tmp_path: Path, exists: int, min_free_mb: int, exit_code: int, stdout: str
) -> None:
    """A stand-in `podman` names tmp_path as its storage; `df` is the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(STAND_IN_PODMAN)
    (bin_dir / "podman").chmod(0o755)
    pulls = tmp_path / "pulls"
    env = {**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}", "IMAGE_EXISTS": str(exists),
           "GRAPHROOT": str(tmp_path), "PULLS": str(pulls)}  # fmt: skip
    done = sh(commands.ensure_image("registry.example/api@sha256:ab", min_free_mb), env=env)
    assert (done.returncode, done.stdout) == (exit_code, stdout), done.stderr
    pulled = pulls.read_text().split() if pulls.exists() else []
    assert pulled == (["registry.example/api@sha256:ab"] if stdout == "pulled\n" else [])
    if exit_code == commands.DISK_LOW:
        assert re.fullmatch(
            rf"only \d+ MB free in {re.escape(str(tmp_path))} \(the engine's storage\)\n",
            done.stderr,
        )


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        ('Error: pinging container registry r: Get "https://r/v2/": dial tcp: connect: '
         "connection refused", True),
        ("Error: reading blob sha256:1: read tcp 1->2: read: connection reset by peer", True),
        ("Error: copying system image: net/http: TLS handshake timeout", True),
        ("Error: received unexpected HTTP status: 503 Service Unavailable", True),
        ("Error: unexpected EOF", True),
        ("Error: toomanyrequests: You have reached your pull rate limit", True),
        ("Error: reading manifest v9: manifest unknown", False),
        ("Error: Source image rejected: A signature was required, but no signature exists", False),
        ("Error: writing blob: Digest did not match, expected sha256:1, got sha256:2", False),
        ("Error: unauthorized: authentication required", False),
        ("Error: writing blob: no space left on device", False),
    ],
)  # fmt: skip
def test_only_registry_and_network_failures_are_worth_another_pull(
    stderr: str, transient: bool
) -> None:
    assert commands.transient_pull_error(stderr) is transient


def test_a_private_registrys_login_goes_in_an_auth_file_the_pulls_name(tmp_path: Path) -> None:
    text = commands.registry_auth("ghcr.io", "puller", "s3cret:with:colons")
    token = json.loads(text)["auths"]["ghcr.io"]["auth"]
    assert base64.b64decode(token).decode() == "puller:s3cret:with:colons"
    authfile = PurePosixPath("/srv/mlops imdb/env/registry-auth.json")
    pull = commands.ensure_image("ghcr.io/o/api@sha256:ab", 100, authfile)
    assert "podman pull --quiet --authfile '/srv/mlops imdb/env/registry-auth.json' " in pull
    assert "s3cret" not in pull  # never on a command line
    assert "--authfile" not in commands.ensure_image("ghcr.io/o/api@sha256:ab", 100)


# ---- a bare host as root, and back after a reboot -----------------------------------------------


def rootless(env: Environment) -> Environment:
    """`env` deployed by a non-root user `deploy`."""
    ssh = env.ssh.model_copy(update={"user": "deploy"})
    return env.model_copy(update={"ssh": ssh})


def test_a_non_root_deploy_user_changes_the_system_nginx_only_through_roots_helper(
    tmp_path: Path,
) -> None:
    env = rootless(make_env(tmp_path, mode="system"))
    layout = env.layout(env.hosts[0])
    helper = "/usr/local/sbin/mlops-imdb-nginx-test-env"
    assert commands.switch_upstream(env, env.hosts[0], layout, "green") == f"sudo -n {helper} green"
    assert commands.nginx_ensure_running(env, layout) == f"sudo -n {helper} running"
    # The helper, and nothing else: not nginx itself, which reads what its files include.
    assert commands.sudoers(env).splitlines()[-1] == f"deploy ALL=(root) NOPASSWD: {helper}"
    # Root's upstream, beside nginx's configuration: the deploy root holds none nginx reads.
    upstream = commands.upstream_path(env, layout)
    assert upstream == PurePosixPath("/etc/nginx/mlops-imdb/test-env/upstream.conf")
    assert f"include {upstream};" in commands.site_conf(env, env.hosts[0], layout)
    # Root deploys through the same helper, without sudo; an own nginx never uses one.
    assert commands.switch_upstream(make_env(tmp_path, mode="system"), env.hosts[0], layout,
                                    "blue") == f"{helper} blue"  # fmt: skip
    own = make_env(tmp_path)
    assert "mlops-imdb-nginx" not in commands.switch_upstream(own, own.hosts[0], layout, "blue")
    assert commands.upstream_path(own, layout) == layout.upstream_conf


def run_helper(
    tmp_path: Path, *args: str, nginx_t: int = 0
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """The helper as setup writes it, its nginx, systemctl and target moved under tmp_path."""
    env = make_env(tmp_path / "root", mode="system")
    calls, target = tmp_path / "calls", tmp_path / "etc" / "upstream.conf"
    stand_in = tmp_path / "nginx"
    stand_in.write_text(
        f'#!/bin/sh\necho "nginx $*" >> {calls}\n'
        f'[ "$1" = -t ] && {{ echo "nginx: [emerg] refused" >&2; exit {nginx_t}; }}\nexit 0\n'
    )
    stand_in.chmod(0o755)
    script = (
        commands.nginx_helper(env, env.hosts[0])
        .replace(commands.NGINX, str(stand_in))
        .replace(commands.SYSTEMCTL, f"echo systemctl >> {calls}; true")
        .replace(str(commands.SYSTEM_NGINX_DIR / env.name / "upstream.conf"), str(target))
    )
    helper = tmp_path / "helper"
    helper.write_text(script)
    helper.chmod(0o755)
    done = subprocess.run(
        [str(helper), *args], capture_output=True, text=True, check=False, timeout=10
    )
    return done, target, calls


def test_roots_helper_writes_its_own_template_checks_and_reloads(tmp_path: Path) -> None:
    done, target, calls = run_helper(tmp_path, "green")
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "# live colour: green\nserver 127.0.0.1:9102;\n"
    assert calls.read_text().splitlines() == ["nginx -t -q", "nginx -s reload"]


def test_roots_helper_puts_the_upstream_back_when_nginx_refuses(tmp_path: Path) -> None:
    run_helper(tmp_path, "blue")
    done, target, _ = run_helper(tmp_path, "green", nginx_t=1)
    assert done.returncode == 1
    assert "refused" in done.stderr
    assert target.read_text() == "# live colour: blue\nserver 127.0.0.1:9101;\n"


@pytest.mark.parametrize(
    "args",
    [[], ["red"], ["blue; include /etc/shadow"], ["../../etc/shadow"], ["blue", "extra"]],
)
def test_roots_helper_refuses_anything_but_a_colour_or_running(
    tmp_path: Path, args: list[str]
) -> None:
    done, target, calls = run_helper(tmp_path, *args)
    if args == ["blue", "extra"]:  # a colour first: the extra word is never read
        assert done.returncode == 0
        return
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert not target.exists()
    assert not calls.exists()


def test_roots_helper_reloads_a_running_nginx_or_starts_it(tmp_path: Path) -> None:
    done, _, calls = run_helper(tmp_path, "running")
    assert (done.returncode, done.stdout) == (0, "running\n")
    assert calls.read_text() == "nginx -s reload\n"


def test_the_sudoers_file_is_checked_before_it_is_installed(tmp_path: Path) -> None:
    staged, target = tmp_path / ".mlops.staged", tmp_path / "mlops"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # visudo and chown stand-ins: visudo accepts a file whose first line says "ok".
    (bin_dir / "visudo").write_text(
        '#!/bin/sh\nhead -n1 "$3" | grep -qx ok || { echo "syntax error" >&2; exit 1; }\n'
    )
    (bin_dir / "chown").write_text("#!/bin/sh\n")
    for tool in ("visudo", "chown"):
        (bin_dir / tool).chmod(0o755)
    env = {**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}"}
    command = commands.install_sudoers(PurePosixPath(staged), PurePosixPath(target))
    staged.write_text("broken,,\n")
    refused = sh(command, env=env)
    assert refused.returncode == 1
    assert "syntax error" in refused.stderr
    assert not staged.exists()
    assert not target.exists()
    staged.write_text("ok\n")
    assert sh(command, env=env).returncode == 0
    assert target.read_text() == "ok\n"
    assert target.stat().st_mode & 0o777 == 0o440


def test_the_deploy_user_is_made_once(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    made = tmp_path / "made"
    # id knows the user once useradd has made it.
    (bin_dir / "id").write_text(f"#!/bin/sh\n[ -e {made} ]\n")
    (bin_dir / "useradd").write_text(f'#!/bin/sh\necho "$@" > {made}\n')
    for tool in ("id", "useradd"):
        (bin_dir / tool).chmod(0o755)
    env = {**LOCAL_ENV, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    assert sh(commands.ensure_user("deploy"), env=env).stdout == "created\n"
    assert made.read_text() == "--create-home --shell /bin/bash deploy\n"
    assert sh(commands.ensure_user("deploy"), env=env).stdout == ""


@pytest.mark.parametrize("booted", [False, True])
def test_linger_is_enabled_only_on_a_machine_booted_by_systemd(
    tmp_path: Path, booted: bool
) -> None:
    """Whatever this machine is: the command's systemd marker and loginctl are stand-ins."""
    marker, linger, called = tmp_path / "systemd-system", tmp_path / "linger", tmp_path / "called"
    if booted:
        marker.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "loginctl").write_text(f'#!/bin/sh\necho "$@" > {called}\n')
    (bin_dir / "loginctl").chmod(0o755)
    command = (
        commands.enable_linger("deploy")
        .replace("/run/systemd/system", str(marker))
        .replace(str(commands.LINGER_DIR), str(linger))
    )
    result = sh(command, env={**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}"})
    assert (result.returncode, result.stdout) == (0, "enabled\n" if booted else "")
    assert called.exists() == booted
    assert not booted or called.read_text() == "enable-linger deploy\n"


@pytest.mark.parametrize(
    ("upstream", "started", "fails"),
    [
        ("# live colour: green\nserver 1;\n", "green", False),
        ("# live colour: blue\n", "blue", False),
        ("# live colour: blue\n", "blue", True),
        ("", None, False),
    ],
)
def test_the_restore_script_starts_only_the_live_colour_and_audits_it(
    tmp_path: Path, upstream: str, started: str | None, fails: bool
) -> None:
    env = make_env(tmp_path)
    host = env.hosts[0]
    layout = env.layout(host)
    Path(str(layout.upstream_conf)).parent.mkdir(parents=True)
    Path(str(layout.upstream_conf)).write_text(upstream)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "podman.log"
    refusal = "echo 'Error: \"no such container\"' >&2; exit 125" if fails else ""
    (bin_dir / "podman").write_text(f'#!/bin/sh\necho "$@" >> {log}\n{refusal}\n')
    # systemd-run --scope runs its command in a new scope: here, just runs it (and says so).
    scopes = tmp_path / "scopes.log"
    (bin_dir / "systemd-run").write_text(
        f'#!/bin/sh\necho "$@" >> {scopes}\nwhile [ "${{1#-}}" != "$1" ]; do shift; done\n'
        'exec "$@"\n'
    )
    for tool in ("podman", "systemd-run"):
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "restore.sh"
    script.write_text(commands.restore_script(env, layout, host))
    result = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, check=False,
        env={**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}"},
    )  # fmt: skip
    audit = Path(str(layout.audit_log))
    if started is None:
        assert (result.returncode, result.stdout) == (0, "nothing live yet\n")
        assert not log.exists()
        assert not audit.exists()
        return
    name = env.container_name(started)
    assert log.read_text() == f"start {name}\n"
    # A scope of the system's manager: this environment deploys as root (no --user).
    assert scopes.read_text() == f"--scope --quiet --collect podman start {name}\n"
    (entry,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (entry["action"], entry["user"], entry["host"]) == ("restore", "boot", host.name)
    assert entry["prev"] == auditlog.line_hash(None)  # chained, as a deploy's entries are
    assert re.fullmatch(r"[0-9a-f]{12}", entry["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", entry["logged_at"])
    if fails:
        assert result.returncode == 1
        assert entry["result"] == "failed"
        assert (
            entry["detail"] == f"could not start {started} after a boot: Error: no such container"
        )
    else:
        assert result.returncode == 0, result.stderr
        assert entry == {
            **entry,
            "result": "ok",
            "detail": f"started {started} ({name}) after a boot",
        }


@pytest.mark.parametrize(("user_unit", "target"), [(True, "default"), (False, "multi-user")])
def test_the_restore_unit_is_enabled_by_its_wants_link(
    tmp_path: Path, user_unit: bool, target: str
) -> None:
    env = make_env(tmp_path)
    script = PurePosixPath("/srv/x/restore-live.sh")
    unit = commands.restore_unit(env, script, user_unit=user_unit)
    assert f"ExecStart=/bin/sh {script}\n" in unit
    assert f"WantedBy={target}.target\n" in unit
    # A user unit cannot order after system units; both start after the bus systemd-run uses.
    assert ("nginx.service" in unit) is not user_unit
    assert "dbus" in unit
    home = str(tmp_path / "home")
    directory = commands.unit_directory(home, user_unit=user_unit)
    if user_unit:
        assert directory == PurePosixPath(home) / ".config/systemd/user"
    else:
        assert directory == PurePosixPath("/etc/systemd/system")
    local = tmp_path / "units"
    local.mkdir()
    link = local / f"{target}.target.wants" / "x.service"
    for _ in range(2):  # idempotent
        enable = commands.enable_unit(PurePosixPath(local), "x.service", user_unit=user_unit)
        assert sh(enable).returncode == 0
    assert link.readlink() == Path("../x.service")


# ---- Docker Engine hosts -------------------------------------------------------------------------


def docker_env(root: Path) -> Environment:
    return make_env(root).model_copy(update={"engine": "docker"})


def test_docker_hosts_get_the_docker_cli_with_docker_semantics(tmp_path: Path) -> None:
    env = docker_env(tmp_path)
    host, layout = env.hosts[0], env.layout(env.hosts[0])
    assert shlex.split(commands.run_container(env, host, "blue", "v1", layout))[:2] == [
        "docker",
        "run",
    ]
    # Docker has no --ignore: what may be missing is asked about first.
    assert commands.remove_container("c", "docker") == (
        "if docker container inspect c >/dev/null 2>&1; then docker rm --force c >/dev/null; fi"
    )
    assert commands.stop_container("c", 9, "docker").endswith(
        "then docker stop --time 9 c >/dev/null; fi"
    )
    assert commands.remove_image("i:1", "docker").startswith("if docker image inspect i:1")
    assert commands.image_labels("i:1", "docker").endswith("'{{json .Config.Labels}}' i:1")
    assert commands.start_container("c", "docker") == "docker start c"
    assert "docker logs --tail 300 c" in commands.why_not_ready(
        "c", "http://x/ready", engine="docker"
    )
    assert commands.list_containers(env).startswith("docker ps --all --format '{{json .}}'")
    restore = commands.restore_script(env, layout, host)
    assert 'systemd-run --scope --quiet --collect docker start "$name"' in restore
    # The login: Podman takes the file, Docker the directory that holds it as config.json.
    login = layout.registry_auth_file
    assert login.name == "config.json"
    pull = commands.ensure_image("i@sha256:1", 10, login, "docker")
    assert f"docker --config {login.parent} pull --quiet i@sha256:1" in pull
    assert "{{.DockerRootDir}}" in pull
    assert "--authfile" not in pull
    assert f"podman pull --quiet --authfile {login} i" in commands.ensure_image("i", 10, login)
    fetch = commands.fetch_signatures(env, "sha256:" + "a" * 64, layout, login)
    assert f"docker --config {login.parent} pull --quiet" in fetch
    assert "podman" not in fetch


def test_docker_hosts_need_the_engine_and_gpgv_and_never_podman(tmp_path: Path) -> None:
    packages = commands.host_packages(docker_env(tmp_path))
    assert packages == {
        "docker": "docker.io",
        "gpgv": "gpgv",
        "nginx": "nginx",
        "curl": "curl",
        "flock": "util-linux",
    }
    assert commands.host_packages(make_env(tmp_path)) == commands.HOST_PACKAGES
    assert "newuidmap" in commands.host_packages(rootless(make_env(tmp_path)))


def test_a_user_joins_a_group_once(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    groups = tmp_path / "groups"
    groups.write_text("deploy\n")
    (bin_dir / "id").write_text(f"#!/bin/sh\ncat {groups}\n")
    (bin_dir / "usermod").write_text(f'#!/bin/sh\nprintf "deploy %s\\n" "$2" > {groups}\n')
    for tool in ("id", "usermod"):
        (bin_dir / tool).chmod(0o755)
    env = {**LOCAL_ENV, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    assert sh(commands.join_group("deploy", "docker"), env=env).stdout == "added\n"
    assert groups.read_text() == "deploy docker\n"
    assert sh(commands.join_group("deploy", "docker"), env=env).stdout == ""


def test_a_binary_file_arrives_byte_for_byte(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    target = tmp_path / "keyring.gpg"
    result = sh(commands.write_binary(PurePosixPath(target), data))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_signature_is_verified_for_this_digest_and_repository_only(tmp_path: Path) -> None:
    """gpgv stands in with a script that 'verifies' any file and prints its content."""
    env = docker_env(tmp_path)
    layout = env.layout(env.hosts[0])
    digest = "sha256:" + "b" * 64
    directory = Path(str(layout.signatures_dir / signing.lookaside_entry(env.image, digest)))
    directory.mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gpgv").write_text('#!/bin/sh\nfor last; do :; done\ncat "$last"\n')
    (bin_dir / "gpgv").chmod(0o755)
    path_env = {**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}"}
    command = commands.verify_signature(env, digest, layout)

    def payload(reference: str, signed: str) -> str:
        return json.dumps(
            {
                "critical": {
                    "identity": {"docker-reference": reference},
                    "image": {"docker-manifest-digest": signed},
                    "type": "atomic container signature",
                }
            },
            separators=(",", ":"),
        )

    assert sh(command, env=path_env).returncode == 1  # none at all
    for reference, signed in (
        (f"{env.image}:v1", "sha256:" + "c" * 64),  # another digest (a moved signature)
        (f"{env.image}-evil:v1", digest),  # another repository
        ("registryXexample/mlops-imdb-api:v1", digest),  # '.' is no wildcard
    ):
        (directory / "signature-1").write_text(payload(reference, signed))
        refused = sh(command, env=path_env)
        assert refused.returncode == 1, reference
        assert f"no signature of {digest}" in refused.stderr
    (directory / "signature-2").write_text(payload(f"{env.image}:v1", digest))
    accepted = sh(command, env=path_env)
    assert (accepted.returncode, accepted.stdout) == (0, "signature verified (gpgv)\n")


class LocalLogin:
    """A host login run in a local shell, with stand-ins for `id` and `sudo` on its PATH (what
    AsRoot needs of a HostRunner)."""

    def __init__(self, bin_dir: Path, *, uid: int, sudo_allowed: bool) -> None:
        self.name = "local"
        env = make_env(bin_dir.parent)
        self.environment = env.model_copy(
            update={"ssh": env.ssh.model_copy(update={"user": "admin"})}
        )
        self.commands: list[str] = []
        self.env = {**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}"}
        stand_ins = {
            "id": f'#!/bin/sh\n[ "$1" = -u ] && echo {uid}\n',
            # sudo -n: runs the command when allowed, else the message sudo prints.
            "sudo": '#!/bin/sh\n[ "$1" = -n ] || exit 9\nshift\n'
            + (
                'exec "$@"\n'
                if sudo_allowed
                else 'echo "sudo: a password is required" >&2\nexit 1\n'
            ),
        }
        for name, text in stand_ins.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        self.commands.append(command)
        done = sh(command, env=self.env)
        result = Result(done.stdout, done.stderr, done.returncode)
        if check and not result.ok:
            raise RemoteError(self.name, f"`{command}` exited {done.returncode}: {done.stderr}")
        return result

    def upload(self, path: PurePosixPath, text: str) -> None:
        Path(str(path)).write_text(text)

    def put_text(self, path: PurePosixPath, text: str, mode: int = 0o644) -> None:
        self.upload(path, text)
        Path(str(path)).chmod(mode)

    def close(self) -> None:
        pass


def test_a_sudo_admin_runs_setups_root_commands_through_sudo(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    login = LocalLogin(tmp_path / "bin", uid=1000, sudo_allowed=True)
    root = AsRoot(login)
    assert root.via_sudo()
    # The whole line goes to one root shell, quoting and all.
    assert root.run("echo 'two  words' | tr a-z A-Z").stdout == "TWO  WORDS\n"
    assert login.commands[-1] == "sudo -n sh -c 'echo '\"'\"'two  words'\"'\"' | tr a-z A-Z'"
    # A file goes to the login's own temporary file, then into place by root, owned by root.
    target = tmp_path / "site.conf"
    root.put_text(PurePosixPath(target), "server {}\n", mode=0o640)
    assert target.read_text() == "server {}\n"
    assert (target.stat().st_mode & 0o777, target.stat().st_uid) == (0o640, 0)
    assert any(c.startswith("sudo -n sh -c 'install -o root") for c in login.commands)
    assert not list(tmp_path.glob(".site.conf.tmp")), "the copy beside the target is renamed"
    assert login.commands[-1].startswith("rm -f "), "the login's temporary file is removed"
    assert not Path(shlex.split(login.commands[-1])[-1]).exists()


def test_a_root_login_needs_no_sudo_and_a_login_without_it_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    login = LocalLogin(tmp_path / "bin", uid=0, sudo_allowed=False)
    root = AsRoot(login)
    assert not root.via_sudo()
    assert root.run("echo hi").stdout == "hi\n"
    assert login.commands == ["id -u", "echo hi"]
    (tmp_path / "bin2").mkdir()
    refused = AsRoot(LocalLogin(tmp_path / "bin2", uid=1000, sudo_allowed=False))
    with pytest.raises(RemoteError, match="neither root nor allowed passwordless sudo") as error:
        refused.run("apt-get install -y nginx")
    assert "'admin'" in str(error.value)
    assert "a password is required" in str(error.value)


def test_setup_sets_the_rootless_driver_only_before_the_first_image_and_never_over_own_settings(
    tmp_path: Path,
) -> None:
    home = str(tmp_path)
    conf = Path(str(commands.rootless_storage_conf(home)))

    def state() -> str:
        return sh(commands.rootless_storage_state(home)).stdout.strip()

    assert state() == ""  # a new user: setup writes its storage.conf
    (tmp_path / ".local/share/containers/storage/vfs").mkdir(parents=True)
    assert state() == "vfs"  # images already in vfs: a new driver would need a reset
    conf.parent.mkdir(parents=True)
    conf.write_text(commands.ROOTLESS_STORAGE_CONF)
    assert state() == ""  # setup's own file: rewritten when it differs, else left
    conf.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/data/containers"\n')
    assert state() == "own"  # the operator's: kept


@pytest.fixture
def file_engine(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A stand-in `podman` whose containers are files in a directory (exists, stop, rm,
    rename); its stop and rm print the name, as Podman's do."""
    containers = tmp_path / "containers"
    containers.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(
        "#!/bin/sh\n"
        f"d={containers}\n"
        'case "$1 $2" in\n'
        '  "container exists") test -e "$d/$3" ;;\n'
        '  "rm --force") for n; do :; done; rm -f "$d/$n"; echo "$n" ;;\n'
        '  "stop --time") for n; do :; done; echo stopped >> "$d/$n"; echo "$n" ;;\n'
        '  rename*) mv "$d/$2" "$d/$3" ;;\n'
        "esac\n"
    )
    (bin_dir / "podman").chmod(0o755)
    return {**LOCAL_ENV, "PATH": f"{bin_dir}:{LOCAL_ENV['PATH']}"}, containers


def test_the_kept_container_is_set_aside_and_put_back_when_the_deploy_fails(
    file_engine: tuple[dict[str, str], Path],
) -> None:
    env, containers = file_engine
    (containers / "app-green").write_text("the kept release\n")
    assert sh(commands.set_aside("app-green"), env=env).stdout == "set aside\n"
    assert sorted(p.name for p in containers.iterdir()) == ["app-green-previous"]
    # Stopped before its rename: one left running would keep the colour's port.
    assert (containers / "app-green-previous").read_text() == "the kept release\nstopped\n"
    (containers / "app-green").write_text("the new release, which failed\n")
    assert sh(commands.put_back("app-green"), env=env).stdout == "put back\n"
    assert (containers / "app-green").read_text() == "the kept release\nstopped\n"
    assert sorted(p.name for p in containers.iterdir()) == ["app-green"]


def test_an_empty_colour_has_nothing_to_set_aside_or_put_back(
    file_engine: tuple[dict[str, str], Path],
) -> None:
    env, containers = file_engine
    assert sh(commands.set_aside("app-blue"), env=env).stdout == ""
    (containers / "app-blue").write_text("new\n")
    done = sh(commands.put_back("app-blue"), env=env)
    assert (done.returncode, done.stdout) == (0, "")
    assert not any(containers.iterdir())


def test_the_readers_key_may_run_only_the_command_that_prints_the_release_state(
    tmp_path: Path,
) -> None:
    layout = HostLayout(PurePosixPath(tmp_path))
    line = commands.reader_authorized_keys(layout, "ssh-ed25519 AAAAC3Nza any comment at all\n")
    options, kind, key, *comment = shlex.split(line, posix=True)
    assert (kind, key, comment) == ("ssh-ed25519", "AAAAC3Nza", ["mlops-imdb", "reader"])
    # `restrict` first: no shell, no forwarding of any kind, no terminal, no agent.
    assert options.split(",", 1)[0] == "restrict"
    forced = options.split(",", 1)[1].removeprefix("command=")
    assert sh(forced).stdout == ""  # no state yet: nothing, and no error
    Path(str(layout.state_file)).write_text('{"live": "blue"}\n')
    assert sh(forced).stdout == '{"live": "blue"}\n'
    with pytest.raises(ValueError, match="authorized_keys command"):
        commands.reader_authorized_keys(HostLayout(PurePosixPath('/srv/a"b')), "ssh-ed25519 AAAA")
