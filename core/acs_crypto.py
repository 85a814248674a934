"""The access system's payload encryption and signature (docs/client-profiles.md, acs), with
pycryptodome's primitives:

- AES: AES-128-CBC, PKCS#7, a random IV prepended, hex;
- DES: DES-CBC, PKCS#5, a random IV prepended, hex (weak: only for old parties);
- RSA / RSA2: RSAES-PKCS1-v1_5 in blocks of (key bytes − 11) — 117 bytes for a 1024-bit key,
  245 for a 2048-bit one — the ciphertext blocks concatenated, hex;
- RSA+AES / RSA+DES: `<hex RSA(public key, fresh session key)>.<hex symmetric ciphertext>`;
- the signature: lowercase hex MD5 of the non-empty fields, sorted, `key=value` joined with `&`.

Every function raises AcsCryptoError (a ValueError) for input it cannot work with; the
message never contains key material."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from Crypto.Cipher import AES, DES, PKCS1_v1_5
from Crypto.PublicKey import RSA
from Crypto.Util.Padding import pad, unpad

NONE, AES_MODE, DES_MODE, RSA_MODE, RSA2_MODE, RSA_AES, RSA_DES = (
    "none", "aes", "des", "rsa", "rsa2", "rsa+aes", "rsa+des")
MODES = (NONE, AES_MODE, DES_MODE, RSA_MODE, RSA2_MODE, RSA_AES, RSA_DES)
SYMMETRIC = {AES_MODE: "aes", DES_MODE: "des", RSA_AES: "aes", RSA_DES: "des"}
RSA_MODES = (RSA_MODE, RSA2_MODE, RSA_AES, RSA_DES)
# The RSA key size each mode's key pair is generated with (RSA: 1024 bits, for old clients).
RSA_BITS = {RSA_MODE: 1024, RSA2_MODE: 2048, RSA_AES: 2048, RSA_DES: 2048}
KEY_BYTES = {"aes": 16, "des": 8}
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})*$")


class AcsCryptoError(ValueError):
    """Ciphertext, a key or a certificate the access system's rules cannot work with."""


def _unhex(text: str, what: str) -> bytes:
    text = (text or "").strip()
    if not _HEX.match(text):
        raise AcsCryptoError(f"{what} is not hex")
    return bytes.fromhex(text)


def symmetric_key_bytes(key: str, algorithm: str) -> bytes:
    """The administrator's key text as cipher key bytes: its UTF-8 bytes, which must be
    exactly 16 (AES) or 8 (DES) long, or the same number of bytes as hex (32 or 16 digits)."""
    size = KEY_BYTES[algorithm]
    raw = key.encode("utf-8")
    if len(raw) == size:
        return raw
    if len(key) == 2 * size and _HEX.match(key):
        return bytes.fromhex(key)
    raise AcsCryptoError(f"a {algorithm.upper()} key is {size} characters (or {2 * size} hex digits)")


def symmetric_key_generate(algorithm: str) -> str:
    """A random key as hex digits (what the administrator copies to the party)."""
    return secrets.token_hex(KEY_BYTES[algorithm])


def symmetric_encrypt(algorithm: str, key: bytes, plaintext: bytes) -> str:
    if algorithm == "aes":
        iv = secrets.token_bytes(16)
        return (iv + AES.new(key, AES.MODE_CBC, iv).encrypt(pad(plaintext, 16))).hex()
    iv = secrets.token_bytes(8)
    return (iv + DES.new(key, DES.MODE_CBC, iv).encrypt(pad(plaintext, 8))).hex()


def symmetric_decrypt(algorithm: str, key: bytes, ciphertext: str) -> bytes:
    raw = _unhex(ciphertext, "the ciphertext")
    block = 16 if algorithm == "aes" else 8
    if len(raw) < 2 * block or len(raw) % block:
        raise AcsCryptoError("the ciphertext is not IV + whole blocks")
    iv, body = raw[:block], raw[block:]
    cipher = AES.new(key, AES.MODE_CBC, iv) if algorithm == "aes" else DES.new(key, DES.MODE_CBC, iv)
    try:
        return unpad(cipher.decrypt(body), block)
    except ValueError:
        raise AcsCryptoError("the ciphertext does not decrypt with this key (bad padding)") from None


