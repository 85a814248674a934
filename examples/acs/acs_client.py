#!/usr/bin/env python3
"""Independent client for the ``acs`` (access system) wire format.

Written from the specification text alone (docs: client-profiles.md, section "``acs`` -- the access
system", its "Common rules", and signing-api.md for the native bodies). It imports nothing from the
platform and uses the ``cryptography`` package (not pycryptodome), so the platform's tests can use it
as an independent check of the server.

Python 3.11, standard library + ``cryptography``.

Readings of the spec
--------------------
Where the spec leaves a detail open, this client takes the most literal reading:

 1. Encoding. Every text is UTF-8: the Data plaintext, the string that is signed, and the token.
    Hex output is lowercase; hex input is accepted in either case.
 2. Data in clear (encryption ``none``) is the native request body as compact JSON text
    (``json.dumps(body, ensure_ascii=False, separators=(",", ":"))``). When the access ID encrypts,
    the UTF-8 bytes of that same text are encrypted and Data is the ciphertext text.
 3. Signature string: every Head field except ``Sign`` (``Ccode``, ``Token``, ``Version`` in a request;
    ``Ccode``, ``Status``, ``Message`` and any other field in an answer), plus ``Data`` exactly as sent
    (the ciphertext text when encrypted) and ``SecretKey``. A field is "empty" when its value is
    missing, JSON null or the empty string "" (a value of only spaces is NOT empty); empty fields are
    left out. Keys sorted by Unicode code point (case-sensitive, like Python's ``sorted``), each
    written ``key=value``, joined with ``&``, no URL-encoding. Sign = lowercase hex MD5 of the UTF-8
    bytes. A non-string value is written as its compact JSON text (``true``, ``12``, ``{"a":1}``).
 4. The answer's Sign is verified the same way with the same SecretKey, over the answer's Data as
    received. The comparison is exact (constant time) against the lowercase hex digest: an
    upper-case Sign does not verify. An answer whose Head has no Sign or an empty Sign gives
    ``sign_ok = None``. If the answer's Data is a JSON object rather than a string (the spec says a
    string), it is signed as its compact JSON text.
 5. SecretKey is whatever text the caller passes as ``secret_key`` (the spec: "the access ID's current
    symmetric key or App Secret"); the client does not choose between them. When the symmetric key is
    the SecretKey, it is the key text as the administrator typed it (e.g. 32 hex digits), not the
    decoded bytes.
 6. Symmetric key text -> key bytes: for AES-128 (16 bytes) / DES (8 bytes), a text of exactly 16 / 8
    UTF-8 bytes is the raw key; a text of exactly 32 / 16 hex digits is hex-decoded. Anything else is
    refused. (So a 16-character text is raw for AES but hex for DES.)
 7. AES = AES-128-CBC, PKCS#7 padding, a fresh random 16-byte IV; text = hex(IV || ciphertext).
    DES = single DES-CBC, PKCS#5 padding (PKCS#7 with 8-byte blocks), a fresh random 8-byte IV;
    text = hex(IV || ciphertext). Single DES is computed as TripleDES with the key K||K||K.
 8. RSA / RSA2 = RSAES-PKCS1-v1_5. The plaintext is cut into blocks of (modulus bytes - 11) bytes
    (117 for a 1024-bit key, 245 for a 2048-bit key), each block encrypted separately (a
    modulus-sized ciphertext block, 128 / 256 bytes), the ciphertext blocks concatenated, then hex.
    The block size follows the key actually used, not the mode's name. An empty plaintext gives zero
    blocks, i.e. the empty text.
 9. Hybrid (RSA+AES / RSA+DES) = ``<hex RSA(public key, session key)>.<hex symmetric ciphertext>``:
    the session key is raw random bytes (16 for AES, 8 for DES, NOT their hex text), encrypted as in
    8 (one block); the symmetric part is exactly the AES / DES text of 7 under that session key. A new
    session key for every message. The text is split at the first ``.``.
10. Direction of the keys in the RSA modes: requests are encrypted with the platform's public key
    (its certificate); answers -- and the token from ``GET /acs/token/{sender}``, which is something
    the platform sends back -- are encrypted with the client's uploaded certificate, so the client
    decrypts them with its own private key. In AES / DES modes both directions use the access ID's
    symmetric key.
11. Token with encryption ``none``: ``data`` is the token in clear (no extra hex layer); the "hex" in
    the spec describes the output of the cipher modes, which is already hex.
12. The token goes in ``Head.Token`` exactly as decrypted (UTF-8 text, not stripped). With no token,
    ``Head.Token`` is "" (and so left out of the signature). ``Head.Version`` defaults to "".
13. Signature ``none``: ``Head.Sign`` is sent as "".
14. The envelope is sent as UTF-8 JSON with ``Content-Type: application/json; charset=utf-8``; the
    HTTP body's spacing is irrelevant because the signature covers the Data string, not the bytes.
15. An answer's Data is decrypted when it is a non-empty string; if decryption fails (e.g. an error
    answer sent in clear), the raw text is kept and the reason is in ``decrypt_error``. The decrypted
    text is parsed as JSON when possible.
16. The sender code is percent-encoded in the token URL path (RFC 3986, nothing left unescaped except
    unreserved characters).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import hmac
import json
import os
import string
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers import modes as cipher_modes
from cryptography.x509.oid import NameOID

try:  # cryptography >= 43 moved TripleDES to the "decrepit" module
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES as _TripleDES
except ImportError:  # pragma: no cover - older cryptography
    _TripleDES = algorithms.TripleDES  # type: ignore[attr-defined]

MODES = ("none", "aes", "des", "rsa", "rsa2", "rsa+aes", "rsa+des")
OPERATIONS = ("sign", "sign/xml", "sign/179")
_SYM_KEY_LEN = {"aes": 16, "des": 8}
_SYM_BLOCK = {"aes": 16, "des": 8}


class AcsError(Exception):
    """A refusal by the server (or an unusable answer). Carries the HTTP status and body."""

    def __init__(self, message: str, http_status: int | None = None, body: Any = None):
        super().__init__(f"{message} (HTTP {http_status}): {body!r}")
        self.http_status = http_status
        self.body = body


# --------------------------------------------------------------------------- signature

def _field_text(value: Any) -> str | None:
    """The text written for a field's value, or None when the field is empty (left out)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value != "" else None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sign_string(fields: dict, secret_key: str | None) -> str:
    """The string that is MD5-hashed: fields except Sign, plus SecretKey, empties out, sorted."""
    items: dict[str, str] = {}
    for key, value in fields.items():
        if key == "Sign":
            continue
        text = _field_text(value)
        if text is not None:
            items[key] = text
    secret = _field_text(secret_key)
    if secret is not None:
        items["SecretKey"] = secret
    return "&".join(f"{k}={items[k]}" for k in sorted(items))


