"""SAML 2.0 single sign-on (web browser SSO profile, service-provider side, python3-saml), one identity
provider per organization.

`GET /auth/saml/{org_id}/metadata` is the SP metadata an IdP is configured from. `GET /auth/saml/{org_id}/login`
redirects the browser to the IdP with an AuthnRequest (HTTP-Redirect binding) and a single-use RelayState;
the IdP posts its Response to `POST /auth/saml/{org_id}/acs` (HTTP-POST binding), which takes the RelayState
(once), validates the Response with python3-saml in strict mode (the Response or its Assertion signed by the
configured IdP certificate, issuer, audience = our entity id, Destination and Recipient = our ACS URL,
NotBefore/NotOnOrAfter), requires InResponseTo (of the Response and of the assertion's bearer confirmation) to
be the id of the request that RelayState was issued with, refuses an assertion id seen before, and then signs
the user in exactly like OIDC (`identity.sso_sign_in`: groups -> role, just-in-time provisioning, session).
SP-initiated single logout is `POST /auth/sso/logout`, which asks `logout_url` here for the IdP's SLO URL.

Responses are bounded (`ApiOptions.max_saml_response_bytes`); whatever is wrong with one is a 4xx naming it.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import RedirectResponse, Response
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML
from psycopg.rows import dict_row

from serving_api import identity, security
from serving_api.deps import api_state
from serving_api.errors import ApiError, error_responses
from serving_api.models import API_PREFIX, TokenResponse
from serving_api.state import ApiState

router = APIRouter(prefix="/auth/saml", tags=["auth"], responses=error_responses(400, 401, 403, 404, 422, 500))
OrgId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]

_V = OneLogin_Saml2_ValidationError
# python3-saml's validation error codes -> our error codes (anything else: saml_response_invalid).
_ERROR_CODES = {
    _V.INVALID_SIGNATURE: "saml_signature_invalid",
    _V.NO_SIGNATURE_FOUND: "saml_signature_invalid",
    _V.NO_SIGNED_ASSERTION: "saml_signature_invalid",
    _V.NO_SIGNED_MESSAGE: "saml_signature_invalid",
    _V.WRONG_SIGNED_ELEMENT: "saml_signature_invalid",
    _V.INVALID_SIGNED_ELEMENT: "saml_signature_invalid",
    _V.ID_NOT_FOUND_IN_SIGNED_ELEMENT: "saml_signature_invalid",
    _V.UNEXPECTED_SIGNED_ELEMENTS: "saml_signature_invalid",
    _V.WRONG_NUMBER_OF_SIGNATURES: "saml_signature_invalid",
    _V.WRONG_NUMBER_OF_SIGNATURES_IN_RESPONSE: "saml_signature_invalid",
    _V.WRONG_NUMBER_OF_SIGNATURES_IN_ASSERTION: "saml_signature_invalid",
    _V.WRONG_AUDIENCE: "saml_wrong_audience",
    _V.WRONG_ISSUER: "saml_wrong_issuer",
    _V.WRONG_DESTINATION: "saml_wrong_destination",
    _V.EMPTY_DESTINATION: "saml_wrong_destination",
    _V.ASSERTION_EXPIRED: "saml_assertion_expired",
    _V.SESSION_EXPIRED: "saml_assertion_expired",
    _V.ASSERTION_TOO_EARLY: "saml_assertion_not_yet_valid",
    _V.WRONG_INRESPONSETO: "saml_in_response_to_mismatch",
    _V.WRONG_SUBJECTCONFIRMATION: "saml_subject_confirmation_invalid",
    _V.STATUS_CODE_IS_NOT_SUCCESS: "saml_idp_refused",
    _V.NO_NAMEID: "saml_no_name_id",
    _V.EMPTY_NAMEID: "saml_no_name_id",
}


@dataclass(frozen=True)
class SpUrls:
    """This service provider's addresses for one organization (register them at the IdP)."""

    entity_id: str
    acs_url: str
    metadata_url: str


