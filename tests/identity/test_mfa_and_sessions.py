"""TOTP MFA (enrolment, the two-step login, recovery codes, an organization requiring it) and sessions
(the caller's list with device and address, revoking one, absolute and idle timeouts)."""

from __future__ import annotations

from serving_api import security
from tests.identity.conftest import V1, bearer, current_totp, login, totp_step_now


def _enrol(client, tokens: dict) -> tuple[str, list[str], int]:
    """Enrols the caller; returns the secret, the recovery codes and the step whose code confirmed it."""
    setup = client.post(f"{V1}/auth/mfa/setup", headers=bearer(tokens))
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    assert setup.json()["otpauth_uri"].startswith("otpauth://totp/OptiBid:")
    wrong = client.post(f"{V1}/auth/mfa/confirm", json={"code": "000000"}, headers=bearer(tokens))
    assert wrong.status_code == 401
    step = totp_step_now()
    code = security.totp_code(secret, step)
    confirmed = client.post(f"{V1}/auth/mfa/confirm", json={"code": code}, headers=bearer(tokens))
    assert confirmed.status_code == 200, confirmed.text
    codes = confirmed.json()["recovery_codes"]
    assert len(codes) == security.RECOVERY_CODE_COUNT and len(set(codes)) == len(codes)
    return secret, codes, step


def test_login_becomes_two_steps_once_mfa_is_on(client):
    tokens = login(client, "analyst@org_b.test").json()
    secret, codes, step = _enrol(client, tokens)
    again = client.post(f"{V1}/auth/mfa/setup", headers=bearer(tokens))
    assert again.status_code == 409

    first = login(client, "analyst@org_b.test")
    assert first.status_code == 200 and first.json()["mfa_required"] is True
    assert "access_token" not in first.json() and first.json()["enrollment_required"] is False
    challenge = first.json()["mfa_token"]
    bad = client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": "123456"})
    assert bad.status_code == 401 and bad.json()["code"] == "invalid_mfa_code"
    # The code of the step already used to confirm enrolment is not accepted again; the next step's is.
    enrolment_code = security.totp_code(secret, step)
    replay = client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": enrolment_code})
    assert replay.status_code == 401
    next_code = security.totp_code(secret, step + 1)
    ok = client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": next_code})
    assert ok.status_code == 200, ok.text
    assert client.get(f"{V1}/zones", headers=bearer(ok.json())).status_code == 200
    used = client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": next_code})
    assert used.status_code == 401

    # A recovery code works once.
    challenge = login(client, "analyst@org_b.test").json()["mfa_token"]
    ok = client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": codes[0]})
    assert ok.status_code == 200, ok.text
    challenge = login(client, "analyst@org_b.test").json()["mfa_token"]
    assert client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": codes[0]}).status_code == 401
    assert client.post(f"{V1}/auth/mfa/verify", json={"mfa_token": challenge, "code": codes[1]}).status_code == 200

    # Turning it off needs a code; then one step again.
    session = ok.json()
    off = client.post(f"{V1}/auth/mfa/disable", json={"code": codes[2]}, headers=bearer(session))
    assert off.status_code == 200, off.text
    assert "access_token" in login(client, "analyst@org_b.test").json()


def test_an_organization_requiring_mfa_enrols_its_users_at_login(client):
    admin = login(client, "admin@org_mfa.test").json()
    policy = {"mfa_required": True, "session_absolute_seconds": 86400, "session_idle_seconds": 3600}
    resp = client.put(f"{V1}/identity-policy", json=policy, headers=bearer(admin))
    assert resp.status_code == 200 and client.get(f"{V1}/identity-policy", headers=bearer(admin)).json() == policy
    bad = client.put(f"{V1}/identity-policy", json=policy | {"session_idle_seconds": 90000}, headers=bearer(admin))
    assert bad.status_code == 422

    step = login(client, "admin@org_mfa.test").json()
    assert step["mfa_required"] and step["enrollment_required"]
    # The MFA token is not an access token.
    assert client.get(f"{V1}/zones", headers={"Authorization": f"Bearer {step['mfa_token']}"}).status_code == 401
    enrol = client.post(f"{V1}/auth/mfa/enroll", json={"mfa_token": step["mfa_token"]})
    assert enrol.status_code == 200, enrol.text
    done = client.post(
        f"{V1}/auth/mfa/verify", json={"mfa_token": step["mfa_token"], "code": current_totp(enrol.json()["secret"])}
    )
    assert done.status_code == 200, done.text
    assert len(done.json()["recovery_codes"]) == security.RECOVERY_CODE_COUNT
    tokens = done.json()
    off = client.post(f"{V1}/auth/mfa/disable", json={"code": done.json()["recovery_codes"][0]}, headers=bearer(tokens))
    assert off.status_code == 409 and off.json()["code"] == "mfa_required"
    actions = [r["action"] for r in client.get(f"{V1}/audit", headers=bearer(tokens)).json()]
    assert {"identity_policy.update", "mfa.enable", "mfa.success"} <= set(actions)


