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
