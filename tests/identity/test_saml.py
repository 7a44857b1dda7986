"""SAML 2.0 single sign-on against a real IdP on 127.0.0.1 (`tests/identity/saml_idp.py`, responses signed
with xmlsec): SP metadata, the AuthnRequest redirect, the IdP's POST to the ACS, groups → role, just-in-time
provisioning, role changes from the IdP, single logout, and the admin settings."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest
from lxml import etree

from tests.api.conftest import PASSWORD
from tests.identity.conftest import PUBLIC_URL, V1, bearer, login
from tests.identity.saml_idp import NS, decode_redirect, posted_form

ORG = "org_saml"
SP_BASE = f"{PUBLIC_URL}{V1}/auth/saml/{ORG}"
ACS_URL = f"{SP_BASE}/acs"


def provider_settings(idp, **changes) -> dict:
    return {
        "idp_entity_id": idp.entity_id,
        "idp_sso_url": idp.sso_url,
        "idp_slo_url": idp.slo_url,
        "idp_certificate": idp.certificate,
        "email_attribute": "mail",
        "groups_attribute": "memberOf",
        "group_roles": {"power-traders": "trader", "risk": "analyst", "it-admins": "admin"},
        "default_role": None,
        "jit_provisioning": True,
    } | changes


@pytest.fixture(scope="module")
def saml_admin(client, saml_idp) -> dict:
    admin = login(client, f"admin@{ORG}.test").json()
    resp = client.put(f"{V1}/saml-provider", json=provider_settings(saml_idp), headers=bearer(admin))
    assert resp.status_code == 200, resp.text
    return admin


def saml_login(client, idp, org: str = ORG):
    """(redirect to the IdP, the form the IdP's page posts, the ACS response) of one browser round trip."""
    start = client.get(f"{V1}/auth/saml/{org}/login", follow_redirects=False)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(idp.sso_url + "?")
    page = httpx.get(location)
    assert page.status_code == 200, page.text
    action, fields = posted_form(page.text)
    assert action.startswith(PUBLIC_URL)
    return location, fields, client.post(action[len(PUBLIC_URL) :], data=fields)


def _claims(tokens: dict) -> dict:
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})


