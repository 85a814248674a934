"""The access ID admin: the secret shown once (and nowhere else), rotation confirmed with
the admin's password and a grace period, revocation, enable/disable, separate
permissions for looking, editing, creating and rotating, audit events with the acting
user; then the same through headless Chromium against a real server, with the secrets
it shows used for real signed API calls."""

from __future__ import annotations

import datetime
import re

import pytest
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.models import Session
from django.core.cache import caches
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from accessids.models import DEFAULT_SCOPES, AccessId
from accessids.secrets import AppSecretService
from accessids.services import access_id_create, access_id_mark_used, app_secret_rotate
from audit.models import AuditEvent
from signclient import ApiError, SignClient
from tests.admin_users import PASSWORD, admin_login, admin_platform, client_for, fast_hashers, user_make  # noqa: F401  (fixtures)
from tests.conftest import database_text
from tests.live import poll

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

SECRET_RE = re.compile(r'id="app-secret" value="([A-Za-z0-9_-]+)"')
CHANGELIST = "/admin/accessids/accessid/"


def url(access: AccessId, action: str = "change", token: str = "") -> str:
    if action == "reveal":
        return reverse("admin:accessids_accessid_reveal", args=[access.pk, token])
    return reverse(f"admin:accessids_accessid_{action}", args=[access.pk])


@pytest.fixture
def chief():
    return user_make("chief", superuser=True)


def versions(key: str) -> dict[int, str]:
    return {s.version: s.secret for s in AppSecretService.valid_secrets(key)}


def events(access: AccessId, event_type: str | None = None):
    qs = AuditEvent.objects.filter(access_id=access).exclude(event_type=AuditEvent.API_REQUEST)
    return list(qs.filter(event_type=event_type) if event_type else qs)


def cache_bytes() -> bytes:
    """Every value of every cache, raw (pickled) bytes."""
    chunks: list[bytes] = []
    for alias in ("default", "nonces"):
        backend = caches[alias]
        store = getattr(backend, "_cache", None)
        if isinstance(store, dict):  # local memory
            chunks.extend(v for v in store.values() if isinstance(v, bytes))
            continue
        from django_redis import get_redis_connection

        redis = get_redis_connection(alias)
        for key in redis.scan_iter(count=1000):
            kind = redis.type(key)
            if kind == b"string":
                chunks.append(redis.get(key) or b"")
            elif kind == b"hash":
                chunks.extend(k + v for k, v in redis.hgetall(key).items())
            elif kind == b"list":
                chunks.extend(redis.lrange(key, 0, -1))
            elif kind == b"set":
                chunks.extend(redis.smembers(key))
            elif kind == b"zset":
                chunks.extend(redis.zrange(key, 0, -1))
            chunks.append(key)
    return b"\n".join(chunks)


def cookie_messages(response) -> list[str]:
    cookie = response.cookies.get("messages")
    if cookie is None or not cookie.value:
        return []
    storage = CookieStorage(RequestFactory().get("/"))
    return [str(m) for m in storage._decode(cookie.value) or []]


def reveal(client: Client, location: str):
    response = client.get(location)
    assert response.status_code == 200, response.content[:500]
    assert "no-store" in response["Cache-Control"]
    match = SECRET_RE.search(response.content.decode())
    assert match, "the reveal page shows the secret"
    return response, match.group(1)


def assert_secret_nowhere(secret: str, *texts: str) -> None:
    assert secret not in database_text()  # session table, admin log, audit, secrets (encrypted)
    for session in Session.objects.all():
        assert secret not in repr(session.get_decoded())
    assert secret.encode() not in cache_bytes()
    for text in texts:
        assert secret not in text