def test_the_caller_lists_and_revokes_their_sessions(client):
    laptop = login(client, "trader@org_b.test", address="198.51.100.20", **{"User-Agent": "Laptop/1.0"}).json()
    phone = login(client, "trader@org_b.test", address="198.51.100.21", **{"User-Agent": "Phone/2.0"}).json()
    sessions = client.get(f"{V1}/auth/sessions", headers=bearer(laptop))
    assert sessions.status_code == 200, sessions.text
    by_device = {s["device"]: s for s in sessions.json()}
    assert by_device["Laptop/1.0"]["current"] and not by_device["Phone/2.0"]["current"]
    assert by_device["Phone/2.0"]["ip"] == "198.51.100.21" and by_device["Laptop/1.0"]["last_used_at"]

    phone_id = by_device["Phone/2.0"]["session_id"]
    assert client.delete(f"{V1}/auth/sessions/{phone_id}", headers=bearer(laptop)).status_code == 200
    assert client.get(f"{V1}/zones", headers=bearer(phone)).json()["code"] == "token_revoked"
    assert client.post(f"{V1}/auth/refresh", json={"refresh_token": phone["refresh_token"]}).status_code == 401
    assert phone_id not in {s["session_id"] for s in client.get(f"{V1}/auth/sessions", headers=bearer(laptop)).json()}
    # Another user's session is not the caller's to revoke.
    other = login(client, "viewer@org_b.test").json()
    other_id = client.get(f"{V1}/auth/sessions", headers=bearer(other)).json()[0]["session_id"]
    assert client.delete(f"{V1}/auth/sessions/{other_id}", headers=bearer(laptop)).status_code == 404
    # API keys have no sessions.
    key = client.post(
        f"{V1}/api-keys", json={"name": "k", "role": "viewer"}, headers=bearer(login(client, "admin@org_b.test").json())
    )
    assert client.get(f"{V1}/auth/sessions", headers={"X-API-Key": key.json()["api_key"]}).status_code == 403


def test_idle_and_absolute_timeouts_end_sessions(client, identity_settings):
    from infra import db

    idle = login(client, "viewer@org_a.test", address="198.51.100.30").json()
    old = login(client, "viewer@org_a.test", address="198.51.100.31").json()
    assert client.get(f"{V1}/zones", headers=bearer(idle)).status_code == 200
    with db.connect(identity_settings.database_url) as conn:
        conn.execute(
            """UPDATE ops.sessions SET last_used_at = now() - make_interval(secs => idle_seconds + 1)
               WHERE family_id = (SELECT family_id FROM ops.refresh_tokens WHERE token_hash = %s)""",
            (security.token_digest(idle["refresh_token"]),),
        )
        conn.execute(
            """UPDATE ops.sessions SET absolute_expires_at = now() - interval '1 second'
               WHERE family_id = (SELECT family_id FROM ops.refresh_tokens WHERE token_hash = %s)""",
            (security.token_digest(old["refresh_token"]),),
        )
    resp = client.get(f"{V1}/zones", headers=bearer(idle))
    # session_expired from the route; token_revoked when the cached-read fast path found the session ended
    assert resp.status_code == 401 and resp.json()["code"] in ("session_expired", "token_revoked")
    assert client.post(f"{V1}/auth/refresh", json={"refresh_token": idle["refresh_token"]}).status_code == 401
    resp = client.post(f"{V1}/auth/refresh", json={"refresh_token": old["refresh_token"]})
    assert resp.status_code == 401 and resp.json()["code"] == "session_expired"
    assert client.get(f"{V1}/zones", headers=bearer(old)).status_code == 401
    assert client.get(f"{V1}/zones", headers=bearer(login(client, "viewer@org_a.test").json())).status_code == 200


def test_access_tokens_never_outlive_their_session(client):
    import jwt

    admin = login(client, "admin@org_life.test").json()
    policy = {"mfa_required": False, "session_absolute_seconds": 600, "session_idle_seconds": 300}
    assert client.put(f"{V1}/identity-policy", json=policy, headers=bearer(admin)).status_code == 200
    tokens = login(client, "admin@org_life.test").json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= 600 and tokens["expires_in"] <= 600
    default = {"mfa_required": False, "session_absolute_seconds": 604800, "session_idle_seconds": 28800}
    assert client.put(f"{V1}/identity-policy", json=default, headers=bearer(tokens)).status_code == 200
