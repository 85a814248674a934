"""Card certificates and the two signature schemes the cards use.

RSA cards: RSA-1024, PKCS#1 v1.5 over SHA-1 ("SHA1withRSA").
SM2 cards: SM2 over SM3 with the default user id 1234567812345678, raw r||s.
Certificates are parsed with asn1crypto because `cryptography` cannot load SM2 keys.

Every signature the platform hands out is verified first, so verification is compiled
code: `cryptography` (OpenSSL) for RSA, `tongsuopy` (Tongsuo, an OpenSSL with SM2) for
SM2 — about 0.03 ms and 0.25 ms; gmssl's pure-Python SM2 (10 ms) only where tongsuopy
cannot be imported. Keys outside sane sizes are refused when the certificate is read (a
45,000-bit RSA key would cost seconds of CPU per verification).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import secrets
import threading
from dataclasses import dataclass

from asn1crypto import algos as asn1_algos
from asn1crypto import x509 as asn1_x509
from Crypto.Hash import SHA1
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from gmssl import sm2 as gm_sm2

ALG_RSA = "RSA-SHA1"
ALG_SM2 = "SM2-SM3"

OID_SHA1_WITH_RSA = "1.2.840.113549.1.1.5"
OID_SM3_WITH_SM2 = "1.2.156.10197.1.501"
OID_SM2_CURVE = "1.2.156.10197.1.301"

SM2_ORDER = int(gm_sm2.default_ecc_table["n"], 16)
_SM2_P = int(gm_sm2.default_ecc_table["p"], 16)
_SM2_A = int(gm_sm2.default_ecc_table["a"], 16)
_SM2_B = int(gm_sm2.default_ecc_table["b"], 16)
RSA_BITS = (1024, 4096)  # accepted RSA modulus sizes, inclusive
RSA_EXPONENTS = (3, 65537)

try:  # compiled SM2 (see the module docstring)
    from tongsuopy.crypto import hashes as _ts_hashes
    from tongsuopy.crypto.asymciphers import ec as _ts_ec
    from tongsuopy.crypto.asymciphers.utils import encode_dss_signature as _ts_dss
    from tongsuopy.crypto.exceptions import InvalidSignature as _TsInvalidSignature
except ImportError:  # pragma: no cover - depends on the platform's wheels
    _ts_ec = None


class CertificateError(ValueError):
    """The card's certificate could not be read."""


class CertificateRefused(CertificateError):
    """A readable certificate whose key the platform will not work with (its size, its
    exponent, a point off the curve): verifying with it could cost seconds of CPU."""


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
    # The subject's organization (O=): the enterprise the card belongs to.
    organization: str = ""

    @property
    def der_base64(self) -> str:
        return base64.b64encode(self.der).decode("ascii")

    @property
    def pem(self) -> str:
        body = self.der_base64
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _organization(name: asn1_x509.Name) -> str:
    value = name.native.get("organization_name", "")
    if isinstance(value, list):  # several O= attributes: the first names the enterprise
        value = value[0] if value else ""
    return str(value).strip()


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
            x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
            if not (x < _SM2_P and y < _SM2_P and (y * y - x * x * x - _SM2_A * x - _SM2_B) % _SM2_P == 0):
                raise CertificateRefused("SM2 public key is not a point on the SM2 curve")
        elif key_alg == "rsa":
            rsa = spki["public_key"].parsed
            algorithm = ALG_RSA
            modulus, exponent = rsa["modulus"].native, rsa["public_exponent"].native
            bits = modulus.bit_length()
            if not RSA_BITS[0] <= bits <= RSA_BITS[1]:
                raise CertificateRefused(
                    f"RSA key of {bits} bits: only {RSA_BITS[0]} to {RSA_BITS[1]} bits are accepted")
            if exponent not in RSA_EXPONENTS:
                raise CertificateRefused(f"RSA public exponent {exponent}: only 3 and 65537 are accepted")
            public_key = RSA.construct((modulus, exponent))
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
            organization=_organization(cert.subject),
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
    """SM2-with-SM3 signature (default user id) as raw r||s, 64 bytes (Tongsuo's compiled
    SM2 where available, ~0.2 ms; gmssl's pure Python takes ~18 ms)."""
    if _ts_ec is not None:
        der = _sm2_private_key(private_hex).sign(data, _ts_ec.ECDSA(_ts_hashes.SM3()))
        pair = asn1_algos.DSASignature.load(der).native
        return pair["r"].to_bytes(32, "big") + pair["s"].to_bytes(32, "big")
    return sm2_sign_python(private_hex, public_hex, data)


