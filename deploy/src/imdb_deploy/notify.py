"""Deploy notifications: a Slack incoming webhook and e-mail over SMTP.

Both channels are configured from the deployer's environment (GitHub secrets in CI) and are off
unless their required variables are set:

    Slack   MLOPS_SLACK_WEBHOOK_URL
    e-mail  MLOPS_SMTP_HOST, MLOPS_SMTP_FROM, MLOPS_SMTP_TO (comma-separated); optional
            MLOPS_SMTP_PORT (587), MLOPS_SMTP_USER, MLOPS_SMTP_PASSWORD, MLOPS_SMTP_STARTTLS
            (true/false; default true when a password is set), MLOPS_SMTP_CA_FILE (extra CA
            bundle to trust, e.g. a private relay's)
    both    MLOPS_NOTIFY_TIMEOUT_S (5): socket timeout per channel

`notify()` is best effort by design (`imdb_deploy.outbound` delivers): a failing, refusing or
hanging receiver is logged as a warning and reported in the returned `Delivery` list, but it never
raises into the deploy and never holds it up for longer than the timeout plus one second
(`outbound.GRACE_S`). The webhook URL (whose path *is* the credential) and the SMTP password are
wrapped in `Secret`, so they cannot leak through a repr, and are scrubbed from every error text
before it is logged or returned.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import smtplib
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, get_args

from imdb_deploy.outbound import MASK, Delivery, Job, Secret, deliver, http_send

log = logging.getLogger("imdb_deploy.notify")

# "release": a new release was made (or refused) for an environment, before any deploy.
Action = Literal["deploy", "rollback", "release"]
Result = Literal["ok", "failed", "refused", "rolled_back"]

SUBJECT_PREFIX = "[mlops-imdb]"
DEFAULT_SMTP_PORT = 587
DEFAULT_TIMEOUT_S = 5.0
# Slack rejects a section text over 3000 characters; a long detail is cut, the report has it all.
SLACK_TEXT_LIMIT = 2900
# A secret shorter than this would mask ordinary words in error texts; none is that short.
MIN_SECRET_LENGTH = 4

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class NotifyConfigError(ValueError):
    """A notification variable is set but malformed; the message names it, never its value."""


@dataclass(frozen=True)
class DeployEvent:
    """What happened, as the notifier reports it. `detail` must already be redacted."""

    environment: str
    action: Action
    result: Result
    from_versions: Mapping[str, str | None]
    to_version: str | None
    user: str
    seconds: float
    detail: str = ""
    report_path: str | None = None

    def __post_init__(self) -> None:
        # A typo here would otherwise produce a misleading message; it is the caller's bug.
        if self.action not in get_args(Action):
            raise ValueError(f"action must be one of {get_args(Action)}, not {self.action!r}")
        if self.result not in get_args(Result):
            raise ValueError(f"result must be one of {get_args(Result)}, not {self.result!r}")


@dataclass(frozen=True)
class SlackSettings:
    """The incoming webhook. The whole URL is the credential, so it is a `Secret`."""

    webhook_url: Secret

    @property
    def endpoint(self) -> str:
        """`https://hooks.slack.com/***`: where it goes, safe for logs."""
        parts = urllib.parse.urlsplit(self.webhook_url.reveal())
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}/{MASK}"


@dataclass(frozen=True)
class SmtpSettings:
    """An SMTP submission server; STARTTLS and login are optional, implicit TLS is not used."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: Secret | None = None
    starttls: bool = True
    ca_file: str | None = None


@dataclass(frozen=True)
class NotifySettings:
    """Which channels are on (a `None` channel is off) and how long each may take."""

    slack: SlackSettings | None = None
    smtp: SmtpSettings | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.slack is not None or self.smtp is not None

    def secrets(self) -> list[str]:
        """Every secret value, and the webhook's path on its own, for scrubbing error texts."""
        values: list[str] = []
        if self.slack is not None:
            url = self.slack.webhook_url.reveal()
            parts = urllib.parse.urlsplit(url)
            # Some errors quote only the path or the query; both carry the token.
            values += [url, parts.path, parts.query, urllib.parse.quote(url, safe="")]
        if self.smtp is not None and self.smtp.password is not None:
            password = self.smtp.password.reveal()
            values += [password, urllib.parse.quote(password, safe="")]
        return [value for value in values if len(value) >= MIN_SECRET_LENGTH]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> NotifySettings:
        """Read the `MLOPS_*` variables (see the module docstring).

        Empty values count as unset, because CI expands a secret that does not exist to "".
        A channel with some but not all of its required variables is off, with a warning naming
        the missing ones. Raises `NotifyConfigError` for a malformed value, so a deploy can
        check its configuration before it changes anything.
        """

        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        timeout = _positive_float(get("MLOPS_NOTIFY_TIMEOUT_S"), "MLOPS_NOTIFY_TIMEOUT_S")
        return cls(
            slack=_slack_settings(get),
            smtp=_smtp_settings(get),
            timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
        )


