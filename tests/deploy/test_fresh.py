"""The fresh machine's parts that are data: its network's commands and rules, the README's
commands it runs, where a command's time goes, what it is given. `nox -s fresh` runs it whole."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.fresh import cli, network
from imdb_deploy.fresh.machine import FreshMachine, Volume, binfmt_entries, remove_binfmt_entries
from imdb_deploy.fresh.network import Isolation, resolvers
from imdb_deploy.sandbox.machines import MachineEngine, MachineError


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


# ---- a run, with stand-ins for the machine and its network --------------------------------


class FakeMachine:
    """Answers each command with its exit status; `make X` leaves nox's report in the clone."""

    container = "mlops-fresh"

    def __init__(self, clone: Path, exits: dict[str, int] | None = None) -> None:
        self.clone, self.exits = clone, exits or {}
        self.commands: list[str] = []
        self.booted: tuple[str, str, list[str]] | None = None
        self.boot_error: Exception | None = None
        self.destroyed = False

    def image(self) -> str:
        return "localhost/mlops-fresh:test"

    def boot(self, image: str, netns: str, volumes: Sequence[Volume]) -> float:
        if self.boot_error is not None:
            raise self.boot_error
        self.booted = (image, netns, [volume.target for volume in volumes])
        return 0.1

    def stream(
        self, command: str, *, env: Mapping[str, str], cwd: str, on_line: Callable[[str], None]
    ) -> int:
        assert env["CI"] == "true"
        self.commands.append(command)
        if command.startswith("make "):
            target = command.split(maxsplit=2)[1]
            for line in ("python3 -m venv /w/.tools && pip", "bash deploy/system-packages.sh"):
                on_line(line)
            on_line("PYTHONPATH=deploy/src /w/.tools/bin/python -m imdb_deploy.session_times")
            reports = self.clone / "reports"
            reports.mkdir(parents=True, exist_ok=True)
            report = {"sessions": [{"name": "lint", "result": "success", "duration": 7.5}]}
            (reports / f"sessions-{target}.json").write_text(json.dumps(report))
        return next((code for start, code in self.exits.items() if command.startswith(start)), 0)

    def destroy(self) -> None:
        self.destroyed = True


class FakeNetwork:
    netns_path = "/run/netns/mlops-fresh"

    def __init__(self) -> None:
        self.up_with: tuple[list[str], list[str]] | None = None
        self.down_with: list[str | None] = []

    def up(self, allowed: Sequence[str], dns: Sequence[str]) -> str:
        self.up_with = (list(allowed), list(dns))
        return "0"

    def down(self, ip_forward: str | None = None) -> list[str]:
        self.down_with.append(ip_forward)
        return []


@pytest.fixture
def fresh_run(
    tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[cli.FreshRun, FakeMachine, FakeNetwork, list[set[str]]]]:
    """A run in tmp_path against this repository's README, every host-side effect stood in."""
    removed: list[set[str]] = []
    handlers = iter([set(), {"python3.11"}])
    monkeypatch.setattr(cli, "resolve", lambda names: ["203.0.113.80"])
    monkeypatch.setattr(cli, "resolvers", lambda: ["10.255.255.53"])
    monkeypatch.setattr(cli, "python_libraries", lambda: ["libssl3"])
    monkeypatch.setattr(cli, "binfmt_entries", lambda: next(handlers))
    monkeypatch.setattr(cli, "remove_binfmt_entries", removed.append)
    monkeypatch.setattr(cli, "bare_clone", lambda state, repo: (state / "share", "c" * 40))
    monkeypatch.setattr(cli, "uncommitted", lambda repo: 2)

    def make(**options: Any) -> tuple[cli.FreshRun, FakeMachine, FakeNetwork, list[set[str]]]:
        state = tmp_path / "state"
        machine = FakeMachine(state / "work" / "mlops-imdb", options.pop("exits", None))
        net = FakeNetwork()
        run = cli.FreshRun(
            machine, net, state=state, reports=tmp_path / "reports", repo=repo_root,
            **options,
        )  # fmt: skip
        return run, machine, net, removed

    return make


