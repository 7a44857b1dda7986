"""Credentials: password hashing and policy, JWT access tokens, opaque refresh tokens, API keys, and the
role → permission table every endpoint checks.

Pure functions only (no database): `serving_api.auth_store` persists what these produce.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ACCESS_TOKEN_SECONDS = 15 * 60
REFRESH_TOKEN_SECONDS = 7 * 24 * 3600
JWT_ALGORITHM = "HS256"
API_KEY_PREFIX = "obk"

_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so response time does not reveal which accounts exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-Aa1!")


class Role(StrEnum):
    admin = "admin"
    analyst = "analyst"
    trader = "trader"
    viewer = "viewer"


class Permission(StrEnum):
    market_read = "market:read"  # zones, nodes, prices, load, generation, KPIs, forecasts, freshness
    org_read = "org:read"  # assets, optimization results, uploads of the caller's organization
    export = "export"  # CSV / Parquet / Excel downloads
    optimize_write = "optimize:write"
    upload_write = "upload:write"
    admin = "admin"  # users, API keys, audit log


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.viewer: frozenset({Permission.market_read}),
    Role.analyst: frozenset({Permission.market_read, Permission.org_read, Permission.export}),
    Role.trader: frozenset(
        {
            Permission.market_read,
            Permission.org_read,
            Permission.export,
            Permission.optimize_write,
            Permission.upload_write,
        }
    ),
    Role.admin: frozenset(Permission),
}


class PasswordPolicyError(ValueError):
    """The password does not meet the policy; the message lists what is missing."""


def password_policy_violations(password: str) -> list[str]:
    """What `password` lacks: 12+ characters and at least three of lower, upper, digit, symbol."""
    problems = []
    if len(password) < 12:
        problems.append("at least 12 characters")
    if len(password) > 1024:
        problems.append("at most 1024 characters")
    classes = [
        bool(re.search(r"[a-z]", password)),
        bool(re.search(r"[A-Z]", password)),
        bool(re.search(r"\d", password)),
        bool(re.search(r"[^A-Za-z0-9]", password)),
    ]
    if sum(classes) < 3:
        problems.append("at least three of: lowercase, uppercase, digit, symbol")
    return problems


def hash_password(password: str) -> str:
    """An argon2id hash of a password that passes the policy (PasswordPolicyError otherwise)."""
    problems = password_policy_violations(password)
    if problems:
        raise PasswordPolicyError("password needs " + "; ".join(problems))
    return _hasher.hash(password)


def lower_thread_priority(nice: int) -> None:
    """Lower the CPU priority of the calling thread alone by `nice` (Linux schedules each thread on its own;
    where that is not so, the call does nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches the stored hash (a missing hash never matches, in constant-ish time)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def jwt_secret_for(configured: str | None, home_dir: Path) -> str:
    """The configured secret, else one generated once and kept (mode 0600) in the home directory."""
    if configured:
        return configured
    path = home_dir / "jwt_secret"
    if not path.exists():
        home_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    org_id: str
    role: Role
    family_id: str
    expires_at: int


def access_token_for(secret: str, *, user_id: str, org_id: str, role: str, family_id: str) -> str:
    """A signed 15-minute access token; `fam` ties it to its refresh family so revocation kills it."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "org": org_id,
        "role": role,
        "fam": family_id,
        "typ": "access",
        "iat": now,
        "exp": now + ACCESS_TOKEN_SECONDS,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def access_claims_of(secret: str, token: str) -> AccessClaims | None:
    """The claims of a valid, unexpired access token; None for anything else."""
    try:
        claims = jwt.decode(token, secret, algorithms=[JWT_ALGORITHM], options={"require": ["exp", "sub"]})
        if claims.get("typ") != "access":
            return None
        return AccessClaims(
            user_id=str(claims["sub"]),
            org_id=str(claims["org"]),
            role=Role(claims["role"]),
            family_id=str(claims["fam"]),
            expires_at=int(claims["exp"]),
        )
    except (jwt.PyJWTError, KeyError, ValueError):
        return None


def new_refresh_token() -> tuple[str, str]:
    """(token shown once to the client, SHA-256 hex stored in the database)."""
    token = "obr_" + secrets.token_urlsafe(40)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    """SHA-256 hex of a high-entropy secret (refresh tokens, API keys); argon2 is for passwords."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """(full key shown once, lookup prefix, stored digest)."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, token_digest(key)


def api_key_prefix_of(key: str) -> str | None:
    """The lookup prefix of a well-formed key, None otherwise."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not re.fullmatch(r"[0-9a-f]{12}", parts[1]):
        return None
    return parts[1]


def digests_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: tuple[str, ...] | list[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses) as networks; ValueError naming the bad entry."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"OPTIBID_TRUSTED_PROXIES: {cidr!r} is not an address or CIDR") from exc
    return tuple(out)


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str, forwarded_for: list[str], trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address for throttling and audit.

    X-Forwarded-For is honoured only when the connecting peer is a trusted proxy (anyone else could write
    any address in it); then the list is walked from the right, skipping trusted proxies, and the first
    untrusted hop is the client. Each proxy appends the address it received from, so the hops to the right
    of a trusted one are the only ones nobody but trusted proxies could have written.
    """
    if not trusted or not _in_networks(peer, trusted):
        return peer
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_networks(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a malformed hop written by the client: fall back to the proxy's address
    return hops[0] if hops else peer