def md5_sign(fields: dict, secret_key: str | None) -> str:
    """Lowercase hex MD5 of ``sign_string(fields, secret_key)``.

    ``fields`` is the flat dict of Head fields plus ``Data`` (e.g. ``{**head, "Data": data}``);
    ``Sign`` and ``SecretKey`` keys in it are ignored / overridden.
    """
    fields = {k: v for k, v in fields.items() if k != "SecretKey"}
    return hashlib.md5(sign_string(fields, secret_key).encode("utf-8")).hexdigest()


def verify_sign(head: dict, data: Any, secret_key: str | None) -> bool | None:
    """Whether ``head["Sign"]`` verifies over head + Data; None when there is no Sign."""
    sign = head.get("Sign") if isinstance(head, dict) else None
    if sign is None or sign == "":
        return None
    if not isinstance(sign, str):
        return False
    expected = md5_sign({**head, "Data": data}, secret_key)
    return hmac.compare_digest(expected.encode(), sign.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- keys

def symmetric_key_bytes(mode: str, key: str | bytes) -> bytes:
    """Key bytes for ``aes`` / ``des`` from raw text of exactly 16 / 8 bytes or 32 / 16 hex digits."""
    base = mode.split("+")[-1]
    if base not in _SYM_KEY_LEN:
        raise ValueError(f"mode {mode!r} has no symmetric key")
    n = _SYM_KEY_LEN[base]
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) == n:
        return raw
    if len(raw) == 2 * n and all(chr(b) in string.hexdigits for b in raw):
        return bytes.fromhex(raw.decode("ascii"))
    raise ValueError(f"{base.upper()} key must be {n} bytes or {2 * n} hex digits, got {len(raw)} bytes")


