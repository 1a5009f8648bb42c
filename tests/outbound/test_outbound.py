"""The shared delivery machinery of notifications and deploy markers, on its own: what neither
caller's tests reach (their receivers fail only in network ways, and their secrets are never
empty)."""

from __future__ import annotations

import threading
import urllib.error

import pytest

from imdb_deploy.outbound import (
    ERROR_LIMIT,
    Delivery,
    DeliveryError,
    Job,
    Secret,
    deliver,
    describe,
    scrub,
)

TOKEN = "tok-3f9a-SECRET"


def test_scrub_masks_the_longest_secret_whole_and_ignores_empty_ones() -> None:
    text = f"refused https://hooks/{TOKEN} ({TOKEN[:8]})"
    assert scrub(text, ["", TOKEN[:8], f"https://hooks/{TOKEN}"]) == "refused *** (***)"
    assert scrub("nothing to hide", [""]) == "nothing to hide"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (DeliveryError("HTTP 503:\n  busy, try later"), "HTTP 503: busy, try later"),
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), "cannot reach it: [Errno"),
        (TimeoutError("timed out"), "timed out"),
        (TimeoutError(), "timed out"),
        (TimeoutError("The read operation timed out"), "timed out: The read operation timed out"),
        (KeyError("slack"), "KeyError: 'slack'"),
    ],
)
def test_describe_is_one_line_without_a_traceback(exc: BaseException, text: str) -> None:
    assert describe(exc).startswith(text)
    assert "\n" not in describe(exc)


def test_a_job_that_raises_anything_is_a_failed_delivery_in_order() -> None:
    seen: list[str] = []

    def ok() -> None:
        seen.append(threading.current_thread().name)

    def buggy() -> None:
        raise RuntimeError(f"bad payload for {TOKEN}: " + "x" * 1000)

    deliveries = deliver(
        [Job("first", buggy), Job("second", ok)], 1.0, secrets=[TOKEN], thread_prefix="test"
    )

    assert [(d.name, d.ok) for d in deliveries] == [("first", False), ("second", True)]
    error = deliveries[0].error
    assert error is not None
    assert error.startswith("RuntimeError: bad payload for ***: xxx")
    assert len(error) == ERROR_LIMIT
    assert seen == ["test-second"]
    assert deliveries[1] == Delivery("second", True, deliveries[1].seconds)
    assert deliveries[1].destination == "second"
    assert deliver([], 1.0) == []


def test_secrets_compare_by_value_but_never_show() -> None:
    secret = Secret(TOKEN)
    assert secret == Secret(TOKEN)
    assert secret != Secret("other")
    assert len({secret, Secret(TOKEN)}) == 1
    assert TOKEN not in repr(secret) + str(secret) + f"{secret!r} {secret}"
    assert secret.reveal() == TOKEN
