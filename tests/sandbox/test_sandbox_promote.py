"""Build once, promote by digest, for real: a staging and a production environment on the test
fleet's hosts (each its own nginx and ports), production promoting from staging.

Production only ever runs what passed staging: a release that never reached staging, or a
staging that runs nothing yet, is refused with an audit entry and nothing changed; a promotion
deploys exactly the digest staging runs, benchmark-gated like any deploy, and drops no request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imdb_deploy import champion
from imdb_deploy.bluegreen import cli
from imdb_deploy.bluegreen.config import REPO_ROOT, Environment, load_environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import Orchestrator
from imdb_deploy.images import metadata
from imdb_deploy.images import release as release_identity
from imdb_deploy.sandbox.fleet import stop_nginx
from imdb_model import verify_artifact
from tests.sandbox.conftest import Sandbox, environment_toml, failed_requests, under_load
from tests.support import shared_engine

pytestmark = pytest.mark.integration

STAGING_PORTS = (8262, {"blue": 8273, "green": 8274})
PRODUCTION_PORTS = (8263, {"blue": 8275, "green": 8276})


@dataclass
class Pair:
    box: Sandbox
    staging: Environment
    production: Environment
    production_toml: Path

    def deployer(self, environment: Environment) -> Orchestrator:
        return self.box.orchestrator(environment)

    def served(self, environment: Environment) -> list[str | None]:
        return self.box.served_versions(environment)

    def audit(self, environment: Environment) -> dict[str, object]:
        deployer = self.deployer(environment)
        try:
            return deployer.audit_log(1)[-1]
        finally:
            deployer.close()


@pytest.fixture(scope="module")
def pair(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two more environments on the test fleet's hosts, set up by the deploy's own `setup`;
    their nginx stopped at the end (the fleet's `down` removes their containers)."""
    directory = tmp_path_factory.mktemp("promotion")
    state, image = sandbox.toml.parent, sandbox.releases.image
    files = {
        "e2e-staging": environment_toml(
            state, image, directory / "roots", http_port=STAGING_PORTS[0],
            app_ports=STAGING_PORTS[1],
        ),
        "e2e-production": environment_toml(
            state, image, directory / "roots", http_port=PRODUCTION_PORTS[0],
            app_ports=PRODUCTION_PORTS[1], top='promote_from = "e2e-staging"\n',
        ),
    }  # fmt: skip
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(text)
    staging = load_environment(str(directory / "e2e-staging.toml"))
    production = load_environment(str(directory / "e2e-production.toml"))
    try:
        for environment in (staging, production):
            deployer = sandbox.orchestrator(environment)
            try:
                deployer.setup()
            finally:
                deployer.close()
        yield Pair(sandbox, staging, production, directory / "e2e-production.toml")
    finally:
        for environment in (staging, production):
            for host in environment.hosts:
                stop_nginx(environment.layout(host))


def test_production_runs_only_what_passed_staging_by_the_same_digest(
    pair: Pair, tmp_path: Path
) -> None:
    v1, v2 = pair.box.releases.v1, pair.box.releases.v2
    production = pair.deployer(pair.production)
    try:
        # Nothing on staging yet: nothing to promote; refused, audited, nothing changed.
        with pytest.raises(DeployError, match="runs no release to promote"):
            production.promote(pair.staging, approve=True)
        assert pair.audit(pair.production)["result"] == "refused"
        assert pair.served(pair.production) == [None, None]

        staging = pair.deployer(pair.staging)
        try:
            staging.deploy(v1)
            staged = {h.name: staging.read_state(h) for h in pair.staging.hosts}
        finally:
            staging.close()
        assert all(v1 in state.passed for state in staged.values())  # the gate passed there
        digest = next(iter(staged.values())).live_digest
        assert digest is not None
        assert digest.startswith("sha256:")

        # A release that never reached staging: refused by deploy as by promote.
        with pytest.raises(DeployError, match=f"{v2} has not passed e2e-staging"):
            production.deploy(v2, approve=True)
        refused = pair.audit(pair.production)
        assert (refused["result"], refused["to_version"]) == ("refused", v2)

        started = time.monotonic()
        outcome = production.promote(pair.staging, approve=True)
        seconds = time.monotonic() - started
        print(f"first promotion (nothing live before): {seconds:.1f} s")
        assert (outcome.action, outcome.result) == ("promote", "ok")
        assert (outcome.to_version, outcome.to_digest) == (v1, digest)
        assert outcome.benchmark is not None
        assert outcome.benchmark["result"] == "pass"
        assert pair.served(pair.production) == [v1, v1]
        for host in pair.production.hosts:
            state = production.read_state(host)
            assert (state.live_version, state.live_digest) == (v1, digest)
            image = production.runners[host.name].run(
                "podman inspect --format '{{.ImageName}}' "
                + pair.production.container_name(str(state.live))
            )
            assert image.stdout.strip().endswith(f"@{digest}")  # run by digest, not by tag
    finally:
        production.close()


