"""Declarations on the embedded defaults, as `make run` deploys them without services: one
platform process on a SQLite file (WAL, IMMEDIATE transactions) running the declaration
worker, the registration and the access ID made with the management commands. The customs
exchange (tests/exchange.py) is down when the declaration is made: retried, delivered exactly
once when it is back, then accepted by its receipts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import SimulatorProcess
from tests.exchange import FakeExchange
from tests.live import ROOT, Platform, embedded_env, poll
from tests.services import free_port
from tests.test_api import call

pytestmark = pytest.mark.embedded

VECTORS = Path(__file__).resolve().parent / "vectors" / "declarations"


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_sqlite_platform_retries_delivers_once_and_follows_the_receipts(tmp_path):
    port = free_port()  # the exchange: nothing listens here yet
    sim = SimulatorProcess(algorithm="sm2", key_dir=str(tmp_path / "keys")).start()
    env = embedded_env(tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_PROBE_INTERVAL="3600",
                       CUSTOMS_CEB_SERVER=f"http://127.0.0.1:{port}", CUSTOMS_CEB_TIMEOUT="3",
                       DECLARATION_RETRY_BASE_SECONDS="0.3", DECLARATION_RETRY_MAX_SECONDS="0.6",
                       DECLARATION_RECEIPT_POLL_SECONDS="0.5")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    platform = Platform(env, tmp_path, name="declarations-sqlite")
    exchange = FakeExchange(port=port)
    try:
        platform.start()
        platform.wait_card()
        created = json.loads(manage(platform.env, "accessid", "create", "--name", "Shop ERP", "--json"))
        out = manage(platform.env, "registration", "set", "--access-id", created["access_id"], "--cop-code",
                     "4601630004", "--cop-name", "海南示例进出口贸易有限公司", "--dxp-id", "DXPENT0000530815",
                     "--ebp-code", "4601630004", "--ebp-name", "海南示例跨境电商平台有限公司")
        assert f"registration created for access ID {created['access_id']}" in out
        access, secret = SimpleNamespace(key=created["access_id"]), created["secret"]
        request = json.loads((VECTORS / "CEB411Message.json").read_text(encoding="utf-8"))
        status, _, body = call(platform, "POST", "/api/v1/declarations", request, access=access, secret=secret)
        assert status == 201, body
        assert "sm2-sm3" in body["signed_xml"]

        def detail():
            return call(platform, "GET", f"/api/v1/declarations/{body['id']}", access=access, secret=secret)[2]

        poll(lambda: detail()["submission"]["attempts"] >= 2, 15, "two failed attempts")
        down = detail()
        assert down["status"] == "signed" and "connection refused" in down["submission"]["last_error"]
        exchange.start()
        poll(lambda: detail()["status"] == "accepted", 20, "accepted after the exchange came back")
        done = detail()
        assert exchange.count(body["guid"]) == 1 and exchange.posts_for(body["guid"]) == 1
        assert done["submission"]["status"] == "sent" and done["submission"]["attempts"] >= 3
        assert [r["return_status"] for r in done["receipts"]] == ["2", "120"]
        assert [s["kind"] for s in done["timeline"]].count("attempt_failed") == done["submission"]["attempts"] - 1
    finally:
        platform.stop()
        exchange.stop()
        sim.stop()
    assert "declaration worker started" in platform.log
