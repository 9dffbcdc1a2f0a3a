"""Optional bearer-token authentication: keys from GENSERVE_API_KEYS or a secrets file.

Off when no key is configured (local `make serve`); on in the compose and cluster configs.
Comparison is constant-time against every key, so timing tells nothing about a near miss.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

KEYS_ENV = "GENSERVE_API_KEYS"
KEYS_FILE_ENV = "GENSERVE_API_KEYS_FILE"


def load_api_keys(environ: dict[str, str] | None = None) -> list[str]:
    """Keys from the comma-separated env variable and/or a file with one key per line."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    path = env.get(KEYS_FILE_ENV)
    if path:
        keys += [
            line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
    return keys


def authorized(header: str | None, keys: list[str]) -> bool:
    """True when auth is off (no keys) or `header` is `Bearer <one of the keys>`."""
    if not keys:
        return True
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110, 11.1)
        return False
    token = credentials.strip().encode()
    # Check every key, whatever matches, so the time taken does not depend on which one did.
    matches = [hmac.compare_digest(token, k.encode()) for k in keys]
    return any(matches)
