"""The Chinese translation is complete and stays so: every string shown to people is marked
(tests/i18n_scan.py), every msgid the project has is translated in locale/zh_Hans with the same
placeholders, the .po holds nothing stale; and in headless Chromium the admin in Chinese shows
no English string of the project."""

from __future__ import annotations

import re
import shutil

import polib
import pytest
from django.core.management import call_command

from tests.admin_users import admin_platform, fast_hashers  # noqa: F401  (fixtures)
from tests.i18n_scan import ROOT, project_findings

PO = ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
IGNORES = [".venv", "var", "tests", "bench", "examples", "test-artifacts", "staticfiles", "ukey", "signagent",
           "signclient", "scripts"]
PLACEHOLDER_RE = re.compile(r"%\([a-z_]+\)[sdfr]|%[sdfr]|\{[a-z_]*\}")


def test_every_string_shown_to_people_is_marked_for_translation():
    findings = project_findings()
    assert not findings, f"{len(findings)} strings shown to people are not marked for translation:\n" + "\n".join(
        map(str, findings[:80]))


def test_every_msgid_is_translated_with_its_placeholders_and_nothing_is_stale(tmp_path, settings, monkeypatch):
    target = tmp_path / "zh_Hans" / "LC_MESSAGES"
    target.mkdir(parents=True)
    shutil.copy(PO, target / "django.po")
    settings.LOCALE_PATHS = [tmp_path]
    monkeypatch.chdir(ROOT)
    call_command("makemessages", locale=["zh_Hans"], ignore_patterns=IGNORES, no_location=True, no_obsolete=True,
                 verbosity=0)
    extracted = polib.pofile(str(target / "django.po"))
    committed = polib.pofile(str(PO))
    missing = [e.msgid for e in extracted if not e.translated()]
    assert not missing, f"{len(missing)} msgids without a Chinese translation (run `make messages`, translate " \
                        f"them in {PO.relative_to(ROOT)}):\n" + "\n".join(missing[:60])
    stale = sorted({e.msgid for e in committed if not e.obsolete} - {e.msgid for e in extracted})
    assert not stale, "msgids no longer in the code (run `make messages`):\n" + "\n".join(stale[:40])
    for entry in committed:
        translations = [entry.msgstr] if not entry.msgid_plural else list(entry.msgstr_plural.values())
        wanted = sorted(PLACEHOLDER_RE.findall(entry.msgid))
        for text in translations:
            assert sorted(PLACEHOLDER_RE.findall(text)) == wanted or (
                entry.msgid_plural and sorted(PLACEHOLDER_RE.findall(text)) == sorted(
                    PLACEHOLDER_RE.findall(entry.msgid_plural))), (entry.msgid, text)


# --- headless Chromium: the admin in Chinese ----------------------------------------------------

# Pages a clerk opens, each with something on it (lists empty or not, forms, the dashboard).
CHINESE_PAGES = [
    "/admin/",
    "/admin/audit/auditevent/dashboard/",
    "/admin/accessids/accessid/",
    "/admin/accessids/accessid/add/",
    "/admin/accessids/accessid/{access}/change/",
    "/admin/accessids/accessid/{access}/rotate/",
    "/admin/accessids/accessid/{access}/acs/",
    "/admin/audit/auditevent/",
    "/admin/audit/auditevent/{event}/change/",
    "/admin/xmlstore/xmldocument/",
    "/admin/xmlstore/xmldocument/{document}/change/",
    "/admin/signing/carddevice/",
    "/admin/signing/carddevice/add/",
    "/admin/signing/cardpool/",
    "/admin/webhooks/webhook/",
    "/admin/webhooks/webhook/add/",
    "/admin/declarations/declaration/",
    "/admin/declarations/registration/",
]
SEGMENT_RE = re.compile(r"%\([a-z_]+\)[sdfr]|%[sdfr]|\{[a-z_]*\}")


def english_texts() -> list[str]:
    """The project's English sentences that differ in Chinese: the pieces between placeholders
    long enough (two words or more) not to occur by chance in data or technical terms."""
    texts = set()
    for entry in polib.pofile(str(PO)):
        if entry.obsolete or not entry.msgstr or entry.msgstr == entry.msgid:
            continue
        for piece in SEGMENT_RE.split(entry.msgid):
            piece = " ".join(piece.split()).strip(" .,:;()“”\"'")
            if len(piece) >= 12 and " " in piece and re.search(r"[a-z]{3}", piece):
                texts.add(piece)
    return sorted(texts, key=len, reverse=True)


@pytest.mark.services
def test_the_admin_switched_to_chinese_shows_no_english_string_of_the_project(platform, chromium):
    from accessids.services import access_id_create
    from audit.models import AuditEvent
    from signclient import SignClient
    from tests.admin_users import admin_login, user_make

    user_make("chief", superuser=True)
    access, secret = access_id_create(name="宁波 ERP")
    xml = (ROOT / "tests" / "vectors" / "CEB621Message.xml").read_text(encoding="utf-8")
    signed = SignClient(platform.base, access.key, secret).sign_xml(xml, filename="CEB621-zh.xml", directory="out")
    event = AuditEvent.objects.get(request_id=signed["request_id"])
    page, base = chromium.page, platform.base
    admin_login(chromium, base, "chief")
    assert "Signing platform" in page.inner_text("#site-name")
    english = english_texts()
    assert len(english) > 200, len(english)  # the whole catalogue, not a handful
    # The check finds the project's English where it is shown: on the English page, plenty.
    page.goto(base + f"/admin/accessids/accessid/{access.pk}/change/")
    shown = " ".join(page.inner_text("body").split())
    assert len([piece for piece in english if piece in shown]) >= 10
    page.goto(base + "/admin/")

    # The switch in the header: Chinese at once, on this page and every other.
    page.select_option("#language-select", "zh-hans")
    page.click("#language-submit")
    page.wait_for_url(base + "/admin/")
    assert page.inner_text("#site-name") == "签名平台"
    leaks: dict[str, list[str]] = {}
    for template in CHINESE_PAGES:
        path = template.format(access=access.pk, event=event.pk, document=signed["document_id"])
        answer = page.goto(base + path)
        assert answer.status == 200, path
        text = " ".join(page.inner_text("body").split())
        assert re.search(r"[\u4e00-\u9fff]{2}", text), path
        found = [piece for piece in english if piece in text]
        if template in ("/admin/audit/auditevent/dashboard/", "/admin/accessids/accessid/{access}/change/"):
            chromium.screenshot("admin-chinese-" + template.split("/")[3])
        if template == "/admin/accessids/accessid/{access}/change/":
            # The admin's JavaScript too: the card and pool pickers (Django's own catalogue lacks
            # these strings in 5.2; locale/zh_Hans/LC_MESSAGES/djangojs.po has them).
            assert "全选" in text and "Choose all" not in text and "by selecting them" not in text
        if found:
            leaks[path] = found
    assert not leaks, f"English strings on Chinese pages: {leaks}"

    # And back: the preference is the user's, English again everywhere.
    page.select_option("#language-select", "en")
    page.click("#language-submit")
    page.wait_for_load_state()
    assert page.inner_text("#site-name") == "Signing platform"
