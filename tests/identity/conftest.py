"""Fixtures of the identity tests: a database of their own (seeded like the API tests'), a real SMTP server
(aiosmtpd) receiving the invitations and reset links, a real OIDC provider and a real SAML IdP on 127.0.0.1
(`tests/identity/oidc_provider.py`, `tests/identity/saml_idp.py`), and the real app behind a trusted proxy
at 127.0.0.1 (so a test picks its client address with X-Forwarded-For) whose public URL is the test
client's."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

from tests.alerting.conftest import SmtpInbox
from tests.api.conftest import ORGS, PASSWORD, ROLES, _seed
from tests.conftest import private_database
from tests.identity.oidc_provider import OidcProvider
from tests.identity.saml_idp import SamlIdp

V1 = "/api/v1"
PROXY = ("127.0.0.1", 50000)
PUBLIC_URL = "http://testserver"


class Inbox(SmtpInbox):
    def wait_for(self, to: str, subject_part: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in reversed(self.messages):
                if to in str(message["To"]) and subject_part in str(message["Subject"]):
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no e-mail to {to} about {subject_part!r}")

    def count_to(self, to: str) -> int:
        return sum(1 for m in self.messages if to in str(m["To"]))


def link_in(message) -> str:
    """The path and query of the single-use link in an e-mail, relative to the test client."""
    url = re.search(r"https?://\S+", message.get_content()).group(0)
    assert url.startswith(PUBLIC_URL), url
    return url[len(PUBLIC_URL) :]


def token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def identity_inbox() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="session")
def saml_idp() -> Iterator[SamlIdp]:
    idp = SamlIdp()
    try:
        yield idp
    finally:
        idp.close()


@pytest.fixture(scope="session")
def identity_database(database_url: str) -> Iterator[str]:
    from infra import db
    from serving_api import cli

    for url in private_database(database_url, "optibid_identity"):
        with db.connect(url) as conn:
            _seed(conn)
            for org in ("org_sso", "org_mfa", "org_life", "org_saml"):
                conn.execute(
                    "INSERT INTO silver.ref__organizations VALUES (%s, %s, 'US') ON CONFLICT DO NOTHING",
                    (org, org.upper()),
                )
        for org in ORGS:
            for role in ROLES:
                cli.create_user(url, org, f"{role}@{org}.test", role, PASSWORD)
        for org in ("org_sso", "org_mfa", "org_life", "org_saml"):
            cli.create_user(url, org, f"admin@{org}.test", "admin", PASSWORD)
        yield url


@pytest.fixture(scope="session")
def identity_settings(settings, identity_database, identity_inbox, tmp_path_factory):
    _, port = identity_inbox
    return settings.model_copy(
        update={
            "database_url": identity_database,
            "home": tmp_path_factory.mktemp("identity_home"),
            "clickhouse_url": None,
            "trusted_proxies": ["127.0.0.1/32"],
            "public_url": PUBLIC_URL,
            "mail_smtp_host": "127.0.0.1",
            "mail_smtp_port": port,
            "mail_from": "identity@optibid.test",
        }
    )


def make_identity_app(settings, **options):
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    defaults = {
        "user_rate_limit_per_minute": 100_000,
        "login_delay_base_seconds": 0.05,
        "session_touch_seconds": 0.0,  # every request checks its session's timeouts
    }
    return create_app(settings, ApiOptions(**(defaults | options)))


@pytest.fixture(scope="session")
def client(identity_settings) -> Iterator[TestClient]:
    with TestClient(make_identity_app(identity_settings), client=PROXY) as c:
        yield c


def login(client: TestClient, email: str, password: str = PASSWORD, address: str = "198.51.100.1", **headers):
    return client.post(
        f"{V1}/auth/token",
        data={"username": email, "password": password},
        headers={"X-Forwarded-For": address, **headers},
    )


def bearer(tokens: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def totp_step_now() -> int:
    from serving_api import security

    return int(time.time() // security.TOTP_STEP_SECONDS)


def current_totp(secret: str, offset_steps: int = 0) -> str:
    """The code of the step `offset_steps` after the current one. A test that relies on which step a code
    belongs to (replay, the next step's code) pins the step with `totp_step_now` instead: the clock may
    cross a 30-second boundary between two requests."""
    from serving_api import security

    return security.totp_code(secret, totp_step_now() + offset_steps)
