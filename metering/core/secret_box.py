"""Secrets at rest: what taskmeter must keep in order to use later (a webhook's signing secret)
is stored encrypted with Fernet (AES-128-CBC with HMAC-SHA256, `cryptography`).

Keys come from the environment (`api.settings`): `TASKMETER_ENCRYPTION_KEYS`, Fernet keys
newest first; the first encrypts, every one decrypts (`MultiFernet`), so a key is rotated by
putting a new one in front, re-sealing the stored secrets (`taskmeter webhooks reseal`), then
dropping the old one. Unset, one key is derived from `TASKMETER_SECRET_KEY` (which production
refuses to leave at its placeholder). A sealed value that no key opens is an error, never a
silent fallback to the stored text.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from metering.core.errors import TaskmeterError

_DERIVATION = b"taskmeter secrets at rest\x00"


class SecretUnreadable(TaskmeterError):
    """A stored secret that none of the configured keys opens (a key removed too early)."""

    status_code = 500
    error = "secret_unreadable"


def derived_key(secret: str) -> bytes:
    """A Fernet key derived from a server secret (SHA-256 of a fixed label and the secret)."""
    return base64.urlsafe_b64encode(hashlib.sha256(_DERIVATION + secret.encode()).digest())


def parse_keys(text: str) -> list[bytes]:
    """Comma-separated Fernet keys; a ValueError naming the entry that is not one."""
    keys = [part.strip().encode() for part in text.split(",") if part.strip()]
    if not keys:
        raise ValueError("must hold at least one Fernet key")
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(
                f"entry {number} is not a Fernet key (32 url-safe base64-encoded bytes, e.g. from "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
            ) from None
    return keys


class SecretBox:
    """Seals and opens secrets with the configured keys, newest first."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, clear: str) -> str:
        return self._fernet.encrypt(clear.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "a stored secret cannot be decrypted with TASKMETER_ENCRYPTION_KEYS: keep the key it was "
                "sealed with in the list until `taskmeter webhooks reseal` has run"
            ) from None

    def reseal(self, sealed: str) -> str:
        """The same secret sealed with the newest key."""
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable("a stored secret cannot be decrypted with the configured keys") from None

    def is_sealed(self, value: str) -> bool:
        """Whether the value is a token of one of the keys (not a secret stored in clear)."""
        try:
            self._fernet.decrypt(value.encode())
        except InvalidToken:
            return False
        return True
