"""Access IDs and the AppSecretService: secrets encrypted, rotation with grace, cache invalidation."""

import datetime
import io
import json
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone

from accessids.models import DEFAULT_SCOPES, AccessId, AppSecret
from accessids.secrets import AppSecretService
from accessids.services import (
    AccessIdError,
    access_id_create,
    access_id_set_enabled,
    access_id_set_legacy_key,
    app_secret_revoke_previous,
    app_secret_rotate,
    grace_parse,
    legacy_keys_all,
    scopes_parse,
)
from audit.models import AuditEvent
from core.legacy_cipher import legacy_key_fold
from tests.conftest import database_text

pytestmark = pytest.mark.django_db(transaction=True)


def _valid(key):
    return {(s.version, s.secret) for s in AppSecretService.valid_secrets(key)}


def test_create_returns_a_256_bit_secret_stored_only_encrypted():
    access, secret = access_id_create(name="ERP")
    assert access.key.startswith("AK") and len(access.key) == 22
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert sorted(access.scopes) == sorted(DEFAULT_SCOPES) and "xml_read_all" not in access.scopes
    assert "rpc" not in access.scopes and access.allowed_methods == []  # the card itself only on purpose
    row = access.secrets.get()
    assert row.state == AppSecret.CURRENT and row.version == 1 and len(row.fingerprint) == 12
    assert secret not in database_text()
    assert _valid(access.key) == {(1, secret)}


def test_rotation_with_grace_keeps_the_previous_secret_until_it_ends():
    access, first = access_id_create(name="WMS")
    _, second = app_secret_rotate(access_id=access, grace=datetime.timedelta(hours=1))
    assert _valid(access.key) == {(1, first), (2, second)}
    later = timezone.now() + datetime.timedelta(hours=1, seconds=1)
    assert {(s.version, s.secret) for s in AppSecretService.valid_secrets(access.key, now=later)} == {(2, second)}


def test_rotation_without_grace_revokes_at_once():
    access, first = access_id_create(name="OMS")
    _, second = app_secret_rotate(access_id=access, grace=datetime.timedelta(0))
    assert _valid(access.key) == {(2, second)}
    assert access.secrets.get(version=1).state == AppSecret.REVOKED


def test_second_rotation_revokes_the_older_previous_secret():
    access, first = access_id_create(name="TMS")
    _, second = app_secret_rotate(access_id=access, grace=datetime.timedelta(days=7))
    _, third = app_secret_rotate(access_id=access, grace=datetime.timedelta(days=7))
    assert _valid(access.key) == {(2, second), (3, third)}
    states = dict(access.secrets.values_list("version", "state"))
    assert states == {1: "revoked", 2: "previous", 3: "current"}
    app_secret_revoke_previous(access_id=access)
    assert _valid(access.key) == {(3, third)}
    for secret in (first, second, third):
        assert secret not in database_text()


def test_changes_take_effect_through_the_shared_cache_at_once():
    access, first = access_id_create(name="Cached")
    info = AppSecretService.lookup(access.key)
    assert info.enabled and cache.get(f"accessid:auth:{access.key}") == info
    access_id_set_enabled(access_id=access, enabled=False)
    assert AppSecretService.lookup(access.key).enabled is False
    _, second = app_secret_rotate(access_id=access, grace=datetime.timedelta(0))
    assert _valid(access.key) == {(2, second)}
    # The cache holds ciphertext only.
    assert first not in repr(cache.get(f"accessid:auth:{access.key}")) and second not in repr(
        AppSecretService.lookup(access.key)
    )


def test_unknown_access_id_has_no_secrets():
    assert AppSecretService.lookup("AKNOSUCHID") is None
    assert AppSecretService.valid_secrets("AKNOSUCHID") == []


