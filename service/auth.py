"""Optional bearer-token authentication: keys from GENSERVE_API_KEYS or a secrets file.

Off when no key is configured (local `make serve`); on in the compose and cluster configs.
Comparison is constant-time against every key, so timing tells nothing about a near miss.
The secrets file is re-read when it changes (`KeyRing`), so keys rotate without a restart;
replace it atomically (write a new file, then rename it over the old), as a mounted Kubernetes
Secret is.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path

KEYS_ENV = "GENSERVE_API_KEYS"
KEYS_FILE_ENV = "GENSERVE_API_KEYS_FILE"


def _file_keys(path: str) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def load_api_keys(environ: dict[str, str] | None = None) -> list[str]:
    """Keys from the comma-separated env variable and/or a file with one key per line."""
    return KeyRing(environ).keys()


class KeyRing:
    """The configured keys, the secrets file's re-read whenever it has changed, looked at no more
    than once per `recheck_s`. A file that cannot be read later keeps the keys last read (a
    rotation never opens the server up by accident); one missing at start is an error."""

    def __init__(
        self,
        environ: dict[str, str] | None = None,
        recheck_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._env_keys = [k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
        self._path = env.get(KEYS_FILE_ENV) or None
        self._recheck_s, self._clock = recheck_s, clock
        self._stamp: tuple[int, int, int] | None = None
        self._file: list[str] = []
        self._checked = clock()
        if self._path:
            self._stamp, self._file = self._stamp_of(self._path), _file_keys(self._path)

    @staticmethod
    def _stamp_of(path: str) -> tuple[int, int, int]:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    @property
    def watched(self) -> bool:
        """Whether keys can change while serving (a secrets file is configured)."""
        return self._path is not None

    def keys(self) -> list[str]:
        if self._path and self._clock() - self._checked >= self._recheck_s:
            self._checked = self._clock()
            try:
                stamp = self._stamp_of(self._path)
                if stamp != self._stamp:
                    self._file, self._stamp = _file_keys(self._path), stamp
            except OSError:
                pass  # keep the keys last read
        return self._env_keys + self._file


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
