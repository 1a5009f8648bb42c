"""The post-deploy benchmark: a short, bounded load through a host's nginx, and its verdict.

Kamal stops checking after the first healthy response; we keep watching. Right after the
switch, every host gets `seconds` of /predict requests on `connections` keep-alive-free
connections (the same way clients reach it), and the percentiles and the error rate are compared
with those the previous release measured on that host, stored there (`benchmarks.json`).
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Literal

from imdb_deploy.bluegreen.config import BenchmarkSettings

# One movie, as a client would send it; the model does not matter, the path through it does.
PROBE = json.dumps(
    {"primaryTitle": "Benchmark", "startYear": 2004, "runtimeMinutes": 101,
     "genres": ["Drama", "Crime"], "isAdult": False}
).encode()  # fmt: skip
# A bounded loop: at most this many requests per connection, whatever the duration.
MAX_REQUESTS_PER_CONNECTION = 50_000


@dataclass(frozen=True)
class Measurement:
    """What one host answered during the load."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "error_rate": self.error_rate, "rps": round(self.rps, 1)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Measurement:
        fields = ("requests", "errors", "seconds", "p50_ms", "p95_ms", "p99_ms")
        values = {name: float(str(data[name])) for name in fields}
        return cls(int(values.pop("requests")), int(values.pop("errors")), **values)


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(share * len(sorted_values)) - 1))
    return sorted_values[rank]


def measure(address: str, path: str, seconds: float, connections: int) -> Measurement:
    """POST the probe to http://address/path from `connections` threads for `seconds`."""
    host, _, port = address.rpartition(":")
    latencies: list[float] = []
    errors = 0
    guard = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        mine: list[float] = []
        failed = 0
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                connection.request("POST", path, PROBE, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                reply.read()
                ok = 200 <= reply.status < 300
            except (OSError, http.client.HTTPException):
                ok = False
            finally:
                connection.close()
            mine.append((time.perf_counter() - started) * 1000)
            failed += not ok
        with guard:
            latencies.extend(mine)
            errors += failed

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return Measurement(
        requests=len(ordered),
        errors=errors,
        seconds=round(elapsed, 3),
        p50_ms=round(statistics.median(ordered), 3) if ordered else 0.0,
        p95_ms=round(percentile(ordered, 0.95), 3),
        p99_ms=round(percentile(ordered, 0.99), 3),
    )


Verdict = Literal["first", "pass", "regression"]


def judge(
    now: Measurement, baseline: Measurement | None, settings: BenchmarkSettings
) -> tuple[Verdict, str]:
    """Compare with the previous release's figures on the same host."""
    if now.requests < settings.min_requests:
        return "regression", f"only {now.requests} requests answered in {now.seconds:g} s"
    if now.error_rate > settings.max_error_rate:
        return "regression", f"error rate {now.error_rate:.2%} ({now.errors} of {now.requests})"
    if baseline is None:
        return "first", "no baseline yet: these figures become it"
    limit = baseline.p95_ms * (1 + settings.p95_tolerance) + settings.p95_slack_ms
    change = now.p95_ms / baseline.p95_ms - 1 if baseline.p95_ms else 0.0
    if now.p95_ms > limit:
        return "regression", (
            f"p95 {now.p95_ms:.1f} ms vs {baseline.p95_ms:.1f} ms before ({change:+.0%}, "
            f"tolerance +{settings.p95_tolerance:.0%} + {settings.p95_slack_ms:g} ms)"
        )
    return "pass", f"p95 {now.p95_ms:.1f} ms vs {baseline.p95_ms:.1f} ms before ({change:+.0%})"
