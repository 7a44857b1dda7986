"""Asymmetric access tokens: RS256 with a key id, a JWKS other services verify with, `aud` checked on every
request, key rotation with an overlap window, and the end of HS256 tokens after the rotation window."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.identity.conftest import V1, bearer, login


def test_tokens_are_rs256_with_a_kid_that_the_jwks_verifies(client, identity_settings):
    tokens = login(client, "viewer@org_b.test").json()
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "RS256" and header["kid"]
    resp = client.get("/.well-known/jwks.json")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/jwk-set+json")
    keys = {k["kid"]: k for k in resp.json()["keys"]}
    assert header["kid"] in keys and all("d" not in k for k in keys.values())  # public halves only
    # What another service does: verify with the published key, its audience and issuer.
    public = jwt.PyJWK.from_dict(keys[header["kid"]]).key
    claims = jwt.decode(
        tokens["access_token"], public, algorithms=["RS256"], audience="optibid-api", issuer="http://testserver"
    )
    assert claims["org"] == "org_b" and claims["role"] == "viewer"


def test_a_token_for_another_audience_is_refused(client):
    state = client.app.state.api
    keys = state.token_keys
    key = keys.signing_key()
    now = int(time.time())
    claims = {
        "iss": keys.issuer,
        "aud": "some-other-service",
        "sub": "u",
        "org": "org_a",
        "role": "admin",
        "fam": "f",
        "typ": "access",
        "iat": now,
        "exp": now + 60,
    }
    token = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})
    resp = client.get(f"{V1}/zones", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_token"


def test_rotation_keeps_old_tokens_valid_for_the_overlap_then_drops_the_old_key(tmp_path):
    from serving_api.token_keys import HomeKeyring, TokenKeys

    now = time.time()
    ring = HomeKeyring(tmp_path / "jwt_keys", rotation_seconds=30 * 86400, overlap_seconds=1000)
    old_kid = ring.rotate(now=now - 500)  # the first key, 500 s old
    keys = TokenKeys(
        audience="a", issuer="i", legacy_secret="s", configured_pem=None, home_keyring=ring, overlap_seconds=1000
    )
    old_token, _ = keys.issue(user_id="u", org_id="o", role="viewer", family_id="f")
    assert jwt.get_unverified_header(old_token)["kid"] == old_kid
    assert oct(next((tmp_path / "jwt_keys").glob("*.pem")).stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "jwt_keys").stat().st_mode & 0o777) == "0o700"

    new_kid = ring.rotate(now=now)  # another worker (or `optibid auth rotate-keys`) rotates
    new_token, _ = keys.issue(user_id="u", org_id="o", role="viewer", family_id="f")
    assert jwt.get_unverified_header(new_token)["kid"] == old_kid  # this worker has not looked yet
    assert keys.claims_of(old_token) is not None
    time.sleep(1.01)
    keys.reload()
    newer, _ = keys.issue(user_id="u", org_id="o", role="viewer", family_id="f")
    assert jwt.get_unverified_header(newer)["kid"] == new_kid
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old_kid, new_kid}
    assert keys.claims_of(old_token) is not None and keys.claims_of(newer) is not None

    # The overlap ends: the old key leaves the JWKS and the disk, and its tokens stop verifying.
    remaining = ring.load(now=now + 1001)
    assert [k.kid for k in remaining] == [new_kid]
    assert not any(old_kid in p.name for p in (tmp_path / "jwt_keys").glob("*.pem"))
    time.sleep(1.01)
    keys.reload()
    assert old_kid not in {k["kid"] for k in keys.jwks()["keys"]}
    assert keys.claims_of(old_token) is None and keys.claims_of(newer) is not None


def test_configured_keys_sign_with_the_first_and_verify_with_all(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from serving_api.token_keys import TokenKeys, keys_from_pem_bundle

    pems = [
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
        for _ in range(2)
    ]
    previous = TokenKeys(
        audience="a", issuer="i", legacy_secret="s", configured_pem=pems[1], home_keyring=None, overlap_seconds=1000
    )
    old_token, _ = previous.issue(user_id="u", org_id="o", role="viewer", family_id="f")
    rotated = TokenKeys(
        audience="a",
        issuer="i",
        legacy_secret="s",
        configured_pem="\n".join(pems),
        home_keyring=None,
        overlap_seconds=1000,
    )
    new_token, _ = rotated.issue(user_id="u", org_id="o", role="viewer", family_id="f")
    assert jwt.get_unverified_header(new_token)["kid"] == keys_from_pem_bundle(pems[0])[0].kid
    assert rotated.claims_of(old_token) is not None and rotated.claims_of(new_token) is not None
    with pytest.raises(ValueError, match="OPTIBID_JWT_PRIVATE_KEYS"):
        keys_from_pem_bundle("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----")


def test_hs256_tokens_are_accepted_only_from_before_the_switch_and_only_during_the_window(client):
    state = client.app.state.api
    keys = state.token_keys
    since = keys.legacy_issued_before
    assert since > 0 and keys.legacy_until == since + state.settings.jwt_key_overlap_seconds
    user = login(client, "viewer@org_a.test").json()
    fam = jwt.decode(user["access_token"], options={"verify_signature": False})["fam"]

    def legacy(iat: float) -> str:
        claims = {
            "sub": "u",
            "org": "org_a",
            "role": "viewer",
            "fam": fam,
            "typ": "access",
            "iat": int(iat),
            "exp": int(time.time()) + 300,
            "jti": "x",
        }
        return jwt.encode(claims, state.jwt_secret, algorithm="HS256")

    before = legacy(since - 60)
    after = legacy(since + 1)
    assert client.get(f"{V1}/zones", headers={"Authorization": f"Bearer {before}"}).status_code == 200
    assert client.get(f"{V1}/zones", headers={"Authorization": f"Bearer {after}"}).status_code == 401
    try:
        keys.set_legacy_window(time.time() - state.settings.jwt_key_overlap_seconds - 1)
        state.access_claims.clear()  # verified tokens are remembered; a new process would not know this one
        stale = legacy(keys.legacy_issued_before - 60)
        assert client.get(f"{V1}/zones", headers={"Authorization": f"Bearer {stale}"}).status_code == 401
    finally:
        keys.set_legacy_window(since)
    assert client.get(f"{V1}/zones", headers=bearer(user)).status_code == 200
