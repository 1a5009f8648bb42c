"""One manifest list (OCI index) per release tag, assembled in the registry by Podman's CLI.

Each platform's image is built and pushed on its own (the engine may be Docker or Podman); the
list is then made from those pushed manifests by digest (`podman manifest add docker://...`), so
it works the same whatever engine built the images, and a host's `pull` of the list's digest
gets its own platform. Signing (imdb_deploy.supply_chain.signing) also reads from the registry.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from imdb_deploy.engine.podman import registries_conf
from imdb_deploy.engine.processes import run_tool
from imdb_deploy.images.build import BuildError, registry_auth
from imdb_deploy.supply_chain.signing import is_loopback, podman


def registry_of(reference: str) -> str:
    return reference.partition("/")[0]


@contextlib.contextmanager
def podman_cli_env(registry: str, environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment for Podman CLI calls against `registry`: plain HTTP allowed for a
    loopback registry only, and the credentials (CD: GHCR's token) in an auth file of mode
    600 that is gone afterwards, never on a command line."""
    with tempfile.TemporaryDirectory(prefix="mlops-podman-cli-") as directory:
        env = dict(environ)
        conf = Path(directory) / "registries.conf"
        conf.write_text(registries_conf([registry] if is_loopback(registry) else []))
        env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
        credentials = registry_auth(environ)
        if credentials is not None:
            auth = Path(directory) / "auth.json"
            pair = f"{credentials['username']}:{credentials['password']}"
            token = base64.b64encode(pair.encode()).decode()
            auth.touch(mode=0o600)
            auth.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
            env["REGISTRY_AUTH_FILE"] = str(auth)
        yield env


def _podman(argv: Sequence[str], env: Mapping[str, str]) -> str:
    return run_tool([podman(), *argv], error=BuildError, env=env, timeout=600)


def assemble_argv(name: str, instances: Sequence[str]) -> list[list[str]]:
    """The Podman commands that make local list `name` from pushed manifests (by digest)."""
    return [
        ["manifest", "create", name],
        *(["manifest", "add", name, f"docker://{reference}"] for reference in instances),
    ]


def push_argv(name: str, tag: str, digest_file: Path) -> list[str]:
    return ["manifest", "push", "--all", "--digestfile", str(digest_file), name, f"docker://{tag}"]


def publish(
    instances: Sequence[str], tags: Sequence[str], environ: Mapping[str, str] | None = None
) -> str:
    """Push one list of `instances` (`repo@sha256:...`, one per platform) under every tag in
    `tags` (same repository); returns the list's digest."""
    if not instances or not tags:
        raise BuildError("a manifest list needs at least one image and one tag")
    registry = registry_of(tags[0])
    name = f"mlops-imdb-list-{secrets.token_hex(6)}"
    digests = set()
    with podman_cli_env(registry, dict(os.environ if environ is None else environ)) as env:
        try:
            for argv in assemble_argv(name, instances):
                _podman(argv, env)
            for tag in tags:
                with tempfile.TemporaryDirectory(prefix="mlops-list-") as directory:
                    digest_file = Path(directory) / "digest"
                    _podman(push_argv(name, tag, digest_file), env)
                    digests.add(digest_file.read_text().strip())
        finally:
            subprocess.run(  # noqa: S603 - fixed argv; the local list only
                [podman(), "manifest", "rm", name], env=env, capture_output=True, check=False
            )
    if len(digests) != 1:
        raise BuildError(f"the list's tags {list(tags)} got different digests: {digests}")
    return digests.pop()


def platforms_of(reference: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """platform (`linux/arm64`) -> manifest digest, as the registry serves list `reference`."""
    with podman_cli_env(
        registry_of(reference), dict(os.environ if environ is None else environ)
    ) as env:
        raw = _podman(["manifest", "inspect", reference], env)
    try:
        entries = json.loads(raw)["manifests"]
        return {
            f"{entry['platform']['os']}/{entry['platform']['architecture']}": entry["digest"]
            for entry in entries
        }
    except (ValueError, KeyError, TypeError) as error:
        raise BuildError(f"{reference} is not a manifest list: {error!r}") from None
