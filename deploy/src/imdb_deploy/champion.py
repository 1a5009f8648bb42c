"""The champion: the model of the release live on an environment, for the trainer's gate.

    python -m imdb_deploy.champion fetch ENVIRONMENT --out DIR
    python -m imdb_deploy.champion train ENVIRONMENT --out DIR [--fallback DIR] -- TRAIN ARGS

Reads what the environment's hosts run (their state: release and image digest; as the
environment's reader, a host user that may read that and nothing else), pulls that
image by digest into the local engine, copies its model artifact (/opt/model) and release record
(/opt/release.json) out, and verifies both: the artifact with the serving code's verification,
the record naming exactly that artifact. The challenger `nox -s train` makes must then not be
worse than it on the same held-out rows (`imdb-trainer train --reference DIR`); `train` runs
exactly that, and when the challenger loses, nothing is released and the notification says why.

fetch: exit 0 with the artifact in DIR, or with nothing there when no release is live (a new
environment, or a sandbox whose fleet is not up yet); exit 1 when the hosts disagree or cannot
be read, or the artifact fails verification. train: the trainer's exit code (4: the gate).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import docker
from docker.errors import DockerException

from imdb_deploy import notify
from imdb_deploy.bluegreen.config import ConfigError, Environment, current_user, load_environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import Orchestrator, running_release
from imdb_deploy.images import build, engine_client
from imdb_deploy.images.artifact import trainer_executable
from imdb_model import ArtifactVerificationError, verify_artifact

MODEL_PATH = "/opt/model"
GATE_FAILED = 4  # imdb-trainer's exit code when the challenger loses
RELEASE_PATH = "/opt/release.json"


class ChampionError(RuntimeError):
    """The champion cannot be named, fetched or trusted."""


class HostsUnreachableError(ChampionError):
    """The environment's hosts cannot be reached (a sandbox that is not up)."""


