"""The platform as `make run` starts it (`manage.py runplatform`), in a subprocess, for
tests that talk to a real ASGI server over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.services import _wait_port, free_port

ROOT = Path(__file__).resolve().parent.parent


def http(method: str, url: str, *, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body bytes) of one request; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(url: str):
    status, headers, body = http("GET", url)
    return status, headers, json.loads(body)


def poll(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Platform:
    """`manage.py runplatform` on a free port with the given environment."""

    def __init__(self, env: dict, log_dir: Path, *, args: tuple[str, ...] = (), name: str = "platform"):
        self.port = free_port()
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.env = dict(env, PORT=str(self.port), HOST="127.0.0.1")
        self.args = list(args)
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, migrate: bool = True) -> Platform:
        with open(self.log_path, "w") as log:
            if migrate:
                subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True,
                               stdout=log, stderr=subprocess.STDOUT)
            self.proc = subprocess.Popen([sys.executable, "manage.py", "runplatform", *self.args], cwd=ROOT,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "runplatform", timeout=60)
        return self

    def wait_card(self, timeout: float = 30) -> dict:
        """Until /api/v1/health reports a connected card with its certNo."""
        return poll(lambda: (r := get_json(self.base + "/api/v1/health"))[0] == 200
                    and r[2]["devices"] and r[2]["devices"][0]["cert_no"] and r[2], timeout, "card connected")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def log(self) -> str:
        return self.log_path.read_text()


def embedded_env(var_dir: Path, **extra) -> dict:
    """Environment of a platform on the embedded defaults (SQLite in `var_dir`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "UKEY_GATEWAY_MODE")}
    env.update(SIGNPLATFORM_VAR_DIR=str(var_dir), **extra)
    return env


def services_env(database_url: str, var_dir: Path, **extra) -> dict:
    """Environment of a platform sharing the test PostgreSQL database and Redis (and the
    test process's master key and audit chain key, so both read each other's encrypted
    secrets and extend one audit chain)."""
    from django.conf import settings

    from core.encryption import master_key_file_ensure

    # Several platforms share the test database, whose rows go between tests: they serve the
    # cards they found at start (a test of live card changes sets UKEY_FOLLOW_DEVICES=1).
    env = dict(os.environ, DATABASE_URL=database_url, SIGNPLATFORM_VAR_DIR=str(var_dir), UKEY_FOLLOW_DEVICES="0")
    if not env.get("SIGNPLATFORM_MASTER_KEY"):
        env["SIGNPLATFORM_MASTER_KEY"] = master_key_file_ensure().read_text().strip()
    env.setdefault("AUDIT_CHAIN_KEY", settings.AUDIT_CHAIN_KEY)
    env.update(extra)
    return env


def shared_database_flush(db_blocker) -> None:
    """Empty the test database after stopping platforms that share it: their gateways write a
    planned-stop event while they stop, after the last test's own flush, and the next test
    expects an empty database (as pytest-django's transactional tests leave it)."""
    from django.core.management import call_command

    with db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)


class CardPlatforms:
    """Platforms with their own card simulators, started on first use by `start(key)` (which
    returns `(simulator, platform)`), waited for until their card is connected, and stopped
    together by `stop()`. Call the object with a key to get that pair. Given pytest-django's
    `django_db_blocker`, `stop()` also empties the test database the platforms shared."""

    def __init__(self, start, *, db_blocker=None):
        self._start = start
        self._db_blocker = db_blocker
        self.started: dict = {}

    def __call__(self, key: str):
        if key not in self.started:
            sim, platform = self._start(key)
            self.started[key] = (sim, platform)
            platform.wait_card()
        return self.started[key]

    def stop(self) -> None:
        for sim, platform in self.started.values():
            platform.stop()
            sim.stop()
        if self.started and self._db_blocker is not None:
            shared_database_flush(self._db_blocker)


def only_card_row(slug: str) -> None:
    """In the external gateway mode a platform starts a gateway for every card row of the
    shared test database: leave only the one a platform about to start owns, so that no
    card is served by two processes."""
    from signing.models import CardDevice

    CardDevice.objects.exclude(slug=slug).delete()
