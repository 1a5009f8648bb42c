"""Fixtures for the notification tests: real receivers on 127.0.0.1, stopped after each test."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.notify.receivers import (
    LOCALHOST,
    Certificate,
    Inbox,
    SmtpServer,
    Trickler,
    WebhookReceiver,
    make_certificate,
)
from tests.support import free_port

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

StartSmtp = Callable[..., SmtpServer]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; a developer's proxy must not get 127.0.0.1 requests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(autouse=True)
def _join_notify_threads() -> Iterator[None]:
    """A delivery thread the notifier gave up on finishes before the next test starts, so its
    late socket error or log line never lands in another test."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("notify-"):
            thread.join(10)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Listens but never accepts: the kernel completes the TCP handshake from the backlog, so a
    client connects, sends its request, and waits for a reply that never comes."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def trickling_port() -> Iterator[int]:
    trickler = Trickler()
    trickler.start()
    try:
        yield trickler.port
    finally:
        trickler.stop()


@pytest.fixture
def closed_port() -> int:
    """Nothing listens there: the connection is refused at once."""
    return free_port()


@pytest.fixture
def smtp_server() -> Iterator[StartSmtp]:
    """`smtp_server(**smtp_kwargs)` starts aiosmtpd on a free port, stopped after the test."""
    controllers: list[Controller] = []

    def start(**kwargs: Any) -> SmtpServer:
        inbox = kwargs.pop("inbox", None) or Inbox()
        port = free_port()
        # server_hostname: else aiosmtpd asks DNS for this machine's FQDN on every connection.
        controller = Controller(
            inbox, hostname=LOCALHOST, port=port, server_hostname="localhost", **kwargs
        )
        controller.start()
        controllers.append(controller)
        return SmtpServer(LOCALHOST, port, inbox)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))