def test_create_shows_the_secret_once_and_nowhere_else(chief):
    client = client_for(chief)
    add = client.get(reverse("admin:accessids_accessid_add"))
    page = add.content.decode()
    # Checkboxes, not JSON; networks one per line; devices a multi-select.
    assert page.count('type="checkbox" name="scopes"') == 10 and 'name="allowed_methods"' in page
    assert '<textarea name="allowed_networks"' in page and '<select name="devices"' in page and "multiple" in page
    assert "Save and add another" not in page

    form = {
        "name": "ERP – Ningbo", "description": "contact: Li", "enabled": "on", "scopes": ["sign", "rpc"],
        "allowed_methods": ["cus-sec_SpcGetCertNo"], "allowed_networks": "10.20.0.0/16\n\n192.168.1.20\n",
        "rate_limit_per_minute": "120", "expires_at_0": "", "expires_at_1": "",
        "secrets-TOTAL_FORMS": "0", "secrets-INITIAL_FORMS": "0", "_save": "Save",
    }
    # A bad network is refused with the line named, and nothing is created.
    bad = client.post(reverse("admin:accessids_accessid_add"), {**form, "allowed_networks": "10.0.0.300/8\n10.1.2.3/8"})
    assert bad.status_code == 200
    assert "line 1: “10.0.0.300/8” is not an IP network" in bad.content.decode()
    assert "did you mean 10.0.0.0/8" in bad.content.decode()
    assert not AccessId.objects.exists() and not AuditEvent.objects.exists()

    created = client.post(reverse("admin:accessids_accessid_add"), form)
    assert created.status_code == 302
    access = AccessId.objects.get()
    assert access.name == "ERP – Ningbo" and access.scopes == ["sign", "rpc"]
    assert access.allowed_networks == ["10.20.0.0/16", "192.168.1.20/32"]
    assert access.allowed_methods == ["cus-sec_SpcGetCertNo"] and access.rate_limit_per_minute == 120
    location = created["Location"]
    assert location.startswith(f"{CHANGELIST}{access.pk}/secret/")
    messages_sent = cookie_messages(created)
    assert any(access.key in m for m in messages_sent)

    shown, secret = reveal(client, location)
    assert versions(access.key) == {1: secret}
    html = shown.content.decode()
    assert access.key in html and access.secrets.get().fingerprint in html
    assert [str(m) for m in shown.context["messages"]] == messages_sent  # shown there, without the secret

    again = client.get(location)
    assert again.status_code == 410 and "no-store" in again["Cache-Control"]
    assert "This secret was already shown; rotate again if it was lost" in again.content.decode()
    assert secret not in again.content.decode()

    assert_secret_nowhere(secret, location, "\n".join(messages_sent), repr(client.session.items()),
                          repr(client.cookies))
    (event,) = events(access)
    assert event.event_type == AuditEvent.ACCESS_ID_CREATED and event.actor == chief
    assert event.source == "admin" and event.request_id and event.client_ip == "127.0.0.1"


def test_rotation_checks_the_password_then_grace_none_revokes_at_once(chief):
    access, first = access_id_create(name="WMS")
    client = client_for(chief)
    page = client.get(url(access, "rotate"))
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    html = page.content.decode()
    assert re.search(r'<input type="radio" name="grace" value="24h"[^>]*checked', html)
    for value in ("0", "1h", "24h", "7d"):
        assert f'name="grace" value="{value}"' in html

    wrong = client.post(url(access, "rotate"), {"grace": "0", "password": "not my password"})
    assert wrong.status_code == 200
    assert "That is not your password. Nothing was changed." in wrong.content.decode()
    assert versions(access.key) == {1: first} and access.secrets.count() == 1
    assert not events(access, AuditEvent.ACCESS_ID_ROTATED)

    rotated = client.post(url(access, "rotate"), {"grace": "0", "password": PASSWORD})
    assert rotated.status_code == 302 and "/secret/" in rotated["Location"]
    _, second = reveal(client, rotated["Location"])
    assert second != first
    assert versions(access.key) == {2: second}  # the old one is refused at once
    assert dict(access.secrets.values_list("version", "state")) == {1: "revoked", 2: "current"}
    assert client.get(rotated["Location"]).status_code == 410
    assert_secret_nowhere(second, rotated["Location"])

    (event,) = events(access, AuditEvent.ACCESS_ID_ROTATED)
    assert event.actor == chief and event.source == "admin"
    assert event.details["grace_seconds"] == 0 and event.details["revoked_versions"] == [1]


