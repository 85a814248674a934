"""The access system party's settings, keys and certificates (accessids/acs.py) and their
commands: the operations behind the admin's four buttons, each audited in its transaction,
with keys and private keys only encrypted in the database."""

from __future__ import annotations

import datetime
import io

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from django.core.management import CommandError, call_command
from django.utils import timezone

from accessids.acs import (
    acs_cert_generate,
    acs_cert_upload,
    acs_key_set,
    acs_key_use_new,
    acs_settings_set,
    acs_valid_keys,
)
from accessids.models import AcsParty
from accessids.services import AccessIdError, access_id_create
from audit.chain import chain_verify
from audit.models import AuditEvent
from core import acs_crypto
from tests.conftest import database_text

pytestmark = pytest.mark.django_db


def party_of(access):
    return AcsParty.objects.get(access_id=access)


def make_cert(key, *, days=365, start_days=-1):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "party 000001")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now + datetime.timedelta(days=start_days))
            .not_valid_after(now + datetime.timedelta(days=days)).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM))


def test_settings_refuse_an_open_party_unless_confirmed_and_sender_codes_are_unique():
    access, _ = access_id_create(name="ACS party")
    with pytest.raises(AccessIdError, match="sender code"):
        acs_settings_set(access_id=access, encryption="aes")
    acs_settings_set(access_id=access, sender_code="000001", encryption="aes")
    with pytest.raises(AccessIdError, match="fully open"):
        acs_settings_set(access_id=access, encryption="none", signature="none", token_required=False)
    assert party_of(access).encryption == "aes"  # nothing changed
    party = acs_settings_set(access_id=access, encryption="none", signature="none", token_required=False,
                             open_confirmed=True)
    assert party.fully_open
    other, _ = access_id_create(name="other")
    with pytest.raises(AccessIdError, match="already belongs"):
        acs_settings_set(access_id=other, sender_code="000001")
    with pytest.raises(AccessIdError, match="choose from"):
        acs_settings_set(access_id=access, encryption="rc4")
    events = AuditEvent.objects.filter(event_type=AuditEvent.ACS_CHANGED, access_id=access).order_by("id")
    assert [e.details["changed"] for e in events] == [
        ["sender_code"], ["encryption", "open_confirmed", "signature", "token_required"]]
    assert events[0].message.startswith("created: ")
    assert events[1].details["fully_open"] is True and events[0].profile == "acs"


def test_set_key_pending_then_use_new_with_grace():
    access, _ = access_id_create(name="ACS party")
    acs_settings_set(access_id=access, sender_code="000002", encryption="aes")
    with pytest.raises(AccessIdError, match="16 characters"):
        acs_key_set(access_id=access, key="too-short")
    first = acs_key_set(access_id=access, key="0123456789abcdef")
    assert acs_valid_keys(party_of(access)) == []  # pending: not in use yet
    acs_key_use_new(access_id=access)
    assert acs_valid_keys(party_of(access)) == [first]
    second = acs_key_set(access_id=access)  # generated
    assert len(acs_crypto.symmetric_key_bytes(second, "aes")) == 16
    acs_key_use_new(access_id=access, grace=datetime.timedelta(hours=1))
    party = party_of(access)
    assert party.key_version == 2 and acs_valid_keys(party) == [second, first]  # old one in its grace
    assert acs_valid_keys(party, now=timezone.now() + datetime.timedelta(hours=2)) == [second]
    with pytest.raises(AccessIdError, match="no pending key"):
        acs_key_use_new(access_id=access)
    acs_key_set(access_id=access)
    acs_key_use_new(access_id=access, grace=datetime.timedelta(0))
    assert len(acs_valid_keys(party_of(access))) == 1  # no grace: the old key is gone at once
    # Keys never in clear in the database, never in an event.
    text = database_text()
    assert first not in text and second not in text
    kinds = [e.event_type for e in AuditEvent.objects.filter(access_id=access).order_by("id")]
    assert kinds.count(AuditEvent.ACS_KEY_SET) == 3 and kinds.count(AuditEvent.ACS_KEY_USED) == 3
    assert chain_verify().ok


def test_des_keys_are_eight_bytes():
    access, _ = access_id_create(name="DES party")
    acs_settings_set(access_id=access, sender_code="000003", encryption="des")
    assert len(acs_crypto.symmetric_key_bytes(acs_key_set(access_id=access), "des")) == 8
    with pytest.raises(AccessIdError, match="8 characters"):
        acs_key_set(access_id=access, key="0123456789abcdeX")  # 16 characters, not hex


