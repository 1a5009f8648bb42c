"""The post-deploy benchmark: percentiles, the verdict, and a real bounded load on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from imdb_deploy.bluegreen.config import BenchmarkSettings
from imdb_deploy.bluegreen.loadcheck import Measurement, judge, measure, percentile
from tests.support import serving

SETTINGS = BenchmarkSettings(p95_tolerance=0.2, p95_slack_ms=0, min_requests=10)


def figures(p95: float, requests: int = 100, errors: int = 0) -> Measurement:
    return Measurement(requests, errors, 2.0, p95 / 2, p95, p95 * 1.5)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.95) == 0.0


def test_measurement_round_trips_through_its_stored_form() -> None:
    stored = figures(8.0, requests=240, errors=3).as_dict()
    assert stored["error_rate"] == 3 / 240
    assert stored["rps"] == 120.0
    assert Measurement.from_dict(stored) == figures(8.0, requests=240, errors=3)


@pytest.mark.parametrize(
    ("now", "baseline", "verdict", "reason"),
    [
        (figures(10.0), None, "first", "no baseline"),
        (figures(11.9), figures(10.0), "pass", "+19%"),
        (figures(12.1), figures(10.0), "regression", "+21%"),
        (figures(5.0), figures(10.0), "pass", "-50%"),
        (figures(5.0, errors=1), figures(10.0), "regression", "error rate 1.00%"),
        (figures(5.0, requests=9), None, "regression", "only 9 requests"),
    ],
)
def test_judge(now: Measurement, baseline: Measurement | None, verdict: str, reason: str) -> None:
    got, why = judge(now, baseline, SETTINGS)
    assert got == verdict
    assert reason in why


def test_the_slack_absorbs_a_few_milliseconds_of_noise_on_a_fast_service() -> None:
    settings = BenchmarkSettings(p95_tolerance=0.2, p95_slack_ms=5, min_requests=10)
    assert judge(figures(16.9), figures(10.0), settings)[0] == "pass"  # limit 10 * 1.2 + 5
    verdict, reason = judge(figures(17.1), figures(10.0), settings)
    assert verdict == "regression"
    assert "+ 5 ms" in reason


class _Api(http.server.BaseHTTPRequestHandler):
    """Answers POST /predict with 200, every fifth request (by count) with 500."""

    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).count += 1
            failing = self.path == "/flaky" and type(self).count % 5 == 0
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def api() -> Iterator[str]:
    with serving(_Api) as address:
        yield address


def test_measure_sends_a_bounded_load_and_counts_errors(api: str) -> None:
    good = measure(api, "/predict", seconds=0.5, connections=2)
    assert good.requests > 10
    assert good.errors == 0
    assert 0 < good.p50_ms <= good.p95_ms <= good.p99_ms
    assert good.seconds < 2.5  # bounded by its duration, not by the server
    flaky = measure(api, "/flaky", seconds=0.5, connections=2)
    assert flaky.errors >= flaky.requests // 5 - 2
    assert judge(flaky, good, SETTINGS)[0] == "regression"


def test_measure_counts_an_unreachable_host_as_errors() -> None:
    down = measure("127.0.0.1:9", "/predict", seconds=0.2, connections=1)
    assert down.requests >= 1
    assert down.errors == down.requests