def live_release(
    environment: Environment, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """(release, digest) every host of `environment` runs, None when none runs one. Read as
    the environment's reader where it has one (its key: $MLOPS_READ_SSH_KEY), which may read
    exactly that and nothing else."""
    view, variables = environment.as_reader(os.environ if environ is None else environ)
    reader = Orchestrator(view, environ=variables, echo=lambda line: None)
    try:
        states = reader.states()
    except DeployError as exc:
        raise HostsUnreachableError(str(exc)) from None
    finally:
        reader.close()
    try:
        return running_release(environment.name, states)
    except DeployError as exc:
        raise ChampionError(str(exc)) from None


def safe_extract(archive: bytes, target: Path, top: str) -> None:
    """Extract the regular files and directories under `top/` of a `get_archive` tar into
    `target`: nothing outside it, no links or devices (the image is checked, not trusted)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or path.parts[:1] != (top,):
                raise ChampionError(f"unexpected path in the image's archive: {member.name}")
            if not (member.isfile() or member.isdir()):
                raise ChampionError(f"{member.name} in the image is not a regular file")
            destination = target.joinpath(*path.parts[1:])
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise ChampionError(f"{member.name} cannot be read")
            destination.write_bytes(source.read())


def single_file(archive: bytes, name: str) -> bytes:
    """The one regular file `name` of a `get_archive` tar of a file."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        if [m.name for m in members] != [name] or not members[0].isfile():
            raise ChampionError(f"expected one file {name}, got {[m.name for m in members]}")
        source = tar.extractfile(members[0])
        if source is None:
            raise ChampionError(f"{name} cannot be read")
        return source.read()


def copy_out(client: docker.DockerClient, image: str, out: Path) -> dict[str, object]:
    """/opt/model into `out` and /opt/release.json (returned) from `image`, by a container
    that is created, never started, and removed."""
    container = client.containers.create(image, command=["true"])
    try:
        model, _ = container.get_archive(MODEL_PATH)
        record, _ = container.get_archive(RELEASE_PATH)
        text = single_file(b"".join(record), PurePosixPath(RELEASE_PATH).name)
        safe_extract(b"".join(model), out, PurePosixPath(MODEL_PATH).name)
    finally:
        container.remove(force=True)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ChampionError(f"{image} carries no readable release record: {exc}") from None
    if not isinstance(data, dict):
        raise ChampionError(f"{image} carries no release record")
    return data


def fetch(
    environment: Environment, out: Path, client: docker.DockerClient | None = None
) -> str | None:
    """The live release's verified artifact into `out`; its release, or None when none is
    live. `out` is replaced only by a verified artifact. Without `client`, the local engine is
    connected to (and closed) only when a release is live: a new environment needs no engine."""
    live = live_release(environment)
    if live is None:
        return None
    if client is None:
        with contextlib.closing(engine_client.connect()) as connected:
            return copy_release_model(environment, *live, out, connected)
    return copy_release_model(environment, *live, out, client)


def copy_release_model(
    environment: Environment, version: str, digest: str, out: Path, client: docker.DockerClient
) -> str:
    """Pull `version` by `digest` and put its verified artifact into `out`; returns `version`."""
    image = environment.image_ref(version, digest)
    try:
        client.images.pull(image, auth_config=build.registry_auth(os.environ))
    except DockerException as exc:
        raise ChampionError(f"cannot pull {image}: {exc}") from None
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        record = copy_out(client, image, staging)
        try:
            artifact = verify_artifact(staging)
        except ArtifactVerificationError as exc:
            raise ChampionError(f"the model of {version} fails verification: {exc}") from None
        model = record.get("model")
        named = model.get("manifest_sha256") if isinstance(model, dict) else None
        if record.get("release") != version or named != artifact.manifest["manifest_sha256"]:
            raise ChampionError(
                f"{image} is not release {version} with its model: its record says "
                f"{record.get('release')} / model {str(named)[:12]}"
            )
        shutil.rmtree(out, ignore_errors=True)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def fetch_champion(name: str, out: Path) -> tuple[Environment, str | None]:
    """The champion of environment `name` into `out` (emptied first); its release or None.
    A sandbox environment whose fleet is not up has none (nothing can be live there)."""
    environment = load_environment(name)
    shutil.rmtree(out, ignore_errors=True)
    try:
        return environment, fetch(environment, out)
    except HostsUnreachableError as exc:
        if not environment.sandbox:
            raise
        print(f"champion: none ({environment.name} is not up: {exc})")
        return environment, None


def gated_training(name: str, out: Path, fallback: Path | None, trainer_args: Sequence[str]) -> int:
    """`imdb-trainer train TRAINER_ARGS --reference CHAMPION`: the challenger against the
    model live on `name` (else `fallback`, the last local model, when it has one). A challenger
    that is worse releases nothing, and the notification (Slack, e-mail when configured) says
    why; the trainer's exit code is returned."""
    environment, version = fetch_champion(name, out)
    reference: Path | None = out if version is not None else None
    if reference is None and fallback is not None and (fallback / "manifest.json").is_file():
        reference = fallback
        print(f"champion: none live on {environment.name}; the last local model {fallback}")
    elif version is not None:
        print(f"champion: {version}, live on {environment.name}, verified, in {out}")
    argv = [trainer_executable(), "train", *trainer_args]
    if reference is not None:
        argv.append(f"--reference={reference}")
    started = time.monotonic()
    code = subprocess.run(argv, check=False).returncode  # noqa: S603 - our own CLI, no shell
    if code == GATE_FAILED:
        champion = version or (f"the local model {reference}" if reference else "the baseline")
        detail = (
            f"the challenger trained now is worse than the champion ({champion}) on the same "
            "held-out rows: nothing was released (the training report has the figures)"
        )
        print(f"release REFUSED: {detail}", file=sys.stderr)
        announce_refusal(environment.name, detail, time.monotonic() - started)
    return code


def announce_refusal(environment: str, detail: str, seconds: float) -> None:
    """Tell Slack and e-mail (when configured) that no release was made, and why."""
    event = notify.DeployEvent(
        environment=environment, action="release", result="refused", from_versions={},
        to_version=None, user=current_user(), seconds=seconds, detail=detail,
    )  # fmt: skip
    notify.announce(event, os.environ)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.champion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetching = commands.add_parser("fetch", help="the live model into --out, verified")
    training = commands.add_parser("train", help="train, gated against the live model")
    for sub in (fetching, training):
        sub.add_argument("environment", help="a name in deploy/environments, or a .toml path")
        sub.add_argument("--out", type=Path, required=True, help="where the champion goes")
    training.add_argument("--fallback", type=Path, help="champion when none is live (local)")
    # Everything after `--` goes to `imdb-trainer train` as it is.
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    try:
        if args.command == "train":
            return gated_training(args.environment, args.out, args.fallback, argv[split + 1 :])
        environment, version = fetch_champion(args.environment, args.out)
    except (ChampionError, ConfigError, engine_client.EngineNotFoundError) as exc:
        print(f"champion: {exc}", file=sys.stderr)
        return 1
    if version is None:
        print(f"champion: none (no release is live on {environment.name})")
    else:
        print(f"champion: {version}, live on {environment.name}, verified, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