def test_grace_and_scope_parsing():
    assert grace_parse("0") == datetime.timedelta(0)
    assert grace_parse("1h") == datetime.timedelta(hours=1)
    assert grace_parse("24h") == datetime.timedelta(hours=24)
    assert grace_parse("7d") == datetime.timedelta(days=7)
    with pytest.raises(AccessIdError):
        grace_parse("soon")
    assert scopes_parse("sign, rpc") == ["sign", "rpc"]
    assert scopes_parse(None) == list(DEFAULT_SCOPES)
    with pytest.raises(AccessIdError, match="unknown scope"):
        scopes_parse("sign,admin")


def test_command_create_json_prints_only_the_pair():
    out = io.StringIO()
    call_command("accessid", "create", "--name", "Java client", "--scopes", "sign,sign_xml", "--json", stdout=out)
    payload = json.loads(out.getvalue())
    assert set(payload) == {"access_id", "secret"}
    access = AccessId.objects.get(key=payload["access_id"])
    assert access.scopes == ["sign", "sign_xml"]
    assert _valid(access.key) == {(1, payload["secret"])}


def test_command_rotate_list_disable_enable():
    access, first = access_id_create(name="Ops")
    out = io.StringIO()
    call_command("accessid", "rotate", access.key, "--grace", "0", "--json", stdout=out)
    rotated = json.loads(out.getvalue())
    assert rotated["access_id"] == access.key and rotated["secret_version"] == 2
    assert _valid(access.key) == {(2, rotated["secret"])}
    call_command("accessid", "disable", access.key, stdout=io.StringIO())
    listing = io.StringIO()
    call_command("accessid", "list", stdout=listing)
    assert access.key in listing.getvalue() and "disabled" in listing.getvalue()
    assert rotated["secret"] not in listing.getvalue()
    call_command("accessid", "enable", access.key, stdout=io.StringIO())
    assert AppSecretService.lookup(access.key).enabled is True
    with pytest.raises(CommandError, match="no access ID"):
        call_command("accessid", "rotate", "AKMISSING")
    with pytest.raises(CommandError, match="unknown scope"):
        call_command("accessid", "create", "--name", "x", "--scopes", "everything")


def test_rotate_master_key_reencrypts_secrets_and_pins(tmp_path, settings):
    from core.encryption import MasterKeyError, master_key, secret_decrypt
    from signing.models import CardDevice
    from signing.services import card_device_pin, card_device_set_pin

    key_file = tmp_path / "master.key"
    key_file.write_text(Path(settings.SIGNPLATFORM_MASTER_KEY_FILE).read_text())
    settings.SIGNPLATFORM_MASTER_KEY_FILE = key_file
    old_key = master_key()
    access, secret = access_id_create(name="ERP")
    device = card_device_set_pin(device=CardDevice.objects.create(slug="k", url="ws://127.0.0.1:9"), pin="12345678")
    old_stored = access.secrets.get().secret_encrypted
    access_id_set_legacy_key(access_id=access, legacy_key="1234567887654321")
    access.refresh_from_db()
    old_legacy = (access.legacy_aes_key_encrypted, access.legacy_key_fingerprint)
    from accessids.acs import acs_cert_generate, acs_key_set, acs_key_use_new, acs_settings_set, acs_valid_keys
    from accessids.models import AcsParty
    acs_settings_set(access_id=access, sender_code="000001", encryption="rsa+aes")
    acs_key = acs_key_set(access_id=access)
    acs_key_use_new(access_id=access)
    acs_cert_generate(access_id=access)
    old_private = AcsParty.objects.get().private_key_encrypted

    out = io.StringIO()
    call_command("rotate_master_key", stdout=out)
    assert ("Re-encrypted 1 App Secret(s), 1 card PIN(s), 1 legacy AES key(s), 0 webhook secret(s), "
            "1 access system key(s), 0 pending access system key(s), 0 previous access system key(s) and "
            "1 access system private key(s)" in out.getvalue()), out.getvalue()
    party = AcsParty.objects.get()
    assert acs_valid_keys(party) == [acs_key] and party.private_key_encrypted != old_private
    assert "PRIVATE KEY" in secret_decrypt(party.private_key_encrypted, purpose="acs-private-key")
    access.refresh_from_db()
    # Both the ciphertext and the keyed fingerprint move to the new key; the key still identifies.
    assert access.legacy_aes_key_encrypted != old_legacy[0] and access.legacy_key_fingerprint != old_legacy[1]
    assert legacy_keys_all() == [(access.key, legacy_key_fold("1234567887654321"))]
    assert (tmp_path / "master.key.previous").read_text() != key_file.read_text()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert master_key() != old_key
    assert _valid(access.key) == {(1, secret)}
    device.refresh_from_db()
    assert card_device_pin(device=device) == "12345678"
    assert access.secrets.get().secret_encrypted != old_stored
    with pytest.raises(MasterKeyError):
        secret_decrypt(access.secrets.get().secret_encrypted, purpose="app-secret", key=old_key)
    assert AuditEvent.objects.filter(event_type=AuditEvent.MASTER_KEY_ROTATED).count() == 1


