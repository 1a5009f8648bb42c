"""Environments as config: the real files load, bad files are refused with a clear message,
paths resolve against the checkout, secrets come from the deployer's environment and are redacted.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from imdb_deploy.bluegreen import commands, config
from imdb_deploy.bluegreen.config import ConfigError, Environment, Redactor, load_environment
from imdb_deploy.bluegreen.layout import COLOURS, HostLayout, other_colour

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REAL_ENVIRONMENTS = ("production", "sandbox-production", "sandbox-staging", "staging")


# ---- writing environment files -----------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: Mapping[str, Any]) -> str:
    """Top-level scalars, then [tables] (nested mappings inline), then [[arrays of tables]]."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, (dict, list))]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += [f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    for key, rows in data.items():
        if isinstance(rows, list):
            for row in rows:
                lines += [f"[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in row.items())]
    return "\n".join(lines) + "\n"


def base_data() -> dict[str, Any]:
    """A valid real-host environment with two hosts, a setting and a secret."""
    return {
        "description": "written by a test",
        "image": "registry.example/mlops-imdb-api",
        "deploy_root": "/srv/mlops-imdb",
        "ssh": {"user": "deploy", "known_hosts": "keys/known_hosts"},
        "app": {
            "ports": {"blue": 9001, "green": 9002},
            "settings": {"IMDB_API_LOG_LEVEL": "info", "IMDB_API_WORKERS": "2"},
            "secrets": {"IMDB_API_TOKEN": "TEST_DEPLOY_API_TOKEN"},
        },
        "lock": {"ttl_s": 60, "heartbeat_s": 10},
        "hosts": [
            {"name": "web-1", "address": "10.0.0.1"},
            {"name": "web-2", "address": "10.0.0.2", "ssh_port": 2200},
        ],
    }


Loader = Callable[[str, dict[str, Any]], Environment]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A stand-in repository root, elsewhere than the real one."""
    root = tmp_path / "checkout"
    root.mkdir()
    return root


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "environments"
    directory.mkdir()
    return directory


@pytest.fixture
def load(env_dir: Path, checkout: Path) -> Loader:
    """`load(name, data)`: write `<env_dir>/<name>.toml` and load it against `checkout`."""

    def write_and_load(name: str, data: dict[str, Any]) -> Environment:
        (env_dir / f"{name}.toml").write_text(to_toml(data))
        return load_environment(name, directory=env_dir, repo_root=checkout)

    return write_and_load


def test_the_toml_writer_round_trips() -> None:
    data = base_data()
    data["hosts"][0]["note"] = 'quote " and backslash \\ and é'
    assert tomllib.loads(to_toml(data)) == data


# ---- the real environment files ----------------------------------------------------------------


def test_the_four_environment_files_are_there() -> None:
    assert set(REAL_ENVIRONMENTS) <= set(config.available())


@pytest.mark.parametrize("name", REAL_ENVIRONMENTS)
def test_real_environment_loads(name: str) -> None:
    environment = load_environment(name)
    assert environment.name == name
    assert environment.hosts
    assert environment.deploy_root.is_absolute()
    assert environment.ssh.known_hosts.is_absolute()
    assert environment.lock.heartbeat_s * 2 <= environment.lock.ttl_s
    assert environment.app.ports["blue"] != environment.app.ports["green"]
    assert all(key.startswith(config.APP_ENV_PREFIX) for key in environment.app.settings)
    assert environment.app.secrets == {} or all(environment.app.secrets.values())
    layouts = {environment.layout(host).root for host in environment.hosts}
    if environment.sandbox and environment.sandbox_hosts == "light":
        # Light sandbox hosts share this machine: one root each, inside the checkout.
        assert environment.nginx.mode == "own"
        assert len(layouts) == len(environment.hosts)
        for root in layouts:
            assert str(root).startswith(f"{config.REPO_ROOT}/")
    else:
        assert environment.nginx.mode == "system"
        assert layouts == {environment.deploy_root / name}
        assert environment.ssh.user, "a real host needs an explicit login user"


def test_sandbox_production_is_machines_set_up_by_a_sudo_admin_for_a_non_root_deploy_user() -> None:
    environment = load_environment("sandbox-production")
    assert environment.sandbox_hosts == "machine"
    assert (environment.setup.user, environment.deploy_user) == ("admin", "deploy")
    assert environment.sudo == "sudo -n "
    # Each machine has its own file system: roots as on real hosts.
    assert {environment.layout(host).root for host in environment.hosts} == {
        PurePosixPath("/srv/mlops-imdb/sandbox-production")
    }


@pytest.mark.parametrize("name", ["sandbox-staging"])
def test_real_sandbox_environment_resolves_under_any_checkout(name: str, checkout: Path) -> None:
    environment = load_environment(name, repo_root=checkout)
    assert str(environment.deploy_root).startswith(f"{checkout}/")
    assert environment.ssh.known_hosts.is_relative_to(checkout.resolve())
    assert environment.ssh.identity_file is not None
    assert environment.ssh.identity_file.is_relative_to(checkout.resolve())
    for host in environment.hosts:
        assert environment.layout(host).root == environment.deploy_root / name / host.name


def test_sandbox_hosts_never_share_a_root_or_an_address_across_environments() -> None:
    """Both sandbox environments run on one machine at once: nothing of theirs may collide
    (machines have file systems of their own, and one address each)."""
    roots: list[tuple[str, PurePosixPath]] = []
    listeners: list[str] = []
    for name in ("sandbox-production", "sandbox-staging"):
        environment = load_environment(name)
        for host in environment.hosts:
            machine = host.address if environment.sandbox_hosts == "machine" else "shared"
            roots.append((machine, environment.layout(host).root))
            listeners.append(environment.http_address(host))
    assert len(set(roots)) == len(roots)
    assert len(set(listeners)) == len(listeners)


def test_approval_policy_of_the_real_environments() -> None:
    production = load_environment("production")
    assert production.approval.required
    assert production.approval.github_environment == "production"
    assert load_environment("sandbox-production").approval.required
    assert not load_environment("staging").approval.required
    assert not load_environment("sandbox-staging").approval.required


def test_production_is_read_by_a_reader_with_a_key_of_its_own() -> None:
    """CD's train job gates against production's champion from an environment without
    reviewers: it logs in as a reader whose key the committed file names, never as `deploy`."""
    production = load_environment("production")
    assert production.reader is not None
    assert production.reader.user not in {"root", production.ssh.user, production.setup.user}
    key_file = production.reader.key_file()
    assert key_file is not None
    kind, body, *_ = key_file.read_text().split()
    assert kind == "ssh-ed25519"
    assert body.startswith("AAAA")
    sandbox = load_environment("sandbox-production")
    assert sandbox.reader is not None
    assert sandbox.reader.identity_file is not None


def test_the_reader_view_logs_in_as_the_reader_with_its_key_and_never_the_deploy_key(
    load: Loader, checkout: Path
) -> None:
    data = base_data()
    data["reader"] = {"user": "mlops-read", "identity_file": "keys/read"}
    environment = load("target", data)
    assert environment.reader is not None
    assert environment.reader.identity_file == (checkout / "keys" / "read").resolve()
    assert environment.reader.key_file() == (checkout / "keys" / "read.pub").resolve()
    environ = {config.SSH_KEY_VAR: "deploy key", config.READ_KEY_VAR: "read key", "HOME": "/h"}
    view, variables = environment.as_reader(environ)
    assert view.ssh.user == "mlops-read"
    assert view.ssh.identity_file == environment.reader.identity_file
    assert view.hosts == environment.hosts
    assert view.ssh.known_hosts == environment.ssh.known_hosts
    assert variables == {
        config.SSH_KEY_VAR: "read key", config.READ_KEY_VAR: "read key", "HOME": "/h",
    }  # fmt: skip
    # No reader key given: the agent or the identity file, still never the deploy key.
    assert config.SSH_KEY_VAR not in environment.as_reader({config.SSH_KEY_VAR: "deploy key"})[1]
    assert "read key" in environment.secret_values(environ)
    # Without a reader, reading is the deploy user's as before.
    plain = load("plain", base_data())
    assert plain.as_reader(environ) == (plain, environ)


@pytest.mark.parametrize("user", ["deploy", "root", "admin"])
def test_the_reader_is_a_user_of_its_own(load: Loader, user: str) -> None:
    data = base_data()
    data["setup"] = {"user": "admin"}
    data["reader"] = {"user": user}
    with pytest.raises(ConfigError, match="must be a user of its own"):
        load("target", data)


# ---- loading and path resolution ---------------------------------------------------------------


def test_real_host_environment_paths(load: Loader, checkout: Path) -> None:
    environment = load("target", base_data())
    assert environment.name == "target"  # from the file name
    assert environment.deploy_root == PurePosixPath("/srv/mlops-imdb")
    assert environment.ssh.known_hosts == (checkout / "keys" / "known_hosts").resolve()
    assert environment.ssh.identity_file is None
    # Real hosts: one root per environment, the same path on every host.
    web1, web2 = environment.hosts
    assert environment.layout(web1) == environment.layout(web2)
    assert environment.layout(web1).root == PurePosixPath("/srv/mlops-imdb/target")


def test_absolute_known_hosts_is_kept(load: Loader) -> None:
    data = base_data()
    data["ssh"]["known_hosts"] = "/etc/ssh/ssh_known_hosts"
    assert load("target", data).ssh.known_hosts == Path("/etc/ssh/ssh_known_hosts")


def test_sandbox_paths_resolve_under_the_repo_root(load: Loader, checkout: Path) -> None:
    data = base_data()
    data.update(sandbox=True, deploy_root=".state/roots")
    data["ssh"].update(known_hosts=".state/known_hosts", identity_file=".state/id_ed25519")
    environment = load("sandbox-x", data)
    assert environment.deploy_root == PurePosixPath(checkout) / ".state" / "roots"
    assert environment.ssh.known_hosts == (checkout / ".state" / "known_hosts").resolve()
    assert environment.ssh.identity_file == (checkout / ".state" / "id_ed25519").resolve()
    web1, web2 = environment.hosts
    assert environment.layout(web1).root == PurePosixPath(
        f"{checkout}/.state/roots/sandbox-x/web-1"
    )
    assert environment.layout(web2).root == PurePosixPath(
        f"{checkout}/.state/roots/sandbox-x/web-2"
    )
    # Nothing a host keeps may be shared with another host of the sandbox.
    one, two = environment.layout(web1), environment.layout(web2)
    paths = ("state_file", "lock_record", "audit_log", "journal", "nginx_conf", "upstream_conf")
    for path in paths:
        assert getattr(one, path) != getattr(two, path)


@pytest.mark.parametrize("user", ["john.doe", "Deploy", "deploy user", "1deploy", "-x"])
def test_a_user_name_sudo_or_useradd_would_not_take_is_refused(load: Loader, user: str) -> None:
    """A `.` in the sudoers file's name makes sudo skip it without a word."""
    data = base_data()
    data["ssh"]["user"] = user
    with pytest.raises(ConfigError, match=r"ssh\.user"):
        load("target", data)


def test_the_sudoers_file_refuses_a_login_name_sudo_would_skip(
    load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = base_data()
    del data["ssh"]["user"]  # the login's own name, then
    monkeypatch.setattr("getpass.getuser", lambda: "john.doe")
    with pytest.raises(ValueError, match=r"'john\.doe' is no user name sudo reads"):
        commands.sudoers(load("target", data))


def test_relative_deploy_root_is_refused_on_real_hosts(load: Loader) -> None:
    data = base_data()
    data["deploy_root"] = "srv/mlops-imdb"
    with pytest.raises(ConfigError, match="deploy_root must be absolute"):
        load("target", data)


@pytest.mark.parametrize("sandbox", [False, True])
def test_relative_host_deploy_root_is_refused(load: Loader, sandbox: bool) -> None:
    data = base_data()
    data["sandbox"] = sandbox
    data["hosts"][1]["deploy_root"] = "relative/root"
    with pytest.raises(ConfigError, match="web-2's deploy_root must be absolute"):
        load("target", data)


def test_absolute_host_deploy_root_wins(load: Loader) -> None:
    data = base_data()
    data["hosts"][1]["deploy_root"] = "/opt/other"
    environment = load("target", data)
    assert environment.layout(environment.hosts[1]).root == PurePosixPath("/opt/other")
    assert environment.layout(environment.hosts[0]).root == PurePosixPath("/srv/mlops-imdb/target")


def test_per_host_values_fall_back_to_the_environment(load: Loader) -> None:
    data = base_data()
    data["hosts"][0].update(http_address="10.0.0.1:8080", app_bind="10.0.0.1")
    environment = load("target", data)
    web1, web2 = environment.hosts
    assert environment.ssh_port(web1) == 22
    assert environment.ssh_port(web2) == 2200
    assert environment.http_address(web1) == "10.0.0.1:8080"
    assert environment.http_address(web2) == "10.0.0.2:80"
    assert environment.app_bind(web1) == "10.0.0.1"
    assert environment.app_bind(web2) == "127.0.0.1"
    assert environment.host("web-2") is web2
    with pytest.raises(ConfigError, match="no host 'web-3'"):
        environment.host("web-3")
    assert environment.container_name("green") == "mlops-imdb-api-target-green"
    assert environment.image_ref("v7") == "registry.example/mlops-imdb-api:v7"


def test_explicit_name_overrides_the_file_name(load: Loader) -> None:
    data = base_data()
    data["name"] = "renamed"
    assert load("target", data).name == "renamed"


def test_environment_path_takes_names_and_toml_paths(env_dir: Path) -> None:
    assert config.environment_path("staging", env_dir) == env_dir / "staging.toml"
    assert config.environment_path("/some/where/x.toml", env_dir) == Path("/some/where/x.toml")


def test_a_toml_path_loads_as_is(env_dir: Path, checkout: Path) -> None:
    path = env_dir / "by-path.toml"
    path.write_text(to_toml(base_data()))
    environment = load_environment(str(path), directory=env_dir / "elsewhere", repo_root=checkout)
    assert environment.name == "by-path"


# ---- refusals ----------------------------------------------------------------------------------


def test_missing_environment_lists_the_available_ones(env_dir: Path, load: Loader) -> None:
    load("alpha", base_data())
    load("beta", base_data())
    with pytest.raises(ConfigError) as error:
        load_environment("gamma", directory=env_dir)
    assert "no environment 'gamma'" in str(error.value)
    assert "['alpha', 'beta']" in str(error.value)


def test_invalid_toml_names_the_file(env_dir: Path) -> None:
    path = env_dir / "broken.toml"
    path.write_text('image = "unterminated\n')
    with pytest.raises(ConfigError, match="not valid TOML") as error:
        load_environment("broken", directory=env_dir)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("where", "key"),
    [
        (None, "colour"),  # top level
        ("ssh", "password"),
        ("app", "env"),
        ("nginx", "listen"),
        ("lock", "ttl"),
        ("hosts", "adress"),
    ],
)
def test_unknown_keys_are_refused_with_the_file_name(
    load: Loader, env_dir: Path, where: str | None, key: str
) -> None:
    data = base_data()
    if where is None:
        data[key] = "x"
    elif where == "hosts":
        data["hosts"][0][key] = "x"
    else:
        data.setdefault(where, {})[key] = "x"
    with pytest.raises(ConfigError) as error:
        load("typo", data)
    message = str(error.value)
    assert str(env_dir / "typo.toml") in message
    assert key in message
    assert "Extra inputs are not permitted" in message


def _with(data: dict[str, Any], section: str, **values: object) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    changed[section] = {**changed.get(section, {}), **values}
    return changed


@pytest.mark.parametrize(
    "ports",
    [
        {"blue": 9001, "green": 9001},
        {"blue": 9001},
        {"green": 9002},
        {"blue": 9001, "green": 9002, "red": 9003},
    ],
)
def test_ports_need_distinct_blue_and_green(load: Loader, ports: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="ports needs distinct blue and green entries"):
        load("target", _with(base_data(), "app", ports=ports))


@pytest.mark.parametrize(
    "name", ["LOG_LEVEL", "PATH", "imdb_api_workers", "IMDB_APIWORKERS", "IMDB_API_LOG-LEVEL"]
)
@pytest.mark.parametrize("field", ["settings", "secrets"])
def test_only_api_settings_are_accepted(load: Loader, field: str, name: str) -> None:
    with pytest.raises(ConfigError) as error:
        load("target", _with(base_data(), "app", **{field: {name: "x"}}))
    assert f"{name!r} is not an IMDB_API_* setting" in str(error.value)


def test_lock_heartbeat_must_be_at_most_half_the_ttl(load: Loader) -> None:
    with pytest.raises(ConfigError, match="heartbeat_s must be at most half of ttl_s"):
        load("target", _with(base_data(), "lock", ttl_s=30, heartbeat_s=15.5))
    exactly_half = load("target", _with(base_data(), "lock", ttl_s=30, heartbeat_s=15))
    assert exactly_half.lock.heartbeat_s == 15


def test_a_registry_login_names_both_variables_and_reads_them_at_deploy_time(
    load: Loader,
) -> None:
    with pytest.raises(ConfigError, match=r"pull\.user_var and pull\.password_var go together"):
        load("target", _with(base_data(), "pull", user_var="PULL_USER"))
    with pytest.raises(ConfigError, match="String should match pattern"):
        load("target", _with(base_data(), "pull", user_var="x y", password_var="P"))
    environment = load(
        "target", _with(base_data(), "pull", user_var="PULL_USER", password_var="PULL_TOKEN")
    )
    assert environment.registry_login({"PULL_USER": "u", "PULL_TOKEN": "t"}) == ("u", "t")
    with pytest.raises(ConfigError, match=r"registry login not set .*\['PULL_TOKEN'\]"):
        environment.registry_login({"PULL_USER": "u"})
    assert "t0ken-value" in environment.secret_values({"PULL_TOKEN": "t0ken-value"})
    assert load("target", base_data()).registry_login({}) is None


@pytest.mark.parametrize(
    "change",
    [
        {"hosts": []},
        {"hosts": [{"name": "web-1", "address": "a"}, {"name": "web-1", "address": "b"}]},
        {"hosts": [{"name": "Web_1", "address": "a"}]},
        {"strategy": "big-bang"},
        {"keep_releases": 0},
        {"name": "Not A Name"},
    ],
)
def test_invalid_values_are_refused(load: Loader, change: dict[str, Any]) -> None:
    data = base_data()
    data.update(change)
    with pytest.raises(ConfigError):
        load("target", data)


def _host(**values: object) -> dict[str, Any]:
    return {"hosts": [{"name": "web-1", "address": "10.0.0.1", **values}]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        # What nginx configs and shell commands take unquoted is refused in the file instead.
        ({"deploy_root": "/srv/mlops imdb"}, "deploy_root"),
        ({"deploy_root": "/srv/x;rm -rf /"}, "deploy_root"),
        (_host(deploy_root="/srv/{x}"), "hosts.0.deploy_root"),
        (_host(address="web 1.example"), "hosts.0.address"),
        (_host(address="a;b"), "hosts.0.address"),
        (_host(http_address="10.0.0.1"), "hosts.0.http_address"),
        (_host(http_address="10.0.0.1:99999"), "hosts.0.http_address"),
        (_host(http_address="10.0.0.1:80; include /etc/passwd"), "hosts.0.http_address"),
        (_host(app_bind="localhost"), "hosts.0.app_bind"),
        ({"image": "Registry.example/API:latest"}, "image"),
        ({"nginx": {"port": 0}}, "nginx.port"),
        ({"nginx": {"user": "www data"}}, "nginx.user"),
        ({"nginx": {"metrics_allow": ["10.0.0.0/33"]}}, "nginx.metrics_allow.0"),
        ({"app": {"bind": "0.0.0.0:80"}}, "app.bind"),
    ],
)
def test_addresses_ports_and_paths_are_checked_naming_file_and_field(
    load: Loader, env_dir: Path, change: dict[str, Any], field: str
) -> None:
    data = base_data()
    data.update(change)
    with pytest.raises(ConfigError) as error:
        load("target", data)
    message = str(error.value)
    assert message.startswith(f"{env_dir / 'target.toml'}:"), message
    assert f"\n{field}\n" in message, message


