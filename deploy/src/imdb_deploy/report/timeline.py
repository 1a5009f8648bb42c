"""Deploy timelines as the report reads them: load, validate, pick the newest, derive the steps.

A timeline is the JSON `imdb_deploy.bluegreen.cli.save_outcome` writes per deploy or rollback
(`reports/deploys/<env>-<stamp>-<action>-<id>.json`): the outcome's audit fields, its events and,
for a deploy that got as far as the post-deploy benchmark, the benchmark's figures per host.

The models here validate only what the report uses and ignore the rest, so a field the
orchestrator adds later does not break the report; the JSON report passes the input through
unchanged anyway (`Deploy.raw`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from imdb_deploy.bluegreen.config import REPO_ROOT

# Where deploys leave their timelines and the report reads them; tests point it elsewhere, so
# that their deploys never show up in the repository's deployment report.
TIMELINES_VAR = "MLOPS_DEPLOY_TIMELINES"


def timelines_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$MLOPS_DEPLOY_TIMELINES, else reports/deploys in the repository."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(TIMELINES_VAR) or REPO_ROOT / "reports" / "deploys")


# The host of environment-wide events (lock, deploy start, result).
ENVIRONMENT_HOST = "*"
# At most this many validation problems are named in an error; the first ones are the useful ones.
MAX_PROBLEMS = 3


class TimelineError(ValueError):
    """A timeline file is missing or is not a timeline; the message names the file."""


class _Record(BaseModel):
    # NaN and infinities are refused: json.loads accepts them, but they would make the JSON
    # report invalid JSON and the plots meaningless.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Event(_Record):
    """One line of the timeline: `step` started on `host` at `at` seconds since the start."""

    at: float = Field(ge=0)
    host: str
    step: str
    detail: str = ""
    ok: bool = True


class Baseline(_Record):
    """What the previous release measured on the same host."""

    version: str | None = None
    p50_ms: float | None = None
    p95_ms: float
    p99_ms: float | None = None


class HostBenchmark(_Record):
    """The post-deploy benchmark's figures and verdict for one host."""

    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    error_rate: float = Field(default=0.0, ge=0)
    rps: float = Field(default=0.0, ge=0)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    baseline: Baseline | None = None
    verdict: str
    reason: str = ""

    @property
    def p95_change(self) -> float | None:
        """The p95's relative change over the baseline (0.05: 5 % slower); None without one."""
        if self.baseline is None or self.baseline.p95_ms <= 0:
            return None
        return self.p95_ms / self.baseline.p95_ms - 1


class Benchmark(_Record):
    """The post-deploy benchmark of a deploy."""

    result: str
    rolled_back: bool = False
    tolerance: dict[str, float] = Field(default_factory=dict)
    hosts: dict[str, HostBenchmark] = Field(default_factory=dict)


class Timeline(_Record):
    """One deploy or rollback, as `save_outcome` wrote it."""

    id: str
    action: str
    environment: str
    user: str = ""
    started: AwareDatetime
    from_versions: dict[str, str | None] = Field(default_factory=dict)
    to_version: str | None = None
    to_digest: str | None = None
    signed_by: str = ""  # the key the hosts required its signature by ("" none, or older runs)
    release: dict[str, Any] | None = None  # what the release said it is (/model/info)
    result: str
    detail: str = ""
    seconds: float = Field(ge=0)
    events: list[Event]

    def release_facts(self) -> list[tuple[str, str]]:
        """The release's identity as (name, value) lines: digest, commit, tree, model."""
        facts = [("Digest", self.to_digest)] if self.to_digest else []
        if self.signed_by:
            facts.append(("Signed by (verified by the hosts at pull)", self.signed_by))
        release = self.release or {}
        model = release.get("model") if isinstance(release.get("model"), dict) else {}
        for name, value in (
            ("Commit", release.get("commit")),
            ("Tree", release.get("tree")),
            ("Model", model.get("version") if model else None),
            ("Model manifest", model.get("manifest_sha256") if model else None),
            ("Data fingerprint", model.get("data_fingerprint") if model else None),
        ):
            if value:
                facts.append((name, str(value)))
        return facts

    benchmark: Benchmark | None = None


