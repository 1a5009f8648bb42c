"""Publish one service's release: each platform's image, one list, its evidence, signatures.

In the registry, for an image repository `R` and a release whose list digest is `D`:

    R:<version>-<arch>               each platform's image (amd64, arm64)
    R:<version>, R:<sha>             the manifest list of those, by digest: what hosts run (R@D)
    R:sha256-<D hex>.evidence        the evidence: SBOM, pip-audit and Trivy reports (FROM scratch)
    R-signatures:sha256-<D hex>      the signatures of the list, of each platform's image and of
                                     the evidence, in the containers/image lookaside layout

Everything is signed with one key; hosts verify with their engine (signing.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import docker

from imdb_deploy.images import build, manifest_list, release
from imdb_deploy.images.platforms import parse_platform
from imdb_deploy.supply_chain import signing

EVIDENCE_SUFFIX = ".evidence"


def platform_tag(image: build.BuiltImage) -> str:
    """`R:<version>-<arch>`: where one platform's image is pushed before the list is made."""
    repository, _, _ = image.reference.rpartition(":")
    arch = parse_platform(image.platform).suffix
    return f"{repository}:{image.version}-{arch}"


def list_tags(image: build.BuiltImage) -> list[str]:
    """The release's tags without a platform suffix: they name the list."""
    suffix = build.platform_suffix(parse_platform(image.platform))
    return [tag[: len(tag) - len(suffix)] if suffix else tag for tag in image.tags]


def evidence_tag(repository: str, digest: str) -> str:
    return f"{repository}:{digest.replace(':', '-', 1)}{EVIDENCE_SUFFIX}"


def _push_one(client: docker.DockerClient, tag: str, auth: dict[str, str] | None) -> str:
    reported = build.push(client, [tag], auth)[tag]
    return build.pushed_digest(tag, reported)


def publish_service(
    client: docker.DockerClient,
    images: Sequence[build.BuiltImage],
    signer: signing.Signer,
    evidence: Mapping[str, bytes],
    environ: Mapping[str, str],
) -> dict[str, str]:
    """Push `images` (one service, one per platform) as one signed release; returns its record:
    reference, digest (the list's), `platform:<p>` digests, evidence and signatures."""
    auth = build.registry_auth(environ)
    repository = images[0].reference.rpartition(":")[0]
    instances, record = [], {}
    for image in images:
        tag = platform_tag(image)
        client.images.get(image.image_id).tag(*tag.rsplit(":", 1))
        digest = _push_one(client, tag, auth)
        instances.append(f"{repository}@{digest}")
        record[f"platform:{image.platform}"] = digest
        print(f"pushed {tag} ({digest[:19]})")
    tags = list_tags(images[0])
    list_digest = manifest_list.publish(instances, tags, environ)
    print(f"pushed list {', '.join(tags)} ({list_digest[:19]}): {len(instances)} platform(s)")
    signed = [list_digest]
    if evidence:
        labels = {"io.mlops-imdb.evidence.of": f"{repository}@{list_digest}"}
        tag = release.scratch_image(client, evidence_tag(repository, list_digest), evidence, labels)
        record["evidence"] = f"{repository}@{_push_one(client, tag, auth)}"
        signed.append(record["evidence"].rpartition("@")[2])
    carrier = attach_signatures(
        client, signer, repository, list_digest, signed, environ=environ, lists=[list_digest]
    )
    return {
        "reference": tags[0],
        "digest": list_digest,
        **record,
        "signatures": carrier,
        "signed_by": signer.fingerprint,
    }


def attach_signatures(
    client: docker.DockerClient,
    signer: signing.Signer,
    repository: str,
    release_digest: str,
    digests: Sequence[str],
    *,
    environ: Mapping[str, str],
    lists: Collection[str] = (),
) -> str:
    """Sign `repository@d` for each of `digests` (and each platform of those in `lists`) and
    push the signatures as the carrier of `release_digest`; returns the carrier's reference."""
    registry = manifest_list.registry_of(repository)
    with tempfile.TemporaryDirectory(prefix="mlops-signatures-") as directory:
        with manifest_list.podman_cli_env(registry, environ) as env:
            for digest in digests:
                signing.sign(
                    signer, repository, digest, Path(directory), env, is_list=digest in lists
                )
        files = signing.carrier_files(Path(directory))
    carrier = signing.carrier_reference(repository, release_digest)
    labels = {"io.mlops-imdb.signatures.of": f"{repository}@{release_digest}",
              "io.mlops-imdb.signatures.key": signer.fingerprint}  # fmt: skip
    release.scratch_image(client, carrier, files, labels)
    build.push(client, [carrier], build.registry_auth(environ))
    print(f"signed by {signer.fingerprint}: {len(files)} signatures in {carrier}")
    return carrier


def evidence_files(paths: Sequence[Path]) -> dict[str, bytes]:
    """The reports that exist among `paths`, by file name."""
    return {path.name: path.read_bytes() for path in paths if path.is_file()}