def test_the_public_port_serves_the_api_only_by_default(load: Loader) -> None:
    nginx = load("target", base_data()).nginx
    assert [str(network) for network in nginx.metrics_allow] == ["127.0.0.0/8"]
    assert nginx.public_docs is False
    opened = load("target", _with(base_data(), "nginx", metrics_allow=["10.1.0.0/16"]))
    assert [str(network) for network in opened.nginx.metrics_allow] == ["10.1.0.0/16"]


# ---- settings, secrets and redaction -----------------------------------------------------------


def test_app_environment_merges_settings_and_secrets(load: Loader) -> None:
    environment = load("target", base_data())
    environ = {"TEST_DEPLOY_API_TOKEN": "s3cret-token-value", "UNRELATED": "nope"}
    assert environment.app_environment(environ) == {
        "IMDB_API_LOG_LEVEL": "info",
        "IMDB_API_WORKERS": "2",
        "IMDB_API_TOKEN": "s3cret-token-value",
    }
    # The environment itself is not changed by it.
    assert "IMDB_API_TOKEN" not in environment.app.settings


def test_a_secret_overrides_a_setting_of_the_same_name(load: Loader) -> None:
    data = _with(base_data(), "app", secrets={"IMDB_API_WORKERS": "TEST_WORKERS"})
    environment = load("target", data)
    assert environment.app_environment({"TEST_WORKERS": "8"})["IMDB_API_WORKERS"] == "8"


