"""What a host records about its releases (`state.json`), the switch journal, and audit entries."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from imdb_deploy.bluegreen.layout import COLOURS, other_colour


class StateError(ValueError):
    """A host's state file cannot be read."""


@dataclass
class HostState:
    """The live colour, the version each colour's container runs, the release history, each
    release's image digest, and when each release passed this environment's benchmark gate."""

    live: str | None = None
    colours: dict[str, str] = field(default_factory=dict)
    releases: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    passed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> HostState:
        """An empty file is a fresh host; anything else must be a valid record."""
        if not text.strip():
            return cls()
        try:
            data = json.loads(text)
            if not isinstance(data.get("releases", []), list):
                raise TypeError("releases is not a list")
            state = cls(
                live=data.get("live"),
                colours={str(k): str(v) for k, v in dict(data.get("colours", {})).items()},
                releases=[str(v) for v in data.get("releases", [])],
                digests={str(k): str(v) for k, v in dict(data.get("digests", {})).items()},
                passed={str(k): str(v) for k, v in dict(data.get("passed", {})).items()},
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise StateError(f"state.json is not a valid record: {exc}") from None
        if state.live is not None and state.live not in COLOURS:
            raise StateError(f"state.json names an unknown live colour {state.live!r}")
        return state

    def dump(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @property
    def idle(self) -> str:
        """The colour a new release goes to."""
        return other_colour(self.live) if self.live else COLOURS[0]

    @property
    def live_version(self) -> str | None:
        return self.colours.get(self.live) if self.live else None

    @property
    def kept_version(self) -> str | None:
        """The stopped previous release beside the live one: the fast rollback target."""
        return self.colours.get(self.idle) if self.live else None

    @property
    def live_digest(self) -> str | None:
        version = self.live_version
        return self.digests.get(version) if version else None

    def switched(self, colour: str, version: str, digest: str | None = None) -> HostState:
        """The state after `colour`, running `version` (by `digest`), became live."""
        releases = [v for v in self.releases if v != version] + [version]
        digests = {**self.digests, version: digest} if digest else dict(self.digests)
        return replace(
            self, live=colour, colours={**self.colours, colour: version}, releases=releases,
            digests=digests,
        )  # fmt: skip

    def without(self, colour: str) -> HostState:
        """The state after `colour`'s container was removed."""
        colours = {k: v for k, v in self.colours.items() if k != colour}
        return replace(self, colours=colours, releases=list(self.releases))

    def pruned(self, doomed: list[str]) -> HostState:
        """The state after the `doomed` releases' images were removed."""
        keep = [v for v in self.releases if v not in doomed]
        return replace(
            self, colours=dict(self.colours), releases=keep,
            digests={k: v for k, v in self.digests.items() if k in keep},
            passed={k: v for k, v in self.passed.items() if k in keep},
        )  # fmt: skip

    def gate_passed(self, version: str, at: str) -> HostState:
        """The state after `version` passed this environment's benchmark gate at `at`."""
        return replace(self, passed={**self.passed, version: at})

    def prunable(self, keep: int) -> list[str]:
        """Releases beyond the newest `keep`, never the live one or the kept one."""
        protected = {v for v in (self.live_version, self.kept_version) if v}
        newest = set(self.releases[-keep:])
        return [v for v in self.releases if v not in newest and v not in protected]


@dataclass(frozen=True)
class Journal:
    """Written before the switch and removed once every host is switched: a journal left on a
    host means a deploy died mid-switch, and the next one puts that host back first."""

    deploy_id: str
    from_colour: str | None
    to_colour: str
    version: str

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str) -> Journal | None:
        if not text.strip():
            return None
        try:
            data = json.loads(text)
            return cls(
                deploy_id=str(data["deploy_id"]),
                from_colour=data.get("from_colour"),
                to_colour=str(data["to_colour"]),
                version=str(data["version"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"journal.json is not a valid record: {exc}") from None


def now_iso(precise: bool = False) -> str:
    """UTC time in ISO 8601; `precise` (microseconds) orders entries written the same second."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")


def new_id() -> str:
    return uuid.uuid4().hex[:12]
