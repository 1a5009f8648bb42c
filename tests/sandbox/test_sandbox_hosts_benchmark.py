"""`nox -s benchmark -- hosts`: deploy, rollback and reboot on each kind of host, side by side.

One run, one release pair, three fleets of two hosts: light hosts with Podman (the staging kind),
booting machines deployed to by a non-root user with rootless Podman (the production kind), and
light hosts with a Docker Engine. Per kind, ROUNDS deploys and rollbacks under wrk load through
both hosts' nginx; on the machines, ROUNDS reboots of one host under load on the other. Medians,
ratios to the light hosts and every request count go to reports/benchmark-hosts.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from tests.sandbox.conftest import (
    Releases,
    Sandbox,
    docker_hosts,
    failed_requests,
    fleet_of_kind,
    machine_hosts,
    reboot_until_serving,
    release_under_load,
    set_up,
    under_load,
)

pytestmark = pytest.mark.benchmark

ROUNDS = int(os.environ.get("MLOPS_HOSTS_BENCHMARK_ROUNDS", "3"))
# The targets: deploy with the image in the registry, rollback's switch, requests.
DEPLOY_TARGET_S, ROLLBACK_TARGET_S = 30.0, 5.0


def _releases(box: Sandbox, tmp_path: Path) -> dict[str, list[dict[str, float]]]:
    live, other = box.live_and_other()
    runs: dict[str, list[dict[str, float]]] = {"deploy": [], "rollback": []}
    for _ in range(ROUNDS):
        runs["deploy"].append(
            release_under_load(box, tmp_path, lambda deployer: deployer.deploy(other))
        )
        runs["rollback"].append(
            release_under_load(box, tmp_path, lambda deployer: deployer.rollback())
        )
        box.assert_settled(live, "ok")
    return runs


def _reboots(box: Sandbox, tmp_path: Path) -> list[dict[str, float]]:
    live, _ = box.live_and_other()
    other = box.environment.hosts[1]  # the first one reboots
    runs = []
    for _ in range(ROUNDS):
        took: dict[str, float] = {}

        def reboot(took: dict[str, float] = took) -> None:
            took.update(reboot_until_serving(box, live, limit_s=120))

        results, _ = under_load(
            box, tmp_path, reboot, environment=box.environment.only([other.name])
        )
        runs.append(
            {**took, "requests": results[0]["requests"], "failed": failed_requests(results)}
        )
        assert box.served_versions() == [live, live]
    return runs


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _markdown(
    kinds: dict[str, dict[str, list[dict[str, float]]]], reboots: list[dict[str, float]]
) -> str:
    light = next(iter(kinds.values()))
    lines = [
        f"# Hosts benchmark ({ROUNDS} rounds per kind, wrk through both hosts' nginx)",
        "",
        "| hosts | first deploy s | median deploy s | median rollback s "
        "| vs light (deploy, rollback) | requests | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in kinds.items():
        deploy, rollback = _median(runs["deploy"], "seconds"), _median(runs["rollback"], "seconds")
        ratio = (
            f"{deploy / _median(light['deploy'], 'seconds'):.2f}x, "
            f"{rollback / _median(light['rollback'], 'seconds'):.2f}x"
        )
        every = runs["deploy"] + runs["rollback"]
        lines.append(
            f"| {name} | {runs['deploy'][0]['seconds']:.1f} | {deploy:.1f} | {rollback:.1f} | "
            f"{ratio} | {sum(int(r['requests']) for r in every)} | "
            f"{sum(int(r['failed']) for r in every)} |"
        )
    lines += [
        "",
        f"Targets: deploy {DEPLOY_TARGET_S:.0f} s or less, rollback (drain and stop included here) "
        f"{ROLLBACK_TARGET_S:.0f} s or less for its switch, 0 failed requests.",
        "",
        "| machine reboot | sshd back s | live release served s | other host's requests | failed |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {index} | {run['ssh']:.1f} | {run['serving']:.1f} | {int(run['requests'])} | "
        f"{int(run['failed'])} |"
        for index, run in enumerate(reboots, 1)
    ]
    lines.append(
        f"| median | {_median(reboots, 'ssh'):.1f} | {_median(reboots, 'serving'):.1f} | | |"
    )
    return "\n".join(lines) + "\n"


def test_deploy_rollback_and_reboot_on_every_kind_of_host(
    sandbox: Sandbox,
    releases: Releases,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    kinds: dict[str, dict[str, list[dict[str, float]]]] = {}
    with (
        fleet_of_kind(
            releases, tmp_path_factory.mktemp("bm-m"), "machine", machine_hosts()
        ) as machines,
        fleet_of_kind(
            releases, tmp_path_factory.mktemp("bm-d"), "docker", docker_hosts()
        ) as dockers,
    ):
        set_up(machines)
        set_up(dockers)
        kinds["light, Podman"] = _releases(sandbox, tmp_path)
        kinds["machine, rootless Podman, non-root deploy user"] = _releases(machines, tmp_path)
        kinds["light, Docker Engine"] = _releases(dockers, tmp_path)
        reboots = _reboots(machines, tmp_path)
    report = _markdown(kinds, reboots)
    print("\n" + report)
    out = repo_root / "reports"
    out.mkdir(exist_ok=True)
    (out / "benchmark-hosts.md").write_text(report)
    (out / "benchmark-hosts.json").write_text(
        json.dumps({"rounds": ROUNDS, "kinds": kinds, "reboots": reboots}, indent=2) + "\n"
    )
    every = [run for runs in kinds.values() for group in runs.values() for run in group]
    assert sum(int(run["failed"]) for run in every + reboots) == 0
