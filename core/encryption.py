"""Encryption at rest for App Secrets, card PINs and legacy AES keys: AES-256-GCM under
the master key from SIGNPLATFORM_MASTER_KEY (or a 0600 key file created on first run).

Stored form: `gcm1:<key id>:<base64url(nonce | ciphertext | tag)>`; the purpose (what the
value is, e.g. "card-pin") is bound as associated data, so a ciphertext copied into
another column does not decrypt."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

PREFIX = "gcm1"


class MasterKeyError(RuntimeError):
    """The master key is missing, malformed, or does not match a stored value."""


def master_key_parse(text: str) -> bytes:
    text = text.strip()
    for decode in (lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)), bytes.fromhex):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == 32:
            return key
    raise MasterKeyError("SIGNPLATFORM_MASTER_KEY must be 32 bytes, base64url or hex encoded")


def master_key_generate() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


def master_key_file_ensure() -> Path | None:
    """Create the embedded-default key file when no key is configured; returns its path
    (None when the key comes from the environment)."""
    if settings.SIGNPLATFORM_MASTER_KEY:
        return None
    path = Path(settings.SIGNPLATFORM_MASTER_KEY_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path
        with os.fdopen(fd, "w") as fh:
            fh.write(master_key_generate() + "\n")
    return path


@lru_cache(maxsize=4)
def _key_for(configured: str, file_path: str) -> bytes:
    if configured:
        return master_key_parse(configured)
    path = master_key_file_ensure()
    return master_key_parse(Path(path or file_path).read_text())


def master_key() -> bytes:
    return _key_for(settings.SIGNPLATFORM_MASTER_KEY, str(settings.SIGNPLATFORM_MASTER_KEY_FILE))


def master_key_forget() -> None:
    """Drop the key this process has read, so the next use reads it again."""
    _key_for.cache_clear()


@lru_cache(maxsize=8)
def key_id(key: bytes) -> str:
    return hashlib.sha256(b"signplatform-key-id" + key).hexdigest()[:8]


@lru_cache(maxsize=8)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def secret_encrypt(plaintext: str, *, purpose: str, key: bytes | None = None) -> str:
    """Encrypt a secret for storage. Returns the stored form."""
    key = key or master_key()
    nonce = secrets.token_bytes(12)
    sealed = _aead(key).encrypt(nonce, plaintext.encode("utf-8"), purpose.encode())  # ciphertext + tag
    blob = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
    return f"{PREFIX}:{key_id(key)}:{blob}"


def secret_decrypt(stored: str, *, purpose: str, key: bytes | None = None) -> str:
    """Decrypt a stored secret; raises MasterKeyError when it cannot be authenticated."""
    key = key or master_key()
    try:
        prefix, kid, blob = stored.split(":", 2)
        raw = base64.urlsafe_b64decode(blob)
    except (ValueError, binascii.Error):
        raise MasterKeyError("stored secret is malformed") from None
    if prefix != PREFIX:
        raise MasterKeyError("stored secret has an unknown format")
    if kid != key_id(key):
        raise MasterKeyError(f"stored secret was encrypted under master key {kid}, not the configured one")
    if len(raw) < 28:
        raise MasterKeyError("stored secret is malformed")
    try:  # OpenSSL's AES-GCM: every signed request decrypts its secret
        return _aead(key).decrypt(raw[:12], raw[12:], purpose.encode()).decode("utf-8")
    except InvalidTag:
        raise MasterKeyError("stored secret failed authentication") from None
