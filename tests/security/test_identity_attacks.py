"""Hostile clients against identity: MFA brute force, invitation-link reuse, OIDC `state` and `nonce`
replay, SAML responses that are unsigned, wrongly signed, replayed, for another audience, expired, or not
answering a request of ours, and `alg` confusion between the old (HS256) and new (RS256) token formats."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from tests.api.conftest import PASSWORD
from tests.identity.conftest import Inbox, _free_port, current_totp, link_in, token_of
from tests.identity.oidc_provider import OidcProvider, callback_path
from tests.identity.saml_idp import SamlIdp, posted_form
from tests.security.conftest import PROXY, V1, make_app

PUBLIC_URL = "http://testserver"
REDIRECT_URI = f"{PUBLIC_URL}{V1}/auth/sso/callback"


@pytest.fixture(scope="module")
def inbox() -> Iterator[tuple[Inbox, int]]:
    box, port = Inbox(), _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    idp = OidcProvider()
    idp.register_client("optibid-org-b", None, REDIRECT_URI)  # a public client: PKCE alone
    yield idp
    idp.close()


@pytest.fixture(scope="module")
def app_client(security_settings, inbox, provider, tmp_path_factory) -> Iterator[TestClient]:
    _, port = inbox
    settings = security_settings.model_copy(
        update={
            "public_url": PUBLIC_URL,
            "mail_smtp_host": "127.0.0.1",
            "mail_smtp_port": port,
            "home": tmp_path_factory.mktemp("identity_attacks_home"),
        }
    )
    with TestClient(make_app(settings, login_delay_base_seconds=0.05), client=PROXY) as c:
        yield c


def _login(client, email, password=PASSWORD, address="203.0.113.1"):
    return client.post(
        f"{V1}/auth/token", data={"username": email, "password": password}, headers={"X-Forwarded-For": address}
    )


def _bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


# --- MFA brute force ---------------------------------------------------------------------------------------
def test_mfa_codes_cannot_be_brute_forced(app_client):
    client = app_client
    tokens = _login(client, "trader@org_a.test", address="203.0.113.9").json()
    secret = client.post(f"{V1}/auth/mfa/setup", headers=_bearer(tokens)).json()["secret"]
    confirmed = client.post(f"{V1}/auth/mfa/confirm", json={"code": current_totp(secret)}, headers=_bearer(tokens))
    assert confirmed.status_code == 200, confirmed.text

    # One challenge allows five guesses, then even the right code needs the password again.
    challenge = _login(client, "trader@org_a.test", address="203.0.113.10").json()["mfa_token"]
    guesses = [
        client.post(
            f"{V1}/auth/mfa/verify",
            json={"mfa_token": challenge, "code": f"{n:06d}"},
            headers={"X-Forwarded-For": f"203.0.113.{20 + n}"},
        ).status_code
        for n in range(5)
    ]
    assert guesses == [401] * 5
    right = client.post(
        f"{V1}/auth/mfa/verify",
        json={"mfa_token": challenge, "code": current_totp(secret, 1)},
        headers={"X-Forwarded-For": "203.0.113.30"},
    )
    assert right.status_code == 401 and right.json()["code"] == "mfa_challenge_exhausted"

    # Wrong codes count like wrong passwords: the attacker's (e-mail, address) pair backs off ...
    for _ in range(5):
        challenge = _login(client, "trader@org_a.test", address="203.0.113.66").json().get("mfa_token")
        if challenge is None:
            break
        client.post(
            f"{V1}/auth/mfa/verify",
            json={"mfa_token": challenge, "code": "999999"},
            headers={"X-Forwarded-For": "203.0.113.66"},
        )
    refused = _login(client, "trader@org_a.test", address="203.0.113.66")
    assert refused.status_code == 429 and refused.json()["code"] == "login_backoff"
    assert int(refused.headers["Retry-After"]) >= 1
    # ... while the owner, elsewhere, still gets in (throttled, never locked out).
    challenge = _login(client, "trader@org_a.test", address="198.51.100.99").json()["mfa_token"]
    ok = client.post(
        f"{V1}/auth/mfa/verify",
        json={"mfa_token": challenge, "code": current_totp(secret, 1)},
        headers={"X-Forwarded-For": "198.51.100.99"},
    )
    assert ok.status_code == 200, ok.text
    actions = [
        r["action"]
        for r in client.get(
            f"{V1}/audit", params={"limit": 1000}, headers=_bearer(_login(client, "admin@org_a.test").json())
        ).json()
    ]
    assert actions.count("mfa.failure") >= 10


# --- invitation links --------------------------------------------------------------------------------------
def test_an_invitation_link_works_once_and_not_for_a_reset(app_client, inbox):
    client = app_client
    box, _ = inbox
    admin = _login(client, "admin@org_b.test").json()
    resp = client.post(
        f"{V1}/users/invitations", json={"email": "eve@org_b.test", "role": "admin"}, headers=_bearer(admin)
    )
    assert resp.status_code == 201, resp.text
    token = token_of(link_in(box.wait_for("eve@org_b.test", "invited")))
    # An invitation token is not a password-reset token.
    wrong_kind = client.post(f"{V1}/auth/password/reset", json={"token": token, "new_password": PASSWORD})
    assert wrong_kind.status_code == 400 and wrong_kind.json()["code"] == "link_invalid"
    assert client.post(f"{V1}/auth/invitations/accept", json={"token": token, "password": PASSWORD}).status_code == 201
    for password in (PASSWORD, "Someone-Elses-Pass-1"):
        again = client.post(f"{V1}/auth/invitations/accept", json={"token": token, "password": password})
        assert again.status_code == 400 and again.json()["code"] == "link_used"
    assert _login(client, "eve@org_b.test", "Someone-Elses-Pass-1").status_code == 401
    # Another organization's admin cannot withdraw or see it.
    other = _login(client, "admin@org_a.test").json()
    listed = client.get(f"{V1}/users/invitations", headers=_bearer(other)).json()
    assert all(i["email"] != "eve@org_b.test" for i in listed)


# --- OIDC state and nonce replay ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sso_org_b(app_client, provider) -> None:
    admin = _login(app_client, "admin@org_b.test").json()
    resp = app_client.put(
        f"{V1}/oidc-provider",
        json={
            "issuer": provider.issuer,
            "client_id": "optibid-org-b",
            "default_role": "viewer",
            "scopes": "openid email profile groups",
        },
        headers=_bearer(admin),
    )
    assert resp.status_code == 200, resp.text


def _round_trip(client, provider) -> tuple[dict, str]:
    start = client.get(f"{V1}/auth/sso/org_b/login", follow_redirects=False)
    query = dict(parse_qsl(urlsplit(start.headers["location"]).query))
    back = httpx.get(start.headers["location"], follow_redirects=False).headers["location"]
    return query, back


def test_a_replayed_oidc_state_is_refused(app_client, provider, sso_org_b):
    provider.login_as = {"sub": "sso-ivy", "email": "ivy@org_b.test"}
    _, back = _round_trip(app_client, provider)
    first = app_client.get(callback_path(back))
    assert first.status_code == 200, first.text
    replay = app_client.get(callback_path(back))
    assert replay.status_code == 400 and replay.json()["code"] == "sso_state_invalid"
    forged = app_client.get(f"{V1}/auth/sso/callback", params={"state": "made-up", "code": "x"})
    assert forged.status_code == 400 and forged.json()["code"] == "sso_state_invalid"


def test_an_id_token_with_another_logins_nonce_is_refused(app_client, provider, sso_org_b):
    provider.login_as = {"sub": "sso-jay", "email": "jay@org_b.test"}
    earlier, back = _round_trip(app_client, provider)
    assert app_client.get(callback_path(back)).status_code == 200
    # The provider (or an injected code) returns an ID token minted for the earlier login's nonce.
    provider.force_nonce = earlier["nonce"]
    _, back = _round_trip(app_client, provider)
    resp = app_client.get(callback_path(back))
    assert resp.status_code == 401 and resp.json()["code"] == "sso_nonce_mismatch"


def test_a_code_without_its_pkce_verifier_is_useless(app_client, provider, sso_org_b):
    provider.login_as = {"sub": "sso-kim", "email": "kim@org_b.test"}
    _, back = _round_trip(app_client, provider)
    code = dict(parse_qsl(urlsplit(back).query))["code"]
    stolen = httpx.post(
        f"{provider.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": "optibid-org-b",
        },
    )
    assert stolen.status_code == 400
    # The failed attempt did not spend the code: the rightful callback, holding the verifier, completes.
    resp = app_client.get(callback_path(back))
    assert resp.status_code == 200, resp.text


# --- SAML responses ------------------------------------------------------------------------------------------
SAML_ACS = f"{V1}/auth/saml/org_a/acs"


@pytest.fixture(scope="module")
def saml_org_a(app_client) -> Iterator[SamlIdp]:
    idp = SamlIdp()
    admin = _login(app_client, "admin@org_a.test").json()
    resp = app_client.put(
        f"{V1}/saml-provider",
        json={
            "idp_entity_id": idp.entity_id,
            "idp_sso_url": idp.sso_url,
            "idp_certificate": idp.certificate,
            "default_role": "viewer",
            "group_roles": {"admins": "admin"},
        },
        headers=_bearer(admin),
    )
    assert resp.status_code == 200, resp.text
    yield idp
    idp.close()


def _saml_form(client, idp: SamlIdp, **knobs) -> dict[str, str]:
    """The form the IdP's page would post to our ACS for a login started now (the IdP made hostile by knobs)."""
    idp.next_response(**knobs)
    start = client.get(f"{V1}/auth/saml/org_a/login", follow_redirects=False)
    assert start.status_code == 302, start.text
    action, fields = posted_form(httpx.get(start.headers["location"]).text)
    assert action == f"{PUBLIC_URL}{SAML_ACS}"
    return fields