@pytest.mark.parametrize("environ", [{}, {"TEST_DEPLOY_API_TOKEN": ""}])
def test_missing_secret_names_the_variable(load: Loader, environ: dict[str, str]) -> None:
    environment = load("target", base_data())
    with pytest.raises(ConfigError, match="TEST_DEPLOY_API_TOKEN"):
        environment.app_environment(environ)


def test_secret_values_are_the_app_secrets_and_the_ssh_key(load: Loader) -> None:
    environment = load("target", base_data())
    environ = {
        "TEST_DEPLOY_API_TOKEN": "s3cret-token-value",
        config.SSH_KEY_VAR: "-----BEGIN OPENSSH PRIVATE KEY-----abc",
        "HOME": "/root",
    }
    assert sorted(environment.secret_values(environ)) == sorted(
        ["s3cret-token-value", "-----BEGIN OPENSSH PRIVATE KEY-----abc"]
    )
    assert environment.secret_values({"TEST_DEPLOY_API_TOKEN": "only-this"}) == ["only-this"]
    assert environment.secret_values({}) == []


def test_redactor_masks_every_secret_everywhere() -> None:
    redact = Redactor(["alpha-secret", "beta-secret"])
    text = "a=alpha-secret b=beta-secret again:alpha-secret."
    assert redact(text) == "a=*** b=*** again:***."


