"""Prometheus configuration generated from the deploy environments.

One scrape job per environment, `imdb-api-<environment>`, whose static targets are the hosts'
public HTTP addresses (`Environment.http_address`: each host's nginx, which proxies `/metrics` to
the live colour). Every target carries the labels the rules and the dashboard group by:
`environment`, `host` and `service="imdb-api"` (the rules select on `service`, not on job names,
so adding an environment needs no rule change).

The Pushgateway, when given, is scraped by its own job with `honor_labels: true`: the deploy
markers and training references pushed to it carry their own `job` and `environment` labels,
which must win over the scrape's (else every pushed series would be `job="pushgateway"`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from imdb_deploy.bluegreen.config import Environment

DEFAULT_INTERVAL: Final[str] = "15s"
JOB_PREFIX: Final[str] = "imdb-api-"
SERVICE: Final[str] = "imdb-api"
PUSHGATEWAY_JOB: Final[str] = "pushgateway"
METRICS_PATH: Final[str] = "/metrics"
# Prometheus' own default; it must not exceed the interval, so short intervals lower it.
DEFAULT_TIMEOUT_S: Final[float] = 10.0

_DURATION_UNITS: Final[dict[str, float]] = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}
# Prometheus' duration syntax: units from largest to smallest, each at most once (`1m30s`).
_DURATION: Final[re.Pattern[str]] = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)


class ScrapeConfigError(ValueError):
    """A parameter Prometheus would reject; the message says which."""


def duration_seconds(duration: str) -> float:
    """`1m30s` -> 90.0, for Prometheus durations; rejects what Prometheus would reject."""
    match = _DURATION.fullmatch(duration)
    if not duration or match is None:
        raise ScrapeConfigError(f"not a Prometheus duration: {duration!r} (e.g. 15s, 1m, 500ms)")
    units = ("y", "w", "d", "h", "m", "s", "ms")
    seconds = sum(
        int(value) * _DURATION_UNITS[unit]
        for unit, value in zip(units, match.groups(), strict=True)
        if value
    )
    if seconds <= 0:
        raise ScrapeConfigError(f"the duration must be positive: {duration!r}")
    return seconds


def job_name(environment: Environment) -> str:
    """The scrape job of an environment's API hosts."""
    return f"{JOB_PREFIX}{environment.name}"


def pushgateway_target(address: str) -> tuple[str, str]:
    """(scheme, host:port) of the Pushgateway, given as a URL or as host:port."""
    if "://" not in address:
        address = f"http://{address}"
    parts = urlsplit(address)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ScrapeConfigError(f"the Pushgateway must be host:port or an http(s) URL: {address}")
    if parts.path not in {"", "/"} or parts.query:
        # Prometheus would scrape <netloc>/metrics and silently ignore a path prefix.
        raise ScrapeConfigError(f"the Pushgateway address must not have a path: {address}")
    return parts.scheme, parts.netloc


def _timeout(interval: str) -> str:
    seconds = duration_seconds(interval)
    return interval if seconds < DEFAULT_TIMEOUT_S else f"{DEFAULT_TIMEOUT_S:g}s"


def environment_job(environment: Environment, interval: str = DEFAULT_INTERVAL) -> dict[str, Any]:
    """The scrape job of one environment: one static target per host, labelled."""
    return {
        "job_name": job_name(environment),
        "scrape_interval": interval,
        "scrape_timeout": _timeout(interval),
        "metrics_path": METRICS_PATH,
        "static_configs": [
            {
                "targets": [environment.http_address(host)],
                "labels": {"environment": environment.name, "host": host.name, "service": SERVICE},
            }
            for host in environment.hosts
        ],
    }


def prometheus_config(
    environments: Sequence[Environment],
    *,
    interval: str = DEFAULT_INTERVAL,
    rule_files: Sequence[str] = ("alerts.yml",),
    pushgateway: str | None = None,
) -> dict[str, Any]:
    """The whole Prometheus configuration as data (see `render` for the YAML).

    `interval` is both the scrape and the rule evaluation interval (tests use 1s). `rule_files`
    are relative to the written prometheus.yml, which Prometheus resolves them against.
    """
    if not environments:
        raise ScrapeConfigError("no environment to scrape")
    names = [environment.name for environment in environments]
    if len(set(names)) != len(names):
        raise ScrapeConfigError(f"environments repeat: {names}")
    timeout = _timeout(interval)
    jobs = [environment_job(environment, interval) for environment in environments]
    if pushgateway is not None:
        scheme, target = pushgateway_target(pushgateway)
        jobs.append(
            {
                "job_name": PUSHGATEWAY_JOB,
                "honor_labels": True,
                "scheme": scheme,
                "scrape_interval": interval,
                "scrape_timeout": timeout,
                "metrics_path": METRICS_PATH,
                "static_configs": [{"targets": [target]}],
            }
        )
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": interval,
        },
        "rule_files": list(rule_files),
        "scrape_configs": jobs,
    }


def render(config: dict[str, Any]) -> str:
    """YAML for prometheus.yml, keys in the order given (the order Prometheus' docs use)."""
    header = "# Generated by `python -m imdb_deploy.monitoring config`: edit the environments.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
