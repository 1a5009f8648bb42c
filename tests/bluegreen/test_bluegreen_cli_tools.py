"""The small pieces around the deploy CLI: option passing (fabfile), timeline retention, and
which hosts make up the sandbox fleet."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

import pytest

from imdb_deploy.bluegreen import cli
from imdb_deploy.bluegreen.config import ConfigError, load_environment
from imdb_deploy.sandbox import inventory


def test_option_args_turn_task_arguments_into_cli_flags() -> None:
    assert cli.option_args({"version": "v1", "approve": True, "force": False}) == [
        "--version", "v1", "--approve",
    ]  # fmt: skip
    assert cli.option_args({"version": "", "json": None, "limit": 5}) == ["--limit", "5"]
    assert cli.option_args({"dry_run": True}) == ["--dry-run"]


def test_prune_timelines_keeps_the_newest_per_environment(tmp_path: Path) -> None:
    now = time.time()
    for index in range(5):
        for environment in ("staging", "production"):
            path = tmp_path / f"{environment}-2026112{index}T000000Z-deploy-{index}.json"
            path.write_text("{}")
            os.utime(path, (now - 100 + index, now - 100 + index))
    removed = cli.prune_timelines("staging", keep=2, directory=tmp_path)
    assert sorted(p.name for p in removed) == [
        f"staging-2026112{i}T000000Z-deploy-{i}.json" for i in range(3)
    ]
    left = sorted(p.name for p in tmp_path.glob("staging-*"))
    assert left == [f"staging-2026112{i}T000000Z-deploy-{i}.json" for i in (3, 4)]
    assert len(list(tmp_path.glob("production-*"))) == 5  # never another environment's
    assert cli.prune_timelines("staging", keep=2, directory=tmp_path) == []


def test_the_sandbox_fleet_is_the_hosts_of_the_sandbox_environments(tmp_path: Path) -> None:
    environments = inventory.sandbox_environments()
    assert sorted(e.name for e in environments) == ["sandbox-production", "sandbox-staging"]
    fleet = inventory.fleet_of(environments, tmp_path)
    assert fleet.registry == "127.0.0.1:5000"
    assert sorted(h.name for h in fleet.hosts) == [
        "production-1", "production-2", "staging-1", "staging-2",
    ]  # fmt: skip
    staging = load_environment("sandbox-staging")
    host = staging.hosts[0]
    fleet_host = fleet.host(host.name)
    assert fleet_host.ssh_address == f"{host.address}:2222"
    assert fleet_host.deploy_root == staging.layout(host).root
    other = inventory.fleet_of(environments, tmp_path, registry="127.0.0.1:5099")
    assert other.registry == "127.0.0.1:5099"


def test_sandbox_environments_must_share_one_registry(tmp_path: Path) -> None:
    staging = load_environment("sandbox-staging")
    elsewhere = staging.model_copy(update={"image": "127.0.0.1:5001/mlops-imdb-api"})
    with pytest.raises(ConfigError, match="several registries"):
        inventory.registry_address([staging, elsewhere])
    assert inventory.registry_address([staging]) == "127.0.0.1:5000"
    assert isinstance(staging.layout(staging.hosts[0]).root, PurePosixPath)


# ---- acting on part of an environment ----------------------------------------------------------


def test_without_hosts_a_release_acts_on_every_host() -> None:
    staging = load_environment("sandbox-staging")
    assert cli.narrowed(staging, None, partial=False) == (staging, [])
    with pytest.raises(cli.CliError, match="--partial goes with --hosts"):
        cli.narrowed(staging, None, partial=True)


def test_hosts_need_the_explicit_partial_flag() -> None:
    staging = load_environment("sandbox-staging")
    with pytest.raises(
        cli.CliError, match=r"--hosts staging-1 leaves the other hosts .* --partial"
    ):
        cli.narrowed(staging, "staging-1", partial=False)


def test_partial_narrows_to_the_named_hosts_and_names_the_skipped() -> None:
    staging = load_environment("sandbox-staging")
    only, skipped = cli.narrowed(staging, "staging-2", partial=True)
    assert [host.name for host in only.hosts] == ["staging-2"]
    assert skipped == ["staging-1"]
    assert (only.name, only.image, only.lock) == (staging.name, staging.image, staging.lock)
    both, none = cli.narrowed(staging, " staging-1 , staging-2 ", partial=True)
    assert ([h.name for h in both.hosts], none) == (["staging-1", "staging-2"], [])


@pytest.mark.parametrize("hosts", ["staging-9", "staging-1,staging-9", ","])
def test_partial_refuses_hosts_the_environment_does_not_have(hosts: str) -> None:
    staging = load_environment("sandbox-staging")
    with pytest.raises(cli.CliError, match=r"sandbox-staging has no host\(s\) .* its hosts: "):
        cli.narrowed(staging, hosts, partial=True)


def test_the_command_line_refuses_hosts_without_partial(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rollback", "--hosts", "staging-1", "sandbox-staging"]) == 2
    assert "add --partial to confirm" in capsys.readouterr().err
