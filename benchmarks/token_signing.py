"""Access tokens: the cost of issuing (login, refresh) and verifying (first sight of a token; later requests
hit the per-process cache of verified tokens) RS256 tokens, beside the HS256 format they replace, in the
same process. Run: `python -m benchmarks.token_signing`."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jwt

from benchmarks.harness import load_average
from serving_api.token_keys import HomeKeyring, TokenKeys

ROUNDS = 2000


def _per_call_us(fn, rounds: int = ROUNDS) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="bench_keys_"))
    started = time.perf_counter()
    keys = TokenKeys(
        audience="optibid-api",
        issuer="http://bench",
        legacy_secret="s" * 48,
        configured_pem=None,
        home_keyring=HomeKeyring(home / "jwt_keys", 30 * 86400, 3600),
        overlap_seconds=3600,
    )
    generated_ms = (time.perf_counter() - started) * 1e3
    claims = {
        "sub": "u",
        "org": "o",
        "role": "viewer",
        "fam": "f",
        "typ": "access",
        "iat": int(time.time()),
        "exp": int(time.time()) + 900,
    }
    token, _ = keys.issue(user_id="u", org_id="o", role="viewer", family_id="f")
    hs_token = jwt.encode(claims, "s" * 48, algorithm="HS256")
    rs_sign = _per_call_us(lambda: keys.issue(user_id="u", org_id="o", role="viewer", family_id="f"), 300)
    rs_verify = _per_call_us(lambda: keys.claims_of(token))
    hs_sign = _per_call_us(lambda: jwt.encode(claims, "s" * 48, algorithm="HS256"))
    hs_verify = _per_call_us(lambda: jwt.decode(hs_token, "s" * 48, algorithms=["HS256"]))
    load = load_average()
    print(f"key generation (RSA-3072, once per rotation): {generated_ms:.0f} ms ({load})")
    print(f"issue  RS256 {rs_sign:8.1f} us   HS256 {hs_sign:6.1f} us   ratio {rs_sign / hs_sign:6.1f}x ({load})")
    print(
        f"verify RS256 {rs_verify:8.1f} us   HS256 {hs_verify:6.1f} us   ratio {rs_verify / hs_verify:6.1f}x ({load})"
    )


if __name__ == "__main__":
    main()