def test_the_promoted_release_is_audited_shown_and_the_next_champion(
    pair: Pair, tmp_path: Path
) -> None:
    """What production runs, as the audit log, `fab status` and the next training see it."""
    v1 = pair.box.releases.v1
    assert pair.served(pair.production) == [v1, v1]  # the case above
    production = pair.deployer(pair.production)
    try:
        digest = production.read_state(pair.production.hosts[0]).live_digest
        entry = pair.audit(pair.production)
        assert (entry["action"], entry["to_digest"]) == ("promote", digest)
        release = entry["release"]
        assert isinstance(release, dict)
        assert release["release"] == v1
        assert release["model"]["version"] == v1.rsplit("-t", 1)[0]

        # The champion the next training is gated against: this model, taken from the image
        # production runs, by digest, and verified.
        with shared_engine() as engine:
            out = tmp_path / "champion"
            assert champion.fetch(pair.production, out, engine.client) == v1
        assert (
            verify_artifact(out).manifest["manifest_sha256"] == release["model"]["manifest_sha256"]
        )

        # fab status names the release, its digest and commit, from the hosts and the live API.
        rows = production.status()
        assert {(r["version"], r["digest"], r["served_release"]) for r in rows} == {
            (v1, digest, v1)
        }
        assert all(len(str(r["commit"])) == 40 for r in rows)
    finally:
        production.close()


def test_a_promotion_drops_no_request(pair: Pair, tmp_path: Path) -> None:
    """The second release through staging, then promoted under load: the time a promotion
    takes with the image in the registry, and 0 failed requests meanwhile."""
    v1, v2 = pair.box.releases.v1, pair.box.releases.v2
    staging = pair.deployer(pair.staging)
    try:
        if pair.served(pair.staging) != [v1, v1]:
            staging.deploy(v1)
        production = pair.deployer(pair.production)
        try:
            if pair.served(pair.production) != [v1, v1]:
                production.promote(pair.staging, approve=True)
        finally:
            production.close()
        staging.deploy(v2)
    finally:
        staging.close()
    # The gate would measure under this test's own load and call it a regression.
    quiet = pair.production.model_copy(
        update={"benchmark": pair.production.benchmark.model_copy(update={"enabled": False})}
    )
    production = pair.deployer(quiet)
    timing: list[float] = []

    def promote() -> None:
        started = time.monotonic()
        production.promote(pair.staging, approve=True)
        timing.append(time.monotonic() - started)

    try:
        results, seconds = under_load(pair.box, tmp_path, promote, environment=quiet)
    finally:
        production.close()
    total = sum(r["requests"] for r in results)
    print(f"promotion: {timing[0]:.1f} s, {total} requests in {seconds:.1f} s under load, "
          f"{failed_requests(results)} failed")  # fmt: skip
    assert failed_requests(results) == 0, results
    assert timing[0] <= 30
    assert pair.served(pair.production) == [v2, v2]


def test_the_promote_command_line(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """What `nox -s promote -- ENV` and `fab promote --env ENV` run: with the release staging
    runs live already, nothing to do; status names what runs."""
    v2, toml = pair.box.releases.v2, str(pair.production_toml)
    assert pair.served(pair.staging) == pair.served(pair.production) == [v2, v2]  # cases above
    assert cli.main(["promote", "--approve", toml]) == 0
    assert "already live on every host" in capsys.readouterr().out
    # CD on main: staging runs a release of this very tree, so promote it rather than build
    # (unless the checkout changed since the releases were built: then build).
    same_tree = release_identity.is_of_tree(v2, metadata.git_revision(REPO_ROOT).tree)
    assert cli.main(["promote", "--plan", toml]) == 0
    planned = capsys.readouterr()
    lines = planned.out.splitlines()
    assert lines[0] == f"build={'false' if same_tree else 'true'}"
    assert (f"promote {v2}" if same_tree else "not of tree") in planned.err
    if same_tree:  # and what the production job then promotes, and nothing else
        assert lines[1] == f"release={v2}"
        assert re.fullmatch(r"digest=sha256:[0-9a-f]{64}", lines[2])
        digest = lines[2].removeprefix("digest=")
        assert cli.main(["promote", "--approve", "--digest", digest, toml]) == 0
        other = "sha256:" + "0" * 64
        assert cli.main(["promote", "--approve", "--digest", other, toml]) == 1
        refused = capsys.readouterr()
        assert "not the planned sha256:000000000000" in refused.out + refused.err
    assert cli.main(["status", "--json", toml]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["served_release"] for row in rows] == [v2, v2]
    # An environment that promotes from nowhere says so, and nothing starts.
    assert cli.main(["promote", str(pair.box.toml)]) == 2
    assert "names no environment to promote from" in capsys.readouterr().err
