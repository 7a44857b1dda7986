"""Credentials: password hashing and policy, opaque refresh tokens, API keys, TOTP codes and recovery codes,
secrets sealed at rest, and the role → permission table every endpoint checks. (Access tokens and their
signing keys: `serving_api.token_keys`.)

Pure functions only (no database): `serving_api.auth_store` persists what these produce.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import struct
import sys
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ACCESS_TOKEN_SECONDS = 15 * 60
REFRESH_TOKEN_SECONDS = 7 * 24 * 3600
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


ROLE_RANK = {Role.viewer: 0, Role.analyst: 1, Role.trader: 2, Role.admin: 3}


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


# --- TOTP (RFC 6238: HMAC-SHA1, 30-second steps, 6 digits) -----------------------------------------------
TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
TOTP_ISSUER = "OptiBid"


def new_totp_secret() -> str:
    """A random 160-bit secret, base32 without padding (what authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def totp_code(secret: str, step: int, digits: int = TOTP_DIGITS) -> str:
    """The code of time step `step` (RFC 4226 HOTP of the step counter)."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_step_matching(secret: str, code: str, now: float | None = None, drift_steps: int = 1) -> int | None:
    """The time step whose code is `code`, within `drift_steps` of now (clock skew); None if none is."""
    code = code.strip().replace(" ", "")
    if not re.fullmatch(rf"\d{{{TOTP_DIGITS}}}", code):
        return None
    current = int((time.time() if now is None else now) // TOTP_STEP_SECONDS)
    found = None
    for step in range(current - drift_steps, current + drift_steps + 1):
        if hmac.compare_digest(totp_code(secret, step), code):
            found = step
    return found


def totp_uri(secret: str, account: str) -> str:
    """The otpauth:// URI an authenticator app reads (usually shown as a QR code)."""
    from urllib.parse import quote

    return (
        f"otpauth://totp/{quote(TOTP_ISSUER)}:{quote(account)}?secret={secret}&issuer={quote(TOTP_ISSUER)}"
        f"&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}"
    )


RECOVERY_CODE_COUNT = 10


def new_recovery_codes() -> list[str]:
    """Single-use recovery codes (about 60 bits each), shown once; store `recovery_code_digest` of each."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return [
        "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(3))
        for _ in range(RECOVERY_CODE_COUNT)
    ]


def recovery_code_digest(code: str) -> str:
    return token_digest(code.strip().lower().replace(" ", ""))


# --- secrets at rest (OIDC client secrets) ---------------------------------------------------------------
def _sealing_key(master_secret: str) -> bytes:
    return base64.urlsafe_b64encode(
        hmac.new(master_secret.encode(), b"optibid:sealed-secrets:v1", hashlib.sha256).digest()
    )


def seal(master_secret: str, plaintext: str) -> str:
    """`plaintext` encrypted and authenticated (Fernet) with a key derived from the API's secret."""
    from cryptography.fernet import Fernet

    return Fernet(_sealing_key(master_secret)).encrypt(plaintext.encode()).decode()


def unseal(master_secret: str, sealed: str) -> str:
    """The plaintext of `seal`; ValueError if it was sealed with another secret or altered."""
    from cryptography.fernet import Fernet, InvalidToken

    try:
        return Fernet(_sealing_key(master_secret)).decrypt(sealed.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("sealed secret cannot be opened with this OPTIBID_JWT_SECRET") from exc


def new_link_token() -> tuple[str, str]:
    """(token for an e-mailed link, digest stored): invitations and password resets."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)
