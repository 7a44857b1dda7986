"""OIDC single sign-on (authorization code with PKCE), one provider per organization.

`GET /auth/sso/{org_id}/login` redirects the browser to the provider with a single-use `state`, a `nonce`
and an S256 code challenge; `GET /auth/sso/callback` takes the state (once), trades the code and the PKCE
verifier for tokens at the provider's token endpoint, verifies the ID token against the provider's JWKS
(issuer, audience, expiry, nonce; asymmetric algorithms only), reads the groups (ID token, else userinfo),
maps them to a role, finds or provisions the account, and answers with OptiBid tokens. `POST
/auth/sso/logout` ends the OptiBid session and returns the provider's end-session URL (for a SAML session,
the IdP's single-logout URL with a LogoutRequest, built by `routers/saml.py`).

Provider documents (discovery, JWKS) are fetched with bounded time and size and cached
(`oidc_metadata_cache_seconds`); an ID token signed with a `kid` the cached JWKS lacks refetches it once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import jwt
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse
from psycopg.rows import dict_row

from serving_api import identity, security
from serving_api.deps import api_state
from serving_api.errors import ApiError, error_responses
from serving_api.models import API_PREFIX, EndSession, RefreshRequest, TokenResponse
from serving_api.routers import saml
from serving_api.state import ApiState

router = APIRouter(prefix="/auth/sso", tags=["auth"], responses=error_responses(400, 401, 403, 422, 500, 503))
_MAX_DOCUMENT_BYTES = 512 * 1024
_ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class ProviderError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(503, "identity_provider_error", message)


def _redirect_uri(state: ApiState) -> str:
    return f"{state.settings.resolved_public_url}{API_PREFIX}/auth/sso/callback"


async def _fetch_json(state: ApiState, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    timeout = state.options.oidc_http_timeout_seconds
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
            client.stream(method, url, **kwargs) as response,
        ):
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_DOCUMENT_BYTES:
                    raise ProviderError(f"{url}: response larger than {_MAX_DOCUMENT_BYTES} bytes")
            status = response.status_code
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise ProviderError(f"identity provider unreachable ({type(exc).__name__})") from exc
    try:
        document = httpx.Response(status, content=body).json()
    except ValueError as exc:
        raise ProviderError(f"{url}: not JSON (HTTP {status})") from exc
    if status >= 400:
        error = document.get("error") if isinstance(document, dict) else None
        raise ApiError(401, "sso_failed", f"the identity provider refused: {error or f'HTTP {status}'}")
    if not isinstance(document, dict):
        raise ProviderError(f"{url}: not a JSON object")
    return document


async def _cached(state: ApiState, url: str, refresh: bool = False) -> dict[str, Any]:
    cached = state.oidc_metadata.get(url)
    if cached and not refresh and time.monotonic() - cached[0] < state.options.oidc_metadata_cache_seconds:
        return cached[1]
    document = await _fetch_json(state, "GET", url)
    if len(state.oidc_metadata) > 1000:
        state.oidc_metadata.clear()
    state.oidc_metadata[url] = (time.monotonic(), document)
    return document


async def provider_discovery(state: ApiState, issuer: str, refresh: bool = False) -> dict[str, Any]:
    """The issuer's discovery document, checked (cached); ProviderError when it is unusable."""
    doc = await _cached(state, f"{issuer}/.well-known/openid-configuration", refresh=refresh)
    if doc.get("issuer", "").rstrip("/") != issuer:
        raise ProviderError("the provider's discovery document names another issuer")
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(doc.get(key), str):
            raise ProviderError(f"the provider's discovery document lacks {key}")
    return doc