def test_rotate_master_key_changes_nothing_when_a_value_does_not_decrypt(tmp_path, settings, monkeypatch):
    from core.encryption import master_key_generate
    from signing.models import CardDevice

    key_file = tmp_path / "master.key"
    key_file.write_text(Path(settings.SIGNPLATFORM_MASTER_KEY_FILE).read_text())
    settings.SIGNPLATFORM_MASTER_KEY_FILE = key_file
    access, secret = access_id_create(name="ERP")
    CardDevice.objects.create(slug="broken", url="ws://127.0.0.1:9", pin_encrypted="gcm1:00000000:AAAA")
    before = key_file.read_text()
    monkeypatch.setenv("NEW_MASTER_KEY", master_key_generate())
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("rotate_master_key", "--new-key-env", "NEW_MASTER_KEY")
    assert key_file.read_text() == before and not (tmp_path / "master.key.new").exists()
    assert _valid(access.key) == {(1, secret)}


def test_command_legacy_key_create_set_remove_and_refuse_duplicates(monkeypatch):
    out = io.StringIO()
    call_command("accessid", "create", "--name", "Java", "--legacy-aes-key", "k-0001", "--json", stdout=out)
    first = AccessId.objects.get(key=json.loads(out.getvalue())["access_id"])
    assert first.has_legacy_key and "k-0001" not in first.legacy_aes_key_encrypted
    # A duplicate key is refused and the access ID it would have created does not exist.
    with pytest.raises(CommandError, match="already belongs to access ID"):
        call_command("accessid", "create", "--name", "Java 2", "--legacy-aes-key", "k-0001", stdout=io.StringIO())
    assert not AccessId.objects.filter(name="Java 2").exists()
    second, _ = access_id_create(name="Go proxy")
    monkeypatch.setenv("LEGACY_KEY", "k-0002")
    call_command("accessid", "legacy-key", second.key, "--legacy-aes-key-env", "LEGACY_KEY", stdout=out)
    assert {key for key, _ in legacy_keys_all()} == {first.key, second.key}
    call_command("accessid", "legacy-key", first.key, "--remove", stdout=out)
    assert [key for key, _ in legacy_keys_all()] == [second.key]
    with pytest.raises(CommandError, match="give --legacy-aes-key"):
        call_command("accessid", "legacy-key", first.key)
    assert "k-0001" not in database_text() and "k-0002" not in database_text()


