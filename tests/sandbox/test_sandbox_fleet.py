"""The sandbox fleet's pure parts: names, configs, /proc parsing; no process is started."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePosixPath

import pytest

from imdb_deploy.engine import podman
from imdb_deploy.sandbox import Fleet, SandboxError, SandboxHost
from imdb_deploy.sandbox import fleet as fleet_module

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = PurePosixPath("/srv/imdb")


def make_fleet(state_dir: Path, *names: str) -> Fleet:
    hosts = tuple(
        SandboxHost(name, f"127.0.0.{11 + index}", 2222, ROOT / name)
        for index, name in enumerate(names or ("staging-1", "staging-2"))
    )
    return Fleet(state_dir, hosts, registry="127.0.0.1:5000")


# ---------------------------------------------------------------- names and validation


def test_runroot_is_short_stable_and_distinct_per_state_dir(tmp_path: Path) -> None:
    first = fleet_module.runroot_for(tmp_path / "a", "staging-1")
    assert first == fleet_module.runroot_for(tmp_path / "a", "staging-1")
    assert first != fleet_module.runroot_for(tmp_path / "b", "staging-1")
    assert first.parent.parent == Path("/run")
    assert first.name == "staging-1"
    prefix, _, digest = first.parent.name.rpartition("-")
    assert prefix == "mlops-sandbox"
    assert len(digest) == 12
    assert int(digest, 16) >= 0
    assert len(str(first)) <= fleet_module.MAX_RUNROOT_LENGTH


def test_fleet_paths_live_under_the_state_dir(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "sandbox")
    host = fleet.host("staging-2")
    assert fleet.known_hosts == tmp_path / "sandbox" / "known_hosts"
    assert fleet.identity_file == tmp_path / "sandbox" / "id_ed25519"
    assert fleet.graphroot(host) == tmp_path / "sandbox" / "hosts" / "staging-2" / "storage"
    assert fleet.runroot(host) == fleet_module.runroot_for(tmp_path / "sandbox", "staging-2")
    engine = tmp_path / "sandbox" / "hosts" / "staging-2" / "engine"
    assert fleet.engine_env(host) == {
        "CONTAINERS_CONF": str(engine / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(engine / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(engine / "registries.conf"),
        # Its own home: the engine's user configuration (policy.json, registries.d) is there.
        "HOME": str(tmp_path / "sandbox" / "hosts" / "staging-2" / "home"),
    }
    assert host.layout.nginx_pid == ROOT / "staging-2" / "nginx" / "nginx.pid"
    with pytest.raises(KeyError):
        fleet.host("prod-1")


def test_a_relative_state_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fleet = make_fleet(Path("sandbox"))
    assert fleet.known_hosts == tmp_path.resolve() / "sandbox" / "known_hosts"
    assert fleet.runroot(fleet.hosts[0]) == make_fleet(tmp_path / "sandbox").runroot(fleet.hosts[0])


@pytest.mark.parametrize(
    ("name", "address", "port", "root", "message"),
    [
        ("bad name", "127.0.0.11", 2222, ROOT, "host name"),
        ("-dash", "127.0.0.11", 2222, ROOT, "host name"),
        ("web-1", "10.0.0.1", 2222, ROOT, "loopback"),
        ("web-1", "::1", 2222, ROOT, "not IPv4"),
        ("web-1", "localhost", 2222, ROOT, "not IPv4"),
        ("web-1", "127.0.0.11", 0, ROOT, "port"),
        ("web-1", "127.0.0.11", 70000, ROOT, "port"),
        ("web-1", "127.0.0.11", 2222, PurePosixPath("srv"), "not absolute"),
    ],
)
def test_sandbox_host_rejects_what_cannot_work(
    name: str, address: str, port: int, root: PurePosixPath, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SandboxHost(name, address, port, root)


def test_fleet_rejects_duplicates_and_names_too_long_for_a_runroot(tmp_path: Path) -> None:
    one = SandboxHost("web-1", "127.0.0.11", 2222, ROOT)
    with pytest.raises(ValueError, match="names must be unique"):
        Fleet(tmp_path, (one, SandboxHost("web-1", "127.0.0.12", 2222, ROOT)))
    with pytest.raises(ValueError, match="addresses must be unique"):
        Fleet(tmp_path, (one, SandboxHost("web-2", "127.0.0.11", 2222, ROOT)))
    # The same address on another port is another host.
    Fleet(tmp_path, (one, SandboxHost("web-2", "127.0.0.11", 2223, ROOT)))
    with pytest.raises(ValueError, match="runroot"):
        Fleet(tmp_path, (SandboxHost("x" * 40, "127.0.0.11", 2222, ROOT),))


# ---------------------------------------------------------------- file formats


def test_known_hosts_line_brackets_a_non_default_port_and_drops_the_comment() -> None:
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBEU mlops-sandbox host staging-1\n"
    assert (
        fleet_module.known_hosts_line("127.0.0.11", 2222, public)
        == "[127.0.0.11]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBEU"
    )
    assert (
        fleet_module.known_hosts_line("127.0.0.11", 22, public)
        == "127.0.0.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBEU"
    )
    with pytest.raises(ValueError, match="public key"):
        fleet_module.known_hosts_line("127.0.0.11", 2222, "garbage")


def test_containers_conf_keeps_the_machine_settings_and_isolates_libpod(tmp_path: Path) -> None:
    config = tomllib.loads(podman.containers_conf(Path("/run/x/web-1/libpod")))
    machine = tomllib.loads(podman.CONTAINERS_CONF)
    assert config["containers"] == machine["containers"]
    assert config["engine"] == {
        **machine["engine"],
        "tmp_dir": "/run/x/web-1/libpod",
        "lock_type": "file",
        "events_logger": "file",
    }


def test_containers_conf_adds_an_engine_table_when_there_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(podman, "CONTAINERS_CONF", '[containers]\nx = "y"\n')
    config = tomllib.loads(podman.containers_conf(Path("/run/t")))
    assert config == {
        "containers": {"x": "y"},
        "engine": {"tmp_dir": "/run/t", "lock_type": "file", "events_logger": "file"},
    }


def test_storage_conf_names_the_hosts_own_graphroot_and_runroot() -> None:
    text = fleet_module.storage_conf(Path('/state/a "quoted" dir'), Path("/run/r/web-1"))
    assert tomllib.loads(text) == {
        "storage": {
            "driver": "overlay",
            "graphroot": '/state/a "quoted" dir',
            "runroot": "/run/r/web-1",
        }
    }


def test_sshd_config_is_standalone_key_only_and_sets_the_engine(tmp_path: Path) -> None:
    text = fleet_module.sshd_config(
        address="127.0.0.11",
        port=2222,
        host_key=Path("/s/hosts/web-1/ssh_host_ed25519_key"),
        authorized_keys=Path("/s/authorized keys"),
        pid_file=Path("/s/hosts/web-1/sshd.pid"),
        environment={"CONTAINERS_CONF": "/s/c.conf", "ODD": "a b"},
    )
    lines = text.splitlines()
    for expected in [
        "ListenAddress 127.0.0.11:2222",
        "HostKey /s/hosts/web-1/ssh_host_ed25519_key",
        'AuthorizedKeysFile "/s/authorized keys"',
        "PidFile /s/hosts/web-1/sshd.pid",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "Subsystem sftp internal-sftp",
        'SetEnv CONTAINERS_CONF=/s/c.conf "ODD=a b"',
    ]:
        assert expected in lines
    # sshd takes the first value of most keywords: each must appear once.
    keywords = [line.split()[0] for line in lines if line and not line.startswith("#")]
    assert len(keywords) == len(set(keywords))
    with pytest.raises(ValueError, match="sshd_config"):
        fleet_module.sshd_config(
            address="127.0.0.11",
            port=2222,
            host_key=Path('/s/"'),
            authorized_keys=Path("/s/k"),
            pid_file=Path("/s/p"),
            environment={},
        )


# ---------------------------------------------------------------- /proc parsing


ARGV = ["/usr/sbin/sshd", "-D", "-f", "/s/hosts/web-1/sshd_config", "-E", "/s/hosts/web-1/sshd.log"]


@pytest.mark.parametrize(
    ("cmdline", "matches"),
    [
        (b"\0".join(arg.encode() for arg in ARGV) + b"\0", True),
        (("sshd: " + " ".join(ARGV) + " [listener] 0 of 64-64 startups").encode(), True),
        (("sshd: " + " ".join(ARGV) + " [listener] 1 of 64-64 startups\0\0\0").encode(), True),
        (("sshd: " + " ".join(ARGV)).encode(), True),
        (("sshd: " + " ".join(ARGV) + "x [listener]").encode(), False),
        (b"sshd: root@notty", False),
        (b"", False),  # a zombie
        (b"/usr/bin/python3\0-m\0http.server\0", False),
    ],
)
def test_listener_is_recognised_by_its_rewritten_command_line(
    cmdline: bytes, matches: bool
) -> None:
    assert fleet_module.listener_matches(cmdline, ARGV) is matches


def write_stat(proc: Path, pid: int, parent: int, comm: str = "sshd", state: str = "S") -> None:
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} {parent} {pid} 0 0\n")


def test_children_from_task_children_files(tmp_path: Path) -> None:
    for thread, children in ((100, "201 202 "), (101, "203")):
        task = tmp_path / "100" / "task" / str(thread)
        task.mkdir(parents=True)
        (task / "children").write_text(children)
    assert fleet_module.children_of(100, tmp_path) == [201, 202, 203]


def test_children_by_scanning_parents_without_task_children(tmp_path: Path) -> None:
    write_stat(tmp_path, 100, 1)
    write_stat(tmp_path, 201, 100, comm="sshd: a) (b")  # comm may hold ") "
    write_stat(tmp_path, 202, 100)
    write_stat(tmp_path, 300, 201)
    (tmp_path / "self").mkdir()
    (tmp_path / "400").mkdir()  # exited between listing and reading
    assert fleet_module.children_of(100, tmp_path) == [201, 202]


def test_running_treats_zombies_and_missing_processes_as_gone(tmp_path: Path) -> None:
    write_stat(tmp_path, 10, 1)
    write_stat(tmp_path, 11, 1, state="Z")
    assert fleet_module._running(10, tmp_path)
    assert not fleet_module._running(11, tmp_path)
    assert not fleet_module._running(12, tmp_path)


def write_cmdline(proc: Path, pid: int, title: str) -> None:
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "cmdline").write_bytes(title.encode())


def test_nginx_master_only_when_it_runs_from_this_hosts_prefix(tmp_path: Path) -> None:
    proc, pid_file = tmp_path / "proc", tmp_path / "nginx.pid"
    prefix = PurePosixPath("/srv/imdb/web-1/nginx")
    write_cmdline(proc, 50, f"nginx: master process nginx -c {prefix}/nginx.conf -p {prefix}/")
    write_cmdline(proc, 51, "nginx: worker process")
    write_cmdline(proc, 52, "nginx: master process nginx -c /srv/imdb/web-10/nginx/nginx.conf")
    write_cmdline(proc, 53, f"python3 -m something {prefix}/")
    assert fleet_module.nginx_master_pid(pid_file, prefix, proc) is None  # no pid file
    for pid, expected in ((50, 50), (51, None), (52, None), (53, None), (54, None)):
        pid_file.write_text(f"{pid}\n")
        assert fleet_module.nginx_master_pid(pid_file, prefix, proc) == expected
    pid_file.write_text("not a pid\n")
    assert fleet_module.nginx_master_pid(pid_file, prefix, proc) is None


# ---------------------------------------------------------------- a fleet that never ran


def test_a_fleet_that_never_ran_reports_stopped_and_downs_to_nothing(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "sandbox")
    assert fleet.status() == [
        {"name": "staging-1", "ssh": "127.0.0.11:2222", "sshd_running": False, "pid": None},
        {"name": "staging-2", "ssh": "127.0.0.12:2222", "sshd_running": False, "pid": None},
    ]
    assert fleet.drop_connections(fleet.hosts[0]) == 0
    assert not fleet.stop_ssh(fleet.hosts[0])
    with pytest.raises(SandboxError, match="run up"):
        fleet.start_ssh(fleet.hosts[0])
    assert fleet.down() == []
    assert fleet.down(forget=True) == []
    assert not (tmp_path / "sandbox").exists()


def test_a_stale_pid_record_is_not_taken_for_the_listener(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path / "sandbox")
    host = fleet.hosts[0]
    fleet.host_dir(host).mkdir(parents=True)
    # Our own PID: alive, but not an sshd started with that argv.
    (fleet.host_dir(host) / "sshd.pid.json").write_text(
        json.dumps({"pid": os.getpid(), "argv": ARGV})
    )
    assert fleet.status()[0]["sshd_running"] is False
    (fleet.host_dir(host) / "sshd.pid.json").write_text("{broken")
    assert fleet.status()[0]["pid"] is None