async def _provider(state: ApiState, org_id: str) -> dict[str, Any]:
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT org_id, issuer, client_id, client_secret_enc, scopes, groups_claim, group_roles, default_role,
                      jit_provisioning FROM api_auth.oidc_provider(%s)""",
            (org_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise ApiError(404, "not_found", "single sign-on is not configured for this organization")
    return row


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@router.get(
    "/{org_id}/login",
    status_code=302,
    response_class=RedirectResponse,
    summary="Start single sign-on: redirects to the organization's identity provider",
    responses=error_responses(404),
)
async def sso_login(request: Request, org_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]):
    state = api_state(request)
    provider = await _provider(state, org_id)
    doc = await provider_discovery(state, provider["issuer"])
    login_state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = _pkce_pair()
    assert state.pool is not None
    async with state.pool.connection() as conn:
        await conn.execute(
            "SELECT api_auth.oidc_save_state(%s, %s, %s, %s, %s, %s)",
            (
                security.token_digest(login_state),
                org_id,
                nonce,
                verifier,
                _redirect_uri(state),
                state.options.oidc_state_seconds,
            ),
        )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": provider["client_id"],
            "redirect_uri": _redirect_uri(state),
            "scope": provider["scopes"],
            "state": login_state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    separator = "&" if "?" in doc["authorization_endpoint"] else "?"
    return RedirectResponse(f"{doc['authorization_endpoint']}{separator}{query}", status_code=302)


async def _verified_id_token(state: ApiState, provider: dict, doc: dict, id_token: str, nonce: str) -> dict:
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError as exc:
        raise ApiError(401, "sso_failed", "the provider's ID token is malformed") from exc
    if header.get("alg") not in _ID_TOKEN_ALGORITHMS:
        raise ApiError(401, "sso_failed", "the provider's ID token is not signed with an asymmetric algorithm")
    kid = header.get("kid")
    key = None
    for refresh in (False, True):
        try:
            jwks = jwt.PyJWKSet.from_dict(await _cached(state, doc["jwks_uri"], refresh=refresh))
        except jwt.PyJWTError as exc:
            raise ProviderError("the provider's JWKS is not usable") from exc
        candidates = [k for k in jwks.keys if kid is None or k.key_id == kid]
        if candidates:
            key = candidates[0]
            break
    if key is None:
        raise ApiError(401, "sso_failed", "the ID token's signing key is not in the provider's JWKS")
    try:
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=[header["alg"]],
            audience=provider["client_id"],
            issuer=provider["issuer"],
            leeway=60,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.PyJWTError as exc:
        raise ApiError(401, "sso_failed", f"the provider's ID token is not valid ({exc})") from exc
    if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        raise ApiError(401, "sso_nonce_mismatch", "the ID token's nonce is not this login's")
    return claims


@router.get(
    "/callback",
    response_model=TokenResponse,
    summary="Where the identity provider returns: completes single sign-on and answers with tokens",
)
async def sso_callback(
    request: Request,
    state_param: Annotated[str | None, Query(alias="state", max_length=200)] = None,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> TokenResponse:
    state = api_state(request)
    if not state_param:
        raise ApiError(400, "invalid_input", "state: missing")
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT org_id, nonce, code_verifier, redirect_uri FROM api_auth.oidc_take_state(%s)",
            (security.token_digest(state_param),),
        )
        login = await cur.fetchone()
    if login is None:
        raise ApiError(400, "sso_state_invalid", "state: unknown, expired or already used; start the login again")
    if error:
        raise ApiError(401, "sso_failed", f"the identity provider refused: {error}")
    if not code:
        raise ApiError(400, "invalid_input", "code: missing")
    provider = await _provider(state, login["org_id"])
    doc = await provider_discovery(state, provider["issuer"])
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": login["redirect_uri"],
        "code_verifier": login["code_verifier"],
        "client_id": provider["client_id"],
    }
    auth = None
    if provider["client_secret_enc"]:
        try:
            secret = security.unseal(state.jwt_secret, provider["client_secret_enc"])
        except ValueError as exc:
            raise ProviderError("the stored client secret cannot be decrypted; set it again") from exc
        auth = (provider["client_id"], secret)
    tokens = await _fetch_json(state, "POST", doc["token_endpoint"], data=form, auth=auth)
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise ApiError(401, "sso_failed", "the provider returned no ID token")
    claims = await _verified_id_token(state, provider, doc, id_token, login["nonce"])
    profile = dict(claims)
    if (
        (provider["groups_claim"] not in profile or "email" not in profile)
        and isinstance(doc.get("userinfo_endpoint"), str)
        and isinstance(tokens.get("access_token"), str)
    ):
        info = await _fetch_json(
            state, "GET", doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        if info.get("sub") != claims["sub"]:
            raise ApiError(401, "sso_failed", "the provider's userinfo is about another subject")
        profile = info | profile
    email = identity.sso_email(profile.get("email"))
    if profile.get("email_verified") is False:
        raise ApiError(403, "sso_email_unverified", "the identity provider has not verified this e-mail address")
    who = identity.SsoIdentity(
        org_id=login["org_id"],
        source="oidc",
        subject=str(claims["sub"]),
        email=email,
        groups=profile.get(provider["groups_claim"]),
        provider=provider["issuer"],
    )
    mapping = identity.RoleMapping(
        provider["group_roles"] or {}, provider["default_role"], provider["jit_provisioning"]
    )
    async with state.pool.connection() as conn:
        # The ID token is accepted once, until it expires (a replayed ID token is refused).
        fresh = await (
            await conn.execute(
                "SELECT api_auth.oidc_use_nonce(%s, to_timestamp(%s))", (login["nonce"], float(claims["exp"]) + 60)
            )
        ).fetchone()
        if fresh is None or not fresh[0]:
            raise ApiError(401, "sso_nonce_replayed", "this ID token was already used")
        result, _ = await identity.sso_sign_in(conn, state, request, who, mapping, id_token=id_token)
    return result


@router.post(
    "/logout",
    response_model=EndSession,
    summary="End the session of a refresh token, and get the identity provider's logout URL for SSO sessions "
    "(OIDC end-session or SAML single logout)",
)
async def sso_logout(request: Request, body: RefreshRequest) -> EndSession:
    from serving_api.routers.auth import _audit_session, _revoke_family, _token_row

    state = api_state(request)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        row = await _token_row(conn, body.refresh_token)
        if row is None:
            raise ApiError(401, "invalid_refresh_token", "refresh token is unknown")
        await _revoke_family(conn, state, row["family_id"])
        await _audit_session(conn, row["family_id"], "token.revoke")
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT org_id, auth_method, id_token, name_id, name_id_format, name_id_qualifier, sp_name_qualifier,
                      session_index FROM api_auth.session_sso(%s)""",
            (row["family_id"],),
        )
        session = await cur.fetchone()
    if session is not None and session["auth_method"] == "saml":
        return EndSession(end_session_url=await saml.logout_url(state, session))
    if session is None or not session["id_token"]:
        return EndSession()
    try:
        provider = await _provider(state, session["org_id"])
        doc = await provider_discovery(state, provider["issuer"])
    except ApiError:
        return EndSession()  # the OptiBid session is over either way
    endpoint = doc.get("end_session_endpoint")
    if not isinstance(endpoint, str):
        return EndSession()
    query = urlencode({"id_token_hint": session["id_token"], "client_id": provider["client_id"]})
    return EndSession(end_session_url=f"{endpoint}{'&' if '?' in endpoint else '?'}{query}")
