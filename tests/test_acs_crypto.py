"""The access system's ciphers and signature (core/acs_crypto.py), checked against an
independent implementation of the spec's rules written here with the `cryptography` library
(not the platform's pycryptodome code): every mode round-trips both ways, RSA block sizes are
117/245 bytes, hybrid messages use a fresh session key, wrong keys and tampered text are refused."""

from __future__ import annotations

import hashlib
import os

import pytest
from Crypto.PublicKey import RSA
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core import acs_crypto as ac

TEXT = '{"data": "报关单 4403 \\"x\\"", "no_hash": false}'.encode() * 20  # several RSA blocks


def _aes_encrypt(key: bytes, plaintext: bytes) -> str:
    iv = os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return (iv + encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()).hex()


def _aes_decrypt(key: bytes, text: str) -> bytes:
    raw = bytes.fromhex(text)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return unpadder.update(decryptor.update(raw[16:]) + decryptor.finalize()) + unpadder.finalize()


def _rsa_keys(bits: int):
    key = RSA.generate(bits)
    theirs = serialization.load_pem_private_key(key.export_key(), password=None)
    return key, theirs


def _rsa_encrypt(public, plaintext: bytes) -> str:
    chunk = public.key_size // 8 - 11
    return b"".join(public.encrypt(plaintext[i:i + chunk], rsa_padding.PKCS1v15())
                    for i in range(0, len(plaintext), chunk)).hex()


def _rsa_decrypt(private, text: str) -> bytes:
    raw, size = bytes.fromhex(text), private.key_size // 8
    return b"".join(private.decrypt(raw[i:i + size], rsa_padding.PKCS1v15()) for i in range(0, len(raw), size))


def test_aes_both_ways_with_an_independent_implementation():
    key = os.urandom(16)
    keys = ac.AcsKeys(mode=ac.AES_MODE, symmetric=key)
    assert _aes_decrypt(key, ac.encrypt_for_party(keys, TEXT)) == TEXT
    assert ac.decrypt_from_party(keys, _aes_encrypt(key, TEXT)) == TEXT
    # A fresh IV every time.
    assert ac.encrypt_for_party(keys, TEXT) != ac.encrypt_for_party(keys, TEXT)
    with pytest.raises(ac.AcsCryptoError):
        ac.decrypt_from_party(ac.AcsKeys(mode=ac.AES_MODE, symmetric=os.urandom(16)), _aes_encrypt(key, b"x" * 40))


def test_des_round_trip_and_key_rules():
    key = ac.symmetric_key_bytes("12345678", "des")
    keys = ac.AcsKeys(mode=ac.DES_MODE, symmetric=key)
    text = ac.encrypt_for_party(keys, TEXT)
    assert len(bytes.fromhex(text)) % 8 == 0 and ac.decrypt_from_party(keys, text) == TEXT
    assert ac.symmetric_key_bytes("00" * 16, "aes") == bytes(16)
    assert len(bytes.fromhex(ac.symmetric_key_generate("aes"))) == 16
    with pytest.raises(ac.AcsCryptoError):
        ac.symmetric_key_bytes("short", "aes")
    with pytest.raises(ac.AcsCryptoError):
        ac.decrypt_from_party(keys, "zz")


@pytest.mark.parametrize("mode, bits, block", [(ac.RSA_MODE, 1024, 117), (ac.RSA2_MODE, 2048, 245)])
def test_rsa_blocks_both_ways(mode, bits, block):
    platform_key, platform_theirs = _rsa_keys(bits)
    party_key, party_theirs = _rsa_keys(bits)
    keys = ac.AcsKeys(mode=mode, private_key=platform_key, party_public_key=party_key.publickey())
    # What the party sends, encrypted with the platform's public key in 117/245-byte blocks.
    sent = _rsa_encrypt(platform_theirs.public_key(), TEXT)
    assert len(bytes.fromhex(sent)) == -(-len(TEXT) // block) * bits // 8
    assert ac.decrypt_from_party(keys, sent) == TEXT
    # What the platform answers, readable with the party's private key.
    assert _rsa_decrypt(party_theirs, ac.encrypt_for_party(keys, TEXT)) == TEXT
    with pytest.raises(ac.AcsCryptoError):  # encrypted for another key
        ac.decrypt_from_party(keys, _rsa_encrypt(party_theirs.public_key(), TEXT))


def test_hybrid_uses_a_fresh_session_key_each_message():
    platform_key, platform_theirs = _rsa_keys(2048)
    party_key, party_theirs = _rsa_keys(2048)
    keys = ac.AcsKeys(mode=ac.RSA_AES, private_key=platform_key, party_public_key=party_key.publickey())
    session = os.urandom(16)
    sent = f"{_rsa_encrypt(platform_theirs.public_key(), session)}.{_aes_encrypt(session, TEXT)}"
    assert ac.decrypt_from_party(keys, sent) == TEXT
    answers = [ac.encrypt_for_party(keys, TEXT) for _ in range(2)]
    sessions = [_rsa_decrypt(party_theirs, a.partition(".")[0]) for a in answers]
    assert sessions[0] != sessions[1] and all(len(s) == 16 for s in sessions)
    assert _aes_decrypt(sessions[0], answers[0].partition(".")[2]) == TEXT
    with pytest.raises(ac.AcsCryptoError):
        ac.decrypt_from_party(keys, _aes_encrypt(session, TEXT))  # no session key part
    des = ac.AcsKeys(mode=ac.RSA_DES, private_key=platform_key, party_public_key=party_key.publickey())
    assert ac.decrypt_from_party(ac.AcsKeys(mode=ac.RSA_DES, private_key=party_key),
                                 ac.encrypt_for_party(des, TEXT)) == TEXT


def test_the_md5_signature_of_sorted_non_empty_fields():
    fields = {"Sign": "ignored", "Token": "T0K", "Ccode": "000001", "Version": "", "Data": "ab12"}
    expected = hashlib.md5(b"Ccode=000001&Data=ab12&SecretKey=s3cret&Token=T0K").hexdigest()
    assert ac.acs_sign(fields, "s3cret") == expected
