"""Shared by the admin tests: staff users with given permissions, logged-in test clients,
fast password hashing for them, and a live platform (real server, real simulator) for the
headless-browser tests."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from tests.conftest import test_database_url
from tests.live import Platform, services_env

PASSWORD = "correct horse battery staple"


def user_make(username: str, *perms: str, superuser: bool = False):
    """A superuser, or a staff user holding exactly the permissions named by codename."""
    User = get_user_model()
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.invalid", PASSWORD)
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)  # the password path is the browser tests' (django-axes needs a request)
    return client


@pytest.fixture(autouse=True)
def fast_hashers(settings, request):
    """Autouse where imported. The test client's users only: the server process of a browser
    test hashes as configured."""
    if "chromium" not in request.fixturenames:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(name="platform")
def admin_platform(transactional_db, simulator_factory, tmp_path):
    """The platform as `make run` starts it, sharing the test database, with a simulator card."""
    sim = simulator_factory()
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the server runs async code for real
    server = Platform(env, tmp_path, name="admin-browser").start()
    try:
        server.wait_card()
        yield server
    finally:
        server.stop()


def admin_login(chromium, base: str, username: str) -> None:
    """Log `username` in through the admin's login form in headless Chromium (a fresh session)."""
    page = chromium.page
    chromium.new_session()
    page.goto(base + "/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(base + "/admin/")
