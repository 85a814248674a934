"""The platform rides out what goes wrong around it: a Redis restart under load (in the Redis
mode, with the card gateway in its own process) and a gateway process that is killed. No
process is restarted by hand; a request accepted before Redis lost its data is never
accepted again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from accessids.models import AccessId
from accessids.services import access_id_create
from audit.models import AuditEvent
from signclient import sign_headers
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import Platform, get_json, http, only_card_row, poll, services_env
from tests.services import _wait_port, free_port

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


class RedisServer:
    """A Redis of this test's own, that can be stopped and started again on its port,
    keeping no data across a restart (the case the platform must survive)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # no goodbye to the clients, no snapshot
            self.proc.wait(10)


def signed(platform: Platform, access: AccessId, secret: str, text: str) -> tuple[dict, bytes]:
    body = json.dumps({"data": text}).encode()
    headers = sign_headers("POST", platform.base + "/api/v1/sign", body, access.key, secret)
    headers["Content-Type"] = "application/json"
    return headers, body


def post(platform: Platform, headers: dict, body: bytes) -> tuple[int, dict]:
    status, _, raw = http("POST", platform.base + "/api/v1/sign", body=body, headers=headers, timeout=15)
    return status, json.loads(raw)


def children_of(pid: int, needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and needle in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def redis_platform(tmp_path):
    slug = "resilience-card"
    only_card_row(slug)
    redis = RedisServer(tmp_path / "redis").start()
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys"), latency_ms=5).start()
    env = services_env(test_database_url(), tmp_path / "var", REDIS_URL=redis.url, UKEY_GATEWAY_MODE="external",
                       UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_DEFAULT_DEVICE=slug, LOG_LEVEL="INFO")
    platform = Platform(env, tmp_path).start()
    try:
        platform.wait_card()
        yield redis, sim, platform
    finally:
        platform.stop()
        sim.stop()
        redis.stop()


def test_a_redis_restart_under_load_is_ridden_out_and_a_request_from_before_is_refused_after(redis_platform):
    redis, sim, platform = redis_platform
    access, secret = access_id_create(name="ERP under a Redis restart")
    early_headers, early_body = signed(platform, access, secret, "accepted before the restart")
    assert post(platform, early_headers, early_body)[0] == 200
    (gateway_pid,) = children_of(platform.proc.pid, "ukey_gateway")

    results: list[tuple[float, int]] = []  # (sent at, HTTP status)
    log: list = []
    stop = threading.Event()

    def load():
        n = 0
        while not stop.is_set():
            n += 1
            headers, body = signed(platform, access, secret, f"order {n}")
            sent = time.monotonic()
            try:
                status, answer = post(platform, headers, body)
            except OSError as exc:
                status, answer = 0, repr(exc)
            results.append((sent, status))
            log.append((round(sent, 2), round(time.monotonic() - sent, 2), status, str(answer)[:150]))
            time.sleep(0.05)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        poll(lambda: sum(1 for _, s in results if s == 200) >= 20, 20, "signing under load")
        redis.stop()
        time.sleep(1.0)
        redis.start()
        back_at = time.monotonic()
        poll(lambda: any(at > back_at and status == 200 for at, status in results), 10,
             "signing back within 10 s of Redis coming back")
        first_ok = min(at for at, status in results if at > back_at and status == 200)
        time.sleep(2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    after = [status for at, status in results if at > first_ok]
    assert after and all(status == 200 for status in after), (back_at, first_ok, log)
    # Nothing but the documented answers while Redis was away (no 500, no hang): 503, and 409 for
    # requests signed before the new Redis's epoch (its start, known to the second) that might be
    # replays of requests the old one accepted.
    assert {status for _, status in results} <= {200, 409, 503}, sorted({s for _, s in results})
    assert all(sent < back_at + 1.1 for sent, status in results if status == 409)
    assert first_ok - back_at < 10

    # The gateway process rode it out (no restart, by hand or by the supervisor) ...
    assert children_of(platform.proc.pid, "ukey_gateway") == [gateway_pid]
    assert not AuditEvent.objects.filter(event_type=AuditEvent.PROCESS_EXITED).exists()
    assert get_json(platform.base + "/api/v1/health")[0] == 200
    # ... and the request accepted before the restart, replayed within its window, is refused.
    status, answer = post(platform, early_headers, early_body)
    assert status == 409 and answer["code"] == "DUPLICATE_REQUEST" and answer["details"]["not_before"]
    assert "Redis keeps no data across a restart" in platform.log


def test_a_killed_gateway_process_is_restarted_and_signing_comes_back(redis_platform):
    redis, sim, platform = redis_platform
    access, secret = access_id_create(name="ERP, gateway killed")
    (gateway_pid,) = children_of(platform.proc.pid, "ukey_gateway")
    os.kill(gateway_pid, signal.SIGKILL)
    event = poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.PROCESS_EXITED).first(), 10,
                 "the exit recorded")
    assert event.details["process"] == "ukey_gateway --all" and event.details["pid"] == gateway_pid
    assert event.details["returncode"] == -signal.SIGKILL and "signal SIGKILL" in event.message
    poll(lambda: post(platform, *signed(platform, access, secret, "after the restart"))[0] == 200, 30,
         "signing through the restarted gateway")
    (new_pid,) = children_of(platform.proc.pid, "ukey_gateway")
    assert new_pid != gateway_pid
    assert "exited with signal SIGKILL; restarting it in" in platform.log
