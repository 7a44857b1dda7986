"""Access tokens signed with RS256: the signing keyring, its JWKS, issuing and verifying tokens, and the end of
the HS256 format.

What belongs here: where keys come from, which key signs, which keys verify and until when, and the one
function that decides whether a bearer token is valid (`TokenKeys.claims_of`). What does not: refresh tokens,
passwords and API keys (`serving_api.security`), and revocation (`serving_api.deps`).

Keys. `OPTIBID_JWT_PRIVATE_KEYS` (a PEM bundle, newest first) when set: the first key signs, the others only
verify, so an operator rotates by prepending a new key and drops the old one once the rotation window has
passed. Unset, keys live in `$OPTIBID_HOME/jwt_keys/` (0700, files 0600), one file per key named after its
creation time; the newest signs, and a new key is generated when it is older than
`OPTIBID_JWT_KEY_ROTATION_DAYS` (or by `optibid auth rotate-keys`). A replaced key keeps verifying for
`OPTIBID_JWT_KEY_OVERLAP_SECONDS` after its successor took over, then it leaves the JWKS and is deleted. The
key id (`kid`) is the key's RFC 7638 thumbprint, so every worker and replica names a key the same way; a
worker that meets an unknown `kid` re-reads the keyring (at most once a second).

HS256. Tokens signed with the old shared secret are accepted only if they were issued before this database
first saw asymmetric tokens (`ops.token_signing`) and only until the rotation window after that moment ends.
The algorithm is taken from the token's header but each algorithm has exactly one kind of key: an RS256
token is verified with a public key from the keyring only, an HS256 token with the legacy secret only; any
other `alg` (none, HS512, ES256, ...) is refused, so the public key can never serve as an HMAC secret.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from serving_api.security import ACCESS_TOKEN_SECONDS, AccessClaims, Role

ALGORITHM = "RS256"
LEGACY_ALGORITHM = "HS256"
RSA_KEY_BITS = 3072
_RELOAD_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    created_at: float  # when it started signing (0 for keys from the environment)
    valid_until: float | None  # None: the signing key (or a configured one); else verification ends then

    @property
    def public_jwk(self) -> dict:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return jwk | {"kid": self.kid, "use": "sig", "alg": ALGORITHM}


def key_id(key: rsa.RSAPrivateKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of the public key."""
    import base64
    import hashlib

    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def keys_from_pem_bundle(bundle: str) -> list[SigningKey]:
    """Private keys of a PEM bundle, in order (the first signs); ValueError naming what is wrong."""
    blocks = re.findall(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", bundle, flags=re.DOTALL)
    keys = []
    for n, pem in enumerate(blocks):
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except ValueError as exc:
            raise ValueError(f"OPTIBID_JWT_PRIVATE_KEYS: key {n + 1} is not a PEM private key ({exc})") from exc
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            raise ValueError(f"OPTIBID_JWT_PRIVATE_KEYS: key {n + 1} must be an RSA key of at least 2048 bits")
        keys.append(SigningKey(key_id(key), key, 0.0, None))
    if not keys:
        raise ValueError("OPTIBID_JWT_PRIVATE_KEYS: no PEM private key found")
    return keys


class HomeKeyring:
    """The keys kept in a directory: one PEM file per key, `<created unix time>-<kid>.pem`."""

    def __init__(self, directory: Path, rotation_seconds: float, overlap_seconds: float) -> None:
        self.directory = directory
        self.rotation_seconds = rotation_seconds
        self.overlap_seconds = overlap_seconds

    def _lock(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _files(self) -> list[tuple[float, Path]]:
        out = []
        for path in self.directory.glob("*.pem"):
            try:
                out.append((float(path.name.split("-", 1)[0]), path))
            except ValueError:
                continue
        return sorted(out)

    def rotate(self, now: float | None = None) -> str:
        """Generate a key that signs from now on; the kid of the new key."""
        fd = self._lock()
        try:
            return self._add_key(time.time() if now is None else now)
        finally:
            os.close(fd)

    def _add_key(self, now: float) -> str:
        key = _new_private_key()
        kid = key_id(key)
        path = self.directory / f"{now:017.6f}-{kid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(_pem(key))
        return kid

    def load(self, now: float | None = None) -> list[SigningKey]:
        """The keys valid now, signing key first; generates the first key, or a due rotation, and deletes keys
        whose window has ended."""
        now = time.time() if now is None else now
        fd = self._lock()
        try:
            files = self._files()
            if not files or now - files[-1][0] >= self.rotation_seconds:
                self._add_key(now)
                files = self._files()
            keys: list[SigningKey] = []
            for i, (created, path) in enumerate(files):
                successor = files[i + 1][0] if i + 1 < len(files) else None
                valid_until = None if successor is None else successor + self.overlap_seconds
                if valid_until is not None and valid_until <= now:
                    path.unlink(missing_ok=True)
                    continue
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                assert isinstance(key, rsa.RSAPrivateKey)
                keys.append(SigningKey(key_id(key), key, created, valid_until))
            return sorted(keys, key=lambda k: -k.created_at)
        finally:
            os.close(fd)


class TokenKeys:
    """The keys of one API process: sign with the newest, verify with any key still in its window."""

    def __init__(
        self,
        *,
        audience: str,
        issuer: str,
        legacy_secret: str,
        configured_pem: str | None,
        home_keyring: HomeKeyring | None,
        overlap_seconds: float,
    ) -> None:
        self.audience = audience
        self.issuer = issuer
        self.legacy_secret = legacy_secret
        self.overlap_seconds = overlap_seconds
        self._configured = keys_from_pem_bundle(configured_pem) if configured_pem else None
        self._home = home_keyring
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = []
        self._loaded_at = 0.0
        # HS256 tokens issued before `legacy_issued_before` are accepted until `legacy_until` (unix seconds);
        # both come from the database at start (`set_legacy_window`). Until then, none are.
        self.legacy_issued_before = 0.0
        self.legacy_until = 0.0
        self.reload()

    def set_legacy_window(self, asymmetric_since: float) -> None:
        self.legacy_issued_before = asymmetric_since
        self.legacy_until = asymmetric_since + self.overlap_seconds

    def reload(self) -> None:
        with self._lock:
            if self._configured is not None:
                self._keys = self._configured
            else:
                assert self._home is not None
                self._keys = self._home.load()
            self._loaded_at = time.monotonic()

    def _current(self) -> list[SigningKey]:
        now = time.time()
        keys = self._keys
        if self._configured is None and (
            any(k.valid_until is not None and k.valid_until <= now for k in keys)
            or (self._home is not None and keys and now - keys[0].created_at >= self._home.rotation_seconds)
        ):
            self.reload()
            keys = self._keys
        return keys

    def signing_key(self) -> SigningKey:
        return self._current()[0]

    def verification_key(self, kid: str) -> SigningKey | None:
        for key in self._current():
            if key.kid == kid:
                return key
        # Another worker may have rotated: look again, but at most once a second.
        if time.monotonic() - self._loaded_at >= _RELOAD_INTERVAL_SECONDS:
            self.reload()
            for key in self._keys:
                if key.kid == kid:
                    return key
        return None

    def jwks(self) -> dict:
        now = time.time()
        return {"keys": [k.public_jwk for k in self._current() if k.valid_until is None or k.valid_until > now]}

    def issue(
        self, *, user_id: str, org_id: str, role: str, family_id: str, not_after: float | None = None
    ) -> tuple[str, int]:
        """(access token, lifetime in seconds): 15 minutes, cut short by the session's absolute end."""
        now = int(time.time())
        exp = now + ACCESS_TOKEN_SECONDS
        if not_after is not None:
            exp = max(now + 1, min(exp, int(not_after)))
        key = self.signing_key()
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "org": org_id,
            "role": role,
            "fam": family_id,
            "typ": "access",
            "iat": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, exp - now

    def claims_of(self, token: str) -> AccessClaims | None:
        """The claims of a valid, unexpired access token for this audience; None for anything else."""
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == ALGORITHM:
                kid = header.get("kid")
                key = self.verification_key(kid) if isinstance(kid, str) else None
                if key is None:
                    return None
                claims = jwt.decode(
                    token,
                    key.private_key.public_key(),
                    algorithms=[ALGORITHM],
                    audience=self.audience,
                    issuer=self.issuer,
                    options={"require": ["exp", "iat", "sub", "aud", "iss"]},
                )
                if key.valid_until is not None and claims["iat"] >= key.valid_until:
                    return None
            elif alg == LEGACY_ALGORITHM:
                now = time.time()
                if now >= self.legacy_until:
                    return None
                claims = jwt.decode(
                    token, self.legacy_secret, algorithms=[LEGACY_ALGORITHM], options={"require": ["exp", "iat", "sub"]}
                )
                if claims["iat"] >= self.legacy_issued_before or "aud" in claims:
                    return None
            else:
                return None
            if claims.get("typ") != "access":
                return None
            return AccessClaims(
                user_id=str(claims["sub"]),
                org_id=str(claims["org"]),
                role=Role(claims["role"]),
                family_id=str(claims["fam"]),
                expires_at=int(claims["exp"]),
            )
        except (jwt.PyJWTError, KeyError, ValueError, TypeError):
            return None