@pytest.mark.parametrize("mode, bits", [("rsa", 1024), ("rsa2", 2048), ("rsa+aes", 2048)])
def test_generate_certificate_makes_a_key_pair_of_the_mode_size(mode, bits):
    access, _ = access_id_create(name=f"{mode} party")
    acs_settings_set(access_id=access, sender_code=f"S-{mode}", encryption=mode)
    pem = acs_cert_generate(access_id=access)
    certificate = x509.load_pem_x509_certificate(pem.encode())
    assert certificate.public_key().key_size == bits
    party = party_of(access)
    assert "PRIVATE KEY" not in database_text() and party.certificate_pem == pem
    # What the party encrypts with the certificate, the platform decrypts with its stored key.
    from accessids.acs import PRIVATE_KEY_PURPOSE
    from core.encryption import secret_decrypt
    private = acs_crypto.rsa_key_load(secret_decrypt(party.private_key_encrypted, purpose=PRIVATE_KEY_PURPOSE))
    public = acs_crypto.rsa_key_load(certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert acs_crypto.rsa_decrypt(private, acs_crypto.rsa_encrypt(public, b"x" * 300)) == b"x" * 300
    (event,) = AuditEvent.objects.filter(event_type=AuditEvent.ACS_CERT_GENERATED, access_id=access)
    assert event.details["bits"] == bits


def test_upload_encryption_certificate_is_validated():
    access, _ = access_id_create(name="RSA party")
    acs_settings_set(access_id=access, sender_code="000004", encryption="rsa2")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "not a certificate": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "not RSA": make_cert(ec.generate_private_key(ec.SECP256R1())),
        "expired": make_cert(key, days=-1, start_days=-30),
        "not yet valid": make_cert(key, days=30, start_days=2),
    }
    for reason, pem in refused.items():
        with pytest.raises(AccessIdError):
            acs_cert_upload(access_id=access, pem=pem)
        assert not party_of(access).party_certificate_pem, reason
    party = acs_cert_upload(access_id=access, pem=make_cert(key))
    assert party.party_certificate_subject == "CN=party 000001"
    assert len(party.party_certificate_fingerprint) == 64 and party.party_certificate_not_after > timezone.now()
    (event,) = AuditEvent.objects.filter(event_type=AuditEvent.ACS_CERT_UPLOADED, access_id=access)
    assert event.details["fingerprint"] == party.party_certificate_fingerprint and event.details["bits"] == 2048


def test_the_commands(tmp_path, monkeypatch):
    access, _ = access_id_create(name="ACS by command")

    def run(*args):
        out = io.StringIO()
        call_command("accessid", *args, stdout=out)
        return out.getvalue()

    assert "sender 000009" in run("acs", access.key, "--sender", "000009", "--encryption", "rsa+aes",
                                  "--signature", "md5", "--token")
    with pytest.raises(CommandError, match="fully open"):
        run("acs", access.key, "--encryption", "none", "--signature", "none", "--no-token")
    assert "FULLY OPEN" in run("acs", access.key, "--encryption", "none", "--signature", "none", "--no-token",
                               "--open")
    run("acs", access.key, "--encryption", "rsa+aes", "--token")
    generated = run("acs-key", access.key, "--generate").strip().splitlines()[-1]
    assert "--use-new" in run("acs-key", access.key, "--set", "0123456789abcdef0123")
    monkeypatch.setenv("ACS_KEY", generated)
    run("acs-key", access.key, "--set-env", "ACS_KEY")
    assert "key version 1 in use" in run("acs-key", access.key, "--use-new", "--grace-seconds", "60")
    out = tmp_path / "platform.pem"
    assert str(out) in run("acs-cert", access.key, "--generate", "--out", str(out))
    x509.load_pem_x509_certificate(out.read_bytes())
    theirs = tmp_path / "party.pem"
    theirs.write_bytes(make_cert(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert "CN=party 000001" in run("acs-cert", access.key, "--upload", str(theirs))
    with pytest.raises(CommandError, match="cannot read"):
        run("acs-cert", access.key, "--upload", str(tmp_path / "missing.pem"))
    # The profile itself, like the others (it has no time window: its requests carry none).
    listing = run("profile", access.key, "--enable", "acs")
    assert f"{access.key}: profile acs enabled" in listing and "acs          on  tokens live 2 h" in listing
    with pytest.raises(CommandError, match="no time window"):
        run("profile", access.key, "--enable", "acs", "--window-seconds", "60")
    with pytest.raises(CommandError, match="no default access ID"):
        run("profile", access.key, "--enable", "acs", "--default")
    assert "acs          off" in run("profile", access.key, "--disable", "acs")
    sources = set(AuditEvent.objects.filter(access_id=access, profile="acs").values_list("source", flat=True))
    assert sources == {"command"}


def test_tokens_are_hashed_several_live_at_once_but_not_without_bound(monkeypatch):
    from accessids import acs
    from accessids.acs import acs_party_lookup, acs_token_check, acs_token_issue
    from accessids.models import AcsToken

    access, _ = access_id_create(name="tokens")
    acs_settings_set(access_id=access, sender_code="S-TOKENS", encryption="aes")
    info = acs_party_lookup("S-TOKENS")
    monkeypatch.setattr(acs, "MAX_TOKENS", 3)
    issued = [acs_token_issue(info=info)[0] for _ in range(5)]
    assert AcsToken.objects.filter(party__access_id=access).count() == 3
    stored = set(AcsToken.objects.values_list("token_sha256", flat=True))
    assert not stored & set(issued)  # only hashes are kept
    for token in issued[2:]:
        acs_token_check(info=info, token=token)
    for token in issued[:2]:
        with pytest.raises(acs.AcsTokenError, match="not valid"):
            acs_token_check(info=info, token=token)
