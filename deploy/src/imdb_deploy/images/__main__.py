"""`python -m imdb_deploy.images build|prune`: service images through the Docker Engine API.

    build [--service api|trainer|all] [--artifact DIR] [--platform linux/amd64[,linux/arm64]]
          [--push] [--export DIR] [--registry HOST:PORT] [--scan] [--no-cache]
    prune [--service ...] [--keep N] [--protect VERSION_OR_TAG ...] [--registry HOST:PORT]
          [--dry-run]

The engine is the one `python -m imdb_deploy.engine up` recorded (or DOCKER_HOST). A summary of
what was built (tags, ids, seconds) goes to reports/images-<platform>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import docker

from imdb_deploy.engine import base_image, local, registry
from imdb_deploy.images import (
    build,
    engine_client,
    metadata,
    parity,
    publish,
    retention,
    scan,
    services,
)
from imdb_deploy.images import release as releases
from imdb_deploy.images.artifact import trainer_executable
from imdb_deploy.images.platforms import Platform, parse_platform
from imdb_deploy.supply_chain import signing

REPORTS = Path("reports")


def default_registry() -> str:
    recorded = engine_client.engine_info().get("registry")
    return os.environ.get(local.REGISTRY_VAR) or str(recorded or registry.DEFAULT_REGISTRY_ADDRESS)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m imdb_deploy.images", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = top.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build (and push, export, scan) service images")
    b.add_argument("--service", default="all", choices=["all", *services.SERVICES])
    b.add_argument("--artifact", type=Path, default=os.environ.get("MLOPS_ARTIFACT"),
                   help="the trained model artifact the API image serves (required for it; "
                   "env MLOPS_ARTIFACT; `nox -s train` publishes artifacts/model)")  # fmt: skip
    b.add_argument("--platform", default=os.environ.get("MLOPS_PLATFORMS", "linux/amd64"),
                   help="linux/amd64, linux/arm64 or both, comma-separated: with --push, one "
                   "manifest list per release tag (env MLOPS_PLATFORMS)")  # fmt: skip
    b.add_argument("--registry", default=default_registry(), help="HOST:PORT (env MLOPS_REGISTRY)")
    b.add_argument("--push", action="store_true", help="push: platforms, signed lists, record")
    b.add_argument("--export", type=Path, metavar="DIR", help="docker save each image into DIR")
    b.add_argument("--scan", action="store_true", help="SBOM, pip-audit and Trivy per image")
    b.add_argument("--no-cache", action="store_true", help="build without the layer cache")
    b.add_argument("--reports", type=Path, default=REPORTS)
    p = commands.add_parser("prune", help="keep the newest N versions locally and in the registry")
    p.add_argument("--service", default="all", choices=["all", *services.SERVICES])
    p.add_argument("--keep", type=int, default=retention.DEFAULT_KEEP)
    p.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="VERSION_OR_TAG",
        help="a version an environment runs or would roll back to (repeatable)",
    )
    p.add_argument("--registry", default=default_registry())
    p.add_argument("--local-only", action="store_true", help="leave the registry alone")
    p.add_argument("--dry-run", action="store_true", help="only say what would go")  # fmt: skip
    return top


def cmd_build(args: argparse.Namespace) -> int:
    root = Path.cwd()
    targets = parse_platforms(args.platform)
    cache_dir = base_image.default_cache_dir()
    selected = services.select(args.service)
    art = args.artifact
    if art is None and any(s.needs_artifact for s in selected):
        raise build.BuildError(
            "no model artifact for the API image: a release serves a trained model; run "
            "`nox -s train` (artifacts/model) and pass --artifact DIR or set MLOPS_ARTIFACT"
        )
    client = engine_client.connect()
    scans: list[scan.ScanResult] = []
    built: list[tuple[build.BuiltImage, dict[str, object]]] = []
    try:
        revision = metadata.git_revision(root)
        source = engine_client.base_source(client)
        for target in targets:
            base = engine_client.ensure_platform_base(client, target, source, cache_dir)
            for service in selected:
                image = build.build_service(
                    client, root, service, target, base_image=base, revision=revision,
                    cache_dir=cache_dir, registry=args.registry, artifact=art,
                    nocache=args.no_cache, source=metadata.source_url(os.environ),
                )  # fmt: skip
                print(f"built {service.name} ({target.docker}) {image.image_id[:19]} in "
                      f"{image.seconds:.1f} s: " + ", ".join(image.tags))  # fmt: skip
                record = asdict(image)
                record.pop("log")
                if args.export is not None:
                    record["export"] = str(build.export(client, image.reference, args.export))
                    print(f"exported {record['export']}")
                built.append((image, record))
        if len(targets) > 1 and art is not None:
            parity.check_release(client, [i for i, _ in built if i.release], art, args.reports)
        if args.scan:
            osv = os.environ.get("OSV_OFFLINE_DIR")
            scans = scan.scan_all(
                client,
                [(i.reference, scan_name(i), i.version, i.platform) for i, _ in built],
                args.reports, Path(osv) if osv else None,
            )  # fmt: skip
        failures = [failure for result in scans for failure in result.failures]
        if args.push and failures:
            print("images: not pushed: the scans failed", file=sys.stderr)
        elif args.push:
            publish_all(client, built, scans, args, art)
    finally:
        client.close()
    args.reports.mkdir(parents=True, exist_ok=True)
    for target in targets:
        summary = args.reports / f"images-{target.suffix}.json"
        records = [record for image, record in built if image.platform == target.docker]
        summary.write_text(json.dumps(records, indent=2) + "\n")
    for failure in failures:
        print(f"images: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def parse_platforms(value: str) -> list[Platform]:
    """`linux/amd64,linux/arm64` -> both, in that order, each once."""
    targets: list[Platform] = []
    for name in value.split(","):
        target = parse_platform(name)
        if target not in targets:
            targets.append(target)
    return targets


def scan_name(image: build.BuiltImage) -> str:
    return image.service + build.platform_suffix(parse_platform(image.platform))


def publish_all(
    client: docker.DockerClient,
    built: Sequence[tuple[build.BuiltImage, dict[str, object]]],
    scans: Sequence[scan.ScanResult],
    args: argparse.Namespace,
    artifact: Path | None,
) -> None:
    """Each service's platforms as one signed list, with this build's scan reports of them as
    its evidence, then the release record."""
    published: dict[str, dict[str, str]] = {}
    with signing.release_signer(os.environ, args.registry) as signer:
        for service in dict.fromkeys(image.service for image, _ in built):
            mine = [(image, record) for image, record in built if image.service == service]
            references = {image.reference for image, _ in mine}
            evidence = publish.evidence_files(
                [path for result in scans if result.reference in references
                 for path in result.reports]
            )  # fmt: skip
            done = publish.publish_service(
                client, [image for image, _ in mine], signer, evidence, os.environ
            )
            for image, record in mine:
                record["pushed"] = {
                    **dict.fromkeys(publish.list_tags(image), done["digest"]),
                    publish.platform_tag(image): done[f"platform:{image.platform}"],
                }
            published[service] = done
    release = publish_release(client, built, published, args.registry, args.reports)
    if release is not None and artifact is not None:
        tag_tracked_run(artifact, release)


def publish_release(
    client: docker.DockerClient,
    built: Sequence[tuple[build.BuiltImage, dict[str, object]]],
    published: Mapping[str, Mapping[str, str]],
    registry: str | None,
    reports: Path,
) -> releases.Release | None:
    """The release record of the API image just pushed, with what was published of every image
    (list digest, platforms, evidence, signatures): into reports/release.json and, as an image
    of its own, into the registry."""
    api = next((image for image, _ in built if image.release is not None), None)
    if api is None or api.release is None:
        return None
    release = api.release.with_images(published)
    path = releases.write(release, reports / "release.json")
    reference = releases.build_record_image(client, release, registry)
    build.push(client, [reference], build.registry_auth(os.environ))
    print(f"release {release.release}: record {path}, pushed as {reference}")
    github_output(release)
    return release


def github_output(release: releases.Release) -> None:
    """In GitHub Actions, the API list's repository and digest as step outputs (`api-image`,
    `api-digest`): the CD workflow attests the build provenance of exactly that digest."""
    output = os.environ.get("GITHUB_OUTPUT")
    api = release.images.get("api", {})
    if output and api.get("digest"):
        repository = api["reference"].rpartition(":")[0]
        with Path(output).open("a") as lines:
            lines.write(f"api-image={repository}\napi-digest={api['digest']}\n")


def tag_tracked_run(artifact: Path, release: releases.Release) -> None:
    """With MLFLOW_TRACKING_URI: the MLflow run that trained `artifact` tagged with the release
    it became (`imdb-trainer track-release`); an artifact trained without tracking is said."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    if not artifact.with_name(artifact.name + ".mlflow-run.json").is_file():
        print(f"MLflow: {artifact} was trained without tracking; no run to tag")
        return
    digest = release.images.get("api", {}).get("digest", "")
    argv = [trainer_executable(), "track-release", f"--artifact={artifact}",
            f"--release={release.release}"]  # fmt: skip
    if digest:
        argv.append(f"--digest={digest}")
    if subprocess.run(argv, check=False).returncode != 0:  # noqa: S603 - our own CLI, no shell
        raise build.BuildError(
            f"the MLflow run of {artifact} could not be tagged {release.release}"
        )
    print(f"MLflow: the run of {artifact} is tagged release={release.release}")


def cmd_prune(args: argparse.Namespace) -> int:
    client = engine_client.connect()
    try:
        for service in services.select(args.service):
            repo = metadata.repository(args.registry, service.repository)
            gone = retention.prune_local(client, repo, args.keep, args.protect, args.dry_run)
            verb = "would remove" if args.dry_run else "removed"
            print(f"{repo} (local): {verb} {[r.version for r in gone] or 'nothing'}")
            if not args.local_only:
                remote = retention.RegistryClient(args.registry)
                gone = retention.prune_registry(
                    remote, service.repository, args.keep, args.protect, args.dry_run
                )
                print(f"{repo} (registry): {verb} {[r.version for r in gone] or 'nothing'}")
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "build":
            return cmd_build(args)
        return cmd_prune(args)
    except (RuntimeError, ValueError) as error:
        print(f"images: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
