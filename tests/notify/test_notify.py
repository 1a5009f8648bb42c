"""Deploy notifications against real receivers on 127.0.0.1: an HTTP webhook, aiosmtpd with and
without STARTTLS and AUTH, and sockets that refuse, hang or trickle."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import smtplib
import time
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from imdb_deploy import notify as notify_module
from imdb_deploy.notify import (
    DeployEvent,
    NotifyConfigError,
    NotifySettings,
    SmtpSettings,
    email_message,
    notify,
    slack_payload,
    summary,
)
from imdb_deploy.outbound import Delivery, Secret
from tests.notify.receivers import (
    LOCALHOST,
    WEBHOOK_PATH,
    Certificate,
    Inbox,
    SmtpServer,
    WebhookReceiver,
    authenticator,
)

StartSmtp = Callable[..., SmtpServer]
PASSWORD = "pa55-w0rd-SECRET-91"
USER = "deploy-bot"
VERSION = "2026.05.09-1a2b3c4"


def make_event(**overrides: Any) -> DeployEvent:
    fields: dict[str, Any] = {
        "environment": "sandbox-staging",
        "action": "deploy",
        "result": "ok",
        "from_versions": {"web1": "2026.05.01-0f0f0f0", "web2": "2026.05.01-0f0f0f0"},
        "to_version": VERSION,
        "user": "alice",
        "seconds": 9.84,
        "detail": "switched web1, web2 to green",
        "report_path": "reports/deploys/sandbox-staging-20260509T120000Z-deploy-abc.json",
    }
    fields.update(overrides)
    return DeployEvent(**fields)


def smtp_environ(server: SmtpServer, **extra: str) -> dict[str, str]:
    return {
        "MLOPS_SMTP_HOST": server.host,
        "MLOPS_SMTP_PORT": str(server.port),
        "MLOPS_SMTP_FROM": "mlops@example.org",
        "MLOPS_SMTP_TO": "ops@example.org, dev@example.org",
        **extra,
    }


def received(inbox: Inbox) -> EmailMessage:
    assert len(inbox.envelopes) == 1
    content = inbox.envelopes[0].content
    assert isinstance(content, bytes)
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        for secret in (WEBHOOK_PATH, "xoxSeCrEt42", PASSWORD):
            assert secret not in str(text)


# ---- settings ------------------------------------------------------------------------------------


def test_every_channel_is_off_without_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI expands a secret that does not exist to "": that must count as unset.
    environ = {"MLOPS_SLACK_WEBHOOK_URL": "", "MLOPS_SMTP_HOST": "  ", "MLOPS_SMTP_PASSWORD": ""}
    settings = NotifySettings.from_environ(environ)
    assert settings == NotifySettings()
    assert not settings.enabled

    def contacted(*args: object, **kwargs: object) -> None:
        raise AssertionError("a disabled channel was contacted")

    monkeypatch.setattr(urllib.request, "urlopen", contacted)
    monkeypatch.setattr(smtplib, "SMTP", contacted)
    assert notify(make_event(), settings) == []


def test_a_partly_configured_smtp_channel_is_off_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = NotifySettings.from_environ({"MLOPS_SMTP_HOST": "mail.example.org"})
    assert settings.smtp is None
    assert "MLOPS_SMTP_FROM, MLOPS_SMTP_TO not set" in caplog.text


def test_smtp_settings_defaults_and_starttls_rules() -> None:
    base = {"MLOPS_SMTP_HOST": "mail", "MLOPS_SMTP_FROM": "a@b.c", "MLOPS_SMTP_TO": "x@y.z,,"}
    plain = NotifySettings.from_environ(base)
    assert plain.smtp == SmtpSettings("mail", 587, "a@b.c", ("x@y.z",), starttls=False)
    assert plain.timeout == 5.0
    # A password turns STARTTLS on unless it is explicitly switched off.
    login = {**base, "MLOPS_SMTP_USER": USER, "MLOPS_SMTP_PASSWORD": PASSWORD}
    secured = NotifySettings.from_environ(login).smtp
    assert secured is not None
    assert secured.starttls
    assert secured.password == Secret(PASSWORD)
    off = NotifySettings.from_environ({**login, "MLOPS_SMTP_STARTTLS": "False"}).smtp
    assert off is not None
    assert not off.starttls
    on = NotifySettings.from_environ({**base, "MLOPS_SMTP_STARTTLS": "yes"}).smtp
    assert on is not None
    assert on.starttls


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MLOPS_SMTP_PORT", "smtp", "MLOPS_SMTP_PORT must be a port number"),
        ("MLOPS_SMTP_PORT", "70000", "between 1 and 65535"),
        ("MLOPS_SMTP_STARTTLS", "maybe", "MLOPS_SMTP_STARTTLS must be true or false"),
        ("MLOPS_SMTP_PASSWORD", PASSWORD, "MLOPS_SMTP_USER is not"),
        ("MLOPS_NOTIFY_TIMEOUT_S", "soon", "MLOPS_NOTIFY_TIMEOUT_S must be a number"),
        ("MLOPS_NOTIFY_TIMEOUT_S", "0", "positive"),
        ("MLOPS_NOTIFY_TIMEOUT_S", "nan", "positive"),
        ("MLOPS_SLACK_WEBHOOK_URL", f"file://{WEBHOOK_PATH}", "http(s) URL"),
    ],
)
def test_a_malformed_variable_is_named_but_its_value_is_not_shown(
    variable: str, value: str, message: str
) -> None:
    base = {"MLOPS_SMTP_HOST": "mail", "MLOPS_SMTP_FROM": "a@b.c", "MLOPS_SMTP_TO": "x@y.z"}
    with pytest.raises(NotifyConfigError, match=re.escape(message)) as info:
        NotifySettings.from_environ({**base, variable: value})
    assert value not in str(info.value)


def test_announce_sends_and_says_how_each_channel_went(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        notify_module, "notify",
        lambda event, settings: [
            Delivery("slack", True, 0.12, None),
            Delivery("email", False, 5.0, "timed out"),
        ],
    )  # fmt: skip
    assert notify_module.announce(make_event(), {})
    assert capsys.readouterr().out.splitlines() == [
        "notification slack: sent in 0.12 s",
        "notification email: NOT sent (timed out) in 5.00 s",
    ]
    # A malformed setting: nothing is sent, and the reason (never the value) is said.
    assert not notify_module.announce(make_event(), {"MLOPS_NOTIFY_TIMEOUT_S": "nan"})
    captured = capsys.readouterr()
    assert "notifications off: " in captured.err
    assert "nan" not in captured.err
    assert captured.out == ""


def test_secrets_are_masked_in_reprs() -> None:
    url = f"https://hooks.slack.com{WEBHOOK_PATH}"
    settings = NotifySettings.from_environ(
        {
            "MLOPS_SLACK_WEBHOOK_URL": url,
            "MLOPS_SMTP_HOST": "mail",
            "MLOPS_SMTP_FROM": "a@b.c",
            "MLOPS_SMTP_TO": "x@y.z",
            "MLOPS_SMTP_USER": USER,
            "MLOPS_SMTP_PASSWORD": PASSWORD,
        }
    )
    assert settings.slack is not None
    assert_no_secret(repr(settings), str(settings), f"{settings.slack.webhook_url}")
    assert "Secret('***')" in repr(settings)
    assert settings.slack.endpoint == "https://hooks.slack.com/***"
    assert settings.slack.webhook_url.reveal() == url


# ---- messages ------------------------------------------------------------------------------------


def test_summary_lines() -> None:
    assert summary(make_event()) == (
        f"deploy of {VERSION} to sandbox-staging: ok in 9.8 s (from 2026.05.01-0f0f0f0)"
    )
    mixed = make_event(
        action="rollback",
        result="failed",
        from_versions={"web2": None, "web1": "v1"},
        to_version="v0",
        seconds=3,
    )
    assert summary(mixed) == (
        "rollback of sandbox-staging to v0: failed in 3.0 s (from web1=v1, web2=none)"
    )
    first = make_event(from_versions={}, result="refused")
    assert summary(first).endswith("refused in 9.8 s (from nothing)")


def test_an_unknown_action_or_result_is_the_callers_bug() -> None:
    with pytest.raises(ValueError, match="action must be one of"):
        make_event(action="redeploy")
    with pytest.raises(ValueError, match="result must be one of"):
        make_event(result="meh")


def test_slack_payload_escapes_and_cuts_the_detail() -> None:
    payload = slack_payload(make_event(detail="<!channel> & " + "x" * 5000))
    assert payload["text"] == summary(make_event())
    detail = payload["blocks"][-1]["text"]["text"]
    assert detail.startswith("```&lt;!channel&gt; &amp; ")
    assert len(detail) < 3000


def test_email_headers_cannot_be_injected() -> None:
    smtp = SmtpSettings("mail", 25, "a@b.c", ("x@y.z",))
    message = email_message(make_event(to_version="v1\r\nBcc: victim@example.org"), smtp)
    subject = "[mlops-imdb] sandbox-staging deploy ok: v1 Bcc: victim@example.org"
    assert message["Subject"] == subject
    assert message["Bcc"] is None


# ---- Slack webhook -------------------------------------------------------------------------------


def test_slack_gets_the_summary_and_the_facts(
    webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imdb_deploy.notify")
    settings = NotifySettings.from_environ({"MLOPS_SLACK_WEBHOOK_URL": webhook.url})
    (delivery,) = notify(make_event(), settings)

    assert delivery.name == "slack"
    assert delivery.ok, delivery.error
    assert delivery.error is None
    (request,) = webhook.requests
    assert request["path"] == WEBHOOK_PATH
    assert request["content_type"] == "application/json; charset=utf-8"
    payload = request["json"]
    line = f"deploy of {VERSION} to sandbox-staging: ok in 9.8 s (from 2026.05.01-0f0f0f0)"
    assert payload["text"] == line
    assert payload["blocks"][0]["text"]["text"] == f"*{line}*"
    fields = [field["text"] for field in payload["blocks"][1]["fields"]]
    assert "*Environment*\nsandbox-staging" in fields
    assert "*User*\nalice" in fields
    assert any(text.startswith("*Report*\nreports/deploys/") for text in fields)
    assert payload["blocks"][2]["text"]["text"] == "```switched web1, web2 to green```"
    assert f"notified slack (http://{LOCALHOST}/***)" in caplog.text
    assert_no_secret(caplog.text)


def test_a_failing_webhook_is_logged_not_raised(
    webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    webhook.status = 500
    # A receiver that quotes the URL back: the notifier must scrub it from its error.
    webhook.body = "no_service for {path}"
    settings = NotifySettings.from_environ({"MLOPS_SLACK_WEBHOOK_URL": webhook.url})
    (delivery,) = notify(make_event(), settings)

    assert not delivery.ok
    assert delivery.error is not None
    assert delivery.error.startswith("HTTP 500 Internal Server Error: no_service for ***")
    assert_no_secret(delivery.error, repr(delivery), caplog.text)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == ["imdb_deploy.notify"]
    assert "notification via slack" in warnings[0].getMessage()
    assert "HTTP 500" in warnings[0].getMessage()


def test_a_closed_port_fails_fast(closed_port: int) -> None:
    settings = NotifySettings.from_environ(
        {
            "MLOPS_SLACK_WEBHOOK_URL": f"http://{LOCALHOST}:{closed_port}{WEBHOOK_PATH}",
            "MLOPS_SMTP_HOST": LOCALHOST,
            "MLOPS_SMTP_PORT": str(closed_port),
            "MLOPS_SMTP_FROM": "a@b.c",
            "MLOPS_SMTP_TO": "x@y.z",
        }
    )
    start = time.monotonic()
    deliveries = notify(make_event(), settings)
    assert time.monotonic() - start < 1.0
    assert [(d.name, d.ok) for d in deliveries] == [("slack", False), ("email", False)]
    assert "Connection refused" in str(deliveries[0].error)
    assert "Connection refused" in str(deliveries[1].error)
    assert_no_secret(*deliveries)


def test_receivers_that_never_answer_are_cut_off_in_parallel(silent_port: int) -> None:
    timeout = 0.8
    settings = NotifySettings.from_environ(
        {
            "MLOPS_SLACK_WEBHOOK_URL": f"http://{LOCALHOST}:{silent_port}{WEBHOOK_PATH}",
            "MLOPS_SMTP_HOST": LOCALHOST,
            "MLOPS_SMTP_PORT": str(silent_port),
            "MLOPS_SMTP_FROM": "a@b.c",
            "MLOPS_SMTP_TO": "x@y.z",
            "MLOPS_NOTIFY_TIMEOUT_S": str(timeout),
        }
    )
    start = time.monotonic()
    deliveries = notify(make_event(), settings)
    elapsed = time.monotonic() - start

    # Both channels wait at once: one after the other would take twice the timeout.
    assert 0.9 * timeout <= elapsed < 1.7 * timeout
    assert [(d.name, d.ok) for d in deliveries] == [("slack", False), ("email", False)]
    assert "timed out" in str(deliveries[0].error)
    assert "timed out" in str(deliveries[1].error)


def test_a_trickling_receiver_is_cut_off_by_the_deadline(
    trickling_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 0.5
    url = f"http://{LOCALHOST}:{trickling_port}{WEBHOOK_PATH}"
    settings = NotifySettings.from_environ(
        {"MLOPS_SLACK_WEBHOOK_URL": url, "MLOPS_NOTIFY_TIMEOUT_S": str(timeout)}
    )
    start = time.monotonic()
    (delivery,) = notify(make_event(), settings)
    elapsed = time.monotonic() - start

    # Every read gets a byte within the socket timeout, so only the deadline ends the wait.
    assert timeout + 0.9 < elapsed < timeout + 1.5
    assert not delivery.ok
    assert delivery.error is not None
    assert delivery.error.startswith("no answer within 1.5 s")
    assert "no answer within" in caplog.text
    assert_no_secret(caplog.text)


# ---- e-mail --------------------------------------------------------------------------------------


def test_email_arrives_with_subject_body_and_recipients(smtp_server: StartSmtp) -> None:
    server = smtp_server()
    settings = NotifySettings.from_environ(smtp_environ(server))
    assert settings.smtp is not None
    assert not settings.smtp.starttls
    event = make_event(result="rolled_back", from_versions={"web1": "v1", "web2": None})
    (delivery,) = notify(event, settings)

    assert delivery.name == "email"
    assert delivery.ok, delivery.error
    envelope = server.inbox.envelopes[0]
    assert envelope.mail_from == "mlops@example.org"
    assert envelope.rcpt_tos == ["ops@example.org", "dev@example.org"]
    message = received(server.inbox)
    assert message["Subject"] == f"[mlops-imdb] sandbox-staging deploy rolled_back: {VERSION}"
    assert message["From"] == "mlops@example.org"
    assert message["To"] == "ops@example.org, dev@example.org"
    assert message["Message-ID"].endswith("@example.org>")
    assert message.get_content_type() == "text/plain"
    # The wire form has CRLF line ends; the text the notifier wrote has LF.
    body = message.get_content().replace("\r\n", "\n")
    assert body.startswith(
        f"deploy of {VERSION} to sandbox-staging: rolled_back in 9.8 s (from web1=v1, web2=none)\n"
    )
    assert "User:        alice\n" in body
    assert "Previous:    web1=v1, web2=none\n" in body
    assert "Report:      reports/deploys/sandbox-staging-" in body
    assert body.endswith("Detail:\nswitched web1, web2 to green\n")
    assert server.inbox.over_tls == [False]


def test_email_over_starttls_with_login(
    smtp_server: StartSmtp, certificate: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="imdb_deploy")
    inbox = Inbox()
    server = smtp_server(
        inbox=inbox,
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticator(USER, PASSWORD, inbox),
        auth_require_tls=True,
        auth_required=True,
    )
    environ = smtp_environ(
        server,
        MLOPS_SMTP_USER=USER,
        MLOPS_SMTP_PASSWORD=PASSWORD,
        MLOPS_SMTP_CA_FILE=str(certificate.cert_file),
    )
    settings = NotifySettings.from_environ(environ)
    (delivery,) = notify(make_event(), settings)

    assert delivery.ok, delivery.error
    assert inbox.logins == [(USER, PASSWORD)]
    assert inbox.over_tls == [True]
    assert received(inbox)["Subject"] == f"[mlops-imdb] sandbox-staging deploy ok: {VERSION}"
    assert_no_secret(caplog.text, repr(settings))


def test_a_wrong_password_is_reported_without_the_password(
    smtp_server: StartSmtp, certificate: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    # This server wants another password and quotes the one it got in its refusal.
    server = smtp_server(
        inbox=inbox,
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=authenticator(USER, "the-right-one", inbox),
    )
    environ = smtp_environ(
        server,
        MLOPS_SMTP_USER=USER,
        MLOPS_SMTP_PASSWORD=PASSWORD,
        MLOPS_SMTP_CA_FILE=str(certificate.cert_file),
    )
    (delivery,) = notify(make_event(), NotifySettings.from_environ(environ))

    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN): all with this password.
    assert inbox.logins
    assert set(inbox.logins) == {(USER, PASSWORD)}
    assert not delivery.ok
    assert delivery.error is not None
    assert "SMTPAuthenticationError" in delivery.error
    assert "bad password ***" in delivery.error
    assert_no_secret(delivery.error, caplog.text)
    assert inbox.envelopes == []


def test_starttls_is_never_skipped_when_the_server_lacks_it(smtp_server: StartSmtp) -> None:
    inbox = Inbox()
    server = smtp_server(inbox=inbox)
    environ = smtp_environ(server, MLOPS_SMTP_USER=USER, MLOPS_SMTP_PASSWORD=PASSWORD)
    (delivery,) = notify(make_event(), NotifySettings.from_environ(environ))

    assert not delivery.ok
    assert "STARTTLS extension not supported" in str(delivery.error)
    # Neither the password nor the message went out in clear.
    assert inbox.logins == []
    assert inbox.envelopes == []


def test_an_untrusted_certificate_is_refused(
    smtp_server: StartSmtp, certificate: Certificate
) -> None:
    inbox = Inbox()
    server = smtp_server(inbox=inbox, tls_context=certificate.server_context())
    environ = smtp_environ(server, MLOPS_SMTP_STARTTLS="true")
    (delivery,) = notify(make_event(), NotifySettings.from_environ(environ))

    assert not delivery.ok
    assert "CERTIFICATE_VERIFY_FAILED" in str(delivery.error)
    assert inbox.envelopes == []


def test_both_channels_report_independently(
    webhook: WebhookReceiver, smtp_server: StartSmtp
) -> None:
    webhook.status = 404
    server = smtp_server()
    environ = {**smtp_environ(server), "MLOPS_SLACK_WEBHOOK_URL": webhook.url}
    deliveries = notify(make_event(action="rollback"), NotifySettings.from_environ(environ))

    assert [(d.name, d.ok) for d in deliveries] == [("slack", False), ("email", True)]
    assert str(deliveries[0].error).startswith("HTTP 404")
    assert received(server.inbox)["Subject"].startswith("[mlops-imdb] sandbox-staging rollback ok")
