"""The whole platform as `make run` starts it: a real ASGI server, the gateway inside it
(or in its own process with Redis), a real card simulator, health as the specs say."""

import os
import re
import signal

import pytest
from django.core.management import call_command

from tests.conftest import test_database_url
from tests.live import Platform, embedded_env, get_json, http, poll
from tests.services import free_port

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def get(url):
    return http("GET", url)


def _embedded_env(tmp_path, **extra):
    return embedded_env(tmp_path / "var", **extra)


def test_embedded_platform_reports_real_card_state(simulator_factory, tmp_path):
    sim = simulator_factory()
    platform = Platform(
        _embedded_env(tmp_path, UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_PROBE_INTERVAL="1",
                      UKEY_REQUEST_TIMEOUT="1", UKEY_CONNECT_TIMEOUT="1", UKEY_RECONNECT_MAX="1"),
        tmp_path,
    ).start()
    try:
        status, headers, body = poll(lambda: (r := get_json(platform.base + "/api/v1/health"))[0] == 200 and
                                     r[2]["devices"][0]["cert_no"] and r, 20, "card connected")
        assert body["status"] == "ok"
        (card,) = body["devices"]
        assert card["slug"] == "default" and card["connected"] is True and card["queue_depth"] == 0
        assert re.fullmatch(r"[0-9a-f]{8}", card["cert_no"])
        assert UUID_RE.match(headers["X-Request-ID"])

        status, _, legacy = get_json(platform.base + "/health")
        assert status == 200
        assert legacy == {"code": 200, "msg": "服务运行正常", "data": True, "sign_status": "healthy"}

        status, _, docs = get(platform.base + "/api/v1/docs/")
        assert status == 200 and b"drf_spectacular_sidecar" in docs and b"cdn" not in docs.lower()
        status, _, schema = get(platform.base + "/api/v1/schema/")
        assert status == 200 and b"openapi" in schema

        # The card goes away: both health endpoints say so within one probe interval.
        sim.stop()
        status, _, body = poll(lambda: (r := get_json(platform.base + "/api/v1/health"))[0] == 503 and r, 5, "down")
        assert body["status"] == "down" and body["devices"][0]["connected"] is False
        assert body["devices"][0]["last_error"]
        status, _, legacy = get_json(platform.base + "/health")
        assert status == 503 and legacy["sign_status"] == "unhealthy" and legacy["data"] is False

        # It comes back: the gateway reconnects by itself.
        sim.start()
        poll(lambda: get_json(platform.base + "/api/v1/health")[0] == 200, 15, "reconnected")

        # A hung control (socket open, no answers) is found by the health probe.
        os.kill(sim.proc.pid, signal.SIGSTOP)
        try:
            poll(lambda: get_json(platform.base + "/api/v1/health")[0] == 503, 6, "hang detected")
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
    finally:
        platform.stop()
    assert platform.proc.returncode == 0
    log = platform.log
    assert "Signing platform stopped" in log
    assert "gateway stopped" in log
    assert sim.pin not in log


def test_embedded_platform_starts_its_own_simulator_and_keeps_data(tmp_path):
    port = free_port()
    env = _embedded_env(tmp_path, UKEY_SIMULATOR_PORT=str(port))
    env.pop("UKEY_URL", None)
    platform = Platform(env, tmp_path).start()
    try:
        _, _, body = poll(lambda: (r := get_json(platform.base + "/api/v1/health"))[0] == 200 and
                          r[2]["devices"][0]["cert_no"] and r, 30, "simulator card connected")
        first_cert = body["devices"][0]["cert_no"]
    finally:
        platform.stop()
    assert platform.proc.returncode == 0
    assert "starting the card simulator" in platform.log
    assert (tmp_path / "var" / "db.sqlite3").exists()
    key_file = tmp_path / "var" / "master.key"
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600
    # Started again: same data, same card.
    platform = Platform(env, tmp_path).start()
    try:
        _, _, body = poll(lambda: (r := get_json(platform.base + "/api/v1/health"))[0] == 200 and
                          r[2]["devices"][0]["cert_no"] and r, 30, "simulator card connected again")
    finally:
        platform.stop()
    assert body["devices"][0]["cert_no"] == first_cert


@pytest.mark.services
def test_web_process_with_separate_gateway_process_over_redis(simulator_factory, tmp_path, transactional_db):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("runs in the PostgreSQL + Redis pass of `make test`")
    sim = simulator_factory()
    env = dict(os.environ, DATABASE_URL=test_database_url(),
               UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_DEFAULT_DEVICE="redis-card",
               SIGNPLATFORM_VAR_DIR=str(tmp_path / "var"))
    platform = Platform(env, tmp_path).start()
    try:
        _, _, body = poll(lambda: (r := get_json(platform.base + "/api/v1/health"))[0] == 200 and
                          r[2]["devices"][0]["cert_no"] and r, 30, "card connected through the gateway process")
        assert body["devices"][0]["slug"] == "redis-card"
    finally:
        platform.stop()
    log = platform.log
    assert "Starting the UKey gateway process (every card the platform dials)" in log
    assert "UKey gateway stopped" in log
    assert platform.proc.returncode == 0


def test_ensure_admin_prints_credentials_once(db, capsys, monkeypatch):
    from django.contrib.auth import get_user_model

    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    call_command("ensure_admin")
    first = capsys.readouterr().out
    password = re.search(r"password: (\S+)", first).group(1)
    assert get_user_model().objects.get(username="admin").check_password(password)
    call_command("ensure_admin")
    assert capsys.readouterr().out == ""


def test_ensure_admin_from_environment(db, monkeypatch):
    from django.contrib.auth import get_user_model

    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long pass phrase")
    call_command("ensure_admin")
    user = get_user_model().objects.get(username="ops")
    assert user.is_superuser and user.check_password("a long pass phrase")