def rsa_key_load(pem: str | bytes):
    try:
        return RSA.import_key(pem)
    except (ValueError, IndexError, TypeError):
        raise AcsCryptoError("not an RSA key") from None


def rsa_encrypt(public_key, plaintext: bytes) -> str:
    """PKCS#1 v1.5 in blocks of (key bytes − 11), the blocks concatenated, hex."""
    size = public_key.size_in_bytes()
    chunk = size - 11
    cipher = PKCS1_v1_5.new(public_key)
    blocks = [plaintext[i:i + chunk] for i in range(0, len(plaintext), chunk)] or [b""]
    return b"".join(cipher.encrypt(block) for block in blocks).hex()


def rsa_decrypt(private_key, ciphertext: str) -> bytes:
    raw = _unhex(ciphertext, "the ciphertext")
    size = private_key.size_in_bytes()
    if not raw or len(raw) % size:
        raise AcsCryptoError(f"the RSA ciphertext is not whole {size}-byte blocks")
    cipher = PKCS1_v1_5.new(private_key)
    # pycryptodome hands back (a copy of) the sentinel when the padding is wrong: a random one
    # cannot be a real plaintext by chance.
    sentinel = b"\x00" + secrets.token_bytes(31)
    parts = []
    for i in range(0, len(raw), size):
        try:
            part = cipher.decrypt(raw[i:i + size], sentinel)
        except ValueError:  # the block is not below the modulus: not for this key
            part = sentinel
        if part == sentinel:
            raise AcsCryptoError("the ciphertext does not decrypt with this key")
        parts.append(part)
    return b"".join(parts)


@dataclass(frozen=True)
class AcsKeys:
    """What one message needs: the mode, the symmetric key (AES/DES modes), the RSA key that
    decrypts what the party sent (the platform's private key) and the one that encrypts for
    the party (its uploaded certificate's public key)."""

    mode: str
    symmetric: bytes | None = None
    private_key: object | None = None
    party_public_key: object | None = None


def encrypt_for_party(keys: AcsKeys, plaintext: bytes) -> str:
    """`Data` of an answer (or a token): encrypted as the party's mode says, hex."""
    mode = keys.mode
    if mode == NONE:
        return plaintext.decode("utf-8")
    if mode in (AES_MODE, DES_MODE):
        return symmetric_encrypt(SYMMETRIC[mode], _need(keys.symmetric, "key"), plaintext)
    public = _need(keys.party_public_key, "party certificate")
    if mode in (RSA_MODE, RSA2_MODE):
        return rsa_encrypt(public, plaintext)
    algorithm = SYMMETRIC[mode]
    session = secrets.token_bytes(KEY_BYTES[algorithm])
    return f"{rsa_encrypt(public, session)}.{symmetric_encrypt(algorithm, session, plaintext)}"


def decrypt_from_party(keys: AcsKeys, data: str) -> bytes:
    """A request's `Data` in clear."""
    mode = keys.mode
    if mode == NONE:
        return data.encode("utf-8")
    if mode in (AES_MODE, DES_MODE):
        return symmetric_decrypt(SYMMETRIC[mode], _need(keys.symmetric, "key"), data)
    private = _need(keys.private_key, "platform key pair")
    if mode in (RSA_MODE, RSA2_MODE):
        return rsa_decrypt(private, data)
    wrapped, dot, body = data.partition(".")
    if not dot:
        raise AcsCryptoError("a hybrid ciphertext is <hex RSA session key>.<hex symmetric ciphertext>")
    algorithm = SYMMETRIC[mode]
    session = rsa_decrypt(private, wrapped)
    if len(session) != KEY_BYTES[algorithm]:
        raise AcsCryptoError(f"the session key is not {KEY_BYTES[algorithm]} bytes")
    return symmetric_decrypt(algorithm, session, body)


def _need(value, what: str):
    if value is None:
        raise AcsCryptoError(f"no {what} is configured for this party")
    return value


def acs_sign(fields: dict[str, str], secret_key: str) -> str:
    """MD5 (lowercase hex) of the fields except `Sign` plus `SecretKey`, empty values left out,
    sorted by key, `key=value` joined with `&`."""
    items = {k: v for k, v in fields.items() if k != "Sign" and v not in (None, "")}
    items["SecretKey"] = secret_key
    text = "&".join(f"{k}={v}" for k, v in sorted(items.items()) if v not in (None, ""))
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()
