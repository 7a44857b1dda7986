"""`optibid auth rotate-keys` and `optibid users deactivate`, through the real CLI."""

from __future__ import annotations

import jwt
from typer.testing import CliRunner

from app.cli import app
from tests.identity.conftest import V1, bearer, login


def test_rotate_keys_makes_a_new_key_sign_while_the_old_one_still_verifies(client, identity_settings, monkeypatch):
    from infra.settings import get_settings

    state = client.app.state.api
    before = login(client, "viewer@org_b.test").json()
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    monkeypatch.setenv("OPTIBID_HOME", str(identity_settings.home))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["auth", "rotate-keys"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    new_kid = result.output.split()[3].rstrip(";")
    state.token_keys.reload()
    after = login(client, "viewer@org_b.test").json()
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new_kid != old_kid
    assert {new_kid, old_kid} <= {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}
    assert client.get(f"{V1}/zones", headers=bearer(before)).status_code == 200
    assert client.get(f"{V1}/zones", headers=bearer(after)).status_code == 200


def test_users_deactivate_revokes_the_sessions_of_the_user(client, identity_database, monkeypatch):
    from infra.settings import get_settings
    from serving_api import cli

    cli.create_user(identity_database, "org_life", "leaver@org_life.test", "analyst", "Correct-Horse-Battery-9")
    tokens = login(client, "leaver@org_life.test").json()
    monkeypatch.setenv("OPTIBID_DATABASE_URL", identity_database)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["users", "deactivate", "Leaver@org_life.test"])
        missing = CliRunner().invoke(app, ["users", "deactivate", "nobody@org_life.test"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0 and "1 sessions and keys revoked" in result.output, result.output
    assert missing.exit_code == 1
    assert client.get(f"{V1}/zones", headers=bearer(tokens)).status_code == 401
    assert login(client, "leaver@org_life.test").status_code == 401