def _saml_users(client) -> set[str]:
    admin = _login(client, "admin@org_a.test").json()
    return {u["email"] for u in client.get(f"{V1}/users", headers=_bearer(admin)).json()}


@pytest.mark.parametrize(
    ("knobs", "code"),
    [
        ({"sign": "none"}, "saml_signature_invalid"),
        ({"sign": "other_key"}, "saml_signature_invalid"),
        ({"sign": "tampered"}, "saml_signature_invalid"),
        ({"audience": "https://another-sp.example/metadata"}, "saml_wrong_audience"),
        ({"lifetime_seconds": -600}, "saml_assertion_expired"),
        ({"issuer": "https://another-idp.example/metadata"}, "saml_wrong_issuer"),
        ({"destination": "https://another-sp.example/acs"}, "saml_wrong_destination"),
        ({"in_response_to": "_a-request-we-never-sent"}, "saml_in_response_to_mismatch"),
        ({"in_response_to": None}, "saml_in_response_to_mismatch"),  # unsolicited (IdP-initiated)
    ],
    ids=["unsigned", "other-key", "tampered", "audience", "expired", "issuer", "destination", "irt", "unsolicited"],
)
def test_invalid_saml_responses_are_refused(app_client, saml_org_a, knobs, code):
    saml_org_a.login_as = {"name_id": "saml-mallory", "attributes": {"email": "mallory@org_a.test", "groups": "admins"}}
    resp = app_client.post(SAML_ACS, data=_saml_form(app_client, saml_org_a, **knobs))
    assert resp.status_code == 401, resp.text
    assert resp.json()["code"] == code
    assert "mallory@org_a.test" not in _saml_users(app_client)


