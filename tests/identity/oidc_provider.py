"""A standards-conforming OpenID Connect provider for the tests, built on authlib's server components
(`AuthorizationServer`, `AuthorizationCodeGrant` with `OpenIDCode` and PKCE `CodeChallenge`) and served over
HTTP on 127.0.0.1: discovery, JWKS, the authorization endpoint (the signed-in end user is `login_as`; there
is no consent screen), the token endpoint (client_secret_basic, or public clients with PKCE), userinfo and
end-session.

Knobs for hostile tests: `force_nonce` makes the next ID token carry that nonce instead of the requested one.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.jose import JsonWebKey
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode

# authlib refuses plain HTTP unless told otherwise; the provider only ever listens on 127.0.0.1.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str | None
    redirect_uris: list[str]
    scope: str = "openid email profile groups"
    id_token_signed_response_alg: str | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == ("client_secret_basic" if self.client_secret else "none")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


class _Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: dict, data: dict) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(data)
        self._data = data

    @property
    def args(self) -> dict:
        return dict(parse_qsl(urlsplit(self.uri).query))

    @property
    def form(self) -> dict:
        return self._data


class OidcProvider:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "idp-key-1"})
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access_tokens: dict[str, dict] = {}
        self.login_as: dict[str, Any] = {}
        self.force_nonce: str | None = None
        self.end_session_calls: list[dict] = []
        self.token_requests = 0
        self.authorization = self._authorization_server()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # --- authlib server ------------------------------------------------------------------------------
    def _authorization_server(self) -> AuthorizationServer:
        provider = self

        class Server(AuthorizationServer):
            def query_client(self, client_id):
                return provider.clients.get(client_id)

            def save_token(self, token, request):
                provider.access_tokens[token["access_token"]] = request.user

            def create_oauth2_request(self, request):
                return request

            def create_json_request(self, request):
                return request

            def handle_response(self, status, body, headers):
                return status, body, headers

            def send_signal(self, name, *args, **kwargs):
                pass

        class CodeGrant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "none")

            def save_authorization_code(self, code, request):
                payload = request.payload.data
                provider.codes[code] = AuthorizationCode(
                    code=code,
                    client_id=request.client.get_client_id(),
                    redirect_uri=payload.get("redirect_uri"),
                    scope=request.client.get_allowed_scope(payload.get("scope", "")),
                    user=request.user,
                    nonce=provider.force_nonce or payload.get("nonce"),
                    code_challenge=payload.get("code_challenge"),
                    code_challenge_method=payload.get("code_challenge_method"),
                )
                provider.force_nonce = None

            def query_authorization_code(self, code, client):
                found = provider.codes.get(code)
                return found if found and found.client_id == client.get_client_id() else None

            def delete_authorization_code(self, authorization_code):
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                return authorization_code.user

        class IdToken(OpenIDCode):
            def exists_nonce(self, nonce, request):
                return False

            def get_jwt_config(self, grant):
                return {"key": provider.key, "alg": "RS256", "iss": provider.issuer, "exp": 300, "kid": "idp-key-1"}

            def generate_user_info(self, user, scope):
                info = UserInfo(sub=user["sub"])
                if "email" in scope:
                    info["email"] = user["email"]
                    info["email_verified"] = user.get("email_verified", True)
                if "profile" in scope:
                    info["name"] = user.get("name", user["email"])
                return info

        server = Server(scopes_supported=["openid", "email", "profile", "groups"])
        server.register_grant(CodeGrant, [IdToken(require_nonce=True), CodeChallenge(required=True)])
        server.register_token_generator(
            "default", BearerTokenGenerator(lambda *a, **k: secrets.token_urlsafe(32), None)
        )
        return server

    def register_client(self, client_id: str, client_secret: str | None, redirect_uri: str) -> None:
        self.clients[client_id] = Client(client_id, client_secret, [redirect_uri])

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "end_session_endpoint": f"{self.issuer}/logout",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            "scopes_supported": ["openid", "email", "profile", "groups"],
        }

    # --- HTTP ------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any, headers: Any = ()) -> None:
                payload = body if isinstance(body, bytes | str) else json.dumps(body)
                payload = payload.encode() if isinstance(payload, str) else payload
                self.send_response(status)
                sent_type = False
                for name, value in headers:
                    self.send_header(name, value)
                    sent_type = sent_type or name.lower() == "content-type"
                if not sent_type:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # http.server's hook name
                url = urlsplit(self.path)
                query = dict(parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self._send(200, provider.discovery())
                elif url.path == "/jwks":
                    self._send(200, {"keys": [provider.key.as_dict(is_private=False)]})
                elif url.path == "/authorize":
                    request = _Request("GET", provider.issuer + self.path, dict(self.headers), query)
                    user = dict(provider.login_as)
                    status, body, headers = provider.authorization.create_authorization_response(
                        request, grant_user=user
                    )
                    self._send(status, body or b"", headers)
                elif url.path == "/userinfo":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    user = provider.access_tokens.get(token)
                    if user is None:
                        self._send(401, {"error": "invalid_token"})
                        return
                    self._send(200, {k: v for k, v in user.items() if k in ("sub", "email", "groups", "name")})
                elif url.path == "/logout":
                    provider.end_session_calls.append(query)
                    self._send(200, {"status": "logged out"})
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:  # http.server's hook name
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if url.path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                provider.token_requests += 1
                request = _Request("POST", provider.issuer + self.path, dict(self.headers), dict(parse_qsl(body)))
                status, payload, headers = provider.authorization.create_token_response(request)
                self._send(status, payload, headers)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def authorize_url_query(self, url: str) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(url).query))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def callback_path(location: str) -> str:
    """The API path (with query) of a redirect back to the API."""
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


__all__ = ["OidcProvider", "callback_path", "urlencode"]