def _positive_float(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise NotifyConfigError(f"{name} must be a number of seconds") from None
    if not math.isfinite(number) or number <= 0:
        raise NotifyConfigError(f"{name} must be a positive number of seconds")
    return number


def _slack_settings(get: Callable[[str], str | None]) -> SlackSettings | None:
    url = get("MLOPS_SLACK_WEBHOOK_URL")
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    # urllib would also open file: and ftp: URLs; a webhook is only ever HTTP(S).
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise NotifyConfigError("MLOPS_SLACK_WEBHOOK_URL must be an http(s) URL with a host")
    return SlackSettings(webhook_url=Secret(url))


def _smtp_settings(get: Callable[[str], str | None]) -> SmtpSettings | None:
    host, sender, to = get("MLOPS_SMTP_HOST"), get("MLOPS_SMTP_FROM"), get("MLOPS_SMTP_TO")
    recipients = tuple(r.strip() for r in (to or "").split(",") if r.strip())
    required = {"MLOPS_SMTP_HOST": host, "MLOPS_SMTP_FROM": sender, "MLOPS_SMTP_TO": recipients}
    missing = [name for name, value in required.items() if not value]
    if host is None or sender is None or not recipients:
        if len(missing) < len(required):
            log.warning("e-mail notifications are off: %s not set", ", ".join(missing))
        return None

    port_text = get("MLOPS_SMTP_PORT")
    try:
        port = DEFAULT_SMTP_PORT if port_text is None else int(port_text)
    except ValueError:
        raise NotifyConfigError("MLOPS_SMTP_PORT must be a port number") from None
    if not 0 < port < 65536:
        raise NotifyConfigError("MLOPS_SMTP_PORT must be between 1 and 65535")

    user, password = get("MLOPS_SMTP_USER"), get("MLOPS_SMTP_PASSWORD")
    if password is not None and user is None:
        raise NotifyConfigError("MLOPS_SMTP_PASSWORD is set but MLOPS_SMTP_USER is not")

    starttls_text = get("MLOPS_SMTP_STARTTLS")
    if starttls_text is None:
        # A password must not cross the network in clear unless someone says so explicitly.
        starttls = password is not None
    elif starttls_text.lower() in _TRUE:
        starttls = True
    elif starttls_text.lower() in _FALSE:
        starttls = False
    else:
        raise NotifyConfigError("MLOPS_SMTP_STARTTLS must be true or false")

    return SmtpSettings(
        host=host,
        port=port,
        sender=sender,
        recipients=recipients,
        user=user,
        password=None if password is None else Secret(password),
        starttls=starttls,
        ca_file=get("MLOPS_SMTP_CA_FILE"),
    )


# ---- messages -----------------------------------------------------------------------------------


def _from_text(from_versions: Mapping[str, str | None]) -> str:
    """`from v1` when every host ran the same release, else `from web1=v1, web2=none`."""
    if not from_versions:
        return "from nothing"
    versions = set(from_versions.values())
    if len(versions) == 1:
        (only,) = versions
        return f"from {only or 'nothing'}"
    pairs = (f"{host}={version or 'none'}" for host, version in sorted(from_versions.items()))
    return "from " + ", ".join(pairs)


def summary(event: DeployEvent) -> str:
    """One line: `deploy of V to ENV: ok in 9.8 s (from X)`."""
    version = event.to_version or "(no version)"
    if event.action == "rollback":
        what = f"rollback of {event.environment} to {version}"
    elif event.action == "release":
        what = f"new release for {event.environment}"
    else:
        what = f"deploy of {version} to {event.environment}"
    return f"{what}: {event.result} in {event.seconds:.1f} s ({_from_text(event.from_versions)})"


def _facts(event: DeployEvent) -> list[tuple[str, str]]:
    facts = [
        ("Environment", event.environment),
        ("Action", event.action),
        ("Result", event.result),
        ("Version", event.to_version or "(no version)"),
        ("Previous", _from_text(event.from_versions).removeprefix("from ")),
        ("User", event.user),
        ("Duration", f"{event.seconds:.1f} s"),
    ]
    if event.report_path:
        facts.append(("Report", event.report_path))
    return facts


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: DeployEvent) -> dict[str, Any]:
    """The webhook's JSON: `text` is the fallback for notifications, `blocks` the message."""
    line = summary(event)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack_escape(line)}*"}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"}
                for name, value in _facts(event)
            ],
        },
    ]
    if event.detail:
        detail = _slack_escape(event.detail)
        if len(detail) > SLACK_TEXT_LIMIT:
            detail = detail[: SLACK_TEXT_LIMIT - 1] + "…"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{detail}```"}})
    return {"text": line, "blocks": blocks}


def _one_line(text: str) -> str:
    # Header values may not contain line breaks (EmailMessage refuses them): header injection.
    return " ".join(text.split())


def email_message(event: DeployEvent, settings: SmtpSettings) -> EmailMessage:
    """Subject `[mlops-imdb] ENV ACTION RESULT: VERSION`, a plain-text body with the facts."""
    message = EmailMessage()
    version = event.to_version or "(no version)"
    message["Subject"] = _one_line(
        f"{SUBJECT_PREFIX} {event.environment} {event.action} {event.result}: {version}"
    )
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    message["Date"] = email.utils.formatdate(usegmt=True)
    # make_msgid() would otherwise ask DNS for this machine's FQDN, which can take seconds.
    domain = settings.sender.rpartition("@")[2] or "localhost"
    message["Message-ID"] = email.utils.make_msgid(domain=_one_line(domain))
    width = max(len(name) for name, _ in _facts(event))
    lines = [summary(event), ""]
    lines += [f"{name + ':':<{width + 1}} {value}" for name, value in _facts(event)]
    if event.detail:
        lines += ["", "Detail:", event.detail]
    message.set_content("\n".join(lines) + "\n")
    return message


# ---- delivery -----------------------------------------------------------------------------------


def _send_slack(slack: SlackSettings, payload: dict[str, Any], timeout: float) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    http_send("POST", slack.webhook_url.reveal(), json.dumps(payload).encode(), headers, timeout)


def _send_email(smtp: SmtpSettings, message: EmailMessage, timeout: float) -> None:
    client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
    # Not `with client`: its exit sends QUIT even after a timeout, waiting a second timeout.
    try:
        if smtp.starttls:
            context = ssl.create_default_context(cafile=smtp.ca_file)
            # Raises SMTPNotSupportedError when the server lacks STARTTLS: never fall back to
            # sending the password and the message in clear.
            client.starttls(context=context)
        if smtp.user is not None and smtp.password is not None:
            client.login(smtp.user, smtp.password.reveal())
        client.send_message(message)
        # The message is accepted at this point; a server that fumbles QUIT changes nothing.
        with contextlib.suppress(OSError):
            client.quit()
    finally:
        client.close()


def notify(event: DeployEvent, settings: NotifySettings) -> list[Delivery]:
    """Send `event` to every configured channel at once; one `Delivery` per channel.

    Returns within `settings.timeout + 1` seconds whatever the receivers do: each channel runs
    in a daemon thread, and one still running at the deadline is reported as failed and left to
    its socket timeout (a daemon thread does not keep the process alive). Never raises for a
    delivery problem; failures are logged as warnings on `imdb_deploy.notify`.
    """
    # Messages are built here, not in the workers, so a bug in them raises to the caller.
    jobs: list[Job] = []
    timeout = settings.timeout
    if settings.slack is not None:
        slack, payload = settings.slack, slack_payload(event)
        jobs.append(Job("slack", lambda: _send_slack(slack, payload, timeout)))
    if settings.smtp is not None:
        smtp, message = settings.smtp, email_message(event, settings.smtp)
        jobs.append(Job("email", lambda: _send_email(smtp, message, timeout)))
    deliveries = deliver(jobs, timeout, secrets=settings.secrets(), thread_prefix="notify")
    for delivery in deliveries:
        _log(delivery, event, settings)
    return deliveries


def announce(event: DeployEvent, environ: Mapping[str, str]) -> bool:
    """Send `event` where `environ` configures it and print how each channel went; False (and
    the reason on stderr) when a notification variable is malformed, so nothing was sent."""
    try:
        settings = NotifySettings.from_environ(environ)
    except NotifyConfigError as exc:
        print(f"notifications off: {exc}", file=sys.stderr)
        return False
    for delivery in notify(event, settings):
        state = "sent" if delivery.ok else f"NOT sent ({delivery.error})"
        print(f"notification {delivery.name}: {state} in {delivery.seconds:.2f} s")
    return True


def _log(delivery: Delivery, event: DeployEvent, settings: NotifySettings) -> None:
    where = ""
    if delivery.name == "slack" and settings.slack is not None:
        where = f" ({settings.slack.endpoint})"
    elif delivery.name == "email" and settings.smtp is not None:
        where = f" ({settings.smtp.host}:{settings.smtp.port})"
    if delivery.ok:
        log.info(
            "notified %s%s of %s %s in %.1f s",
            delivery.name,
            where,
            event.environment,
            event.action,
            delivery.seconds,
        )
    else:
        log.warning(
            "notification via %s%s failed after %.1f s: %s",
            delivery.name,
            where,
            delivery.seconds,
            delivery.error,
        )