def test_every_change_writes_one_audit_event_without_secrets():
    out = io.StringIO()
    call_command("accessid", "create", "--name", "ERP", "--json", stdout=out)
    pair = json.loads(out.getvalue())
    call_command("accessid", "rotate", pair["access_id"], "--grace", "1h", "--json", stdout=out)
    second = json.loads(out.getvalue().splitlines()[-1])["secret"]
    call_command("accessid", "disable", pair["access_id"], stdout=out)
    call_command("accessid", "disable", pair["access_id"], stdout=out)  # no change, no event
    call_command("accessid", "enable", pair["access_id"], stdout=out)
    access = AccessId.objects.get(key=pair["access_id"])
    app_secret_revoke_previous(access_id=access)
    events = list(AuditEvent.objects.filter(access_id=access).order_by("id"))
    assert [e.event_type for e in events] == [
        AuditEvent.ACCESS_ID_CREATED, AuditEvent.ACCESS_ID_ROTATED, AuditEvent.ACCESS_ID_DISABLED,
        AuditEvent.ACCESS_ID_ENABLED, AuditEvent.ACCESS_ID_PREVIOUS_REVOKED,
    ]
    assert all(e.source == "command" and e.access_key == access.key for e in events)
    assert events[1].details["grace_seconds"] == 3600 and events[1].details["new_version"] == 2
    assert events[4].details["revoked_versions"] == [1]
    rows = database_text()
    assert pair["secret"] not in rows and second not in rows


# --- names and the defaults of a new access ID -------------------------------------------------


def test_two_access_ids_never_share_a_name_whatever_the_case_or_width():
    from django.db import IntegrityError, transaction

    from accessids.forms import AccessIdForm
    from accessids.services import access_id_update
    from audit.services import COMMAND

    first, _ = access_id_create(name="ERP Ningbo")
    for taken in ("erp ningbo", "  ERP NINGBO ", "ＥＲＰ Ｎｉｎｇｂｏ"):  # the last in full-width letters
        with pytest.raises(AccessIdError, match=f"taken by access ID {first.key}"):
            access_id_create(name=taken)
    with pytest.raises(CommandError, match="taken"):
        call_command("accessid", "create", "--name", "Erp Ningbo", stdout=io.StringIO())
    form = AccessIdForm(data={"name": "erp ningbo", "rate_limit_per_minute": "600", "scopes": ["sign"]})
    assert not form.is_valid() and first.key in form.errors["name"][0]
    assert AccessId.objects.count() == 1 and not AuditEvent.objects.filter(details__name="erp ningbo").exists()
    # Renaming onto a taken name is refused too; keeping one's own name in another case is not.
    second, _ = access_id_create(name="ERP Shanghai")
    second.name = "erp NINGBO"
    with pytest.raises(AccessIdError):
        access_id_update(access_id=second, changed=["name"], context=COMMAND)
    first.name = "ERP NINGBO"
    access_id_update(access_id=first, changed=["name"], context=COMMAND)
    # And the database refuses a second one that bypasses the services (two admins at once).
    with pytest.raises(IntegrityError), transaction.atomic():
        AccessId.objects.create(key="AK0000000000000000TEST", name="erp ningbo")


def test_the_command_gives_the_signing_scopes_and_the_card_methods_only_when_named():
    from ukey.protocol import RPC_METHODS

    def create(*args):
        out = io.StringIO()
        call_command("accessid", "create", *args, "--json", stdout=out)
        return AccessId.objects.get(key=json.loads(out.getvalue())["access_id"])

    plain = create("--name", "ERP")
    assert plain.scopes == list(DEFAULT_SCOPES) and plain.allowed_methods == []
    with pytest.raises(CommandError, match="--methods"):
        create("--name", "card tool", "--scopes", "sign,rpc")
    chosen = create("--name", "card tool", "--scopes", "sign,rpc", "--methods", "cus-sec_SpcGetCertNo")
    assert chosen.scopes == ["sign", "rpc"] and chosen.allowed_methods == ["cus-sec_SpcGetCertNo"]
    everything = create("--name", "card admin", "--scopes", "rpc", "--methods", "all")
    assert everything.allowed_methods == list(RPC_METHODS)
    with pytest.raises(CommandError, match="unknown card method"):
        create("--name", "typo", "--scopes", "rpc", "--methods", "cus-sec_SpcSignData")
