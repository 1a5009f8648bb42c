"""Deploy markers: what was deployed where, when, and how it went, for alerts and dashboards.

Two destinations, each used when configured, both best effort:

* the Pushgateway (`--pushgateway URL` or `MLOPS_PUSHGATEWAY_URL`), which Prometheus scrapes with
  `honor_labels`. A marker replaces the group `job="imdb_deploy", environment=<env>` (HTTP PUT), so
  the group always holds the environment's *last* deploy action:

      imdb_deploy_last_timestamp_seconds{version,action,result}  Unix time of that action
      imdb_deploy_result{version,action,result}                  1 when result="ok", else 0

  Given the artifact's manifest, the training-time prediction distribution that the manifest
  records (`prediction_distribution`) is pushed too, as the reference of the drift alerts, to a
  group of its own per version, `job="imdb_model_reference", environment, version`, so that the
  reference of an older version is still there when a rollback serves it again:

      imdb_model_training_rating_mean / _std        mean and standard deviation
      imdb_model_training_rating_quantile{quantile} p01 ... p99 (quantile="0.01" ... "0.99")
      imdb_model_training_rows                      how many predictions they summarise

* Grafana's annotation API (`MLOPS_GRAFANA_URL` and `MLOPS_GRAFANA_TOKEN`, a service account
  token): an organisation-wide annotation tagged `deploy`, the environment and the result, which
  the dashboard shows on every time panel.

Recording a marker never raises for a delivery problem and never holds a deploy up: every
destination runs in a daemon thread (`imdb_deploy.outbound` delivers), and `record_deploy`
returns within `timeout + outbound.GRACE_S` seconds with one `Delivery` per destination saying
what failed. Only the standard library is used (urllib), so recording a marker needs nothing the
deploy does not already have. The Grafana token is kept in a `Secret` (masked in reprs) and
scrubbed from every error text.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from imdb_deploy.outbound import Delivery, DeliveryError, Job, Secret, deliver, http_send

log = logging.getLogger("imdb_deploy.monitoring")

Action = Literal["deploy", "rollback"]
Result = Literal["ok", "failed", "rolled_back"]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)
RESULTS: Final[tuple[str, ...]] = get_args(Result)

PUSHGATEWAY_VAR: Final[str] = "MLOPS_PUSHGATEWAY_URL"
GRAFANA_URL_VAR: Final[str] = "MLOPS_GRAFANA_URL"
GRAFANA_TOKEN_VAR: Final[str] = "MLOPS_GRAFANA_TOKEN"  # noqa: S105 - a variable's name
DEPLOY_JOB: Final[str] = "imdb_deploy"
REFERENCE_JOB: Final[str] = "imdb_model_reference"
DEFAULT_TIMEOUT_S: Final[float] = 3.0

# Grouping-key values in a Pushgateway URL must be plain path segments; anything else (a slash,
# an empty value) goes base64url-encoded with the `@base64` suffix the Pushgateway understands.
_PLAIN_SEGMENT: Final[re.Pattern[str]] = re.compile(r"[A-Za-z0-9_.:-]+")
_QUANTILE_KEY: Final[re.Pattern[str]] = re.compile(r"p(\d{2})")


@dataclass(frozen=True)
class DeployMarker:
    """One deploy action's outcome in one environment."""

    environment: str
    version: str
    result: Result
    action: Action = "deploy"
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # Checked here, not at delivery: a wrong value is the caller's bug and must show.
        if self.result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, not {self.result!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {self.action!r}")
        if not self.environment or not self.version:
            raise ValueError("a marker needs an environment and a version")

    @property
    def ok(self) -> bool:
        """Whether the action did what it was asked to."""
        return self.result == "ok"

    def text(self) -> str:
        """One line for humans: `deploy of v3 to staging: failed`."""
        preposition = "to" if self.action == "deploy" else "in"
        return f"{self.action} of {self.version} {preposition} {self.environment}: {self.result}"


@dataclass(frozen=True)
class TrainingReference:
    """The distribution of a model's predictions on its held-out split, from its manifest."""

    version: str
    mean: float
    std: float
    quantiles: tuple[tuple[float, float], ...]  # (quantile, value), ascending
    rows: int

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TrainingReference:
        """Read `version` and `prediction_distribution` (see imdb_trainer.evaluation)."""
        try:
            version = str(manifest["version"])
            distribution = manifest["prediction_distribution"]
            quantiles = []
            for key, value in distribution["quantiles"].items():
                match = _QUANTILE_KEY.fullmatch(key)
                if match is None:
                    raise ValueError(f"unknown quantile key {key!r}")
                quantiles.append((int(match.group(1)) / 100, float(value)))
            reference = cls(
                version=version,
                mean=float(distribution["mean"]),
                std=float(distribution["std"]),
                quantiles=tuple(sorted(quantiles)),
                rows=int(distribution["rows"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"the manifest has no usable prediction_distribution: {exc}") from None
        values = [reference.mean, reference.std, *(value for _, value in reference.quantiles)]
        if not all(math.isfinite(value) for value in values):
            raise ValueError("the manifest's prediction_distribution holds non-finite values")
        return reference


@dataclass(frozen=True)
class MarkerReport:
    """Every destination's delivery; `ok` when all went through (or none was configured)."""

    deliveries: tuple[Delivery, ...]

    @property
    def ok(self) -> bool:
        """No destination failed."""
        return all(delivery.ok for delivery in self.deliveries)

    @property
    def failures(self) -> tuple[Delivery, ...]:
        """The destinations that failed."""
        return tuple(delivery for delivery in self.deliveries if not delivery.ok)

    def describe(self) -> str:
        """One line per destination, for the deploy's log."""
        if not self.deliveries:
            return "no marker destination configured"
        return "\n".join(
            f"{d.name}: ok ({d.seconds:.2f} s)" if d.ok else f"{d.name}: {d.error}"
            for d in self.deliveries
        )


@dataclass(frozen=True)
class MarkerSettings:
    """Where markers go; built from the deployer's environment by `from_environ`."""

    pushgateway: str | None = None
    grafana_url: str | None = None
    grafana_token: Secret | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        pushgateway: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> MarkerSettings:
        """Read MLOPS_PUSHGATEWAY_URL, MLOPS_GRAFANA_URL and MLOPS_GRAFANA_TOKEN (a flag wins)."""
        environ = os.environ if environ is None else environ
        token = environ.get(GRAFANA_TOKEN_VAR, "").strip()
        return cls(
            pushgateway=pushgateway or environ.get(PUSHGATEWAY_VAR, "").strip() or None,
            grafana_url=environ.get(GRAFANA_URL_VAR, "").strip() or None,
            grafana_token=Secret(token) if token else None,
            timeout=timeout,
        )

    def secrets(self) -> list[str]:
        """Values to scrub from error texts."""
        return [self.grafana_token.reveal()] if self.grafana_token is not None else []


# ---------------------------------------------------------------- payloads


def _label_value(value: str) -> str:
    # The text exposition format's escapes inside label values: backslash, quote, newline.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{name}="{_label_value(value)}"' for name, value in labels.items())
    return "{" + inner + "}" if inner else ""


def _gauge(name: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{_labels(labels)} {value!r}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def marker_exposition(marker: DeployMarker) -> str:
    """The marker in the text exposition format (the environment comes from the group's URL)."""
    labels = {"version": marker.version, "action": marker.action, "result": marker.result}
    return _gauge(
        "imdb_deploy_last_timestamp_seconds",
        "Unix time of the environment's last deploy action, labelled with its outcome.",
        [(labels, float(marker.timestamp))],
    ) + _gauge(
        "imdb_deploy_result",
        "1 when the environment's last deploy action succeeded, 0 when it failed or rolled back.",
        [(labels, 1.0 if marker.ok else 0.0)],
    )


def reference_exposition(reference: TrainingReference) -> str:
    """The training reference in the text exposition format (environment, version: the URL)."""
    return (
        _gauge(
            "imdb_model_training_rating_mean",
            "Mean predicted rating of the model on its held-out split (manifest).",
            [({}, reference.mean)],
        )
        + _gauge(
            "imdb_model_training_rating_std",
            "Standard deviation of the model's predictions on its held-out split (manifest).",
            [({}, reference.std)],
        )
        + _gauge(
            "imdb_model_training_rating_quantile",
            "Quantiles of the model's predictions on its held-out split (manifest).",
            [({"quantile": f"{q:g}"}, value) for q, value in reference.quantiles],
        )
        + _gauge(
            "imdb_model_training_rows",
            "Number of held-out predictions the training reference summarises.",
            [({}, float(reference.rows))],
        )
    )


def _segment(name: str, value: str) -> str:
    # `.` and `..` are plain characters but would be resolved as path steps on the way.
    if _PLAIN_SEGMENT.fullmatch(value) and value not in {".", ".."}:
        return f"{name}/{value}"
    encoded = base64.urlsafe_b64encode(value.encode()).decode("ascii")
    return f"{name}@base64/{encoded or '='}"


def group_url(base: str, job: str, grouping: Mapping[str, str]) -> str:
    """`<base>/metrics/job/<job>/<label>/<value>...`, the Pushgateway's URL of one group."""
    path = "/".join([_segment("job", job), *(_segment(k, v) for k, v in grouping.items())])
    return f"{base.rstrip('/')}/metrics/{path}"


def grafana_annotation(marker: DeployMarker) -> dict[str, Any]:
    """The body of Grafana's POST /api/annotations for the marker (time in milliseconds)."""
    return {
        "time": round(marker.timestamp * 1000),
        "tags": ["deploy", marker.environment, marker.result],
        "text": marker.text(),
    }


# ---------------------------------------------------------------- delivery


def _exposition_push(url: str, text: str, timeout: float) -> None:
    headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    http_send("PUT", url, text.encode(), headers, timeout)


def _grafana_post(base: str, token: Secret | None, payload: dict[str, Any], timeout: float) -> None:
    if token is None:
        raise DeliveryError(f"{GRAFANA_URL_VAR} is set but {GRAFANA_TOKEN_VAR} is not")
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": f"Bearer {token.reveal()}",
    }
    url = base.rstrip("/") + "/api/annotations"
    http_send("POST", url, json.dumps(payload).encode(), headers, timeout)


def record_deploy(
    marker: DeployMarker,
    settings: MarkerSettings,
    reference: TrainingReference | None = None,
) -> MarkerReport:
    """Send the marker (and the training reference) to every configured destination at once.

    Returns within `settings.timeout + outbound.GRACE_S` seconds whatever the receivers do, and
    never raises for a delivery problem: the report says what failed, and failures are logged as
    warnings on `imdb_deploy.monitoring` (without the token).
    """
    if reference is not None and reference.version != marker.version:
        # A reference of another version would compare the live predictions with the wrong
        # model and raise a false drift alert: a caller's bug, so it raises.
        raise ValueError(
            f"the training reference is of {reference.version}, the marker of {marker.version}"
        )
    timeout = settings.timeout
    jobs: list[Job] = []
    if settings.pushgateway is not None:
        base = settings.pushgateway
        marker_url = group_url(base, DEPLOY_JOB, {"environment": marker.environment})
        marker_text = marker_exposition(marker)
        jobs.append(Job("pushgateway", lambda: _exposition_push(marker_url, marker_text, timeout)))
        if reference is not None:
            grouping = {"environment": marker.environment, "version": reference.version}
            reference_url = group_url(base, REFERENCE_JOB, grouping)
            reference_text = reference_exposition(reference)
            jobs.append(
                Job(
                    "pushgateway-reference",
                    lambda: _exposition_push(reference_url, reference_text, timeout),
                )
            )
    if settings.grafana_url is not None:
        grafana, token, payload = (
            settings.grafana_url,
            settings.grafana_token,
            grafana_annotation(marker),
        )
        jobs.append(Job("grafana", lambda: _grafana_post(grafana, token, payload, timeout)))
    deliveries = deliver(jobs, timeout, secrets=settings.secrets(), thread_prefix="marker")
    for delivery in deliveries:
        if delivery.ok:
            log.info("deploy marker sent to %s: %s", delivery.name, marker.text())
        else:
            log.warning("deploy marker to %s failed: %s", delivery.name, delivery.error)
    return MarkerReport(tuple(deliveries))