def test_grace_24h_keeps_the_old_secret_until_revoke_previous(chief):
    access, first = access_id_create(name="TMS")
    client = client_for(chief)
    rotated = client.post(url(access, "rotate"), {"grace": "24h", "password": PASSWORD})
    _, second = reveal(client, rotated["Location"])
    assert versions(access.key) == {1: first, 2: second}
    access_id_mark_used(access_pk=access.pk, version=1)

    change = client.get(url(access)).content.decode()
    # The versions table: version, fingerprint, state, valid until, last used, created.
    for column in ("Version", "Fingerprint", "State", "Valid until", "Last used at", "Created at"):
        assert f">{column}" in change or f"{column}</th>" in change
    assert "previous (grace period)" in change and "current" in change
    assert access.secrets.get(version=1).fingerprint in change and 'id="revoke-previous"' in change
    assert 'name="secrets-0-version"' not in change and "secrets-0-DELETE" not in change  # read-only

    confirm = client.get(url(access, "revoke_previous"))
    assert confirm.status_code == 200 and "Yes, revoke it now" in confirm.content.decode()
    assert versions(access.key) == {1: first, 2: second}  # a GET changes nothing
    done = client.post(url(access, "revoke_previous"))
    assert done.status_code == 302 and done["Location"] == url(access)
    assert versions(access.key) == {2: second}
    assert 'id="revoke-previous"' not in client.get(url(access)).content.decode()

    assert [e.event_type for e in reversed(events(access)) if e.actor == chief] == [
        AuditEvent.ACCESS_ID_ROTATED, AuditEvent.ACCESS_ID_PREVIOUS_REVOKED]
    (revoked,) = events(access, AuditEvent.ACCESS_ID_PREVIOUS_REVOKED)
    assert revoked.details == {"revoked_versions": [1]} and revoked.source == "admin"


def test_list_shows_status_scopes_fingerprint_and_last_secret_version(chief):
    erp, _ = access_id_create(name="ERP", scopes=["sign"])
    wms, _ = access_id_create(name="WMS", scopes=["xml_read"], enabled=False)
    old, _ = access_id_create(name="Old", scopes=["sign", "rpc"], expires_at=timezone.now() - datetime.timedelta(days=1))
    app_secret_rotate(access_id=erp)
    access_id_mark_used(access_pk=erp.pk, version=2)
    client = client_for(chief)

    page = client.get(CHANGELIST).content.decode()
    rows = {a.name: re.search(rf"<tr>.*?{a.key}.*?</tr>", page, re.S).group(0) for a in (erp, wms, old)}
    assert ">enabled<" in rows["ERP"] and ">disabled<" in rows["WMS"] and ">expired<" in rows["Old"]
    assert erp.secrets.get(state="current").fingerprint in rows["ERP"] and "(v2)" in rows["ERP"]
    assert re.search(r'<td class="field-last_use_display">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d <span[^>]*>v2</span>', rows["ERP"])
    assert '<td class="field-last_use_display">never</td>' in rows["WMS"]
    assert ">xml_read<" in rows["WMS"]

    def names(query: str) -> set[str]:
        return {a.name for a in client.get(CHANGELIST + query).context["cl"].result_list}

    assert names(f"?q={wms.key}") == {"WMS"}
    assert names("?q=erp") == {"ERP"}
    assert names("?status=disabled") == {"WMS"} and names("?status=expired") == {"Old"}
    assert names("?status=enabled") == {"ERP"}
    assert names("?scope=rpc") == {"Old"} and names("?scope=sign") == {"ERP", "Old"}


