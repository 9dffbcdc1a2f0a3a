"""Bearer-token checks and key loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.auth import KeyRing, authorized, load_api_keys


def test_no_keys_means_auth_is_off() -> None:
    assert authorized(None, []) and authorized("Bearer anything", [])


def test_only_a_configured_bearer_token_passes() -> None:
    keys = ["alpha-key", "beta-key"]
    assert authorized("Bearer beta-key", keys)
    for bad in (None, "", "beta-key", "Bearer beta-ke", "Bearer beta-key2", "Basic YWxwaGE6", "Bearerbeta-key"):
        assert not authorized(bad, keys), bad


def test_the_bearer_scheme_is_matched_case_insensitively() -> None:
    # RFC 9110, 11.1: the scheme is a case-insensitive token; the credentials are not.
    for good in ("bearer alpha-key", "BEARER alpha-key", "BeArEr alpha-key"):
        assert authorized(good, ["alpha-key"]), good
    assert not authorized("bearer ALPHA-KEY", ["alpha-key"])


def test_keys_come_from_the_environment_and_a_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "keys"
    secrets.write_text("# one per line\nfile-key\n\n")
    keys = load_api_keys({"GENSERVE_API_KEYS": " env-a, env-b ,", "GENSERVE_API_KEYS_FILE": str(secrets)})
    assert keys == ["env-a", "env-b", "file-key"]
    assert load_api_keys({}) == []


def test_a_key_ring_rereads_a_changed_secrets_file_at_most_once_per_interval(tmp_path: Path) -> None:
    secrets = tmp_path / "keys"
    secrets.write_text("old-key\n")
    now = [0.0]
    ring = KeyRing({"GENSERVE_API_KEYS": "env-key", "GENSERVE_API_KEYS_FILE": str(secrets)}, 1.0, lambda: now[0])
    assert ring.watched and ring.keys() == ["env-key", "old-key"]
    fresh = tmp_path / "keys.new"
    fresh.write_text("new-key\n")
    fresh.replace(secrets)  # an atomic rotation
    now[0] = 0.5
    assert ring.keys() == ["env-key", "old-key"]  # not looked at yet
    now[0] = 1.5
    assert ring.keys() == ["env-key", "new-key"]
    secrets.unlink()  # unreadable later: the last keys stay, the server does not open up
    now[0] = 3.0
    assert ring.keys() == ["env-key", "new-key"]


def test_a_key_ring_without_a_file_is_the_environment_and_a_missing_file_at_start_fails(tmp_path: Path) -> None:
    ring = KeyRing({"GENSERVE_API_KEYS": "a,b"})
    assert not ring.watched and ring.keys() == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        KeyRing({"GENSERVE_API_KEYS_FILE": str(tmp_path / "absent")})
