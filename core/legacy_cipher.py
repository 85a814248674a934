"""The legacy sign-server's transport cipher (docs/sign-server-compat.md): AES-128-ECB
with PKCS#7 padding under a "MySQL folded" key, ciphertext as hex. Pure functions.

ECB and key folding are weak; they are kept only so that existing clients work unchanged.
The platform binds each such key to an access ID and audits every call."""

from __future__ import annotations

import binascii
import json
from typing import Any

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad


class LegacyDecryptError(ValueError):
    """The body is not hex, or does not decrypt under the key."""


def legacy_key_fold(key: str) -> bytes:
    """16 zero bytes with each UTF-8 byte `i` of the key XORed into position `i % 16`
    (what the Java clients' `mysqlAdapterEncrypt` does)."""
    folded = bytearray(16)
    for index, byte in enumerate(key.encode("utf-8")):
        folded[index % 16] ^= byte
    return bytes(folded)


def legacy_encrypt(folded_key: bytes, plaintext: str) -> str:
    """Encrypt UTF-8 text; upper-case hex, as the legacy server answers."""
    cipher = AES.new(folded_key, AES.MODE_ECB)
    return cipher.encrypt(pad(plaintext.encode("utf-8"), AES.block_size)).hex().upper()


def legacy_decrypt(folded_key: bytes, hex_text: str | bytes) -> str:
    """Decrypt a hex body (either case, surrounding whitespace ignored) to UTF-8 text."""
    if isinstance(hex_text, bytes):
        try:
            hex_text = hex_text.decode("ascii")
        except UnicodeDecodeError:
            raise LegacyDecryptError("the body is not a hex string") from None
    try:
        raw = binascii.unhexlify(hex_text.strip())
    except (binascii.Error, ValueError):
        raise LegacyDecryptError("the body is not a hex string") from None
    if not raw or len(raw) % AES.block_size:
        raise LegacyDecryptError("the ciphertext length is not a multiple of 16 bytes")
    try:
        return unpad(AES.new(folded_key, AES.MODE_ECB).decrypt(raw), AES.block_size).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise LegacyDecryptError("the body does not decrypt under this key") from None


def legacy_data_encrypt(folded_key: bytes, value: Any) -> str:
    """An encrypted response `data`: `json.dumps(value, ensure_ascii=False)` with the
    default separators, as the legacy server serialised it."""
    return legacy_encrypt(folded_key, json.dumps(value, ensure_ascii=False))