@functools.lru_cache(maxsize=16)
def _sm2_private_key(private_hex: str):
    return _ts_ec.derive_private_key(int(private_hex, 16), _ts_ec.SM2())


def sm2_sign_python(private_hex: str, public_hex: str, data: bytes) -> bytes:
    """`sm2_sign` in pure Python (gmssl)."""
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


@functools.lru_cache(maxsize=64)
def _rsa_public_key(der: bytes):
    spki = asn1_x509.Certificate.load(der)["tbs_certificate"]["subject_public_key_info"].dump()
    return serialization.load_der_public_key(spki)


@functools.lru_cache(maxsize=64)
def _sm2_public_key(public_hex: str):
    return _ts_ec.EllipticCurvePublicKey.from_encoded_point(_ts_ec.SM2(), bytes.fromhex("04" + public_hex))


def _sm2_verify_fast(public_hex: str, data: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < SM2_ORDER and 0 < s < SM2_ORDER):
        return False
    try:
        _sm2_public_key(public_hex).verify(_ts_dss(r, s), data, _ts_ec.ECDSA(_ts_hashes.SM3()))
        return True
    except _TsInvalidSignature:
        return False


# SM2 verifications that succeeded: (public key, SHA-256 of the data, signature). A CEB
# document's signature is verified when the card returns it and again when the signed
# document is verified as a whole before it is handed out; an SM2 verification costs ~0.25 ms
# (RSA ~0.01 ms: not kept). Verification is a pure function of the three, so a success found
# here is a success; failures are always computed anew. Bounded, oldest dropped first.
_SM2_VERIFIED_MAX = 1024
_sm2_verified: dict[tuple[str, bytes, bytes], None] = {}
_sm2_verified_lock = threading.Lock()


def _sm2_verify_remembered(public_hex: str, data: bytes, signature: bytes) -> bool:
    key = (public_hex, hashlib.sha256(data).digest(), signature)
    if key in _sm2_verified:
        return True
    verified = (_sm2_verify_fast if _ts_ec is not None else sm2_verify)(public_hex, data, signature)
    if verified:
        with _sm2_verified_lock:
            while len(_sm2_verified) >= _SM2_VERIFIED_MAX:
                del _sm2_verified[next(iter(_sm2_verified))]
            _sm2_verified[key] = None
    return verified


def _decode(signature_b64: str) -> bytes | None:
    try:
        return base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def signature_verify(cert: CertificateInfo, data: bytes, signature_b64: str) -> bool:
    """Does `signature_b64` verify over `data` with the certificate's key?"""
    signature = _decode(signature_b64)
    if signature is None:
        return False
    if cert.algorithm == ALG_SM2:
        return _sm2_verify_remembered(cert.public_key, data, signature)
    try:
        _rsa_public_key(cert.der).verify(signature, data, padding.PKCS1v15(), hashes.SHA1())
        return True
    except InvalidSignature:
        return False


def signature_verify_digest(cert: CertificateInfo, sha1_digest: bytes, signature_b64: str) -> bool:
    """A signature made over an already computed SHA-1 digest (`SpcSignDataNoHashAsPEM`).
    RSA: PKCS#1 v1.5 with that digest. SM2 has no "sign this SHA-1" in its scheme; the
    card signs the 20 digest bytes as the message, as the simulator does."""
    signature = _decode(signature_b64)
    if signature is None:
        return False
    if cert.algorithm == ALG_SM2:
        return signature_verify(cert, sha1_digest, signature_b64)
    try:
        _rsa_public_key(cert.der).verify(signature, sha1_digest, padding.PKCS1v15(),
                                         utils.Prehashed(hashes.SHA1()))
        return True
    except InvalidSignature:
        return False
