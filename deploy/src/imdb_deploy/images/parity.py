"""Platform parity: every platform's API image of a release gives the model's golden answers.

Before a multi-platform release is pushed, each platform's API image is started (arm64 under
qemu on an amd64 machine) and asked for each golden example of the model's manifest; each
answer must match the manifest's expected rating, so all platforms agree with the booster
that made them. A pass is remembered by image id in reports/platform-parity.json:
the same images are not run again (a warm rebuild of an unchanged release).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container

from imdb_deploy.images import build
from imdb_deploy.images.platforms import EMULATED_AARCH64_CPUINFO, parse_platform

# Ratings are 1-10; the manifest's golden examples were checked to this closeness at training.
TOLERANCE = 1e-3
# Under emulation the API loads its model in tens of seconds.
READY_TIMEOUT_S = 300.0
RECORD = "platform-parity.json"


class ParityError(build.BuildError):
    """A platform's image does not give the model's golden answers."""


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_request(record: Mapping[str, Any]) -> dict[str, Any]:
    """A golden example's input (IMDb's columns: `isAdult` 0/1, genres comma-separated) as
    the API's request takes it."""
    movie = dict(record)
    if movie.get("isAdult") in (0, 1):
        movie["isAdult"] = bool(movie["isAdult"])
    if isinstance(movie.get("genres"), str):  # IMDb's comma-separated form
        movie["genres"] = [genre for genre in movie["genres"].split(",") if genre] or None
    return movie


def mismatches(golden: Sequence[Mapping[str, Any]], ratings: Sequence[float]) -> list[str]:
    """What differs between the manifest's golden examples and one image's answers."""
    if len(ratings) != len(golden):
        return [f"{len(ratings)} answers to {len(golden)} golden examples"]
    return [
        f"golden example {i}: {got!r}, the model says {example['expected']!r}"
        for i, (example, got) in enumerate(zip(golden, ratings, strict=True))
        if not math.isclose(float(got), float(example["expected"]), abs_tol=TOLERANCE)
    ]


class _RefusedError(OSError):
    """The API answered with an error status."""


def _request(port: int, method: str, path: str, body: object = None, timeout: float = 30) -> Any:
    """One HTTP request to the container on 127.0.0.1:`port` (plain HTTP, loopback only)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, data, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        text = answer.read()
        if answer.status != 200:
            raise _RefusedError(
                f"{method} {path}: HTTP {answer.status}: {text.decode(errors='replace')}"
            )
        return json.loads(text)
    finally:
        connection.close()


def _wait_ready(container: Container, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _request(port, "GET", "/ready", timeout=5)
            return
        except (OSError, ValueError):
            container.reload()
            logs = container.logs(tail=20).decode(errors="replace")
            if container.status != "running":
                raise ParityError(f"{container.image}: exited before ready:\n{logs}") from None
            if time.monotonic() > deadline:
                raise ParityError(f"not ready within {timeout:.0f} s:\n{logs}") from None
            time.sleep(1)


def answers(client: docker.DockerClient, image: build.BuiltImage, movies: list[Any]) -> list[float]:
    """Start `image` on a free loopback port, ask for each of `movies`, remove it."""
    port = free_loopback_port()
    volumes = {}
    with tempfile.TemporaryDirectory(prefix="mlops-parity-") as directory:
        if not parse_platform(image.platform).is_native():
            # qemu 7.2 shows the host's x86 /proc/cpuinfo, which onnxruntime cannot read.
            cpuinfo = Path(directory) / "cpuinfo"
            cpuinfo.write_text(EMULATED_AARCH64_CPUINFO)
            volumes[str(cpuinfo)] = {"bind": "/proc/cpuinfo", "mode": "ro"}
        container = client.containers.run(
            image.image_id,
            detach=True,
            read_only=True,
            network_mode="host",
            environment={"IMDB_API_PORT": str(port), "IMDB_API_HOST": "127.0.0.1"},
            volumes=volumes,
        )
        try:
            _wait_ready(container, port, READY_TIMEOUT_S)
            return [
                float(_request(port, "POST", "/predict", movie)["averageRating"])
                for movie in movies
            ]
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise ParityError(f"{image.platform} API image: {error}") from None
        finally:
            container.remove(force=True)


def check_release(
    client: docker.DockerClient,
    api_images: Sequence[build.BuiltImage],
    artifact: Path,
    reports: Path,
) -> None:
    """Each API image gives the golden answers of `artifact`'s model, or ParityError."""
    golden = json.loads((artifact / "manifest.json").read_text())["golden"]
    record_path = reports / RECORD
    try:
        passed: dict[str, Any] = json.loads(record_path.read_text())
    except (OSError, ValueError):
        passed = {}
    movies = [as_request(example["input"]) for example in golden]
    for image in api_images:
        if image.image_id in passed:
            print(f"parity {image.platform}: passed before (image {image.image_id[:19]}), reused")
            continue
        started = time.monotonic()
        problems = mismatches(golden, answers(client, image, movies))
        if problems:
            raise ParityError(f"{image.platform} API image: " + "; ".join(problems))
        seconds = time.monotonic() - started
        print(f"parity {image.platform}: {len(golden)} golden answers match ({seconds:.0f} s)")
        passed[image.image_id] = {"platform": image.platform, "seconds": round(seconds, 1)}
    reports.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(passed, indent=2, sort_keys=True) + "\n")
