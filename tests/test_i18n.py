"""Chinese as a first-class language: the admin switch remembered per user, the browser's
language before that, DJANGO_LANGUAGE_CODE as the default; API errors in Chinese for
`Accept-Language: zh…` (tests/test_api.py)."""

from __future__ import annotations

import pytest
from django.test import Client

from console.models import AdminPreference
from tests.admin_users import client_for, fast_hashers, user_make  # noqa: F401  (fast_hashers: autouse)

pytestmark = [pytest.mark.django_db]


def test_the_switch_is_remembered_per_user_across_sessions():
    chief = user_make("chief", superuser=True)
    first = client_for(chief)
    page = first.get("/admin/").content.decode()
    assert 'id="language-switch"' in page and "Signing platform" in page and "签名平台" not in page
    answer = first.post("/admin/language/", {"language": "zh-hans", "next": "/admin/accessids/accessid/"})
    assert answer.status_code == 302 and answer["Location"] == "/admin/accessids/accessid/"
    assert AdminPreference.objects.get(user=chief).language == "zh-hans"
    assert "签名平台" in first.get("/admin/").content.decode()
    # Another browser, the same user: still Chinese (the preference, not a cookie).
    assert "签名平台" in client_for(chief).get("/admin/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    # Another user is not affected.
    other = client_for(user_make("other", superuser=True))
    assert "Signing platform" in other.get("/admin/").content.decode()
    # Back to English; an unknown language or a foreign redirect target change nothing.
    first.post("/admin/language/", {"language": "en"})
    assert "Signing platform" in first.get("/admin/").content.decode()
    assert first.post("/admin/language/", {"language": "xx", "next": "https://evil.example/"})["Location"] == "/admin/"
    assert AdminPreference.objects.get(user=chief).language == "en"
    assert first.get("/admin/language/").status_code == 405
    assert Client().post("/admin/language/", {"language": "zh-hans"}).status_code == 302  # to the login page
    assert AdminPreference.objects.count() == 1


def test_before_choosing_the_browser_decides_and_the_setting_is_the_default(settings):
    login = Client().get("/admin/login/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    assert "签名平台" in login and "用户名" in login
    assert "Signing platform" in Client().get("/admin/login/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    settings.LANGUAGE_CODE = "zh-hans"
    assert "签名平台" in Client().get("/admin/login/").content.decode()
