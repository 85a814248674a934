"""Card certificates and the two signature schemes the cards use.

RSA cards: RSA-1024, PKCS#1 v1.5 over SHA-1 ("SHA1withRSA").
SM2 cards: SM2 over SM3 with the default user id 1234567812345678, raw r||s.
Certificates are parsed with asn1crypto because `cryptography` cannot load SM2 keys.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import secrets
from dataclasses import dataclass

from asn1crypto import x509 as asn1_x509
from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from gmssl import sm2 as gm_sm2

ALG_RSA = "RSA-SHA1"
ALG_SM2 = "SM2-SM3"

OID_SHA1_WITH_RSA = "1.2.840.113549.1.1.5"
OID_SM3_WITH_SM2 = "1.2.156.10197.1.501"
OID_SM2_CURVE = "1.2.156.10197.1.301"

SM2_ORDER = int(gm_sm2.default_ecc_table["n"], 16)


class CertificateError(ValueError):
    """The card's certificate could not be read."""


@dataclass(frozen=True)
class CertificateInfo:
    der: bytes
    algorithm: str
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial_number: int
    # RSA: a pycryptodome key; SM2: the public point x||y as 128 hex digits.
    public_key: object

    @property
    def der_base64(self) -> str:
        return base64.b64encode(self.der).decode("ascii")

    @property
    def pem(self) -> str:
        body = self.der_base64
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@functools.lru_cache(maxsize=64)
def certificate_load(value: bytes | str) -> CertificateInfo:
    """Load a certificate given as DER bytes, base64 DER (what the card returns) or PEM.
    Cached: the same few card certificates are loaded for every signature checked."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-----BEGIN"):
            text = "".join(line for line in text.splitlines() if not line.startswith("-----"))
        try:
            der = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise CertificateError("certificate is not valid base64") from None
    else:
        der = bytes(value)
    try:
        cert = asn1_x509.Certificate.load(der, strict=True)
        sig_oid = cert["signature_algorithm"]["algorithm"].dotted
        spki = cert["tbs_certificate"]["subject_public_key_info"]
        key_alg = spki["algorithm"]["algorithm"].native
        if sig_oid == OID_SM3_WITH_SM2 or (
            key_alg == "ec" and spki["algorithm"]["parameters"].chosen.dotted == OID_SM2_CURVE
        ):
            point = spki["public_key"].native
            if len(point) != 65 or point[0] != 4:
                raise CertificateError("SM2 public key is not an uncompressed point")
            algorithm, public_key = ALG_SM2, point[1:].hex()
        elif key_alg == "rsa":
            rsa = spki["public_key"].parsed
            algorithm = ALG_RSA
            public_key = RSA.construct((rsa["modulus"].native, rsa["public_exponent"].native))
        else:
            raise CertificateError(f"unsupported certificate key algorithm {key_alg}")
        return CertificateInfo(
            der=der,
            algorithm=algorithm,
            subject=cert.subject.human_friendly,
            not_before=cert.not_valid_before,
            not_after=cert.not_valid_after,
            serial_number=cert.serial_number,
            public_key=public_key,
        )
    except CertificateError:
        raise
    except Exception as exc:  # asn1crypto raises many types for malformed input
        raise CertificateError(f"certificate could not be parsed: {exc.__class__.__name__}") from None


def _sm2(public_hex: str, private_hex: str | None = None) -> gm_sm2.CryptSM2:
    crypt = gm_sm2.CryptSM2(private_key=private_hex, public_key="")
    # Set after construction: gmssl strips a "04" prefix with lstrip, which also eats
    # leading 0/4 digits of the x coordinate.
    crypt.public_key = public_hex
    return crypt


def sm2_sign(private_hex: str, public_hex: str, data: bytes) -> bytes:
    """SM2-with-SM3 signature (default user id) as raw r||s, 64 bytes."""
    crypt = _sm2(public_hex, private_hex)
    while True:
        k = "%064x" % (secrets.randbelow(SM2_ORDER - 1) + 1)
        signature = crypt.sign_with_sm3(data, k)
        if signature:
            return bytes.fromhex(signature)


def sm2_verify(public_hex: str, data: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < SM2_ORDER and 0 < s < SM2_ORDER):
        return False
    return bool(_sm2(public_hex).verify_with_sm3(signature.hex(), data))


def rsa_sha1_sign(key: RSA.RsaKey, data: bytes) -> bytes:
    return pkcs1_15.new(key).sign(SHA1.new(data))


def rsa_sha1_sign_digest(key: RSA.RsaKey, sha1_digest: bytes) -> bytes:
    """Sign an already computed SHA-1 digest (what SpcSignDataNoHashAsPEM does)."""

    class _Prehashed:
        oid = "1.3.14.3.2.26"
        digest_size = SHA1.digest_size

        def digest(self) -> bytes:
            return sha1_digest

    return pkcs1_15.new(key).sign(_Prehashed())


def signature_verify(cert: CertificateInfo, data: bytes, signature_b64: str) -> bool:
    """Does `signature_b64` verify over `data` with the certificate's key?"""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    if cert.algorithm == ALG_SM2:
        return sm2_verify(cert.public_key, data, signature)
    try:
        pkcs1_15.new(cert.public_key).verify(SHA1.new(data), signature)
        return True
    except (ValueError, TypeError):
        return False