def sp_urls(state: ApiState, org_id: str) -> SpUrls:
    base = f"{state.settings.resolved_public_url}{API_PREFIX}/auth/saml/{org_id}"
    return SpUrls(entity_id=f"{base}/metadata", acs_url=f"{base}/acs", metadata_url=f"{base}/metadata")


def saml_settings(state: ApiState, provider: dict[str, Any]) -> OneLogin_Saml2_Settings:
    """python3-saml settings of an organization's provider row; OneLogin_Saml2_Error when they are unusable."""
    urls = sp_urls(state, provider["org_id"])
    idp: dict[str, Any] = {
        "entityId": provider["idp_entity_id"],
        "singleSignOnService": {
            "url": provider["idp_sso_url"],
            "binding": OneLogin_Saml2_Constants.BINDING_HTTP_REDIRECT,
        },
        "x509cert": provider["idp_certificate"],
    }
    if provider.get("idp_slo_url"):
        idp["singleLogoutService"] = {
            "url": provider["idp_slo_url"],
            "binding": OneLogin_Saml2_Constants.BINDING_HTTP_REDIRECT,
        }
    return OneLogin_Saml2_Settings(
        {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": urls.entity_id,
                "assertionConsumerService": {
                    "url": urls.acs_url,
                    "binding": OneLogin_Saml2_Constants.BINDING_HTTP_POST,
                },
                "NameIDFormat": OneLogin_Saml2_Constants.NAMEID_UNSPECIFIED,
            },
            "idp": idp,
            "security": {
                # The Response or its Assertion must be signed (python3-saml refuses neither); IdPs differ in
                # which one they sign, and InResponseTo is checked in the assertion too (see `_validated`).
                "wantAssertionsSigned": False,
                "wantMessagesSigned": False,
                "wantAttributeStatement": False,
                "wantNameId": True,
                "authnRequestsSigned": False,
                "logoutRequestSigned": False,
                "requestedAuthnContext": False,
                "rejectDeprecatedAlgorithm": True,  # no SHA-1 signatures or digests
                "signMetadata": False,
                "allowSingleLabelDomains": True,  # internal host names (http://optibid:8000) are fine
            },
        },
        sp_validation_only=False,
    )


