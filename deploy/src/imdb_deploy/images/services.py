"""The images we ship: which distribution, which project wheels, which Dockerfile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_PREFIX = "mlops-imdb-"


@dataclass(frozen=True)
class ServiceImage:
    """One service image.

    `wheels` are the workspace members installed as project wheels (the small, frequently
    rebuilt layer); everything else the distribution needs comes from the lock as
    third-party wheels. `debs` are Debian packages the third-party wheels need at run time.
    """

    name: str
    distribution: str
    wheels: tuple[str, ...]
    debs: tuple[str, ...] = ()
    needs_artifact: bool = False

    @property
    def repository(self) -> str:
        """Image name without registry, e.g. mlops-imdb-api."""
        return IMAGE_PREFIX + self.name

    def dockerfile(self, root: Path) -> Path:
        return root / "services" / self.name / "Dockerfile"


SERVICES: dict[str, ServiceImage] = {
    "api": ServiceImage(
        name="api",
        distribution="imdb-api",
        wheels=("imdb-model", "imdb-api"),
        needs_artifact=True,
    ),
    "trainer": ServiceImage(
        name="trainer",
        distribution="imdb-trainer",
        wheels=("imdb-model", "imdb-trainer"),
        # LightGBM's wheel links libgomp.so.1 and does not bundle it.
        debs=("libgomp1",),
    ),
}


def select(name: str) -> list[ServiceImage]:
    """`api`, `trainer` or `all`."""
    if name == "all":
        return list(SERVICES.values())
    try:
        return [SERVICES[name]]
    except KeyError:
        raise ValueError(
            f"unknown service {name!r}; choose from all, {', '.join(SERVICES)}"
        ) from None
