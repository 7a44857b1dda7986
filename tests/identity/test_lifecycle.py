"""User lifecycle over the API, against the real app, Postgres and SMTP server: invitations followed from the
e-mail, deactivation, role and password changes (each revoking the user's sessions and keys), forgotten
passwords, and the audit trail of all of it."""

from __future__ import annotations

import threading

from tests.api.conftest import PASSWORD
from tests.identity.conftest import V1, bearer, link_in, login, token_of

NEW_PASSWORD = "Another-Strong-Pass-42"


def _admin(client, org: str = "org_life") -> dict:
    resp = login(client, f"admin@{org}.test")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _audit_actions(client, admin_tokens, target: str | None = None) -> list[str]:
    rows = client.get(f"{V1}/audit", params={"limit": 1000}, headers=bearer(admin_tokens)).json()
    return [r["action"] for r in rows if target is None or r["target"] == target]


def _invite_and_accept(client, inbox, admin_tokens, email: str, role: str) -> dict:
    resp = client.post(f"{V1}/users/invitations", json={"email": email, "role": role}, headers=bearer(admin_tokens))
    assert resp.status_code == 201, resp.text
    link = link_in(inbox.wait_for(email, "invited"))
    resp = client.post(f"{V1}/auth/invitations/accept", json={"token": token_of(link), "password": PASSWORD})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_invitation_link_from_the_email_creates_the_account_once(client, identity_inbox):
    inbox, _ = identity_inbox
    admin = _admin(client)
    resp = client.post(
        f"{V1}/users/invitations", json={"email": "New.Analyst@org_life.test", "role": "analyst"}, headers=bearer(admin)
    )
    assert resp.status_code == 201, resp.text
    invitation = resp.json()
    assert invitation["email"] == "new.analyst@org_life.test" and invitation["role"] == "analyst"
    message = inbox.wait_for("new.analyst@org_life.test", "invited")
    link = link_in(message)
    assert link.startswith(f"{V1}/auth/invitations/accept?token=")

    # Following the link shows what it is for, without using it.
    info = client.get(link)
    assert info.status_code == 200 and info.json()["org_id"] == "org_life" and info.json()["role"] == "analyst"
    weak = client.post(f"{V1}/auth/invitations/accept", json={"token": token_of(link), "password": "short"})
    assert weak.status_code == 422 and weak.json()["code"] == "weak_password"
    accepted = client.post(f"{V1}/auth/invitations/accept", json={"token": token_of(link), "password": PASSWORD})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["role"] == "analyst" and accepted.json()["org_id"] == "org_life"
    assert login(client, "new.analyst@org_life.test").status_code == 200

    reused = client.post(f"{V1}/auth/invitations/accept", json={"token": token_of(link), "password": PASSWORD})
    assert reused.status_code == 400 and reused.json()["code"] == "link_used"
    assert client.get(link).json()["code"] == "link_used"
    listed = client.get(f"{V1}/users/invitations", headers=bearer(admin)).json()
    assert any(i["invitation_id"] == invitation["invitation_id"] and i["used_at"] for i in listed)
    actions = _audit_actions(client, admin)
    assert "user.invite" in actions and "invitation.accept" in actions


def test_expired_and_withdrawn_invitations_are_refused(client, identity_inbox, identity_settings):
    from infra import db

    inbox, _ = identity_inbox
    admin = _admin(client)
    first = client.post(
        f"{V1}/users/invitations", json={"email": "late@org_life.test", "role": "viewer"}, headers=bearer(admin)
    ).json()
    link = link_in(inbox.wait_for("late@org_life.test", "invited"))
    with db.connect(identity_settings.database_url) as conn:
        conn.execute(
            "UPDATE ops.user_tokens SET expires_at = now() - interval '1 minute' WHERE token_id = %s",
            (first["invitation_id"],),
        )
    resp = client.post(f"{V1}/auth/invitations/accept", json={"token": token_of(link), "password": PASSWORD})
    assert resp.status_code == 400 and resp.json()["code"] == "link_expired"

    # A new invitation withdraws the pending one of the same address; an admin can withdraw one too.
    client.post(
        f"{V1}/users/invitations", json={"email": "late@org_life.test", "role": "viewer"}, headers=bearer(admin)
    )
    second_link = link_in(inbox.wait_for("late@org_life.test", "invited"))
    third = client.post(
        f"{V1}/users/invitations", json={"email": "late@org_life.test", "role": "trader"}, headers=bearer(admin)
    ).json()
    resp = client.post(f"{V1}/auth/invitations/accept", json={"token": token_of(second_link), "password": PASSWORD})
    assert resp.status_code == 400 and resp.json()["code"] == "link_revoked"
    assert client.delete(f"{V1}/users/invitations/{third['invitation_id']}", headers=bearer(admin)).status_code == 200
    resp = client.post(f"{V1}/auth/invitations/accept", json={"token": "not-a-real-token", "password": PASSWORD})
    assert resp.status_code == 400 and resp.json()["code"] == "link_invalid"