def test_saml_provisions_the_user_with_the_highest_role_of_their_groups(client, saml_idp, saml_admin):
    saml_idp.login_as = {
        "name_id": "saml-nina",
        "attributes": {"mail": "Nina@saml.test", "memberOf": ["risk", "power-traders"], "displayName": "Nina"},
    }
    location, fields, resp = saml_login(client, saml_idp)
    # The AuthnRequest names us, our ACS and the POST binding; the RelayState is ours and opaque.
    query = dict(parse_qsl(urlsplit(location).query))
    request = decode_redirect(query["SAMLRequest"])
    assert request.tag == "{urn:oasis:names:tc:SAML:2.0:protocol}AuthnRequest"
    assert request.findtext("saml:Issuer", namespaces=NS) == f"{SP_BASE}/metadata"
    assert request.get("AssertionConsumerServiceURL") == ACS_URL and request.get("Destination") == saml_idp.sso_url
    assert request.get("ProtocolBinding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    assert fields["RelayState"] == query["RelayState"] and len(query["RelayState"]) >= 40

    assert resp.status_code == 200, resp.text
    tokens = resp.json()
    assert _claims(tokens)["org"] == ORG and _claims(tokens)["role"] == "trader"
    assert client.get(f"{V1}/assets", headers=bearer(tokens)).status_code == 200
    users = {u["email"]: u for u in client.get(f"{V1}/users", headers=bearer(saml_admin)).json()}
    assert users["nina@saml.test"]["auth_source"] == "saml" and users["nina@saml.test"]["role"] == "trader"
    assert login(client, "nina@saml.test", PASSWORD).status_code == 401  # no password: SSO only
    sessions = client.get(f"{V1}/auth/sessions", headers=bearer(tokens)).json()
    assert [s["auth_method"] for s in sessions] == ["saml"]
    audit = client.get(f"{V1}/audit", headers=bearer(saml_admin)).json()
    actions = {r["action"] for r in audit}
    assert {"user.provision", "login.sso", "saml_provider.update"} <= actions
    sso_login_row = next(r for r in audit if r["action"] == "login.sso")
    assert sso_login_row["details"]["method"] == "saml" and sso_login_row["details"]["issuer"] == saml_idp.entity_id

    # The same person again is the same account (found by NameID), not a second one.
    again = saml_login(client, saml_idp)[2]
    assert again.status_code == 200 and _claims(again.json())["sub"] == _claims(tokens)["sub"]


def test_sp_metadata_and_settings_name_the_addresses_to_register_at_the_idp(client, saml_idp, saml_admin):
    shown = client.get(f"{V1}/saml-provider", headers=bearer(saml_admin)).json()
    assert shown["acs_url"] == ACS_URL and shown["sp_entity_id"] == f"{SP_BASE}/metadata"
    assert shown["metadata_url"] == f"{SP_BASE}/metadata" and shown["login_url"] == f"{SP_BASE}/login"
    assert shown["idp_certificate"].startswith("-----BEGIN CERTIFICATE-----") and shown["idp_certificate_expires_at"]
    resp = client.get(f"{V1}/auth/saml/{ORG}/metadata")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/samlmetadata+xml")
    metadata = etree.fromstring(resp.content)
    md = {"md": "urn:oasis:names:tc:SAML:2.0:metadata"}
    assert metadata.get("entityID") == f"{SP_BASE}/metadata"
    acs = metadata.find("md:SPSSODescriptor/md:AssertionConsumerService", md)
    assert acs.get("Location") == ACS_URL and acs.get("Binding").endswith("HTTP-POST")
    # Organizations without SAML have neither metadata nor a login.
    assert client.get(f"{V1}/auth/saml/org_life/metadata").status_code == 404
    assert client.get(f"{V1}/auth/saml/org_life/login", follow_redirects=False).status_code == 404


def test_a_group_change_at_the_idp_changes_the_role_and_ends_older_sessions(client, saml_idp, saml_admin):
    saml_idp.login_as = {"name_id": "saml-otto", "attributes": {"mail": "otto@saml.test", "memberOf": "it-admins"}}
    first = saml_login(client, saml_idp)[2].json()
    assert _claims(first)["role"] == "admin"
    saml_idp.login_as = {"name_id": "saml-otto", "attributes": {"mail": "otto@saml.test", "memberOf": ["risk"]}}
    second = saml_login(client, saml_idp)[2].json()
    assert _claims(second)["role"] == "analyst"
    assert client.get(f"{V1}/zones", headers=bearer(first)).json()["code"] == "token_revoked"
    assert client.get(f"{V1}/zones", headers=bearer(second)).status_code == 200


def test_users_without_a_mapped_group_an_email_or_an_account_are_refused(client, saml_idp, saml_admin):
    saml_idp.login_as = {"name_id": "saml-pia", "attributes": {"mail": "pia@saml.test", "memberOf": ["marketing"]}}
    resp = saml_login(client, saml_idp)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_no_role"
    saml_idp.login_as = {"name_id": "saml-quin", "attributes": {"memberOf": ["risk"]}}
    resp = saml_login(client, saml_idp)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_no_email"
    # An e-mail of another organization's account is not taken over.
    saml_idp.login_as = {"name_id": "saml-mal", "attributes": {"mail": "admin@org_a.test", "memberOf": "it-admins"}}
    resp = saml_login(client, saml_idp)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_other_org"
    # Without just-in-time provisioning only existing accounts get in; the NameID may be the e-mail address.
    changed = provider_settings(saml_idp, jit_provisioning=False, email_attribute=None)
    assert client.put(f"{V1}/saml-provider", json=changed, headers=bearer(saml_admin)).status_code == 200
    try:
        saml_idp.login_as = {"name_id": "rae@saml.test", "attributes": {"memberOf": ["risk"]}}
        resp = saml_login(client, saml_idp)[2]
        assert resp.status_code == 403 and resp.json()["code"] == "sso_not_provisioned"
        saml_idp.login_as = {"name_id": f"admin@{ORG}.test", "attributes": {"memberOf": ["it-admins"]}}
        resp = saml_login(client, saml_idp)[2]  # the existing password account, now linked to the IdP
        assert resp.status_code == 200, resp.text
    finally:
        restored = provider_settings(saml_idp)
        assert client.put(f"{V1}/saml-provider", json=restored, headers=bearer(saml_admin)).status_code == 200
    users = {u["email"] for u in client.get(f"{V1}/users", headers=bearer(saml_admin)).json()}
    assert not {"pia@saml.test", "rae@saml.test"} & users


def test_deactivated_saml_users_cannot_sign_in(client, saml_idp, saml_admin):
    saml_idp.login_as = {"name_id": "saml-sam", "attributes": {"mail": "sam@saml.test", "memberOf": ["risk"]}}
    assert saml_login(client, saml_idp)[2].status_code == 200
    users = {u["email"]: u for u in client.get(f"{V1}/users", headers=bearer(saml_admin)).json()}
    resp = client.post(f"{V1}/users/{users['sam@saml.test']['user_id']}/deactivate", headers=bearer(saml_admin))
    assert resp.status_code == 200
    resp = saml_login(client, saml_idp)[2]
    assert resp.status_code == 403 and resp.json()["code"] == "sso_inactive"


def test_logout_ends_the_session_and_sends_a_logout_request_to_the_idp(client, saml_idp, saml_admin):
    saml_idp.login_as = {"name_id": "saml-tess", "attributes": {"mail": "tess@saml.test", "memberOf": ["risk"]}}
    tokens = saml_login(client, saml_idp)[2].json()
    resp = client.post(f"{V1}/auth/sso/logout", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status_code == 200, resp.text
    url = resp.json()["end_session_url"]
    assert url.startswith(saml_idp.slo_url + "?")
    assert httpx.get(url).status_code == 200
    logout_request = saml_idp.logout_requests[-1]
    assert logout_request.findtext("saml:NameID", namespaces=NS) == "saml-tess"
    assert logout_request.findtext("samlp:SessionIndex", namespaces=NS).startswith("_s")
    assert logout_request.findtext("saml:Issuer", namespaces=NS) == f"{SP_BASE}/metadata"
    assert client.get(f"{V1}/zones", headers=bearer(tokens)).status_code == 401
    assert client.post(f"{V1}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    # Without an SLO URL, logout ends OptiBid's session only.
    no_slo = provider_settings(saml_idp, idp_slo_url=None)
    assert client.put(f"{V1}/saml-provider", json=no_slo, headers=bearer(saml_admin)).status_code == 200
    try:
        tokens = saml_login(client, saml_idp)[2].json()
        resp = client.post(f"{V1}/auth/sso/logout", json={"refresh_token": tokens["refresh_token"]})
        assert resp.status_code == 200 and resp.json()["end_session_url"] is None
    finally:
        restored = provider_settings(saml_idp)
        assert client.put(f"{V1}/saml-provider", json=restored, headers=bearer(saml_admin)).status_code == 200


def test_saml_settings_are_validated_admin_only_and_per_organization(client, saml_idp, saml_admin):
    bad_cert = provider_settings(saml_idp, idp_certificate="MII" + "A" * 200)
    resp = client.put(f"{V1}/saml-provider", json=bad_cert, headers=bearer(saml_admin))
    assert resp.status_code == 422 and "idp_certificate" in resp.json()["message"]
    bad_url = provider_settings(saml_idp, idp_sso_url="javascript:alert(1)")
    resp = client.put(f"{V1}/saml-provider", json=bad_url, headers=bearer(saml_admin))
    assert resp.status_code == 422 and "idp_sso_url" in resp.text
    # The certificate's base64 body alone (as IdP metadata carries it) is accepted and stored as PEM.
    body_only = "".join(saml_idp.certificate.strip().splitlines()[1:-1])
    resp = client.put(
        f"{V1}/saml-provider", json=provider_settings(saml_idp, idp_certificate=body_only), headers=bearer(saml_admin)
    )
    assert resp.status_code == 200 and resp.json()["idp_certificate"].strip() == saml_idp.certificate.strip()
    viewer = login(client, "viewer@org_a.test").json()
    refused = client.put(f"{V1}/saml-provider", json=provider_settings(saml_idp), headers=bearer(viewer))
    assert refused.status_code == 403
    other_admin = login(client, "admin@org_sso.test").json()
    assert client.get(f"{V1}/saml-provider", headers=bearer(other_admin)).status_code == 404
