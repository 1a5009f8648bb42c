"""A minimal in-memory stand-in for the docker SDK client: enough for the builders' unit tests."""

from __future__ import annotations

import builtins
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from docker.errors import ImageNotFound


@dataclass
class FakeImage:
    id: str
    tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    owner: FakeImages | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        return {"Config": {"Labels": self.labels}, "Architecture": "amd64"}

    def tag(self, repository: str, tag: str) -> bool:
        reference = f"{repository}:{tag}"
        if reference not in self.tags:
            self.tags.append(reference)
        return True

    def save(self, named: str | None = None) -> Iterator[bytes]:
        yield b"tar-of-" + (named or self.id).encode()


class FakeImages:
    def __init__(self) -> None:
        self.store: dict[str, FakeImage] = {}
        self.removed: list[str] = []
        self.pushed: list[str] = []
        self.auth: list[dict[str, str] | None] = []
        self.push_error: str | None = None
        self.contexts: dict[str, dict[str, bytes]] = {}

    def add(self, image: FakeImage) -> FakeImage:
        image.owner = self
        self.store[image.id] = image
        return image

    def get(self, reference: str) -> FakeImage:
        for image in self.store.values():
            if reference in (image.id, *image.tags):
                return image
        raise ImageNotFound(f"no such image {reference}")

    def list(self, name: str | None = None) -> list[FakeImage]:
        return [
            image
            for image in self.store.values()
            if name is None or any(t.rpartition(":")[0] == name for t in image.tags)
        ]

    def remove(self, reference: str, noprune: bool = False) -> None:
        image = self.get(reference)
        image.tags.remove(reference)
        self.removed.append(reference)
        if not image.tags:
            del self.store[image.id]

    def build(
        self, fileobj: io.BytesIO, tag: str, **kwargs: Any
    ) -> tuple[FakeImage, builtins.list[Any]]:
        """A build from an in-memory context (the release record's image): its files kept."""
        with tarfile.open(fileobj=fileobj) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        image = FakeImage(f"sha256:{len(self.store) + 1:064x}", [tag], owner=self)
        self.store[image.id] = image
        self.contexts[tag] = files
        return image, []

    def push(
        self,
        repository: str,
        tag: str,
        stream: bool,
        decode: bool,
        auth_config: dict[str, str] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        self.pushed.append(f"{repository}:{tag}")
        self.auth.append(auth_config)
        if self.push_error:
            return [{"error": self.push_error}]
        return [{"status": "pushing"}, {"aux": {"Digest": "sha256:" + "d" * 64}}]


class FakeAPI:
    def __init__(self, images: FakeImages) -> None:
        self.images = images
        self.builds: list[dict[str, Any]] = []
        self.base_url = "http+docker://localhost"
        self.api_version = "1.41"

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.builds.append(kwargs)
        image_id = f"sha256:{len(self.builds):064x}"
        labels = {
            "org.opencontainers.image.version": kwargs["buildargs"]["VERSION"],
            "org.opencontainers.image.created": kwargs["buildargs"]["CREATED"],
        }
        self.images.add(FakeImage(image_id, [kwargs["tag"]], labels))
        yield {"stream": "STEP 1/1\n"}
        yield {"aux": {"ID": image_id}}


class FakeContainers:
    def __init__(self) -> None:
        self.output = b""
        self.runs: list[dict[str, Any]] = []

    def run(self, image: str, **kwargs: Any) -> bytes:
        self.runs.append({"image": image, **kwargs})
        return self.output


class FakeClient:
    def __init__(self, engine_name: str = "Podman Engine") -> None:
        self.images = FakeImages()
        self.api = FakeAPI(self.images)
        self.containers = FakeContainers()
        self.engine_name = engine_name
        self.closed = False

    def version(self) -> dict[str, Any]:
        return {"Components": [{"Name": self.engine_name}]}

    def close(self) -> None:
        self.closed = True


def inventory_output() -> bytes:
    return json.dumps(
        {
            "python": "3.11.2",
            "distributions": [
                {"name": "numpy", "version": "2.4.6", "record_sha256": "a" * 64},
                {"name": "imdb-api", "version": "0.1.0", "record_sha256": "b" * 64},
            ],
            "debs": [{"name": "libc6", "version": "2.36-9", "arch": "amd64"}],
        }
    ).encode()
