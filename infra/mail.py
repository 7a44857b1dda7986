"""Transactional e-mail (invitations, password resets) over SMTP.

What belongs here: which SMTP server identity mail uses (`OPTIBID_MAIL_*`, else the alert server's
`OPTIBID_ALERT_SMTP_*`) and sending one plain-text message. What does not: alert notices and their retries
(`infra/alerts.py`), and what the messages say (`serving_api/identity.py`).
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from pydantic import SecretStr

from infra.settings import Settings


class MailError(Exception):
    """The SMTP server could not be reached or refused the message."""


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    sender: str
    starttls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    timeout_seconds: float = 10.0


def smtp_server_from_settings(settings: Settings) -> SmtpServer | None:
    """The identity mail server; None when neither it nor the alert server is configured."""
    if settings.mail_smtp_host:
        return SmtpServer(
            host=settings.mail_smtp_host,
            port=settings.mail_smtp_port or 25,
            sender=settings.mail_from,
            starttls=bool(settings.mail_smtp_starttls),
            username=settings.mail_smtp_username,
            password=settings.mail_smtp_password,
            timeout_seconds=settings.alert_delivery_timeout_seconds,
        )
    if settings.alert_smtp_host:
        return SmtpServer(
            host=settings.alert_smtp_host,
            port=settings.mail_smtp_port or settings.alert_smtp_port,
            sender=settings.mail_from,
            starttls=settings.alert_smtp_starttls
            if settings.mail_smtp_starttls is None
            else settings.mail_smtp_starttls,
            username=settings.alert_smtp_username,
            password=settings.alert_smtp_password,
            timeout_seconds=settings.alert_delivery_timeout_seconds,
        )
    return None


def send_mail(server: SmtpServer, to: str, subject: str, body: str) -> None:
    """Send one plain-text message; MailError when it was not accepted."""
    message = EmailMessage()
    message["From"] = server.sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    try:
        with smtplib.SMTP(server.host, server.port, timeout=server.timeout_seconds) as smtp:
            if server.starttls:
                smtp.starttls()
            if server.username:
                smtp.login(server.username, server.password.get_secret_value() if server.password else "")
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise MailError(f"{server.host}:{server.port}: {exc}") from exc
