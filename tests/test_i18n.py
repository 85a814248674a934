"""Chinese as a first-class language: the admin switch remembered per user, the browser's
language before that, DJANGO_LANGUAGE_CODE as the default; API errors in Chinese for
`Accept-Language: zh…` (tests/test_api.py)."""

from __future__ import annotations

import json

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


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_machines_get_english_whatever_the_admins_default_language(simulator_factory, tmp_path):
    """DJANGO_LANGUAGE_CODE=zh-hans makes the admin Chinese, not the API: DRF's own field
    errors stay English; a client that asks for Chinese gets the code's Chinese message."""
    from accessids.services import access_id_create
    from signclient import ApiError, SignClient
    from tests.conftest import test_database_url
    from tests.live import Platform, http, services_env

    sim = simulator_factory()
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                       DJANGO_LANGUAGE_CODE="zh-hans")
    platform = Platform(env, tmp_path, name="zh-default").start()
    try:
        access, secret = access_id_create(name="zh default")
        client = SignClient(platform.base, access.key, secret)
        with pytest.raises(ApiError) as refused:
            client.request("POST", "/api/v1/xml-documents", {"directory": None, "filename": "a.xml",
                                                             "content": "<a/>"})
        assert refused.value.code == "INVALID_REQUEST"
        assert refused.value.details["fields"]["directory"] == ["This field may not be null."]
        assert refused.value.message == "the request body is not valid"
        status, _, content = http("GET", platform.base + "/admin/login/")
        assert status == 200 and "签名平台" in content.decode()
        status, _, content = http("POST", platform.base + "/api/v1/sign", body=b"{}",
                                  headers={"Content-Type": "application/json", "Accept-Language": "zh-CN"})
        assert status == 401 and json.loads(content)["message"] == "缺少认证请求头"
    finally:
        platform.stop()
