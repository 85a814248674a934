"""Fixtures: the card simulator as a real process, card devices, the gateway in-process."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from django.conf import settings
from django.db import connection, connections
from websockets.asyncio.client import connect

from tests.services import _wait_port, free_port
from ukey import protocol

ROOT = Path(__file__).resolve().parent.parent
SIM_PIN = "24681357"


_simulators_running: set[SimulatorProcess] = set()


@atexit.register
def _simulators_stop() -> None:
    """Simulators a failed fixture never stopped (it started one, then something else failed)
    must not outlive the test run."""
    for simulator in list(_simulators_running):
        simulator.stop()


class SimulatorProcess:
    """`manage.py ukey_simulator` in its own process."""

    def __init__(self, *, algorithm: str = "rsa", latency_ms: float = 0, pin: str = SIM_PIN, extra=(), key_dir=None):
        self.algorithm = algorithm
        self.latency_ms = latency_ms
        self.pin = pin
        self.extra = list(extra)
        self.port = free_port()
        self.key_dir = key_dir or str(Path(settings.VAR_DIR) / "sim-keys")
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> SimulatorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "ukey_simulator", "--port", str(self.port),
             "--algorithm", self.algorithm, "--latency-ms", str(self.latency_ms), "--pin", self.pin,
             "--key-dir", self.key_dir, *self.extra],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _simulators_running.add(self)
        _wait_port(self.port, self.proc, "ukey_simulator")
        return self

    def stop(self) -> None:
        _simulators_running.discard(self)
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            self.output.append(out or "")

    def restart(self) -> None:
        self.stop()
        self.start()

    async def control(self, method: str, args: dict | None = None) -> protocol.CardResult:
        """Talk to the simulator directly (faults, stats)."""
        async with connect(self.url) as ws:
            await ws.recv()  # handshake
            await ws.send(protocol.build_request(method, 1, args or {}))
            return protocol.parse_frame(await ws.recv()).result


@pytest.fixture(scope="session", autouse=True)
def compiled_translations():
    """The .mo files (build output, as `make test` makes them), also when pytest runs alone."""
    from django.core.management import call_command

    call_command("translations_compile", verbosity=0)


@pytest.fixture(scope="session", autouse=True)
def flush_retried_on_deadlock():
    """A transactional test's closing flush (one TRUNCATE of every table) can meet a live
    platform's background write (a card event: the chain head, then the event) that locks the
    same tables in the other order; PostgreSQL then aborts the TRUNCATE as a deadlock and the
    rows stay for the next test. Its transaction was rolled back, so it is simply run again."""
    from django.core.management.commands import flush
    from django.db.utils import OperationalError

    original = flush.Command.handle

    def handle(self, *args, **options):
        for attempt in range(5):
            try:
                return original(self, *args, **options)
            except Exception as exc:  # CommandError wrapping the database's error
                cause = exc.__cause__ or exc.__context__
                if attempt == 4 or not isinstance(cause, OperationalError) or "deadlock" not in str(cause):
                    raise
                time.sleep(0.2)

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


@pytest.fixture(autouse=True)
def card_statuses_forgotten():
    """Each test reads the cards' statuses afresh: a usable one this process read is kept half a
    second (signing.cards.STATUS_REUSE_SECONDS), and card rows and gateways go between tests."""
    from signing import cards

    cards._statuses_read.clear()
    yield
    cards._statuses_read.clear()


@pytest.fixture
def simulator_factory():
    started: list[SimulatorProcess] = []

    def make(**kwargs) -> SimulatorProcess:
        sim = SimulatorProcess(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def fresh_channel_layer():
    """A channel layer created inside the running test's event loop."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def device_factory(transactional_db):
    from signing.models import CardDevice
    from signing.services import card_device_set_pin

    @sync_to_async
    def make(sim: SimulatorProcess, *, pin: str | None = None, **fields) -> CardDevice:
        """Awaitable: the tests using it are async."""
        slug = fields.pop("slug", f"card-{uuid.uuid4().hex[:8]}")
        fields.setdefault("request_timeout", 5.0)
        fields.setdefault("connect_timeout", 2.0)
        device = CardDevice.objects.create(slug=slug, url=sim.url, **fields)
        card_device_set_pin(device=device, pin=sim.pin if pin is None else pin)
        connections.close_all()  # this runs in a worker thread: leave no session behind
        return device

    return make


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def test_database_url() -> str:
    """The URL of the PostgreSQL test database, for server processes a test starts."""
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


test_database_url.__test__ = False  # a helper, not a test


def database_text() -> str:
    """Every row of every table of the platform, as text (to search for secrets)."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def rpc_access_id_create(*, name: str, **fields):
    """An access ID given the raw card passthrough on purpose: the signing scopes plus `rpc`, and
    every card method (a new access ID has neither)."""
    from accessids.models import DEFAULT_SCOPES
    from accessids.services import access_id_create
    from ukey.protocol import RPC_METHODS

    return access_id_create(name=name, scopes=[*DEFAULT_SCOPES, "rpc"], allowed_methods=list(RPC_METHODS), **fields)


# The same for `manage.py accessid create`.
RPC_CREATE_ARGS = ("--scopes", "sign,sign_xml,verify_xml,sign_179,xml_read,xml_write,rotate_self,rpc",
                   "--methods", "all")
