"""OIDC single sign-on against a real provider on 127.0.0.1 (authlib's server components): the code flow with
PKCE, ID-token validation against the provider's JWKS, groups → role, just-in-time provisioning, role
changes from the provider, and logout at both ends."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest

from tests.api.conftest import PASSWORD
from tests.identity.conftest import PUBLIC_URL, V1, bearer, login
from tests.identity.oidc_provider import callback_path

CLIENT_ID = "optibid-org-sso"
REDIRECT_URI = f"{PUBLIC_URL}{V1}/auth/sso/callback"


@pytest.fixture(scope="module")
def sso_admin(client, oidc_provider) -> dict:
    oidc_provider.register_client(CLIENT_ID, "client-secret-of-org-sso", REDIRECT_URI)
    admin = login(client, "admin@org_sso.test").json()
    resp = client.put(
        f"{V1}/oidc-provider",
        json={
            "issuer": oidc_provider.issuer,
            "client_id": CLIENT_ID,
            "client_secret": "client-secret-of-org-sso",
            "scopes": "openid email profile groups",
            "group_roles": {"power-traders": "trader", "risk": "analyst", "it-admins": "admin"},
            "default_role": None,
            "jit_provisioning": True,
        },
        headers=bearer(admin),
    )
    assert resp.status_code == 200, resp.text
    return admin


def sso_login(client, provider, org: str = "org_sso"):
    """(authorization request query, callback response) of one browser round trip."""
    start = client.get(f"{V1}/auth/sso/{org}/login", follow_redirects=False)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(provider.issuer + "/authorize?")
    at_provider = httpx.get(location, follow_redirects=False)
    assert at_provider.status_code == 302, at_provider.text
    back = at_provider.headers["location"]
    assert back.startswith(REDIRECT_URI)
    return dict(parse_qsl(urlsplit(location).query)), back, client.get(callback_path(back))


def test_sso_provisions_the_user_with_the_highest_role_of_their_groups(client, oidc_provider, sso_admin):
    oidc_provider.login_as = {"sub": "sso-dana", "email": "Dana@sso.test", "groups": ["risk", "power-traders"]}
    query, _, resp = sso_login(client, oidc_provider)
    assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]
    assert query["redirect_uri"] == REDIRECT_URI and query["client_id"] == CLIENT_ID
    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["org"] == "org_sso" and claims["role"] == "trader"
    assert client.get(f"{V1}/assets", headers=bearer(tokens)).status_code == 200

    users = {u["email"]: u for u in client.get(f"{V1}/users", headers=bearer(sso_admin)).json()}
    assert users["dana@sso.test"]["auth_source"] == "oidc" and users["dana@sso.test"]["role"] == "trader"
    assert login(client, "dana@sso.test", PASSWORD).status_code == 401  # no password: SSO only
    sessions = client.get(f"{V1}/auth/sessions", headers=bearer(tokens)).json()
    assert [s["auth_method"] for s in sessions] == ["oidc"]
    actions = [r["action"] for r in client.get(f"{V1}/audit", headers=bearer(sso_admin)).json()]
    assert {"user.provision", "login.sso", "oidc_provider.update"} <= set(actions)
    shown = client.get(f"{V1}/oidc-provider", headers=bearer(sso_admin)).json()
    assert shown["has_client_secret"] and "client_secret" not in shown and shown["redirect_uri"] == REDIRECT_URI


def test_a_group_change_at_the_provider_changes_the_role_and_ends_older_sessions(client, oidc_provider, sso_admin):
    oidc_provider.login_as = {"sub": "sso-eli", "email": "eli@sso.test", "groups": ["it-admins"]}
    first = sso_login(client, oidc_provider)[2].json()
    assert jwt.decode(first["access_token"], options={"verify_signature": False})["role"] == "admin"
    oidc_provider.login_as = {"sub": "sso-eli", "email": "eli@sso.test", "groups": ["risk"]}
    second = sso_login(client, oidc_provider)[2].json()
    assert jwt.decode(second["access_token"], options={"verify_signature": False})["role"] == "analyst"
    assert client.get(f"{V1}/zones", headers=bearer(first)).json()["code"] == "token_revoked"
    assert client.get(f"{V1}/zones", headers=bearer(second)).status_code == 200


def test_users_without_a_mapped_group_or_an_account_are_refused(client, oidc_provider, sso_admin):
    oidc_provider.login_as = {"sub": "sso-fay", "email": "fay@sso.test", "groups": ["marketing"]}
    resp = sso_login(client, oidc_provider)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_no_role"
    # An e-mail of another organization's account is not taken over.
    oidc_provider.login_as = {"sub": "sso-mallory", "email": "admin@org_a.test", "groups": ["it-admins"]}
    resp = sso_login(client, oidc_provider)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_other_org"
    # Unverified e-mail addresses are not trusted.
    oidc_provider.login_as = {"sub": "sso-u", "email": "u@sso.test", "groups": ["risk"], "email_verified": False}
    resp = sso_login(client, oidc_provider)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_email_unverified"
    assert client.get(f"{V1}/auth/sso/org_life/login", follow_redirects=False).status_code == 404


def test_deactivated_sso_users_cannot_sign_in(client, oidc_provider, sso_admin):
    oidc_provider.login_as = {"sub": "sso-gus", "email": "gus@sso.test", "groups": ["risk"]}
    sso_login(client, oidc_provider)
    users = {u["email"]: u for u in client.get(f"{V1}/users", headers=bearer(sso_admin)).json()}
    resp = client.post(f"{V1}/users/{users['gus@sso.test']['user_id']}/deactivate", headers=bearer(sso_admin))
    assert resp.status_code == 200
    resp = sso_login(client, oidc_provider)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_inactive"


def test_logout_ends_the_session_and_points_to_the_providers_end_session(client, oidc_provider, sso_admin):
    oidc_provider.login_as = {"sub": "sso-hal", "email": "hal@sso.test", "groups": ["risk"]}
    tokens = sso_login(client, oidc_provider)[2].json()
    resp = client.post(f"{V1}/auth/sso/logout", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status_code == 200, resp.text
    url = resp.json()["end_session_url"]
    assert url.startswith(oidc_provider.issuer + "/logout?")
    hint = dict(parse_qsl(urlsplit(url).query))["id_token_hint"]
    assert jwt.decode(hint, options={"verify_signature": False})["sub"] == "sso-hal"
    assert httpx.get(url).status_code == 200 and oidc_provider.end_session_calls[-1]["client_id"] == CLIENT_ID
    assert client.get(f"{V1}/zones", headers=bearer(tokens)).status_code == 401
    assert client.post(f"{V1}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    # A password session's logout has no provider to visit.
    plain = login(client, "viewer@org_b.test").json()
    resp = client.post(f"{V1}/auth/sso/logout", json={"refresh_token": plain["refresh_token"]})
    assert resp.status_code == 200 and resp.json()["end_session_url"] is None


def test_an_unreachable_provider_is_refused_on_save_and_a_clear_503_at_login(client, oidc_provider, sso_admin):
    from tests.identity.oidc_provider import OidcProvider

    admin = sso_admin
    body = client.get(f"{V1}/oidc-provider", headers=bearer(admin)).json()
    dead = {"issuer": "http://127.0.0.1:9", "client_id": CLIENT_ID, "group_roles": body["group_roles"]}
    resp = client.put(f"{V1}/oidc-provider", json=dead, headers=bearer(admin))
    assert resp.status_code == 422 and resp.json()["code"] == "invalid_provider"
    assert client.get(f"{V1}/oidc-provider", headers=bearer(admin)).json()["issuer"] == oidc_provider.issuer

    # A provider that answered when it was saved and is down later.
    short_lived = OidcProvider()
    moved = {"issuer": short_lived.issuer, "client_id": CLIENT_ID, "group_roles": body["group_roles"]}
    assert client.put(f"{V1}/oidc-provider", json=moved, headers=bearer(admin)).status_code == 200
    short_lived.close()
    client.app.state.api.oidc_metadata.clear()  # as after the discovery cache's hour
    try:
        resp = client.get(f"{V1}/auth/sso/org_sso/login", follow_redirects=False)
        assert resp.status_code == 503 and resp.json()["code"] == "identity_provider_error"
    finally:
        restored = {
            "issuer": oidc_provider.issuer,
            "client_id": CLIENT_ID,
            "client_secret": "client-secret-of-org-sso",
            "scopes": "openid email profile groups",
            "group_roles": body["group_roles"],
        }
        assert client.put(f"{V1}/oidc-provider", json=restored, headers=bearer(admin)).status_code == 200
