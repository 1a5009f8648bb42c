"""The fresh machine's parts that are data: its network's commands and rules, the README's
commands it runs, where a command's time goes, what it is given. `nox -s fresh` runs it whole."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imdb_deploy.fresh import cli
from imdb_deploy.fresh.machine import Volume, binfmt_entries, remove_binfmt_entries
from imdb_deploy.fresh.network import Isolation, resolvers


def test_the_namespace_is_made_and_joined_by_a_veth_pair() -> None:
    isolation = Isolation("mlops-fresh")
    assert isolation.addresses == ("10.231.0.1", "10.231.0.2")
    commands = [" ".join(argv) for argv in isolation.up_commands()]
    assert commands[0] == "ip netns add mlops-fresh"
    assert "ip link add mlops-fresh-h type veth peer name mlops-fresh-n" in commands
    assert "ip -n mlops-fresh route add default via 10.231.0.1" in commands
    assert all(len(name) <= 15 for name in (isolation.host_side, isolation.inner_side))
    assert isolation.netns_path == "/run/netns/mlops-fresh"
    assert [" ".join(argv) for argv in isolation.down_commands()] == [
        "nft delete table inet mlops_fresh",
        "ip netns del mlops-fresh",
    ]


def test_the_rules_forward_only_to_the_registries_and_resolvers() -> None:
    rules = Isolation("mlops-fresh").ruleset(["203.0.113.80"], ["10.255.255.53"])
    assert "table inet mlops_fresh {" in rules
    assert 'iifname "mlops-fresh-h" ip daddr { 203.0.113.80 } tcp dport { 80, 443 } accept' in rules
    assert "ip daddr { 10.255.255.53 } meta l4proto { tcp, udp } th dport 53 accept" in rules
    # Everything else it sends is dropped, and it never reaches this machine's own listeners.
    forward = rules.partition("chain forward")[2].partition("}\n    chain")[0]
    assert forward.strip().splitlines()[-1].strip() == 'oifname "mlops-fresh-h" counter drop'
    assert 'iifname "mlops-fresh-h" counter drop' in rules.partition("chain input")[2]
    assert "ip saddr 10.231.0.0/30 oifname != " in rules


def test_nft_accepts_the_rules(require_tool: Callable[[str], str], tmp_path: Path) -> None:
    """`nft --check` parses them without applying anything."""
    rules = tmp_path / "rules.nft"
    rules.write_text(Isolation("mlops-fresh").ruleset(["203.0.113.80"], ["10.255.255.53"]))
    done = subprocess.run(
        [require_tool("nft"), "--check", "--file", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_resolvers_are_read_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 10.255.255.53\nnameserver fd00::1\nsearch example\n")
    assert resolvers(conf) == ["10.255.255.53"]


def test_the_readme_commands_are_its_quick_start_block(tmp_path: Path, repo_root: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n```\nnot this\n```\n\n## Quick start\n\nText.\n\n```\nmake pipeline\n"
        "# a comment\nmake test\n```\n\n```\nmake other\n```\n"
    )
    assert cli.quick_start_commands(readme) == ["make pipeline", "make test"]
    assert cli.quick_start_commands(repo_root / "README.md") == ["make pipeline", "make test"]


def test_a_readme_without_a_quick_start_is_an_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n```\nmake\n```\n")
    with pytest.raises(cli.FreshError, match="no `## Quick start`"):
        cli.quick_start_commands(readme)


def test_a_commands_time_is_split_at_the_lines_its_recipe_echoes() -> None:
    phases = cli.Phases()
    for line in (
        "python3 -m venv /work/mlops-imdb/.tools && /work/mlops-imdb/.tools/bin/python -m pip",
        "bash deploy/system-packages.sh --arm64",
        "installing Debian packages: sudo",
        "PYTHONPATH=deploy/src /x/.tools/bin/python -m imdb_deploy.session_times --report=r --",
        "bash deploy/system-packages.sh --arm64",  # a second mention starts nothing new
    ):
        phases.see(line)
        time.sleep(0.01)
    names = [name for name, _ in phases.seconds(time.monotonic())]
    assert names == [name for name, _ in cli.PHASES]
    assert all(seconds >= 0 for _, seconds in phases.seconds(time.monotonic()))


def test_the_prerequisites_are_installed_and_pyenv_set_up_as_its_readme_says() -> None:
    command = cli.prerequisites_command(["libssl3", "libffi8"])
    assert "apt-get install -y -qq ca-certificates make git libssl3 libffi8" in command
    assert "update-ca-certificates > /dev/null" in command
    assert command.endswith(">> /root/.profile")
    assert 'eval "$(pyenv init - bash)"' in cli.PYENV_PROFILE


def test_the_console_runs_with_ci_true_and_the_tls_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.delenv("PIP_CERT", raising=False)
    env = cli.console_env()
    assert env["CI"] == "true"
    assert "PATH" not in env  # the login shell's own, with pyenv from ~/.profile
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert "PIP_CERT" not in env


def test_volumes_make_the_writable_directories(tmp_path: Path) -> None:
    advisories = tmp_path / "advisories"
    mounted = cli.volumes(tmp_path / "state", advisories)
    assert Volume(tmp_path / "state" / "work", "/work") in mounted
    assert (tmp_path / "state" / "containers").is_dir()
    assert mounted[-1].arg() == f"--volume={advisories}:/work/{cli.ADVISORIES}:ro"
    assert not (tmp_path / "state" / "share").exists()  # read-only: the clone fills it


def test_binfmt_handlers_registered_by_the_machine_are_found_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "binfmt_misc"
    root.mkdir()
    assert binfmt_entries(root) == set()  # not mounted
    for name in ("register", "status", "qemu-aarch64", "python3.11"):
        (root / name).write_text("enabled\n")
    assert binfmt_entries(root) == {"qemu-aarch64", "python3.11"}
    remove_binfmt_entries({"python3.11"}, root)
    assert (root / "python3.11").read_text() == "-1\n"  # what the kernel takes as "remove"


def test_a_session_row_names_a_parametrized_session_in_full() -> None:
    row = cli.session_row({"name": "tests", "signatures": ["tests-3.12"], "result": "success",
                           "duration": 41.26})  # fmt: skip
    assert row == {"session": "tests-3.12", "result": "success", "seconds": 41.3}