def test_a_green_run_times_each_stage_and_cleans_up(
    fresh_run: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, machine, net, removed = fresh_run()
    assert run() == 0
    assert machine.commands[2:] == ["make pipeline", "make test"]
    assert machine.booted is not None
    assert "/work" in machine.booted[2]
    assert net.up_with == (["203.0.113.80"], ["10.255.255.53"])
    assert (machine.destroyed, net.down_with, removed) == (True, ["0"], [{"python3.11"}])
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["ok"]
    assert [stage["stage"].split(":")[0] for stage in summary["stages"]][:3] == [
        "image", "source", "boot (systemd)",
    ]  # fmt: skip
    pipeline = summary["results"][0]
    assert [phase["phase"] for phase in pipeline["phases"]] == [name for name, _ in cli.PHASES]
    assert pipeline["sessions"] == [{"session": "lint", "result": "success", "seconds": 7.5}]
    assert (tmp_path / "reports" / "clone" / "sessions-test.json").is_file()
    out = capsys.readouterr().out
    assert "note: 2 uncommitted change(s) are not in HEAD" in out
    assert "fresh machine: green" in out
    assert "| nox -s lint | 8 | success |" in (tmp_path / "reports" / "summary.md").read_text()


def test_a_failing_command_ends_the_run_red_and_skips_the_rest(
    fresh_run: Callable[..., Any], tmp_path: Path
) -> None:
    run, machine, _, _ = fresh_run(exits={"make pipeline": 2})
    assert run() == 1
    assert machine.commands[-1] == "make pipeline"
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert not summary["ok"]
    assert [result["exit"] for result in summary["results"]] == [2]
    assert "Result: FAILED." in (tmp_path / "reports" / "summary.md").read_text()


def test_failed_prerequisites_run_no_readme_command(fresh_run: Callable[..., Any]) -> None:
    run, machine, _, _ = fresh_run(exits={"DEBIAN_FRONTEND=noninteractive": 100})
    assert run() == 1
    assert len(machine.commands) == 1


def test_keep_leaves_the_machine_and_its_network(
    fresh_run: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run, machine, net, _ = fresh_run(keep=True)
    assert run() == 0
    assert (machine.destroyed, net.down_with) == (False, [])
    assert "kept: mlops-fresh" in capsys.readouterr().out


def test_a_machine_that_fails_to_boot_is_still_cleaned_up(fresh_run: Callable[..., Any]) -> None:
    run, machine, net, _ = fresh_run()
    machine.boot_error = MachineError("did not boot")
    with pytest.raises(MachineError, match="did not boot"):
        run()
    assert (machine.destroyed, net.down_with) == (True, ["0"])


# ---- the parts that act, against stand-ins for ip, nft, ldd's subjects and podman -----------


def stand_in(directory: Path, name: str, script: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(f"#!/bin/sh\n{script}\n")
    (directory / name).chmod(0o755)


def test_the_network_is_made_and_removed_with_ip_and_nft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    for tool in ("ip", "nft"):
        stand_in(bin_dir, tool, f'echo "{tool} $*" >> {calls}; cat > /dev/null')
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    forward = tmp_path / "ip_forward"
    forward.write_text("0\n")
    monkeypatch.setattr(network, "IP_FORWARD", forward)
    isolation = Isolation("test-fresh")
    monkeypatch.setattr(Isolation, "netns_path", str(tmp_path / "netns"))
    assert isolation.up(["203.0.113.80"], ["10.255.255.53"]) == "0"
    assert forward.read_text() == "1\n"
    lines = calls.read_text().splitlines()
    assert lines[0] == "ip netns add test-fresh"
    assert lines[-1] == "nft -f -"
    assert isolation.down("0") == []
    assert forward.read_text() == "0\n"
    assert calls.read_text().splitlines()[-2:] == [
        "nft delete table inet test_fresh",
        "ip netns del test-fresh",
    ]


def test_a_network_left_by_an_interrupted_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "netns").touch()
    monkeypatch.setattr(Isolation, "netns_path", str(tmp_path / "netns"))
    with pytest.raises(network.NetworkError, match="an earlier run was interrupted"):
        Isolation("test-fresh").up(["203.0.113.80"], ["10.255.255.53"])


def test_removing_what_is_not_there_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path / "bin", "ip", "exit 1")
    stand_in(tmp_path / "bin", "nft", "exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert Isolation("test-fresh").down() == ["nft delete table", "ip netns del"]


def test_names_resolve_to_sorted_addresses_and_a_bad_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert network.resolve(["localhost"]) == ["127.0.0.1"]  # /etc/hosts: no query leaves

    def unknown(*args: object) -> object:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(network.NetworkError, match=r"cannot resolve deb\.debian\.org"):
        network.resolve(["deb.debian.org"])


def test_pythons_libraries_are_the_packages_its_binaries_link(
    tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    require_tool("ldd")
    require_tool("dpkg-query")
    binary = tmp_path / "versions" / "3.11.9" / "bin" / "python3.11"
    binary.parent.mkdir(parents=True)
    binary.symlink_to(Path("/usr/bin/true").resolve())
    assert "libc6" in cli.python_libraries(tmp_path)
    assert cli.python_libraries(tmp_path / "none") == []


def test_the_machines_console_and_stream_go_through_its_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in podman that runs what `exec` is given here (the engine's flags dropped)."""
    stand_in(
        tmp_path / "bin", "podman",
        'while [ "$1" != exec ]; do shift; done; shift\n'
        'while [ "${1#--env=}" != "$1" ]; do export "${1#--env=}"; shift; done\n'
        'shift; exec "$@"',
    )  # fmt: skip
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path))  # the login shell reads no profile of ours
    machine = FreshMachine(MachineEngine(tmp_path / "engine", tmp_path / "run", "t"))
    assert machine.console("echo $((6 * 7))") == "42\n"
    with pytest.raises(MachineError, match="exited 3"):
        machine.console("exit 3")
    assert machine.console("exit 3", check=False) == ""
    seen: list[str] = []
    env = {"GREETING": "hello"}
    status = machine.stream("echo $GREETING; pwd; exit 4", env=env, cwd="/", on_line=seen.append)
    assert (status, seen) == (4, ["hello", "/"])
