"""A SAML 2.0 identity provider for the tests, served over HTTP on 127.0.0.1: its SSO endpoint takes an
AuthnRequest (HTTP-Redirect binding: deflated, base64, in the query), builds a Response for `login_as` and
signs it with xmlsec (RSA-SHA256, exclusive c14n, enveloped) with a key and self-signed certificate generated
at start with `cryptography`, and answers with the auto-submitting HTML form of the HTTP-POST binding that a
browser would post to the SP's assertion consumer service. Its SLO endpoint records the LogoutRequests it gets.

Nothing here uses python3-saml (the library under test): requests are parsed and responses built with lxml.

Knobs for hostile tests, each applying to the next response only (`next_response(...)`): `sign` ('assertion',
'response', 'both', 'none', 'other_key': a key the SP does not trust, 'tampered': changed after signing),
`audience`, `lifetime_seconds` (negative: already expired), `in_response_to`, `assertion_id` (reuse one),
`destination`, `issuer`.
"""

from __future__ import annotations

import base64
import html
import re
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS = {"samlp": SAMLP, "saml": SAML}
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
PERSISTENT_FORMAT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"


def key_and_certificate(common_name: str) -> tuple[bytes, bytes]:
    """A new RSA key and a self-signed certificate for it (PEM, PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _instant(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def sign(element: etree._Element, key_pem: bytes, cert_pem: bytes) -> None:
    """Sign `element` (a Response or Assertion with an ID) in place: the Signature goes after its Issuer."""
    signature = xmlsec.template.create(element, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256)
    element.find(f"{{{SAML}}}Issuer").addnext(signature)
    reference = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA256, uri=f"#{element.get('ID')}")
    xmlsec.template.add_transform(reference, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(reference, xmlsec.Transform.EXCL_C14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)
    key.load_cert_from_memory(cert_pem, xmlsec.KeyFormat.PEM)
    xmlsec.tree.add_ids(element, ["ID"])
    context = xmlsec.SignatureContext()
    context.key = key
    context.sign(signature)


def decode_redirect(value: str) -> etree._Element:
    """A message of the HTTP-Redirect binding (raw DEFLATE, then base64)."""
    return etree.fromstring(zlib.decompress(base64.b64decode(value), -15))


@dataclass
class AuthnRequest:
    id: str
    issuer: str
    acs_url: str
    relay_state: str | None


@dataclass
class SamlIdp:
    login_as: dict[str, Any] = field(default_factory=dict)  # name_id, name_id_format, attributes
    requests: list[AuthnRequest] = field(default_factory=list)
    logout_requests: list[etree._Element] = field(default_factory=list)
    issued_assertion_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key_pem, self.cert_pem = key_and_certificate("optibid test IdP")
        self.other_key_pem, self.other_cert_pem = key_and_certificate("someone else")
        self._next: dict[str, Any] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.entity_id = f"{self.base_url}/metadata"
        self.sso_url = f"{self.base_url}/sso"
        self.slo_url = f"{self.base_url}/slo"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def certificate(self) -> str:
        return self.cert_pem.decode()

    def next_response(self, **knobs: Any) -> None:
        """Make the next Response hostile or unusual (see the module docstring)."""
        self._next = knobs

    # --- building responses ----------------------------------------------------------------------------
    def build_response(self, request: AuthnRequest, **knobs: Any) -> bytes:
        now = datetime.now(UTC)
        lifetime = timedelta(seconds=knobs.get("lifetime_seconds", 300))
        in_response_to = knobs.get("in_response_to", request.id)
        audience = knobs.get("audience", request.issuer)
        issuer_value = knobs.get("issuer", self.entity_id)
        destination = knobs.get("destination", request.acs_url)
        assertion_id = knobs.get("assertion_id") or f"_a{uuid.uuid4().hex}"
        self.issued_assertion_ids.append(assertion_id)
        user = self.login_as

        response = etree.Element(f"{{{SAMLP}}}Response", nsmap={"samlp": SAMLP, "saml": SAML})
        response.set("ID", f"_r{uuid.uuid4().hex}")
        response.set("Version", "2.0")
        response.set("IssueInstant", _instant(now))
        response.set("Destination", destination)
        if in_response_to is not None:
            response.set("InResponseTo", in_response_to)
        etree.SubElement(response, f"{{{SAML}}}Issuer").text = issuer_value
        status = etree.SubElement(response, f"{{{SAMLP}}}Status")
        etree.SubElement(status, f"{{{SAMLP}}}StatusCode").set("Value", "urn:oasis:names:tc:SAML:2.0:status:Success")

        assertion = etree.SubElement(response, f"{{{SAML}}}Assertion")
        assertion.set("ID", assertion_id)
        assertion.set("Version", "2.0")
        assertion.set("IssueInstant", _instant(now))
        etree.SubElement(assertion, f"{{{SAML}}}Issuer").text = issuer_value
        subject = etree.SubElement(assertion, f"{{{SAML}}}Subject")
        name_id = etree.SubElement(subject, f"{{{SAML}}}NameID")
        name_id.set("Format", user.get("name_id_format", PERSISTENT_FORMAT))
        name_id.text = user["name_id"]
        confirmation = etree.SubElement(subject, f"{{{SAML}}}SubjectConfirmation")
        confirmation.set("Method", "urn:oasis:names:tc:SAML:2.0:cm:bearer")
        data = etree.SubElement(confirmation, f"{{{SAML}}}SubjectConfirmationData")
        if in_response_to is not None:
            data.set("InResponseTo", in_response_to)
        data.set("NotOnOrAfter", _instant(now + lifetime))
        data.set("Recipient", request.acs_url)
        conditions = etree.SubElement(assertion, f"{{{SAML}}}Conditions")
        conditions.set("NotBefore", _instant(now - timedelta(seconds=30)))
        conditions.set("NotOnOrAfter", _instant(now + lifetime))
        restriction = etree.SubElement(conditions, f"{{{SAML}}}AudienceRestriction")
        etree.SubElement(restriction, f"{{{SAML}}}Audience").text = audience
        authn = etree.SubElement(assertion, f"{{{SAML}}}AuthnStatement")
        authn.set("AuthnInstant", _instant(now))
        authn.set("SessionIndex", f"_s{uuid.uuid4().hex}")
        context = etree.SubElement(authn, f"{{{SAML}}}AuthnContext")
        etree.SubElement(
            context, f"{{{SAML}}}AuthnContextClassRef"
        ).text = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
        attributes = user.get("attributes", {})
        if attributes:
            statement = etree.SubElement(assertion, f"{{{SAML}}}AttributeStatement")
            for attr_name, values in attributes.items():
                attribute = etree.SubElement(statement, f"{{{SAML}}}Attribute")
                attribute.set("Name", attr_name)
                for value in values if isinstance(values, list) else [values]:
                    etree.SubElement(attribute, f"{{{SAML}}}AttributeValue").text = value

        mode = knobs.get("sign", "assertion")
        key, cert = (self.other_key_pem, self.other_cert_pem) if mode == "other_key" else (self.key_pem, self.cert_pem)
        if mode in ("assertion", "both", "other_key", "tampered"):
            sign(assertion, key, cert)
        if mode in ("response", "both"):
            sign(response, key, cert)
        if mode == "tampered":  # e.g. a man in the middle raising his groups after the IdP signed
            name_id.text = "admin-" + name_id.text
        return etree.tostring(response)

    # --- HTTP ----------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8") -> None:
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # http.server's hook name
                url = urlsplit(self.path)
                query = dict(parse_qsl(url.query))
                if url.path == "/sso":
                    try:
                        document = decode_redirect(query["SAMLRequest"])
                    except (KeyError, ValueError, zlib.error, etree.XMLSyntaxError):
                        self._send(400, "not an AuthnRequest")
                        return
                    request = AuthnRequest(
                        id=document.get("ID"),
                        issuer=document.findtext("saml:Issuer", namespaces=NS),
                        acs_url=document.get("AssertionConsumerServiceURL"),
                        relay_state=query.get("RelayState"),
                    )
                    idp.requests.append(request)
                    knobs, idp._next = idp._next, {}
                    saml_response = base64.b64encode(idp.build_response(request, **knobs)).decode()
                    relay = (
                        f'<input type="hidden" name="RelayState" value="{html.escape(request.relay_state)}"/>'
                        if request.relay_state
                        else ""
                    )
                    self._send(
                        200,
                        f'<html><body onload="document.forms[0].submit()"><form method="post" '
                        f'action="{html.escape(request.acs_url)}"><input type="hidden" name="SAMLResponse" '
                        f'value="{saml_response}"/>{relay}</form></body></html>',
                    )
                elif url.path == "/slo":
                    idp.logout_requests.append(decode_redirect(query["SAMLRequest"]))
                    self._send(200, "logged out")
                else:
                    self._send(404, "not found")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def posted_form(page: str) -> tuple[str, dict[str, str]]:
    """The action and fields of the IdP's auto-submitting form (what the browser would post)."""
    action = html.unescape(re.search(r'action="([^"]+)"', page).group(1))
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
    return action, fields
