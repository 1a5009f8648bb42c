"""Best-effort messages the deploy sends out: each delivery bounded in time, failures reported and
never raised, secrets masked.

Deploy notifications (`imdb_deploy.notify`) and deploy markers (`imdb_deploy.monitoring.markers`)
both tell other systems how a deploy went, and neither may fail or stall the deploy for it. Each
builds its messages, wraps every send in a `Job`, and hands them to `deliver`, which runs them at
once and returns one `Delivery` per job within `timeout + GRACE_S` seconds, whatever the
receivers do. Credentials travel as `Secret` (masked in reprs and f-strings), and every error text
is scrubbed of the caller's secret values before it is returned; the caller logs the result.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MASK: Final[str] = "***"
# An error text is one short line; a receiver's long refusal is cut to this many characters.
ERROR_LIMIT: Final[int] = 300
# `deliver` returns within timeout + GRACE_S: socket timeouts bound each network wait, this
# bounds the whole delivery (a receiver trickling one byte per timeout would evade them, and DNS
# is not covered by them at all). Jobs still running then are abandoned.
GRACE_S: Final[float] = 1.0


class Secret:
    """A credential that shows as `***` in reprs, f-strings and logs; `reveal()` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself, for the request (a header, a URL, a login) only."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class DeliveryError(Exception):
    """A receiver's refusal, already phrased for the log (`deliver` still scrubs it)."""


@dataclass(frozen=True)
class Delivery:
    """How one job went: `error` is one short line, free of secrets, when it failed."""

    name: str
    ok: bool
    seconds: float
    error: str | None = None

    @property
    def destination(self) -> str:
        """`name`, as the deploy markers call it."""
        return self.name


@dataclass(frozen=True)
class Job:
    """One delivery to make: `send()` delivers to `name`, and raises when that fails.

    `send` runs in a worker thread and should bound its own network waits (socket timeouts);
    build the message before, in the caller, so that a bug in it raises there.
    """

    name: str
    send: Callable[[], None]


def http_send(
    method: str, url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> None:
    """One HTTP(S) request; a refusal raises DeliveryError("HTTP 404 Not Found: <its body>").

    The timeout bounds the connect and every read, not DNS: `deliver`'s deadline covers that.
    """
    # urllib would also open file:// and ftp:// URLs; these messages only ever speak HTTP.
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise DeliveryError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url, data=body, headers=dict(headers), method=method
    )
    try:
        # Only http(s) got through the check above: never file:// or ftp://.
        opened = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 # nosec B310
        with opened as response:
            response.read(4096)
    except urllib.error.HTTPError as exc:
        # The error holds the open response: close it (else a ResourceWarning), keep the start of
        # what the receiver said (Slack's `invalid_payload`, the Pushgateway's reason, ...).
        with exc:
            said = exc.read(200).decode("utf-8", "replace").strip()
        raise DeliveryError(
            f"HTTP {exc.code} {exc.reason}" + (f": {said}" if said else "")
        ) from None


def describe(exc: BaseException) -> str:
    """`HTTP 500 ...`, `cannot reach it: ...`, `timed out` or `SMTPAuthenticationError: ...`:
    one line, not a traceback (not yet scrubbed)."""
    if isinstance(exc, DeliveryError):
        text = str(exc)
    elif isinstance(exc, urllib.error.URLError):
        text = f"cannot reach it: {exc.reason}"
    elif isinstance(exc, TimeoutError):
        # socket.timeout says just "timed out"; an SSL read timeout says more.
        detail = str(exc)
        text = "timed out" if detail in {"", "timed out"} else f"timed out: {detail}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by `***` (empty values are ignored)."""
    # Longest first, so a secret that contains another one is masked whole.
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


@dataclass
class _Attempt:
    job: Job
    started: float = 0.0
    # Written by the worker thread, read by `deliver`; None while the job is still running.
    result: Delivery | None = None


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _run(attempt: _Attempt, secrets: tuple[str, ...]) -> None:
    try:
        attempt.job.send()
    # The worker's exceptions cannot reach the caller, and an outbound message must never fail
    # the deploy: whatever goes wrong is this job's failed delivery, reported like any other.
    except Exception as exc:
        error = scrub(describe(exc), secrets)[:ERROR_LIMIT]
        attempt.result = Delivery(attempt.job.name, False, _since(attempt.started), error)
    else:
        attempt.result = Delivery(attempt.job.name, True, _since(attempt.started))


def deliver(
    jobs: Sequence[Job],
    timeout: float,
    *,
    secrets: Iterable[str] = (),
    thread_prefix: str = "outbound",
) -> list[Delivery]:
    """Run every job at once; one `Delivery` per job, in the jobs' order.

    Returns within `timeout + GRACE_S` seconds, `timeout` being what each job's sockets wait:
    every job runs in a daemon thread `<thread_prefix>-<name>`, and one still running at the
    deadline is reported as failed and left to its socket timeout (a daemon thread does not keep
    the process alive). Never raises for a failed job; its error is scrubbed of `secrets`.
    """
    secret_values = tuple(secrets)
    deadline = time.monotonic() + timeout + GRACE_S
    attempts = [_Attempt(job) for job in jobs]
    threads = []
    for attempt in attempts:
        thread = threading.Thread(
            target=_run,
            args=(attempt, secret_values),
            name=f"{thread_prefix}-{attempt.job.name}",
            daemon=True,
        )
        attempt.started = time.monotonic()
        thread.start()
        threads.append(thread)

    deliveries = []
    for attempt, thread in zip(attempts, threads, strict=True):
        thread.join(max(0.0, deadline - time.monotonic()))
        result = attempt.result
        if result is None:
            # Still running: the receiver accepted but does not answer, or answers too slowly.
            waited = _since(attempt.started)
            result = Delivery(attempt.job.name, False, waited, f"no answer within {waited:.1f} s")
        deliveries.append(result)
    return deliveries