@dataclass(frozen=True)
class Step:
    """A step on one host: its event marks when it ended; it began at the host's event before
    (for a host's first step: the environment's event before it)."""

    host: str
    name: str
    start: float
    end: float
    ok: bool
    detail: str

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, object]:
        return {
            "step": self.name,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Deploy:
    """A loaded timeline: where it came from, the JSON as written, and its validated form."""

    path: Path
    raw: dict[str, Any]
    timeline: Timeline
    steps: dict[str, list[Step]] = field(init=False)

    def __post_init__(self) -> None:
        # Derived once: the Markdown, the HTML, the plot and the JSON all show the same steps.
        object.__setattr__(self, "steps", steps_by_host(self.timeline))

    @property
    def ok(self) -> bool:
        return self.timeline.result == "ok"

    @property
    def sort_key(self) -> tuple[datetime, str]:
        # The file name breaks ties: two timelines stamped the same second keep a fixed order.
        return self.timeline.started, self.path.name

    def hosts(self) -> list[str]:
        """The deploy's hosts (not `*`): those with a version first, in the timeline's order."""
        names = list(self.timeline.from_versions)
        for host in self.steps:
            if host != ENVIRONMENT_HOST and host not in names:
                names.append(host)
        return names


def steps_by_host(timeline: Timeline) -> dict[str, list[Step]]:
    """Per host (`*` first, then the versioned hosts, then any others), its steps in time order.

    The orchestrator records an event when a step is done, so a step runs from the host's
    previous event to its own; a host's first step starts at the environment's (`*`) last event
    before it (e.g. `locked`), and the environment's first step at 0.
    """
    events: dict[str, list[Event]] = {}
    # sorted() is stable: events recorded at the same instant keep the order they were logged in.
    for event in sorted(timeline.events, key=lambda e: e.at):
        events.setdefault(event.host, []).append(event)
    order = [ENVIRONMENT_HOST, *timeline.from_versions]
    hosts = [h for h in order if h in events] + [h for h in events if h not in order]
    shared = [e.at for e in events.get(ENVIRONMENT_HOST, [])]
    steps: dict[str, list[Step]] = {}
    for host in hosts:
        mine = events[host]
        if host == ENVIRONMENT_HOST:
            first = 0.0
        else:
            first = max([0.0, *(at for at in shared if at <= mine[0].at)])
        starts = [first, *(e.at for e in mine[:-1])]
        steps[host] = [
            Step(host, e.step, start, e.at, e.ok, e.detail)
            for e, start in zip(mine, starts, strict=True)
        ]
    return steps


def _problems(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in problem['loc']) or '(top level)'}: {problem['msg']}"
        for problem in error.errors()[:MAX_PROBLEMS]
    ]
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def load(path: Path) -> Deploy:
    """Read and validate one timeline; any problem is a TimelineError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TimelineError(f"{path}: no such timeline file") from None
    except UnicodeDecodeError:
        raise TimelineError(f"{path}: not a deploy timeline (not UTF-8 text)") from None
    except OSError as exc:
        raise TimelineError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise TimelineError(f"{path}: not a deploy timeline (invalid JSON: {exc})") from None
    if not isinstance(raw, dict):
        raise TimelineError(
            f"{path}: not a deploy timeline (a JSON object expected, not {type(raw).__name__})"
        )
    try:
        timeline = Timeline.model_validate(raw)
    except ValidationError as exc:
        raise TimelineError(f"{path}: not a deploy timeline: {_problems(exc)}") from None
    return Deploy(path, raw, timeline)


def in_order(deploys: Iterable[Deploy]) -> list[Deploy]:
    """Each timeline file once, in time order."""
    unique = {deploy.path.resolve(): deploy for deploy in deploys}
    return sorted(unique.values(), key=lambda d: d.sort_key)


def load_all(paths: Iterable[Path]) -> list[Deploy]:
    """Load the timelines (a file named twice is read once), in time order."""
    named: dict[Path, Path] = {}
    for path in paths:
        named.setdefault(path.resolve(), path)  # errors name the file as it was given
    return in_order(load(path) for path in named.values())


def newest(deploys: Sequence[Deploy]) -> list[Deploy]:
    """The newest deploy per environment and action, in time order: for a pipeline run that
    deployed to staging, then production, both, staging first."""
    chosen: dict[tuple[str, str], Deploy] = {}
    for deploy in deploys:
        key = (deploy.timeline.environment, deploy.timeline.action)
        if key not in chosen or deploy.sort_key > chosen[key].sort_key:
            chosen[key] = deploy
    return sorted(chosen.values(), key=lambda d: d.sort_key)


def latest(directory: Path) -> list[Deploy]:
    """The newest timeline per environment and action found in `directory`.

    Every timeline there is read (the newest is known from the content, not the file name), so a
    damaged one is reported, naming it, rather than silently skipped.
    """
    paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not paths:
        raise TimelineError(
            f"{directory}: no deploy timelines (*.json) found; run a deploy or rollback first, "
            "or name the timeline files"
        )
    return newest(load_all(paths))