def test_inviting_an_existing_user_conflicts_and_non_admins_cannot_invite(client):
    admin = _admin(client)
    resp = client.post(
        f"{V1}/users/invitations", json={"email": "admin@org_life.test", "role": "viewer"}, headers=bearer(admin)
    )
    assert resp.status_code == 409
    viewer = login(client, "viewer@org_a.test").json()
    resp = client.post(
        f"{V1}/users/invitations", json={"email": "x@org_a.test", "role": "admin"}, headers=bearer(viewer)
    )
    assert resp.status_code == 403


def test_deactivation_revokes_sessions_and_keys_and_reactivation_restores_login(client, identity_inbox):
    inbox, _ = identity_inbox
    admin = _admin(client)
    user = _invite_and_accept(client, inbox, admin, "ops.admin@org_life.test", "admin")
    tokens = login(client, "ops.admin@org_life.test").json()
    key = client.post(f"{V1}/api-keys", json={"name": "script", "role": "viewer"}, headers=bearer(tokens)).json()
    assert client.get(f"{V1}/zones", headers={"X-API-Key": key["api_key"]}).status_code == 200

    resp = client.post(f"{V1}/users/{user['user_id']}/deactivate", headers=bearer(admin))
    assert resp.status_code == 200 and resp.json()["is_active"] is False
    assert client.get(f"{V1}/zones", headers=bearer(tokens)).json()["code"] == "token_revoked"
    assert client.get(f"{V1}/zones", headers={"X-API-Key": key["api_key"]}).status_code == 401
    assert client.post(f"{V1}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    assert login(client, "ops.admin@org_life.test").status_code == 401

    assert client.post(f"{V1}/users/{user['user_id']}/reactivate", headers=bearer(admin)).json()["is_active"]
    assert login(client, "ops.admin@org_life.test").status_code == 200
    # Nothing revoked comes back.
    assert client.get(f"{V1}/zones", headers={"X-API-Key": key["api_key"]}).status_code == 401
    actions = _audit_actions(client, admin, user["user_id"])
    assert {"user.deactivate", "user.reactivate"} <= set(actions)
    me = next(u for u in client.get(f"{V1}/users", headers=bearer(admin)).json() if u["user_id"] == admin_id(client))
    resp = client.post(f"{V1}/users/{me['user_id']}/deactivate", headers=bearer(admin))
    assert resp.status_code == 409


def admin_id(client) -> str:
    from tests.identity.conftest import login as _login

    tokens = _login(client, "admin@org_life.test").json()
    import jwt

    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["sub"]


def test_role_change_revokes_the_users_tokens_and_the_new_login_carries_the_role(client, identity_inbox):
    import jwt

    inbox, _ = identity_inbox
    admin = _admin(client)
    user = _invite_and_accept(client, inbox, admin, "promoted@org_life.test", "viewer")
    tokens = login(client, "promoted@org_life.test").json()
    assert client.get(f"{V1}/assets", headers=bearer(tokens)).status_code == 403

    resp = client.patch(f"{V1}/users/{user['user_id']}", json={"role": "trader"}, headers=bearer(admin))
    assert resp.status_code == 200 and resp.json()["role"] == "trader"
    assert client.get(f"{V1}/zones", headers=bearer(tokens)).json()["code"] == "token_revoked"
    fresh = login(client, "promoted@org_life.test").json()
    assert jwt.decode(fresh["access_token"], options={"verify_signature": False})["role"] == "trader"
    bad = client.patch(f"{V1}/users/{user['user_id']}", json={"role": "owner"}, headers=bearer(admin))
    assert bad.status_code == 422
    assert "user.role_change" in _audit_actions(client, admin, user["user_id"])


def test_password_change_needs_the_current_password_and_revokes_every_other_session(client, identity_inbox):
    inbox, _ = identity_inbox
    admin = _admin(client)
    _invite_and_accept(client, inbox, admin, "changer@org_life.test", "analyst")
    other = login(client, "changer@org_life.test", address="198.51.100.7").json()
    mine = login(client, "changer@org_life.test").json()

    wrong = client.post(
        f"{V1}/auth/password",
        json={"current_password": "Wrong-Password-123", "new_password": NEW_PASSWORD},
        headers=bearer(mine),
    )
    assert wrong.status_code == 401
    weak = client.post(
        f"{V1}/auth/password", json={"current_password": PASSWORD, "new_password": "weak"}, headers=bearer(mine)
    )
    assert weak.status_code == 422
    changed = client.post(
        f"{V1}/auth/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=bearer(mine)
    )
    assert changed.status_code == 200, changed.text
    assert client.get(f"{V1}/zones", headers=bearer(changed.json())).status_code == 200
    for old in (other, mine):
        assert client.get(f"{V1}/zones", headers=bearer(old)).status_code == 401
        assert client.post(f"{V1}/auth/refresh", json={"refresh_token": old["refresh_token"]}).status_code == 401
    assert login(client, "changer@org_life.test").status_code == 401
    assert login(client, "changer@org_life.test", NEW_PASSWORD).status_code == 200


def test_forgotten_password_is_reset_through_the_emailed_link_once(client, identity_inbox, identity_settings):
    from infra import db
    from serving_api import security

    inbox, _ = identity_inbox
    admin = _admin(client)
    _invite_and_accept(client, inbox, admin, "forgetful@org_life.test", "viewer")
    session = login(client, "forgetful@org_life.test").json()

    resp = client.post(f"{V1}/auth/password/forgot", json={"email": "Forgetful@org_life.test"})
    assert resp.status_code == 202
    unknown = client.post(f"{V1}/auth/password/forgot", json={"email": "nobody@org_life.test"})
    assert unknown.status_code == 202 and unknown.json() == resp.json()
    link = link_in(inbox.wait_for("forgetful@org_life.test", "Reset"))
    assert inbox.count_to("nobody@org_life.test") == 0
    assert client.get(link).json()["email"] == "forgetful@org_life.test"

    reset = client.post(f"{V1}/auth/password/reset", json={"token": token_of(link), "new_password": NEW_PASSWORD})
    assert reset.status_code == 200, reset.text
    assert client.get(f"{V1}/zones", headers=bearer(session)).status_code == 401
    assert login(client, "forgetful@org_life.test", NEW_PASSWORD).status_code == 200
    again = client.post(f"{V1}/auth/password/reset", json={"token": token_of(link), "new_password": PASSWORD})
    assert again.status_code == 400 and again.json()["code"] == "link_used"

    inbox.messages.clear()
    client.post(f"{V1}/auth/password/forgot", json={"email": "forgetful@org_life.test"})
    late = link_in(inbox.wait_for("forgetful@org_life.test", "Reset"))
    # Two reset e-mails per account per minute at most: the third request is answered alike but sends nothing.
    third = client.post(f"{V1}/auth/password/forgot", json={"email": "forgetful@org_life.test"})
    assert third.status_code == 202
    assert inbox.count_to("forgetful@org_life.test") == 1
    with db.connect(identity_settings.database_url) as conn:
        conn.execute(
            "UPDATE ops.user_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
            (security.token_digest(token_of(late)),),
        )
    expired = client.post(f"{V1}/auth/password/reset", json={"token": token_of(late), "new_password": PASSWORD})
    assert expired.status_code == 400 and expired.json()["code"] == "link_expired"
    assert "user.password_reset" in _audit_actions(client, admin)


def test_two_concurrent_acceptances_of_one_invitation_create_one_account(client, identity_inbox):
    inbox, _ = identity_inbox
    admin = _admin(client)
    client.post(
        f"{V1}/users/invitations", json={"email": "racer@org_life.test", "role": "viewer"}, headers=bearer(admin)
    )
    token = token_of(link_in(inbox.wait_for("racer@org_life.test", "invited")))
    statuses: list[int] = []

    def accept() -> None:
        resp = client.post(f"{V1}/auth/invitations/accept", json={"token": token, "password": PASSWORD})
        statuses.append(resp.status_code)

    threads = [threading.Thread(target=accept) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 400, 400, 400]