async def _provider(state: ApiState, org_id: str) -> dict[str, Any]:
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT org_id, idp_entity_id, idp_sso_url, idp_slo_url, idp_certificate, email_attribute,
                      groups_attribute, group_roles, default_role, jit_provisioning
               FROM api_auth.saml_provider(%s)""",
            (org_id,),
        )
        row = await cur.fetchone()
    if row is None:
        raise ApiError(404, "not_found", "SAML single sign-on is not configured for this organization")
    return row


def _settings_or_503(state: ApiState, provider: dict[str, Any]) -> OneLogin_Saml2_Settings:
    try:
        return saml_settings(state, provider)
    except OneLogin_Saml2_Error as exc:
        raise ApiError(503, "identity_provider_error", f"the SAML provider settings are unusable: {exc}") from exc


@router.get(
    "/{org_id}/metadata",
    response_class=Response,
    summary="SAML service-provider metadata of the organization (entity id, ACS URL): configure the IdP from it",
    responses={200: {"content": {"application/samlmetadata+xml": {}}}} | error_responses(404, 503),
)
async def saml_metadata(request: Request, org_id: OrgId) -> Response:
    state = api_state(request)
    settings = _settings_or_503(state, await _provider(state, org_id))
    metadata = settings.get_sp_metadata()
    return Response(metadata, media_type="application/samlmetadata+xml")


@router.get(
    "/{org_id}/login",
    status_code=302,
    response_class=RedirectResponse,
    summary="Start SAML single sign-on: redirects to the organization's IdP with an AuthnRequest",
    responses=error_responses(404, 503),
)
async def saml_login(request: Request, org_id: OrgId):
    state = api_state(request)
    provider = await _provider(state, org_id)
    settings = _settings_or_503(state, provider)
    authn = OneLogin_Saml2_Authn_Request(settings)
    relay_state = secrets.token_urlsafe(32)
    assert state.pool is not None
    async with state.pool.connection() as conn:
        await conn.execute(
            "SELECT api_auth.saml_save_request(%s, %s, %s, %s)",
            (security.token_digest(relay_state), authn.get_id(), org_id, state.options.oidc_state_seconds),
        )
    query = urlencode({"SAMLRequest": authn.get_request(deflate=True), "RelayState": relay_state})
    sso_url = provider["idp_sso_url"]
    return RedirectResponse(f"{sso_url}{'&' if '?' in sso_url else '?'}{query}", status_code=302)


@dataclass(frozen=True)
class _Assertion:
    name_id: str
    name_id_format: str | None
    name_id_qualifier: str | None
    sp_name_qualifier: str | None
    session_index: str | None
    assertion_id: str
    not_on_or_after: int | None
    attributes: dict[str, list[str]]


def _request_data(acs_url: str, saml_response: str) -> dict[str, Any]:
    """What python3-saml calls the current request: our ACS URL as the IdP must have addressed it (from
    OPTIBID_PUBLIC_URL, never from the request's own Host header)."""
    url = urlsplit(acs_url)
    return {
        "https": "on" if url.scheme == "https" else "off",
        "http_host": url.netloc,
        "script_name": url.path,
        "get_data": {},
        "post_data": {"SAMLResponse": saml_response},
    }


def _validated(settings: OneLogin_Saml2_Settings, acs_url: str, saml_response: str, request_id: str) -> _Assertion:
    """The assertion of a Response that passes every check, else ApiError (400 malformed, 401 invalid)."""
    try:
        response = OneLogin_Saml2_Response(settings, saml_response)
    except Exception as exc:  # untrusted input into base64 and the XML parser: any failure is the sender's
        raise ApiError(400, "saml_response_malformed", "SAMLResponse: not a base64-encoded SAML Response") from exc
    try:
        response.is_valid(_request_data(acs_url, saml_response), request_id, raise_exceptions=True)
    except OneLogin_Saml2_ValidationError as exc:
        code = _ERROR_CODES.get(exc.code, "saml_response_invalid")
        raise ApiError(401, code, f"the SAML response is not valid: {exc}") from exc
    except Exception as exc:  # xmlsec and lxml errors on hostile documents
        raise ApiError(401, "saml_response_invalid", f"the SAML response is not valid ({type(exc).__name__})") from exc
    # Only answers to our own requests (no IdP-initiated logins): python3-saml checks InResponseTo only when
    # present, and only on the Response, whose envelope is unsigned when just the Assertion is signed.
    if response.get_in_response_to() != request_id:
        raise ApiError(
            401, "saml_in_response_to_mismatch", "the SAML response does not answer the request of this login"
        )
    confirmations = OneLogin_Saml2_XML.query(
        response.document,
        "/samlp:Response/saml:Assertion/saml:Subject/saml:SubjectConfirmation"
        f"[@Method='{OneLogin_Saml2_Constants.CM_BEARER}']/saml:SubjectConfirmationData",
    )
    if not confirmations or any(c.get("InResponseTo") != request_id for c in confirmations):
        raise ApiError(
            401, "saml_in_response_to_mismatch", "the SAML assertion was not issued for the request of this login"
        )
    assertion_id = response.get_assertion_id()
    name_id = response.get_nameid()
    if not assertion_id or not name_id:
        raise ApiError(401, "saml_response_invalid", "the SAML assertion lacks an ID or a NameID")
    return _Assertion(
        name_id=name_id,
        name_id_format=response.get_nameid_format(),
        name_id_qualifier=response.get_nameid_nq(),
        sp_name_qualifier=response.get_nameid_spnq(),
        session_index=response.get_session_index(),
        assertion_id=assertion_id,
        not_on_or_after=response.get_assertion_not_on_or_after(),
        attributes=response.get_attributes(),
    )


def _first(attributes: dict[str, list[str]], name: str) -> str | None:
    values = attributes.get(name) or []
    return values[0] if values else None


@router.post(
    "/{org_id}/acs",
    response_model=TokenResponse,
    summary="Assertion consumer service: where the IdP posts its Response; completes SAML single sign-on and "
    "answers with tokens",
    responses=error_responses(413),
)
async def saml_acs(
    request: Request,
    org_id: OrgId,
    saml_response: Annotated[str | None, Form(alias="SAMLResponse", max_length=512 * 1024)] = None,
    relay_state: Annotated[str | None, Form(alias="RelayState", max_length=200)] = None,
) -> TokenResponse:
    state = api_state(request)
    if not relay_state:
        raise ApiError(400, "invalid_input", "RelayState: missing (unsolicited responses are not accepted)")
    if not saml_response:
        raise ApiError(400, "invalid_input", "SAMLResponse: missing")
    assert state.pool is not None
    async with state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT org_id, request_id FROM api_auth.saml_take_request(%s)", (security.token_digest(relay_state),)
        )
        login = await cur.fetchone()
    if login is None or login["org_id"] != org_id:
        raise ApiError(
            400, "saml_relay_state_invalid", "RelayState: unknown, expired or already used; start the login again"
        )
    provider = await _provider(state, org_id)
    settings = _settings_or_503(state, provider)
    assertion = await asyncio.to_thread(
        _validated, settings, sp_urls(state, org_id).acs_url, saml_response, login["request_id"]
    )
    attributes = assertion.attributes
    email_source = _first(attributes, provider["email_attribute"]) if provider["email_attribute"] else assertion.name_id
    who = identity.SsoIdentity(
        org_id=org_id,
        source="saml",
        subject=assertion.name_id,
        email=identity.sso_email(email_source),
        groups=attributes.get(provider["groups_attribute"]),
        provider=provider["idp_entity_id"],
    )
    mapping = identity.RoleMapping(
        provider["group_roles"] or {}, provider["default_role"], provider["jit_provisioning"]
    )
    # An assertion is accepted once; remembered until it expires (plus the allowed clock drift).
    expires = (
        datetime.fromtimestamp(assertion.not_on_or_after, UTC)
        if assertion.not_on_or_after
        else datetime.now(UTC) + timedelta(days=1)
    ) + timedelta(seconds=OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT)
    async with state.pool.connection() as conn:
        fresh = await (
            await conn.execute(
                "SELECT api_auth.saml_use_assertion(%s, %s, %s)", (org_id, assertion.assertion_id, expires)
            )
        ).fetchone()
        if fresh is None or not fresh[0]:
            raise ApiError(401, "saml_assertion_replayed", "this SAML assertion was already used")
        result, family_id = await identity.sso_sign_in(conn, state, request, who, mapping)
        await conn.execute(
            "SELECT api_auth.saml_record_session(%s, %s, %s, %s, %s, %s)",
            (
                family_id,
                assertion.name_id,
                assertion.name_id_format,
                assertion.name_id_qualifier,
                assertion.sp_name_qualifier,
                assertion.session_index,
            ),
        )
    return result


async def logout_url(state: ApiState, session: dict[str, Any]) -> str | None:
    """The IdP's single-logout URL with a LogoutRequest for a SAML session (HTTP-Redirect binding), or None when
    the organization's IdP has no SLO URL (or SAML is no longer configured: the OptiBid session ends anyway)."""
    try:
        provider = await _provider(state, session["org_id"])
    except ApiError:
        return None
    if not provider["idp_slo_url"] or not session["name_id"]:
        return None
    try:
        settings = saml_settings(state, provider)
    except OneLogin_Saml2_Error:
        return None
    request = OneLogin_Saml2_Logout_Request(
        settings,
        name_id=session["name_id"],
        session_index=session["session_index"],
        nq=session["name_id_qualifier"],
        name_id_format=session["name_id_format"],
        spnq=session["sp_name_qualifier"],
    )
    slo = provider["idp_slo_url"]
    return f"{slo}{'&' if '?' in slo else '?'}{urlencode({'SAMLRequest': request.get_request(deflate=True)})}"
