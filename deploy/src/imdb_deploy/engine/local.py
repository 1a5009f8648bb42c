"""The local build engine as one unit: engine, registry and base image, up, down and status.

State (sockets, PID files, logs, the registry's storage) lives under one directory, by default
`.state/engine` in the repository, and `engine.json` there tells other steps where things are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from imdb_deploy.engine import base_image, podman, registry

STATE_DIR_VAR = "MLOPS_ENGINE_STATE"
STORAGE_DIR_VAR = "MLOPS_ENGINE_STORAGE"
REGISTRY_VAR = "MLOPS_REGISTRY"
BASE_SOURCE_VAR = "MLOPS_BASE_IMAGE_SOURCE"


@dataclass(frozen=True)
class EngineInfo:
    """What `up` established, written to `engine.json`."""

    docker_host: str
    kind: str
    managed: bool
    registry: str
    base_image: str
    base_image_id: str


def state_dir(environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ) if environ is None else environ
    return Path(environ.get(STATE_DIR_VAR, ".state/engine")).resolve()


def up(
    directory: Path,
    registry_address: str = registry.DEFAULT_REGISTRY_ADDRESS,
    base_source: str | None = None,
    use_existing_docker: bool = True,
    storage_dir: Path | None = None,
) -> EngineInfo:
    """Find or start the engine, start the registry, make sure the base image is there.

    `storage_dir` gives a started Podman its own image storage instead of the machine's. Calls
    for one directory take turns (two sessions, or two test workers, may ask at once).
    """
    with _exclusive(directory):
        return _up(directory, registry_address, base_source, use_existing_docker, storage_dir)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "up.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _up(
    directory: Path,
    registry_address: str,
    base_source: str | None,
    use_existing_docker: bool,
    storage_dir: Path | None,
) -> EngineInfo:
    engine = podman.find_docker_engine() if use_existing_docker else None
    if engine is None:
        service = podman.PodmanService(directory, storage_dir=storage_dir)
        engine = service.start(insecure_registries=[registry_address])
    registry.LocalRegistry(directory / "registry", registry_address).start()
    source = base_source or ("debootstrap" if engine.managed else "pull")
    client = engine.client()
    try:
        image_id = base_image.ensure_base_image(client, source=source)
    finally:
        client.close()
    info = EngineInfo(
        docker_host=engine.docker_host,
        kind=engine.kind,
        managed=engine.managed,
        registry=registry_address,
        base_image=base_image.DEFAULT_BASE_IMAGE,
        base_image_id=image_id,
    )
    (directory / "engine.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def down(directory: Path, storage_dir: Path | None = None) -> list[str]:
    """Stop what `up` started here; returns the names of what was stopped."""
    stopped = []
    if registry.LocalRegistry(directory / "registry").stop():
        stopped.append("registry")
    if podman.PodmanService(directory, storage_dir=storage_dir).stop():
        stopped.append("podman service")
    (directory / "engine.json").unlink(missing_ok=True)
    return stopped


def status(directory: Path) -> dict[str, object]:
    """Whether the recorded engine and registry answer."""
    try:
        info = json.loads((directory / "engine.json").read_text())
    except (OSError, ValueError):
        return {"up": False, "reason": f"no engine recorded in {directory}"}
    engine_ok = podman.answers(str(info["docker_host"]))
    registry_ok = registry.answers(str(info["registry"]))
    return {**info, "engine_answers": engine_ok, "registry_answers": registry_ok,
            "up": engine_ok and registry_ok}  # fmt: skip
