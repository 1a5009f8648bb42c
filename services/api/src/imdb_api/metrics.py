"""Prometheus metrics: requests, latency, predictions, predicted ratings, errors, model info.

With one worker the metrics live in a registry of this app. With several workers
(`PROMETHEUS_MULTIPROC_DIR` set by the supervisor before the workers start) prometheus_client
keeps the values in per-process files and `/metrics` aggregates them, so any worker answers for
all of them. The model's version and readiness come from a collector that asks the answering
worker's own state, since Info metrics are not supported in multiprocess mode.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.registry import Collector

from imdb_api.model_state import ModelState

MULTIPROCESS_ENV: Final[str] = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final[str] = CONTENT_TYPE_LATEST
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
RATING_BUCKETS: Final[tuple[float, ...]] = tuple(1.0 + 0.5 * i for i in range(1, 19))
BATCH_BUCKETS: Final[tuple[float, ...]] = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# `_created` series double the exposition for no use here (rates come from the counters).
disable_created_metrics()  # type: ignore[no-untyped-call]


class ModelCollector(Collector):
    """`imdb_api_model_info` (version, name) and `imdb_api_ready`, read from the model state."""

    def __init__(self, state: ModelState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """The current readiness, and the model's identity once it is ready."""
        yield GaugeMetricFamily(
            "imdb_api_ready",
            "1 when the artifact is verified and predictions are served, else 0",
            value=1.0 if self.state.ready else 0.0,
        )
        if self.state.ready:
            info = InfoMetricFamily("imdb_api_model", "The served model artifact")
            info.add_metric(
                [],
                {
                    "version": self.state.version,
                    "model_name": str(self.state.public_manifest.get("model_name", "")),
                },
            )
            yield info


# The supervisor keeps its count of replaced workers in this file of the multiprocess directory;
# whichever worker answers /metrics reads it (the supervisor serves nothing itself).
RESTARTS_FILE: Final[str] = "worker-restarts"


def record_restarts(count: int) -> None:
    """The supervisor's side: write the number of workers it replaced (atomically)."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        temporary = Path(directory) / f".{RESTARTS_FILE}.tmp"
        temporary.write_text(str(count))
        temporary.replace(Path(directory) / RESTARTS_FILE)


class RestartsCollector(Collector):
    """`imdb_api_worker_restarts_total`: workers the supervisor replaced since it started
    (0 with one worker, which runs without a supervisor: its container's restart policy is what
    brings it back)."""

    def collect(self) -> Iterator[Metric]:
        """The supervisor's count, read at scrape time."""
        count = 0.0
        directory = os.environ.get(MULTIPROCESS_ENV)
        if directory:
            try:
                count = float((Path(directory) / RESTARTS_FILE).read_text().strip() or 0)
            except (OSError, ValueError):
                count = 0.0
        yield CounterMetricFamily(
            "imdb_api_worker_restarts",
            "Worker processes that died and were replaced by the supervisor",
            value=count,
        )


class Metrics:
    """The service's metrics and their exposition."""

    def __init__(self, state: ModelState) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        # In multiprocess mode the values go to files that MultiProcessCollector reads back, so
        # the metric objects must not also be registered (they would be reported twice).
        target: CollectorRegistry | None = None if self.multiprocess else self.registry
        if self.multiprocess:
            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.registry.register(ModelCollector(state))
        self.registry.register(RestartsCollector())
        self.requests = Counter(
            "imdb_api_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=target,
        )
        self.latency = Histogram(
            "imdb_api_request_duration_seconds",
            "Time from the request's arrival in the app to the end of its response",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=target,
        )
        self.predictions = Counter(
            "imdb_api_predictions",
            "Movies predicted, by endpoint",
            ["endpoint"],
            registry=target,
        )
        self.ratings = Histogram(
            "imdb_api_predicted_rating",
            "Predicted averageRating of every movie predicted",
            buckets=RATING_BUCKETS,
            registry=target,
        )
        self.batch_size = Histogram(
            "imdb_api_batch_size",
            "Movies per /predict/batch request",
            buckets=BATCH_BUCKETS,
            registry=target,
        )
        self.errors = Counter(
            "imdb_api_errors",
            "Requests answered with an error, by route and kind",
            ["route", "kind"],
            registry=target,
        )
        self._predict_one = self.predictions.labels("/predict")
        self._predict_batch = self.predictions.labels("/predict/batch")
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._upper_bounds = np.asarray((*RATING_BUCKETS, float("inf")), dtype=np.float64)
        self._bounds: list[float] = [*RATING_BUCKETS, math.inf]

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count a finished request and its latency."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            # labels() takes a lock and formats strings: resolve each combination once.
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method, str(status)),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_error(self, route: str, kind: str) -> None:
        """Count an error answer of the given kind (validation, not_ready, ...)."""
        self.errors.labels(route, kind).inc()

    def observe_prediction(self, rating: float) -> None:
        """Count one single-movie prediction."""
        self._predict_one.inc()
        if rating != rating:  # NaN: whatever Histogram.observe does with it  # noqa: PLR0124
            self.ratings.observe(rating)
            return
        # Histogram.observe, minus its linear search over the buckets (the same internals as
        # `observe_batch`): the first bucket whose upper bound is >= the rating.
        self.ratings._sum.inc(rating)
        self.ratings._buckets[bisect_left(self._bounds, rating)].inc(1.0)

    def observe_batch(self, ratings: npt.NDArray[np.float32]) -> None:
        """Count a batch's predictions; its ratings go into the histogram in one step."""
        self._predict_batch.inc(len(ratings))
        self.batch_size.observe(len(ratings))
        if len(ratings) == 0:
            return
        # Observing 1000 values one by one costs about a millisecond; binning them with numpy
        # and adding the counts to the histogram's (non-cumulative) buckets gives the same
        # exposition for a few microseconds. This reaches into prometheus_client's Histogram
        # internals (`_buckets`, `_sum`), which a test pins down.
        counts = np.bincount(
            np.searchsorted(self._upper_bounds, ratings, side="left"),
            minlength=len(self._upper_bounds),
        )
        buckets = self.ratings._buckets
        for index in np.flatnonzero(counts):
            buckets[index].inc(float(counts[index]))
        self.ratings._sum.inc(float(ratings.sum(dtype=np.float64)))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


def mark_worker_dead(pid: int) -> None:
    """Tell the multiprocess store that a worker has exited (its live gauges are dropped)."""
    if os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