def test_enable_disable_edit_and_no_delete_write_audit_events(chief):
    a, _ = access_id_create(name="A")
    b, _ = access_id_create(name="B")
    client = client_for(chief)
    listing = client.get(CHANGELIST).content.decode()
    assert 'value="disable_selected"' in listing and 'value="delete_selected"' not in listing

    done = client.post(CHANGELIST, {"action": "disable_selected", "_selected_action": [a.pk, b.pk]})
    assert done.status_code == 302
    assert not AppSecretService.lookup(a.key).enabled and not AppSecretService.lookup(b.key).enabled
    for access in (a, b):
        (event,) = events(access, AuditEvent.ACCESS_ID_DISABLED)
        assert event.actor == chief and event.source == "admin"

    change = client.get(url(a)).content.decode()
    assert 'id="enable-accessid"' in change and ">disabled<" in change
    assert client.get(url(a, "enable")).status_code == 405
    assert client.post(url(a, "enable")).status_code == 302
    assert AppSecretService.lookup(a.key).enabled
    assert len(events(a, AuditEvent.ACCESS_ID_ENABLED)) == 1

    form = {
        "name": "A renamed", "description": "", "scopes": ["sign", "sign_xml"], "allowed_methods": [],
        "allowed_networks": "10.0.0.0/8", "rate_limit_per_minute": "600", "expires_at_0": "", "expires_at_1": "",
        "secrets-TOTAL_FORMS": "1", "secrets-INITIAL_FORMS": "1", "secrets-MIN_NUM_FORMS": "0",
        "secrets-MAX_NUM_FORMS": "0", "secrets-0-id": str(a.secrets.get().pk), "secrets-0-access_id": str(a.pk),
        "_save": "Save",
    }
    saved = client.post(url(a), form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    a.refresh_from_db()
    assert a.name == "A renamed" and a.scopes == ["sign", "sign_xml"] and a.allowed_networks == ["10.0.0.0/8"]
    assert a.enabled  # not a field of the change form: the buttons and actions change it
    (changed,) = events(a, AuditEvent.ACCESS_ID_CHANGED)
    assert changed.actor == chief
    assert changed.details == {"changed": ["allowed_networks", "name", "scopes"]}  # it had no card methods
    assert AppSecretService.lookup(a.key).allowed_networks == ("10.0.0.0/8",)
    # Saving again without a change records nothing.
    assert client.post(url(a), {**form, "name": "A renamed"}).status_code == 302
    assert len(events(a, AuditEvent.ACCESS_ID_CHANGED)) == 1

    assert client.get(url(a, "delete")).status_code == 403
    assert client.post(url(a, "delete"), {"post": "yes"}).status_code == 403
    assert AccessId.objects.filter(pk=a.pk).exists()
    assert "deletelink" not in client.get(url(a)).content.decode()


def test_legacy_aes_key_is_set_write_only_unique_and_removable(chief):
    a, _ = access_id_create(name="Java bridge A")
    b, _ = access_id_create(name="Java bridge B")
    client = client_for(chief)
    key = "legacy-KEY-5e1f0c"
    form = {
        "name": "Java bridge A", "description": "", "scopes": ["sign", "xml_read", "xml_write"],
        "allowed_methods": [], "allowed_networks": "", "rate_limit_per_minute": "600",
        "expires_at_0": "", "expires_at_1": "", "secrets-TOTAL_FORMS": "1", "secrets-INITIAL_FORMS": "1",
        "secrets-MIN_NUM_FORMS": "0", "secrets-MAX_NUM_FORMS": "0", "secrets-0-id": str(a.secrets.get().pk),
        "secrets-0-access_id": str(a.pk), "_save": "Save",
    }
    before = client.get(url(a)).content.decode()
    assert 'type="password" name="legacy_aes_key"' in before and "not set (the old sign-server API" in before

    saved = client.post(url(a), {**form, "legacy_aes_key": key})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    a.refresh_from_db()
    assert a.has_legacy_key and a.legacy_aes_key_encrypted.startswith("gcm1:") and len(a.legacy_key_fingerprint) == 64
    page = client.get(url(a)).content.decode()
    assert key not in page and a.legacy_key_fingerprint[:12] in page and 'name="legacy_aes_key_remove"' in page
    assert key not in database_text()
    (event,) = [e for e in events(a, AuditEvent.ACCESS_ID_CHANGED) if "legacy_aes_key" in e.details["changed"]]
    assert event.actor == chief and event.details["legacy_aes_key"] == "set" and key not in repr(event.details)
    listing = client.get(CHANGELIST).content.decode()
    assert re.search(rf"<tr>.*?{a.key}.*?icon-yes.*?</tr>", listing, re.S)

    # The same key for another access ID is refused on the form: the key names the caller.
    form_b = {**form, "name": "Java bridge B", "secrets-0-id": str(b.secrets.get().pk),
              "secrets-0-access_id": str(b.pk), "legacy_aes_key": key}
    refused = client.post(url(b), form_b)
    assert refused.status_code == 200
    assert "Another access ID already has this legacy AES key" in refused.content.decode()
    b.refresh_from_db()
    assert not b.has_legacy_key

    # Saving without typing a key keeps it; ticking remove removes it.
    assert client.post(url(a), form).status_code == 302
    a.refresh_from_db()
    assert a.has_legacy_key
    assert client.post(url(a), {**form, "legacy_aes_key_remove": "on"}).status_code == 302
    a.refresh_from_db()
    assert not a.has_legacy_key and a.legacy_key_fingerprint is None
    removed = [e for e in events(a, AuditEvent.ACCESS_ID_CHANGED) if e.details.get("legacy_aes_key") == "removed"]
    assert len(removed) == 1


def test_permissions_are_separate_view_edit_create_rotate(chief):
    access, first = access_id_create(name="Customs broker")
    app_secret_rotate(access_id=access)  # a previous secret: the revoke button would show
    issued = client_for(chief).post(url(access, "rotate"), {"grace": "1h", "password": PASSWORD})
    token = issued["Location"].rstrip("/").rsplit("/", 1)[1]
    before = (versions(access.key), len(events(access)))

    clerk = client_for(user_make("clerk", "view_accessid"))
    assert access.key in clerk.get(CHANGELIST).content.decode()
    page = clerk.get(url(access))
    html = page.content.decode()
    assert page.status_code == 200 and access.name in html
    assert "App Secret versions" in html and access.secrets.get(state="current").fingerprint in html
    assert "sign_xml" in html and '"sign_xml"' not in html  # scopes readable, not JSON
    for button in ('id="rotate-secret"', 'id="revoke-previous"', 'id="disable-accessid"', 'name="_save"'):
        assert button not in html
    for target in (url(access, "rotate"), url(access, "revoke_previous"), url(access, "reveal", token)):
        assert clerk.get(target).status_code == 403
        assert clerk.post(target, {"grace": "0", "password": PASSWORD}).status_code == 403
    assert clerk.post(url(access, "disable")).status_code == 403
    assert clerk.post(url(access), {"name": "x"}).status_code == 403
    assert clerk.get(reverse("admin:accessids_accessid_add")).status_code == 403
    assert clerk.post(CHANGELIST, {"action": "disable_selected", "_selected_action": [access.pk]}).status_code in (
        200, 302)
    assert (versions(access.key), len(events(access))) == before
    assert AccessId.objects.get(pk=access.pk).enabled

    # An editor changes and creates (and sees the new secret once) but cannot rotate.
    editor_user = user_make("editor", "view_accessid", "change_accessid", "add_accessid")
    editor = client_for(editor_user)
    html = editor.get(url(access)).content.decode()
    assert 'id="disable-accessid"' in html and 'name="_save"' in html
    assert 'id="rotate-secret"' not in html and 'id="revoke-previous"' not in html
    assert editor.get(url(access, "rotate")).status_code == 403
    assert editor.post(url(access, "revoke_previous")).status_code == 403
    created = editor.post(reverse("admin:accessids_accessid_add"), {
        "name": "By the editor", "enabled": "on", "scopes": ["sign"], "rate_limit_per_minute": "600",
        "expires_at_0": "", "expires_at_1": "", "_save": "Save"})
    new = AccessId.objects.get(name="By the editor")
    _, secret = reveal(editor, created["Location"])
    assert versions(new.key) == {1: secret}
    # The clerk's refused attempts did not use up the chief's ticket.
    assert client_for(chief).get(url(access, "reveal", token)).status_code == 200
    (event,) = events(new)
    assert event.actor == editor_user

    rotator = client_for(user_make("rotator", "view_accessid", "rotate_accessid"))
    assert 'id="rotate-secret"' in rotator.get(url(access)).content.decode()
    other = client_for(user_make("nosy", "view_accessid", "rotate_accessid"))
    issued = rotator.post(url(access, "rotate"), {"grace": "0", "password": PASSWORD})
    assert other.get(issued["Location"]).status_code == 410  # another user's ticket shows nothing
    assert rotator.get(issued["Location"]).status_code == 200  # to its owner, once
    assert rotator.get(issued["Location"]).status_code == 410


# --- Headless Chromium against the real server -------------------------------------------


def test_browser_create_reveal_use_rotate_and_clerk(platform, chromium):
    chief = user_make("chief", superuser=True)
    user_make("clerk", "view_accessid")
    page = chromium.page
    base = platform.base

    admin_login(chromium, base, "chief")
    page.goto(base + CHANGELIST + "add/")
    page.fill("#id_name", "ERP – browser")
    # The defaults: the signing scopes; rpc (and so no card method) and xml_read_all only on purpose.
    checked = page.locator("input[name=scopes]:checked")
    assert sorted(checked.nth(i).get_attribute("value") for i in range(checked.count())) == sorted(DEFAULT_SCOPES)
    assert "rpc" not in DEFAULT_SCOPES and "xml_read_all" not in DEFAULT_SCOPES
    assert page.locator("input[name=allowed_methods]:checked").count() == 0
    page.uncheck("input[name=scopes][value=rotate_self]")
    chromium.screenshot("accessid-add")
    page.click("input[name=_save]")
    page.wait_for_selector("#app-secret")
    assert "/secret/" in page.url
    secret = page.input_value("#app-secret")
    key = page.inner_text("#reveal-access-key")
    assert secret not in page.url
    chromium.screenshot("accessid-secret-shown")

    reloaded = page.reload()
    assert reloaded.status == 410 and "no-store" in reloaded.headers["cache-control"]
    assert page.is_visible("#secret-gone") and secret not in page.content()
    chromium.screenshot("accessid-secret-reload")

    certificate = SignClient(base, key, secret).certificate()
    assert certificate["cert_no"]
    access = AccessId.objects.get(key=key)
    assert access.scopes == [s for s in DEFAULT_SCOPES if s != "rotate_self"] and access.allowed_methods == []
    assert [e.actor for e in events(access)] == [chief]

    # Rotate with no grace, confirming with the password.
    page.click("#reveal-done")
    page.wait_for_url(f"**{CHANGELIST}{access.pk}/change/")
    assert page.is_visible("#disable-accessid") and page.locator("#revoke-previous").count() == 0
    chromium.screenshot("accessid-change")
    page.click("#rotate-secret")
    page.check("input[name=grace][value='0']")
    page.fill("#id_password", PASSWORD)
    chromium.screenshot("accessid-rotate")
    page.click("#rotate-submit")
    page.wait_for_selector("#app-secret")
    new_secret = page.input_value("#app-secret")
    assert new_secret != secret and "version 2" in page.inner_text("#secret-box")
    chromium.screenshot("accessid-rotated-secret")
    assert page.reload().status == 410 and new_secret not in page.content()

    with pytest.raises(ApiError) as refused:
        SignClient(base, key, secret).certificate()
    assert refused.value.code == "SIGNATURE_VALIDATION_FAILED"
    assert SignClient(base, key, new_secret).certificate()["cert_no"] == certificate["cert_no"]
    poll(lambda: AccessId.objects.get(pk=access.pk).last_secret_version == 2, 10, "last use of version 2")

    page.goto(base + CHANGELIST)
    row = page.locator(f"tr:has-text('{key}')")
    assert row.locator("td.field-last_use_display .secret-version").inner_text() == "v2"
    assert row.locator("td.field-status_display").inner_text() == "enabled"
    assert access.secrets.get(version=2).fingerprint in row.inner_text()
    chromium.screenshot("accessid-list")
    (rotated,) = events(access, AuditEvent.ACCESS_ID_ROTATED)
    assert rotated.actor == chief and rotated.details["grace_seconds"] == 0

    # A clerk who may only look: no rotate button, the rotate URL answers 403.
    admin_login(chromium, base, "clerk")
    page.goto(base + CHANGELIST + f"{access.pk}/change/")
    assert page.is_visible("#accessid-secret-panel")
    assert page.locator("#rotate-secret").count() == 0 and page.locator("#disable-accessid").count() == 0
    chromium.screenshot("accessid-clerk-view")
    assert page.goto(base + CHANGELIST + f"{access.pk}/rotate/").status == 403
    assert versions(key) == {2: new_secret}