@pytest.mark.parametrize("order", [["abcd", "abcd1234"], ["abcd1234", "abcd"]])
def test_redactor_masks_the_longest_secret_whole(order: list[str]) -> None:
    redact = Redactor(order)
    assert redact("x abcd1234 y abcd z") == "x *** y *** z"


def test_redactor_ignores_values_too_short_to_be_secrets() -> None:
    redact = Redactor(["", "a", "abc", "four"])
    assert redact("a cab abc four") == "a cab abc ***"
    assert Redactor()("nothing to hide") == "nothing to hide"


def test_redactor_values_masks_every_string_in_nested_data() -> None:
    redact = Redactor(['pa"ss-word'])
    entry = {"detail": 'got pa"ss-word', "hosts": ["a", 'pa"ss-word'], "n": 3}
    assert redact.values(entry) == {"detail": "got ***", "hosts": ["a", "***"], "n": 3}


# ---- layout ------------------------------------------------------------------------------------


def test_host_layout_paths() -> None:
    layout = HostLayout(PurePosixPath("/srv/x/env"))
    assert layout.state_file == PurePosixPath("/srv/x/env/state.json")
    assert layout.lock_record == PurePosixPath("/srv/x/env/lock.json")
    assert layout.audit_log == PurePosixPath("/srv/x/env/audit.jsonl")
    assert layout.journal == PurePosixPath("/srv/x/env/journal.json")
    assert layout.env_file("blue") == PurePosixPath("/srv/x/env/env/blue.env")
    assert layout.nginx_conf == PurePosixPath("/srv/x/env/nginx/nginx.conf")
    assert layout.nginx_pid == PurePosixPath("/srv/x/env/nginx/nginx.pid")
    assert layout.site_conf == PurePosixPath("/srv/x/env/nginx/site.conf")
    assert layout.upstream_conf == PurePosixPath("/srv/x/env/nginx/upstream.conf")


def test_other_colour() -> None:
    assert COLOURS == ("blue", "green")
    assert other_colour("blue") == "green"
    assert other_colour("green") == "blue"
    with pytest.raises(ValueError, match="unknown colour 'red'"):
        other_colour("red")