def test_both_signing_styles_are_accepted(app_client, saml_org_a):
    # The control for the refusals above: the same IdP, signing the Response, or both, gets in.
    for n, sign in enumerate(("response", "both")):
        saml_org_a.login_as = {"name_id": f"saml-ok-{n}", "attributes": {"email": f"ok{n}@org_a.test"}}
        resp = app_client.post(SAML_ACS, data=_saml_form(app_client, saml_org_a, sign=sign))
        assert resp.status_code == 200, resp.text


def test_a_replayed_saml_response_or_assertion_is_refused(app_client, saml_org_a):
    saml_org_a.login_as = {"name_id": "saml-una", "attributes": {"email": "una@org_a.test"}}
    fields = _saml_form(app_client, saml_org_a)
    used_assertion_id = saml_org_a.issued_assertion_ids[-1]
    assert app_client.post(SAML_ACS, data=fields).status_code == 200
    # The same POST again: its RelayState is spent.
    replay = app_client.post(SAML_ACS, data=fields)
    assert replay.status_code == 400 and replay.json()["code"] == "saml_relay_state_invalid"
    # The captured response with the RelayState of a fresh login: it does not answer that login's request.
    fresh = _saml_form(app_client, saml_org_a)
    spliced = app_client.post(
        SAML_ACS, data={"SAMLResponse": fields["SAMLResponse"], "RelayState": fresh["RelayState"]}
    )
    assert spliced.status_code == 401 and spliced.json()["code"] == "saml_in_response_to_mismatch"
    # An IdP (or a relay) answering a new request with an assertion already used.
    reused = _saml_form(app_client, saml_org_a, assertion_id=used_assertion_id)
    resp = app_client.post(SAML_ACS, data=reused)
    assert resp.status_code == 401 and resp.json()["code"] == "saml_assertion_replayed"


def test_relay_states_not_issued_by_us_are_refused(app_client, saml_org_a):
    saml_org_a.login_as = {"name_id": "saml-vic", "attributes": {"email": "vic@org_a.test"}}
    fields = _saml_form(app_client, saml_org_a)
    for relay_state in ("made-up", "x" * 200):
        resp = app_client.post(SAML_ACS, data=fields | {"RelayState": relay_state})
        assert resp.status_code == 400 and resp.json()["code"] == "saml_relay_state_invalid"
    resp = app_client.post(SAML_ACS, data={"SAMLResponse": fields["SAMLResponse"]})
    assert resp.status_code == 400 and "RelayState" in resp.json()["message"]
    # A RelayState of org_a's login posted to another organization's ACS.
    resp = app_client.post(f"{V1}/auth/saml/org_b/acs", data=fields)
    assert resp.status_code == 400 and resp.json()["code"] == "saml_relay_state_invalid"
    assert "vic@org_a.test" not in _saml_users(app_client)