def load_public_key(key: Any) -> rsa.RSAPublicKey:
    """An RSA public key from a certificate PEM, a public key PEM, or key/certificate objects."""
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        return key.public_key()
    if isinstance(key, x509.Certificate):
        pub = key.public_key()
    else:
        data = key.encode() if isinstance(key, str) else bytes(key)
        if b"CERTIFICATE" in data:
            pub = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY" in data:
            pub = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            pub = serialization.load_pem_public_key(data)
    if not isinstance(pub, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return pub


def load_private_key(key: Any) -> rsa.RSAPrivateKey:
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    data = key.encode() if isinstance(key, str) else bytes(key)
    priv = serialization.load_pem_private_key(data, password=None)
    if not isinstance(priv, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return priv


def make_client_keypair(bits: int = 2048, common_name: str = "acs-test-client",
                        days: int = 365) -> tuple[str, str]:
    """A fresh RSA key pair and a self-signed X.509 certificate: ``(private_key_pem, cert_pem)``."""
    if bits not in (1024, 2048):
        raise ValueError("bits must be 1024 or 2048")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


# --------------------------------------------------------------------------- ciphers

def _sym_algorithm(base: str, key: bytes):
    if base == "aes":
        return algorithms.AES(key)
    return _TripleDES(key * 3)  # K||K||K == single DES


def _sym_encrypt(base: str, key: bytes, plaintext: bytes) -> str:
    iv = os.urandom(_SYM_BLOCK[base])
    padder = sym_padding.PKCS7(_SYM_BLOCK[base] * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(_sym_algorithm(base, key), cipher_modes.CBC(iv)).encryptor()
    return (iv + enc.update(padded) + enc.finalize()).hex()


def _sym_decrypt(base: str, key: bytes, text: str) -> bytes:
    raw = bytes.fromhex(text)
    bs = _SYM_BLOCK[base]
    if len(raw) < 2 * bs or len(raw) % bs:
        raise ValueError(f"{base.upper()} ciphertext has a bad length ({len(raw)} bytes)")
    iv, body = raw[:bs], raw[bs:]
    dec = Cipher(_sym_algorithm(base, key), cipher_modes.CBC(iv)).decryptor()
    padded = dec.update(body) + dec.finalize()
    unpadder = sym_padding.PKCS7(bs * 8).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _rsa_encrypt(pub: rsa.RSAPublicKey, plaintext: bytes) -> str:
    k = (pub.key_size + 7) // 8
    step = k - 11
    out = b"".join(pub.encrypt(plaintext[i:i + step], rsa_padding.PKCS1v15())
                   for i in range(0, len(plaintext), step))
    return out.hex()


def _rsa_decrypt(priv: rsa.RSAPrivateKey, text: str) -> bytes:
    raw = bytes.fromhex(text)
    k = (priv.key_size + 7) // 8
    if len(raw) % k:
        raise ValueError(f"RSA ciphertext length {len(raw)} is not a multiple of {k}")
    return b"".join(priv.decrypt(raw[i:i + k], rsa_padding.PKCS1v15()) for i in range(0, len(raw), k))


def encrypt(mode: str, plaintext: bytes, *, symmetric_key: str | bytes | None = None,
            public_key: Any = None) -> str:
    """Encrypt per the spec; returns the text put in Data (or the token's ``data``).

    ``symmetric_key``: for ``aes`` / ``des`` (text as in Readings 6). ``public_key``: for the RSA and
    hybrid modes (certificate PEM, public key PEM or key object) -- the recipient's key.
    """
    mode = mode.lower()
    if mode == "none":
        return plaintext.decode("utf-8")
    if mode in ("aes", "des"):
        if symmetric_key is None:
            raise ValueError(f"{mode} needs symmetric_key")
        return _sym_encrypt(mode, symmetric_key_bytes(mode, symmetric_key), plaintext)
    if public_key is None:
        raise ValueError(f"{mode} needs public_key")
    pub = load_public_key(public_key)
    if mode in ("rsa", "rsa2"):
        return _rsa_encrypt(pub, plaintext)
    if mode in ("rsa+aes", "rsa+des"):
        base = mode.split("+")[1]
        session = os.urandom(_SYM_KEY_LEN[base])
        return _rsa_encrypt(pub, session) + "." + _sym_encrypt(base, session, plaintext)
    raise ValueError(f"unknown encryption mode {mode!r}; one of {MODES}")


def decrypt(mode: str, text: str, *, symmetric_key: str | bytes | None = None,
            private_key: Any = None) -> bytes:
    """Inverse of :func:`encrypt`. ``private_key``: the recipient's RSA private key (PEM or object)."""
    mode = mode.lower()
    if mode == "none":
        return text.encode("utf-8")
    if mode in ("aes", "des"):
        if symmetric_key is None:
            raise ValueError(f"{mode} needs symmetric_key")
        return _sym_decrypt(mode, symmetric_key_bytes(mode, symmetric_key), text)
    if private_key is None:
        raise ValueError(f"{mode} needs private_key")
    priv = load_private_key(private_key)
    if mode in ("rsa", "rsa2"):
        return _rsa_decrypt(priv, text)
    if mode in ("rsa+aes", "rsa+des"):
        base = mode.split("+")[1]
        if "." not in text:
            raise ValueError("hybrid ciphertext has no '.'")
        key_hex, body_hex = text.split(".", 1)
        session = _rsa_decrypt(priv, key_hex)
        if len(session) != _SYM_KEY_LEN[base]:
            raise ValueError(f"session key is {len(session)} bytes, expected {_SYM_KEY_LEN[base]}")
        return _sym_decrypt(base, session, body_hex)
    raise ValueError(f"unknown encryption mode {mode!r}; one of {MODES}")


# --------------------------------------------------------------------------- envelope

def envelope(data: str, *, sender: str, secret_key: str | None, token: str = "", version: str = "",
             signature: str = "md5", sign: str | None = None) -> dict:
    """The request envelope ``{"Head": {Sign, Token, Ccode, Version}, "Data": data}``.

    ``data`` is the Data text exactly as it will be sent (already encrypted when the access ID
    encrypts). ``signature`` "md5" computes Sign, "none" sends ""; ``sign`` forces a given value.
    """
    head = {"Sign": "", "Token": token or "", "Ccode": sender, "Version": version or ""}
    if sign is not None:
        head["Sign"] = sign
    elif signature == "md5":
        head["Sign"] = md5_sign({**head, "Data": data}, secret_key)
    elif signature != "none":
        raise ValueError("signature must be 'md5' or 'none'")
    return {"Head": head, "Data": data}


def body_json(body: dict) -> str:
    """The native request body as the JSON text that is put (encrypted or not) in Data."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- client

@dataclass
class AcsResult:
    http_status: int
    head: dict
    data: Any                      # decrypted answer, parsed as JSON when possible, else text
    sign_ok: bool | None           # answer's Head.Sign verified? None when there is no Sign
    raw: Any                       # the raw response JSON (or text when not JSON)
    data_text: str | None = None   # decrypted answer text before JSON parsing
    decrypt_error: str | None = None
    request: dict | bytes | None = None     # what was sent (envelope dict, or bytes)
    request_bytes: bytes = b""              # the exact HTTP body sent (for replay tests)
    headers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.http_status == 200 and self.head.get("Status") == "success"


class AcsClient:
    def __init__(self, base_url: str, sender: str, *, encryption: str, secret_key: str | None,
                 symmetric_key: str | bytes | None = None, platform_certificate_pem: str | None = None,
                 client_private_key_pem: str | None = None, signature: str = "md5",
                 timeout: float = 30, use_token: bool = False):
        encryption = encryption.lower()
        if encryption not in MODES:
            raise ValueError(f"encryption must be one of {MODES}")
        if signature not in ("md5", "none"):
            raise ValueError("signature must be 'md5' or 'none'")
        self.base_url = base_url.rstrip("/")
        self.sender = sender
        self.encryption = encryption
        self.secret_key = secret_key
        self.symmetric_key = symmetric_key
        self.platform_certificate_pem = platform_certificate_pem
        self.client_private_key_pem = client_private_key_pem
        self.signature = signature
        self.timeout = timeout
        self.use_token = use_token
        if encryption in ("aes", "des") and symmetric_key is not None:
            symmetric_key_bytes(encryption, symmetric_key)  # fail early on a bad key

    # -- ciphers bound to this client's keys
    def encrypt_request(self, plaintext: bytes) -> str:
        return encrypt(self.encryption, plaintext, symmetric_key=self.symmetric_key,
                       public_key=self.platform_certificate_pem)

    def decrypt_answer(self, text: str) -> bytes:
        return decrypt(self.encryption, text, symmetric_key=self.symmetric_key,
                       private_key=self.client_private_key_pem)

    # -- HTTP
    def _http(self, method: str, url: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()) if exc.headers else {}, exc.read()

    @staticmethod
    def _parse(raw: bytes) -> Any:
        text = raw.decode("utf-8", "replace")
        try:
            return json.loads(text)
        except ValueError:
            return text

    def token(self) -> str:
        """GET {base}/acs/token/{sender}; returns the token in clear."""
        url = f"{self.base_url}/acs/token/{urllib.parse.quote(self.sender, safe='')}"
        status, _headers, raw = self._http("GET", url)
        body = self._parse(raw)
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise AcsError("token refused", status, body)
        data = body.get("data")
        if not isinstance(data, str) or data == "":
            raise AcsError("token answer has no data", status, body)
        try:
            return self.decrypt_answer(data).decode("utf-8")
        except Exception as exc:
            raise AcsError(f"cannot decrypt token: {exc}", status, body) from exc

    def build(self, body: dict | str | bytes, *, token: str = "", version: str = "") -> dict:
        """The signed envelope for a native body (dict, or already-serialised JSON text/bytes)."""
        if isinstance(body, dict):
            plain = body_json(body).encode("utf-8")
        elif isinstance(body, str):
            plain = body.encode("utf-8")
        else:
            plain = bytes(body)
        data = self.encrypt_request(plain)
        return envelope(data, sender=self.sender, secret_key=self.secret_key, token=token,
                        version=version, signature=self.signature)

    def call(self, operation: str, body: dict | str | bytes, *, token: str | None = None,
             version: str = "", tamper: dict | Callable[[dict], Any] | None = None) -> AcsResult:
        """POST {base}/acs/{operation} with the signed (and encrypted) envelope.

        ``token``: None -> fetch one when ``use_token`` is set, else no token; a string is used as is.
        ``tamper``: applied after signing, for hostile requests. A dict overrides Head fields (a key
        "Data" overrides Data; a value None removes the field); a callable gets the envelope dict and
        may change it in place or return a new dict, or bytes/str to send as the raw HTTP body.
        """
        if token is None:
            token = self.token() if self.use_token else ""
        env = self.build(body, token=token, version=version)
        sent: dict | bytes = env
        if isinstance(tamper, dict):
            for key, value in tamper.items():
                target = env if key == "Data" else env["Head"]
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        elif callable(tamper):
            out = tamper(env)
            if out is not None:
                sent = out
                if isinstance(out, dict):
                    env = out
        if isinstance(sent, dict):
            payload = json.dumps(sent, ensure_ascii=False).encode("utf-8")
        elif isinstance(sent, str):
            payload = sent.encode("utf-8")
        else:
            payload = bytes(sent)
        result = self.send_raw(operation, payload)
        result.request = sent
        return result

    def send_raw(self, operation: str, payload: bytes) -> AcsResult:
        """POST exact bytes to {base}/acs/{operation} and interpret the answer (used for replays)."""
        url = f"{self.base_url}/acs/{operation.strip('/')}"
        status, headers, raw = self._http("POST", url, payload)
        parsed = self._parse(raw)
        head: dict = {}
        data: Any = None
        data_text: str | None = None
        sign_ok: bool | None = None
        decrypt_error: str | None = None
        if isinstance(parsed, dict):
            head = parsed.get("Head") if isinstance(parsed.get("Head"), dict) else {}
            raw_data = parsed.get("Data")
            if head:
                sign_ok = verify_sign(head, raw_data, self.secret_key)
            if isinstance(raw_data, str) and raw_data != "":
                try:
                    data_text = self.decrypt_answer(raw_data).decode("utf-8")
                except Exception as exc:
                    decrypt_error = f"{type(exc).__name__}: {exc}"
                    data_text = raw_data
                try:
                    data = json.loads(data_text)
                except ValueError:
                    data = data_text
            else:
                data = raw_data
        return AcsResult(http_status=status, head=head, data=data, sign_ok=sign_ok, raw=parsed,
                         data_text=data_text, decrypt_error=decrypt_error, request_bytes=payload,
                         headers=headers)


# --------------------------------------------------------------------------- self-test

def selftest(verbose: bool = True) -> None:
    """Round-trip every mode with local keys, and check the signature string against the spec."""
    priv1024, cert1024 = make_client_keypair(1024)
    priv2048, cert2048 = make_client_keypair(2048)
    msgs = [b"", b"x", "签名 data ✓".encode(), os.urandom(15), os.urandom(16), os.urandom(117),
            os.urandom(118), os.urandom(245), os.urandom(246), os.urandom(1000)]
    cases = [
        ("none", {}, {}),
        ("aes", {"symmetric_key": "0123456789abcdef"}, {"symmetric_key": "0123456789abcdef"}),
        ("aes", {"symmetric_key": "00112233445566778899aabbccddeeff"},
         {"symmetric_key": bytes.fromhex("00112233445566778899aabbccddeeff")}),
        ("des", {"symmetric_key": "k8bytes!"}, {"symmetric_key": "k8bytes!"}),
        ("des", {"symmetric_key": "0011223344556677"}, {"symmetric_key": bytes.fromhex("0011223344556677")}),
        ("rsa", {"public_key": cert1024}, {"private_key": priv1024}),
        ("rsa2", {"public_key": cert2048}, {"private_key": priv2048}),
        ("rsa+aes", {"public_key": cert2048}, {"private_key": priv2048}),
        ("rsa+des", {"public_key": cert1024}, {"private_key": priv1024}),
    ]
    for mode, enc_kw, dec_kw in cases:
        for m in msgs:
            if mode == "none":
                m = m.decode("utf-8", "ignore").encode()
            text = encrypt(mode, m, **enc_kw)
            assert decrypt(mode, text, **dec_kw) == m, (mode, m)
            assert decrypt(mode, text.upper() if mode != "none" else text, **dec_kw) == m
        if mode != "none":
            assert encrypt(mode, b"same", **enc_kw) != encrypt(mode, b"same", **enc_kw), mode  # random IV
        if verbose:
            print(f"ok  {mode:8s} {sorted(enc_kw)[0] if enc_kw else ''}")

    # structure checks
    t = encrypt("aes", b"a" * 16, symmetric_key="0123456789abcdef")
    assert len(bytes.fromhex(t)) == 16 + 32                     # IV + 2 blocks (full padding block)
    t = encrypt("des", b"a" * 8, symmetric_key="k8bytes!")
    assert len(bytes.fromhex(t)) == 8 + 16
    assert len(bytes.fromhex(encrypt("rsa", b"a" * 117, public_key=cert1024))) == 128
    assert len(bytes.fromhex(encrypt("rsa", b"a" * 118, public_key=cert1024))) == 256
    assert len(bytes.fromhex(encrypt("rsa2", b"a" * 245, public_key=cert2048))) == 256
    assert len(bytes.fromhex(encrypt("rsa2", b"a" * 246, public_key=cert2048))) == 512
    k, s = encrypt("rsa+aes", b"hello", public_key=cert2048).split(".")
    assert len(bytes.fromhex(k)) == 256 and len(bytes.fromhex(s)) == 32
    assert len(load_private_key(priv2048).decrypt(bytes.fromhex(k), rsa_padding.PKCS1v15())) == 16
    k, s = encrypt("rsa+des", b"hello", public_key=cert1024).split(".")
    assert len(load_private_key(priv1024).decrypt(bytes.fromhex(k), rsa_padding.PKCS1v15())) == 8
    assert len(bytes.fromhex(s)) == 16

    # DES really is single DES: the NIST / FIPS 81 test vector "Now is t" with key 0123456789abcdef
    # (ECB) -> 3fa40e8a984d4815; as the first CBC block with a zero IV it is the same value.
    dec = Cipher(_TripleDES(bytes.fromhex("0123456789abcdef") * 3), cipher_modes.CBC(b"\0" * 8)).encryptor()
    assert (dec.update(b"Now is t") + dec.finalize()).hex() == "3fa40e8a984d4815"

    # signature string, as the spec's example shape: Ccode=000001&Data=...&SecretKey=...&Token=...
    head = {"Sign": "x", "Token": "tok", "Ccode": "000001", "Version": ""}
    s = sign_string({**head, "Data": "abc"}, "sek")
    assert s == "Ccode=000001&Data=abc&SecretKey=sek&Token=tok", s
    assert md5_sign({**head, "Data": "abc"}, "sek") == hashlib.md5(s.encode()).hexdigest()
    env = envelope("abc", sender="000001", secret_key="sek", token="tok")
    assert verify_sign(env["Head"], env["Data"], "sek") is True
    assert verify_sign(env["Head"], env["Data"], "other") is False
    assert verify_sign({"Ccode": "1"}, "abc", "sek") is None
    ans = {"Ccode": "000001", "Status": "success", "Message": "成功"}
    ans["Sign"] = md5_sign({**ans, "Data": "d"}, "sek")
    assert verify_sign(ans, "d", "sek") is True
    assert sign_string({**ans, "Data": "d"}, "sek") == "Ccode=000001&Data=d&Message=成功&SecretKey=sek&Status=success"
    for bad in ("short", "0123456789abcdeg0123456789abcdef"):
        try:
            symmetric_key_bytes("aes", bad)
        except ValueError:
            pass
        else:
            raise AssertionError(bad)
    if verbose:
        print("selftest passed")


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="acs (access system) client")
    p.add_argument("--base", default="http://127.0.0.1:8000")
    p.add_argument("--sender", default="")
    p.add_argument("--encryption", default="none", choices=MODES)
    p.add_argument("--secret-key", default="")
    p.add_argument("--symmetric-key")
    p.add_argument("--platform-cert", help="file: the platform's certificate (PEM)")
    p.add_argument("--client-key", help="file: the client's RSA private key (PEM)")
    p.add_argument("--signature", default="md5", choices=("md5", "none"))
    p.add_argument("--token", action="store_true", help="fetch a token first")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest")
    kg = sub.add_parser("keygen", help="print a client private key and self-signed certificate")
    kg.add_argument("--bits", type=int, default=2048, choices=(1024, 2048))
    sub.add_parser("token")
    s = sub.add_parser("sign")
    s.add_argument("text")
    s.add_argument("--no-hash", action="store_true")
    x = sub.add_parser("sign-xml")
    x.add_argument("file")
    c = sub.add_parser("sign-179")
    c.add_argument("file", help="JSON file with the 179 payload")
    a = p.parse_args(argv)

    if a.cmd == "selftest":
        selftest()
        return 0
    if a.cmd == "keygen":
        key_pem, cert_pem = make_client_keypair(a.bits)
        print(key_pem + cert_pem, end="")
        return 0

    def read(path: str | None) -> str | None:
        return open(path, encoding="utf-8").read() if path else None

    client = AcsClient(a.base, a.sender, encryption=a.encryption, secret_key=a.secret_key,
                       symmetric_key=a.symmetric_key, platform_certificate_pem=read(a.platform_cert),
                       client_private_key_pem=read(a.client_key), signature=a.signature,
                       use_token=a.token)
    try:
        if a.cmd == "token":
            print(client.token())
            return 0
        if a.cmd == "sign":
            r = client.call("sign", {"data": a.text, "no_hash": a.no_hash})
        elif a.cmd == "sign-xml":
            r = client.call("sign/xml", {"xml": read(a.file)})
        else:
            r = client.call("sign/179", json.loads(read(a.file) or "{}"))
    except (AcsError, urllib.error.URLError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps({"http_status": r.http_status, "head": r.head, "sign_ok": r.sign_ok,
                      "decrypt_error": r.decrypt_error, "data": r.data}, ensure_ascii=False, indent=2))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
