"""Access IDs and the AppSecretService: secrets encrypted, rotation with grace, cache invalidation."""

import datetime
import io
import json

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from accessids.models import SCOPES, AccessId, AppSecret
from accessids.secrets import AppSecretService
from accessids.services import (
    AccessIdError,
    access_id_create,
    access_id_set_enabled,
    app_secret_revoke_previous,
    app_secret_rotate,
    grace_parse,
    scopes_parse,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _valid(key):
    return {(s.version, s.secret) for s in AppSecretService.valid_secrets(key)}


def _all_text_in_database() -> str:
    """Every row of every table of the platform, as text."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_create_returns_a_256_bit_secret_stored_only_encrypted():
    access, secret = access_id_create(name="ERP")
    assert access.key.startswith("AK") and len(access.key) == 22
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert sorted(access.scopes) == sorted(SCOPES)
    row = access.secrets.get()
    assert row.state == AppSecret.CURRENT and row.version == 1 and len(row.fingerprint) == 12
    assert secret not in _all_text_in_database()
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
        assert secret not in _all_text_in_database()


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
    assert scopes_parse(None) == list(SCOPES)
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