def test_malformed_and_hostile_saml_documents_get_4xx_never_500(app_client, saml_org_a):
    billion_laughs = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><samlp:Response xmlns:samlp='
        '"urn:oasis:names:tc:SAML:2.0:protocol">&c;</samlp:Response>'
    )
    external_entity = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&x;</samlp:Response>'
    )
    bodies = [
        "not base64 at all!",
        base64.b64encode(b"<not-closed").decode(),
        base64.b64encode(billion_laughs.encode()).decode(),
        base64.b64encode(external_entity.encode()).decode(),
        base64.b64encode(b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"/>').decode(),
    ]
    for body in bodies:
        fields = _saml_form(app_client, saml_org_a)
        resp = app_client.post(SAML_ACS, data={"SAMLResponse": body, "RelayState": fields["RelayState"]})
        assert 400 <= resp.status_code < 500, (body[:40], resp.status_code, resp.text)
        assert resp.json()["code"].startswith("saml_"), resp.text
    too_big = app_client.post(SAML_ACS, data={"SAMLResponse": "A" * (600 * 1024), "RelayState": "r"})
    assert too_big.status_code == 413


# --- alg confusion between HS256 and RS256 -----------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(state, **extra) -> dict:
    now = int(time.time())
    return {
        "iss": state.token_keys.issuer,
        "aud": state.token_keys.audience,
        "sub": "attacker",
        "org": "org_a",
        "role": "admin",
        "fam": "forged",
        "typ": "access",
        "iat": now,
        "exp": now + 300,
    } | extra


def _refused(client, token: str) -> bool:
    resp = client.get(f"{V1}/users", headers={"Authorization": f"Bearer {token}"})
    return resp.status_code == 401


def test_alg_confusion_between_the_token_formats_is_refused(app_client):
    import hashlib
    import hmac

    client = app_client
    state = client.app.state.api
    key = state.token_keys.signing_key()
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_json = json.dumps(key.public_jwk).encode()

    def hs256_with(secret: bytes, header: dict, claims: dict) -> str:
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    claims = _claims(state)
    forged = [
        # The published RSA public key (PEM, JWK) used as an HMAC secret, with and without our kid.
        hs256_with(public_pem, {"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims),
        hs256_with(public_pem, {"alg": "HS256", "typ": "JWT"}, claims),
        hs256_with(jwk_json, {"alg": "HS256", "kid": key.kid}, claims),
        # alg none, and algorithms we never sign with.
        f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(claims).encode())}.",
        hs256_with(state.jwt_secret.encode(), {"alg": "HS512"}, claims),
        # A valid HS256 signature with the old secret, but issued after the switch to RS256.
        jwt.encode(_claims(state, aud=None) | {"iat": int(time.time())}, state.jwt_secret, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims.items() if k not in ("aud", "iss")}, state.jwt_secret, algorithm="HS256"),
    ]
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    forged += [
        # RS256 signed by another key, claiming our kid, an unknown kid, or embedding its own key.
        jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": key.kid}),
        jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": "unknown-kid"}),
        jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": key.kid, "jwk": attacker_jwk}),
        # Our key, but without a kid, or for another audience.
        jwt.encode(claims, key.private_key, algorithm="RS256"),
        jwt.encode(claims | {"aud": "another-api"}, key.private_key, algorithm="RS256", headers={"kid": key.kid}),
    ]
    assert [_refused(client, t) for t in forged] == [True] * len(forged)
    # The control: the same claims properly signed are accepted as far as the signature goes (the family is
    # unknown, so the caller is still refused, but as an unknown session rather than an invalid token).
    genuine = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})
    assert state.token_keys.claims_of(genuine) is not None
    assert all(state.token_keys.claims_of(t) is None for t in forged)


# --- second factors and SSO state (OIDC and SAML) are out of the API role's reach ------------------------
def test_mfa_secrets_and_sso_state_are_readable_only_through_definer_functions(app_client):
    from psycopg import errors

    state = app_client.app.state.api

    async def run(query: str) -> None:
        async with state.pool.connection() as conn:
            await conn.execute(query)

    for table in (
        "user_mfa",
        "mfa_recovery_codes",
        "mfa_challenges",
        "oidc_states",
        "oidc_used_nonces",
        "saml_requests",
        "saml_used_assertions",
        "saml_sessions",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            app_client.portal.call(run, f"SELECT count(*) FROM ops.{table}")
    with pytest.raises(errors.InsufficientPrivilege):
        app_client.portal.call(run, "UPDATE ops.sessions SET revoked_at = NULL")
