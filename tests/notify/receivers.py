"""Real receivers on 127.0.0.1 for the notification tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOCALHOST = "127.0.0.1"
# The part of the webhook URL that is the credential; the tests look for it in every output.
WEBHOOK_PATH = "/services/T0001/B0002/xoxSeCrEt42"


# ---- HTTP: the Slack webhook ---------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """An HTTP server answering POSTs with `status` and `body`, recording each request.

    `{path}` in `body` is replaced by the request's path, so a test can make the receiver echo
    the secret part of the URL back and check the notifier scrubs it.
    """

    status: int = 200
    body: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{LOCALHOST}:{self.server.server_address[1]}{WEBHOOK_PATH}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "json": json.loads(self.rfile.read(length)),
                    }
                )
                payload = receiver.body.replace("{path}", self.path).encode()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the default writes every request to stderr."""

        self.server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        # A short poll interval: shutdown() waits for the loop to notice, 0.5 s by default.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook"
        )
        self.thread.start()

    def stop(self) -> None:
        assert self.server is not None
        assert self.thread is not None
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---- a socket that answers one byte at a time ---------------------------------------------------


class Trickler:
    """Accepts and sends a byte every 0.2 s, never a line end: no read ever times out and the
    client's readline never completes, so only the notifier's overall deadline ends the wait."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._server = socket.socket()
        self._server.bind((LOCALHOST, 0))
        self._server.listen(8)
        self._server.settimeout(0.1)
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="trickle")
        self.port: int = self._server.getsockname()[1]

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self._connections.append(self._server.accept()[0])
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.sendall(b"H")
            self._stop.wait(0.2)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._connections:
            connection.close()
        self._server.close()


# ---- SMTP ----------------------------------------------------------------------------------------


@dataclass
class Inbox:
    """aiosmtpd handler keeping every message, whether it came over TLS, and the logins tried."""

    envelopes: list[Envelope] = field(default_factory=list)
    over_tls: list[bool] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook naming
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.envelopes.append(envelope)
        self.over_tls.append(session.ssl is not None)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    inbox: Inbox


def authenticator(user: str, password: str, inbox: Inbox) -> Callable[..., AuthResult]:
    """Accepts only `user`/`password` and records what arrived. A wrong password is refused
    with a reply quoting it, to prove the notifier scrubs what a server sends back."""

    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, given = data.login.decode(), data.password.decode()
        inbox.logins.append((login, given))
        if (login, given) == (user, password):
            return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad password {given}")

    return check


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificate(directory: Path) -> Certificate:
    """EC keys, so generating one takes milliseconds rather than an RSA key's fraction of a s."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlops-imdb test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))]
            ),
            critical=False,
        )
        # Self-signed and trusted directly as a CA file: OpenSSL wants it marked as a CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)
