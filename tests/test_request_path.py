"""The lean request path of the paths machines call (signplatform/api_handler.py) and the
group commit of the answers' audit events (core/dbthread.py DbBatch): what an API answer
carries, what stays on Django's full handler, a client that hangs up is still audited, and
concurrent items are written together with each failure its own."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest

from accessids.services import access_id_create
from audit.models import AuditEvent
from audit.services import data_digest
from core.dbthread import DbBatch
from signclient import sign_headers
from signplatform.api_handler import lean_path
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import Platform, http, only_card_row, poll, services_env
from tests.test_api import call


def test_the_lean_handler_serves_the_machine_paths_and_nothing_for_people():
    for path in ("/api/v1/sign", "/api/v1/xml-documents/3", "/api/v1/nothing", "/getCode", "/xml-files/add", "/rpc",
                 "/api/customs179"):
        assert lean_path(path), path
    for path in ("/admin/", "/api/v1/docs/", "/api/v1/schema/", "/api/v1/health", "/health", "/", "/metrics",
                 "/static/admin/css/base.css"):
        assert not lean_path(path), path


async def test_concurrent_items_are_written_in_batches_and_each_failure_is_its_own():
    batches: list[list[int]] = []
    release = threading.Event()

    def flush(items: list[int]) -> list:
        batches.append(items)
        release.wait(5)  # the first batch is slow: everything submitted meanwhile gathers
        return [ValueError(f"item {i} refused") if i == 7 else i * 10 for i in items]

    batch = DbBatch(flush, name="test")
    first = asyncio.create_task(batch.submit(0))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batch.submit(i)) for i in range(1, 20)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert batches == [[0], list(range(1, 20))]  # one write for the first, one for all that came meanwhile
    for i, result in enumerate(results):
        if i == 7:
            assert isinstance(result, ValueError) and str(result) == "item 7 refused"
        else:
            assert result == i * 10


async def test_a_failing_batch_fails_each_of_its_items():
    def flush(items):
        raise RuntimeError("the database is down")

    batch = DbBatch(flush, name="test")
    results = await asyncio.gather(*(batch.submit(i) for i in range(3)), return_exceptions=True)
    assert [str(r) for r in results] == ["the database is down"] * 3
    assert await DbBatch(lambda items: list(items), name="test").submit(5) == 5  # and nothing is left stuck


# --- through a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(django_db_setup, django_db_blocker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("request-path")
    sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys")).start()
    with django_db_blocker.unblock():
        only_card_row("request-path")
        env = services_env(test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                           UKEY_DEFAULT_DEVICE="request-path", UKEY_PROBE_INTERVAL="3600")
        platform = Platform(env, tmp).start()
    platform.wait_card()
    yield sim, platform
    platform.stop()
    sim.stop()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_an_api_answer_has_the_security_headers_and_a_length_and_sets_no_cookie(live):
    _, platform = live
    access, secret = access_id_create(name="ERP")
    status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": "headers"}, access=access, secret=secret)
    assert status == 200 and body["signature"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] and headers["X-Request-ID"] == body["request_id"]
    assert int(headers["Content-Length"]) == len(json.dumps(body, separators=(",", ":")).encode())
    assert "Transfer-Encoding" not in headers and "Set-Cookie" not in headers and "Cookie" not in headers.get("Vary", "")
    status, headers, _ = call(platform, "POST", "/api/v1/sign", {"data": "x"})  # refused: the same headers
    assert status == 401 and headers["X-Content-Type-Options"] == "nosniff" and headers["Content-Length"]
    # Pages for people keep Django's full chain: the API documentation has its CSP.
    status, headers, _ = http("GET", platform.base + "/api/v1/docs/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_client_that_hangs_up_before_the_answer_still_has_its_request_audited(live):
    sim, platform = live
    access, secret = access_id_create(name="ERP")
    asyncio.run(sim.control("sim_setFaults", {"faults": [{"kind": "slow", "count": 1, "slow_ms": 600}]}))
    text = f"hung up {time.time()}"
    body = json.dumps({"data": text}).encode()
    headers = sign_headers("POST", platform.base + "/api/v1/sign", body, access.key, secret)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    raw = (f"POST /api/v1/sign HTTP/1.1\r\nHost: 127.0.0.1:{platform.port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", platform.port)) as client:
        client.sendall(raw)
        time.sleep(0.2)  # the card is working on it
    event = poll(lambda: AuditEvent.objects.filter(data_sha256=data_digest(text)).first(), 10, "its audit event")
    assert (event.outcome, event.http_status, event.access_key) == ("OK", 200, access.key)


def test_the_wal_checkpointer_copies_the_log_back_and_empties_it_on_stop(tmp_path):
    import sqlite3

    from core.sqlitewal import WalCheckpointer

    path = tmp_path / "db.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # as the web process's connections run
    writer.execute("CREATE TABLE t (v TEXT)")
    for i in range(300):
        writer.execute("INSERT INTO t VALUES (?)", (f"row {i} " + "x" * 500,))
    wal = tmp_path / "db.sqlite3-wal"
    assert wal.stat().st_size > 100_000  # nothing copied back by the writer itself
    checkpointer = WalCheckpointer(str(path), interval=0.05)
    checkpointer.start()
    time.sleep(0.3)
    writer.execute("INSERT INTO t VALUES ('while it runs')")  # never blocked by it
    checkpointer.stop()
    assert wal.stat().st_size == 0  # copied back and emptied (TRUNCATE on stop)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone()[0] == 301
    writer.close()


def test_the_serving_processes_let_go_of_the_gil_every_millisecond(tmp_path):
    """THREAD_SWITCH_INTERVAL_MS applies where the platform serves: loading the ASGI
    application (the web process, whatever server runs it) sets it; 0 keeps Python's."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    def interval_after_loading(value: str | None) -> float:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "signplatform.settings", "SIGNPLATFORM_VAR_DIR": str(tmp_path)}
        env.pop("THREAD_SWITCH_INTERVAL_MS", None)
        if value is not None:
            env["THREAD_SWITCH_INTERVAL_MS"] = value
        done = subprocess.run([sys.executable, "-c", "import sys, signplatform.asgi; print(sys.getswitchinterval())"],
                              cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.split()[-1])

    assert interval_after_loading(None) == pytest.approx(0.001)
    assert interval_after_loading("2.5") == pytest.approx(0.0025)
    assert interval_after_loading("0") == pytest.approx(0.005)  # Python's own


# --- the fast path of POST /api/v1/sign (api/fastsign.py) --------------------------------------


def _fast_path_counts(platform) -> dict[str, float]:
    status, _, body = http("GET", platform.base + "/metrics")
    assert status == 200
    found = re.findall(r'^signplatform_sign_fast_path_total\{result="(\w+)"\} ([0-9.e+]+)$', body.decode(), re.M)
    return {result: float(value) for result, value in found}


_SAME_HEADERS = ("Content-Type", "Allow", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                 "Cross-Origin-Opener-Policy", "WWW-Authenticate", "Retry-After", "X-Card-Device", "Vary",
                 "Set-Cookie", "Transfer-Encoding")
_AUDITED = ("outcome", "http_status", "endpoint", "access_key", "access_id_id", "secret_version", "data_sha256",
            "cert_no", "device", "message", "profile", "client_ip", "details")


def _comparable(status, headers, content) -> tuple:
    """An answer without what differs between two requests (request id, signature, clock)."""
    body = json.loads(content)
    body.pop("request_id")
    body.pop("signature", None)
    details = body.get("details") or {}
    details.pop("server_time", None)
    details.pop("string_to_sign_sha256", None)
    assert int(headers["Content-Length"]) == len(content)
    return status, body, {name: headers.get(name) for name in _SAME_HEADERS}


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_fast_path_answers_and_audits_exactly_as_the_lean_handler_and_hands_over_the_rest(live, tmp_path):
    """Every kind of signing request, sent to the shared platform (fast path on) and to one
    with API_FAST_PATH=0: the same status, body, headers and audit event; the fast path
    served the plain ones and handed the others over, the second platform served none."""
    sim, fast = live
    slow = Platform(dict(fast.env, API_FAST_PATH="0"), tmp_path, name="no-fast-path").start(migrate=False)
    try:
        slow.wait_card()
        access, secret = access_id_create(name="ERP")
        no_scope, no_scope_secret = access_id_create(name="Reader", scopes=["certificate"])
        limited, limited_secret = access_id_create(name="Limited", rate_limit_per_minute=1)

        def request(platform, payload, *, key=access, key_secret=secret, headers=None, raw=None, replay=False,
                    fault=None):
            body = raw if raw is not None else json.dumps(payload).encode()
            sent = {"Content-Type": "application/json",
                    **sign_headers("POST", platform.base + "/api/v1/sign", body, key.key, key_secret), **(headers or {})}
            if fault:  # (a swap hands out the card's previous signature: one over other data)
                asyncio.run(sim.control("cus-sec_SpcSignDataAsPEM", {"inData": "other data", "passwd": sim.pin}))
                asyncio.run(sim.control("sim_setFaults", {"faults": [fault]}))
            answer = http("POST", platform.base + "/api/v1/sign", body=body, headers=sent)
            if replay:
                answer = http("POST", platform.base + "/api/v1/sign", body=body, headers=sent)
            request_id = json.loads(answer[2])["request_id"]
            event = poll(lambda: AuditEvent.objects.filter(request_id=request_id).first(), 10, "the audit event")
            return _comparable(*answer), {name: getattr(event, name) for name in _AUDITED}

        served = [  # (payload, options): answered on the fast path
            ({"data": "plain"}, {}),
            ({"data": "no hash", "no_hash": True}, {}),
            ({"data": "named card", "device": "request-path"}, {}),
            ({"data": "中文 text"}, {"headers": {"Accept": "*/*", "Content-Type": "application/json; charset=utf-8"}}),
            ({"data": "no scope"}, {"key": no_scope, "key_secret": no_scope_secret}),
            ({"data": "在中文"}, {"key": no_scope, "key_secret": no_scope_secret,
                                 "headers": {"Accept-Language": "zh-CN,zh;q=0.9"}}),
            ({"data": "a card fault"}, {"fault": {"kind": "swap", "count": 1}}),  # a signature that fails its check
            ({"data": "no such card", "device": "nowhere"}, {}),
            (None, {"raw": b'{"data": "x", "data": "y"}'}),  # as the strict JSON reader takes it
            ({"data": "an unknown field", "extra": 1}, {}),  # ignored, as by the view's serializer
        ]
        handed_over = [  # (payload, options): not the fast path's
            ({"data": "bad signature"}, {"headers": {"X-Signature": "0" * 64}}),
            ({"data": "replayed"}, {"replay": True}),
            ({"data": ""}, {}),
            ({"data": 5}, {}),
            ({"data": "indented"}, {"headers": {"Accept": "application/json; indent=4"}}),
            ({"data": "xml wanted"}, {"headers": {"Accept": "application/xml"}}),
            ({"data": "form"}, {"headers": {"Content-Type": "text/plain"}}),
            ({"data": "bad host"}, {"headers": {"Host": "evil.example"}}),
            ({"data": "a stale clock"}, {"headers": {"X-Timestamp": "1000"}}),
            ({"data": "a long text " * 25_000}, {}),  # 300 KB: for the lean handler
            (None, {"raw": b"[" * 5000, "headers": {"X-Signature": "0" * 64}}),  # no parse before the signature
            ({"data": "many kinds"}, {"headers": {"Accept": ", ".join(["text/plain"] * 70 + ["application/json"])}}),
        ]
        before_slow = _fast_path_counts(slow)
        for expected, cases in (("served", served), ("handed_over", handed_over)):
            for payload, options in cases:
                before = _fast_path_counts(fast)
                assert request(fast, payload, **options) == request(slow, payload, **options), (payload, options)
                after = _fast_path_counts(fast)
                took = {result: after[result] - before[result] for result in after}
                if options.get("replay"):  # the first request was served, the replayed one handed over
                    assert took == {"served": 1, "handed_over": 1}, (payload, took)
                else:
                    assert took == {"served": 0, "handed_over": 0, expected: 1}, (payload, options, took)
        for _ in range(2):  # rate limited: the second request of the minute, on either platform
            answers = [request(platform, {"data": "limited"}, key=limited, key_secret=limited_secret)
                       for platform in (fast, slow)]
        assert answers[0] == answers[1] and answers[0][0][0] == 429
        assert _fast_path_counts(slow) == before_slow == {"served": 0, "handed_over": 0}
    finally:
        slow.stop()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_database_is_proven_usable_before_the_card_with_one_round_trip_not_two():
    """Before a request with the nonce in Redis reaches the card, its database thread proves
    the connection works (its audit event can be written): by Django's health check when it
    is on, which taking the cursor runs, else by a SELECT 1; not by both."""
    from django.db import close_old_connections, connection
    from django.test.utils import CaptureQueriesContext

    from api.base import database_usable_prove

    checks: list[bool] = []
    real = type(connection._connections[connection._alias]).is_usable
    connection.ensure_connection()
    try:
        connection.is_usable = lambda: checks.append(real(connection._connections[connection._alias])) or checks[-1]
        connection.close_at = None  # a kept connection (CONN_MAX_AGE; the tests' is 0)
        close_old_connections()  # as before every job of the API's database threads
        with CaptureQueriesContext(connection) as queries:
            database_usable_prove()
        assert checks == [True] and len(queries) == 0  # the health check's SELECT 1 only
        database_usable_prove()  # proven in this job already: nothing more
        assert checks == [True]
        connection.health_check_enabled = False
        connection.close_at = None
        close_old_connections()
        with CaptureQueriesContext(connection) as queries:
            database_usable_prove()
        assert checks == [True] and [query["sql"] for query in queries] == ["SELECT 1"]
    finally:
        del connection.is_usable
        connection.health_check_enabled = True


@pytest.mark.parametrize("store, claimed, proven", [
    ("database", True, False),  # the nonce's own write to the database was the proof
    ("database", False, True),  # no nonce claimed (a view without authentication)
    ("redis", True, True),  # a claim in Redis proves nothing about the database
])
def test_the_audit_event_is_proven_writable_unless_the_nonce_was_claimed_in_the_database(settings, monkeypatch, store,
                                                                                          claimed, proven):
    """The one rule both the view and the fast path apply before the card is called."""
    from api import base

    calls: list[bool] = []
    monkeypatch.setattr(base, "database_usable_prove", lambda: calls.append(True))
    settings.NONCE_STORE = store
    base.audit_writable_prove(nonce_claimed=claimed)
    assert calls == ([True] if proven else [])


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_fast_path_reads_a_body_only_for_a_proven_caller_and_hands_over_with_nothing_claimed(monkeypatch):
    """`api.fastsign._checks`: a request whose signature fails is handed over without its body
    being read; a proven caller's body that the view would refuse is handed over with the nonce
    still unclaimed (the lean handler claims it and answers 400); a good one is claimed."""
    import io

    from django.core.handlers.asgi import ASGIRequest

    from api import fastsign
    from api.schemes import NativeScheme

    access, secret = access_id_create(name="ERP")
    read: list[bytes] = []
    real_body = fastsign._body
    monkeypatch.setattr(fastsign, "_body", lambda body: read.append(body) or real_body(body))

    def request(body: bytes, **override) -> ASGIRequest:
        headers = {**sign_headers("POST", "http://testserver/api/v1/sign", body, access.key, secret), **override,
                   "Content-Type": "application/json", "Content-Length": str(len(body)), "Host": "testserver"}
        scope = {"type": "http", "method": "POST", "path": "/api/v1/sign", "raw_path": b"/api/v1/sign",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
                 "scheme": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        return ASGIRequest(scope, io.BytesIO(body))

    forged = request(b'{"data": "x"}', **{"X-Signature": "0" * 64})
    assert fastsign._checks(forged, NativeScheme(), b'{"data": "x"}') is None and read == []

    refused = request(b'{"data": ""}')
    assert fastsign._checks(refused, NativeScheme(), b'{"data": ""}') is None and read == [b'{"data": ""}']
    NativeScheme().authenticate(refused)  # its nonce is still free: the lean handler can claim it

    good = request(b'{"data": "x"}')
    client, data = fastsign._checks(good, NativeScheme(), b'{"data": "x"}')
    assert client.key == access.key and data == {"data": "x", "no_hash": False}
    with pytest.raises(Exception, match="already used"):
        NativeScheme().authenticate(good)  # claimed


# Bodies of POST /api/v1/sign: the plain ones the fast path reads itself, and the others it
# leaves to SignRequestSerializer (white space, types, extra fields, escapes the strict JSON refuses).
_SIGN_BODIES = [
    '{"data": "hello"}', '{"data": "报关单 CEB311", "no_hash": true}', '{"data": "x", "no_hash": false, "device": "card-a"}',
    '{"device": "", "data": "x"}', '{"data": "x", "device": " card-a "}', '{"data": "x", "device": "   "}',
    '{"data": "  padded  "}', '{"data": ""}', '{"data": " \\t\\n"}', '{"data": 5}', '{"data": null}', '{"data": ["x"]}',
    '{"data": "x", "no_hash": 1}', '{"data": "x", "no_hash": "true"}', '{"data": "x", "no_hash": null}',
    '{"data": "x", "device": 7}', '{"data": "x", "device": null}', '{"data": "x", "extra": 1}', '{"no_hash": true}',
    '{}', '[]', '"x"', '5', 'null', '{"data": "a\\u0000b"}', '{"data": "\\ud800"}', '{"data": "x", "device": "\\u0000"}',
    '{"data": "x", "data": "y"}', '{"data": "\\u00e9\\u4e2d"}', '{"data": "x"', '',
]


@pytest.mark.parametrize("text", _SIGN_BODIES)
def test_the_fast_path_reads_a_sign_body_exactly_as_the_serializer(text):
    """`api.fastsign._body` (its own reading of the plain body, the serializer for the rest)
    gives the serializer's validated data for every body the view accepts, and None for every
    body it refuses."""
    from api import fastsign
    from api.serializers import SignRequestSerializer
    from core.jsontext import json_loads_strict

    try:
        payload = json_loads_strict(text)
    except Exception:
        expected = None
    else:
        serializer = SignRequestSerializer(data=payload)
        expected = dict(serializer.validated_data) if isinstance(payload, dict) and serializer.is_valid() else None
    got = fastsign._body(text.encode("utf-8"))
    assert (dict(got) if got is not None else None) == expected
    if got is not None:
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}


def test_the_fast_path_reads_the_plain_sign_bodies_without_the_serializer(monkeypatch):
    """The common bodies do not construct SignRequestSerializer at all (the point of `_body_plain`)."""
    from api import fastsign

    made: list = []
    real = fastsign.s.SignRequestSerializer
    monkeypatch.setattr(fastsign.s, "SignRequestSerializer", lambda *a, **k: made.append(1) or real(*a, **k))
    assert fastsign._body(b'{"data": "hello", "no_hash": true, "device": "card-a"}') == \
        {"data": "hello", "no_hash": True, "device": "card-a"}
    assert made == []
    assert fastsign._body(b'{"data": "hello", "device": " card-a "}') == {"data": "hello", "no_hash": False,
                                                                        "device": "card-a"}
    assert made == [1]


async def test_the_database_threads_answer_each_job_in_its_context_and_skip_the_cancelled_ones():
    """`core.dbthread.DbThreads`, the hop of every API request's database work: a result or an
    exception reaches the awaiting coroutine, context variables go with the job, a job whose
    awaiter was cancelled before it started is not run, and at shutdown the queued jobs are
    finished first."""
    import contextvars

    from core.dbthread import DbThreads

    threads = DbThreads(1, name="test-db")
    loop = asyncio.get_running_loop()
    where = contextvars.ContextVar("where", default="none")
    where.set("request-1")
    assert await threads.run(loop, contextvars.copy_context(), lambda: (where.get(), threading.current_thread().name)) \
        == ("request-1", "test-db_0")

    def fail():
        raise ValueError("no such row")

    with pytest.raises(ValueError, match="no such row"):
        await threads.run(loop, None, fail)

    gate, ran = threading.Event(), []
    blocker = threads.run(loop, None, gate.wait, 10)
    skipped = asyncio.ensure_future(threads.run(loop, None, ran.append, "cancelled"))
    await asyncio.sleep(0)
    skipped.cancel()
    queued = [threads.run(loop, None, ran.append, n) for n in range(3)]
    gate.set()
    assert await blocker is True
    await asyncio.gather(*queued)
    assert ran == [0, 1, 2]

    slow = threads.run(loop, None, time.sleep, 0.2)
    after = threads.run(loop, None, ran.append, "after")
    await asyncio.to_thread(threads.shutdown)  # returns once the queued jobs ran
    assert ran[-1] == "after" and not any(t.is_alive() for t in threads._threads)
    await asyncio.gather(slow, after)
    with pytest.raises(RuntimeError):
        threads.run(loop, None, ran.append, "late")


async def test_a_database_thread_builds_each_cache_object_once_not_once_per_job(tmp_path):
    """`core.dbthread.cache_objects_per_thread` (applied when Django starts): jobs run in
    copies of the requests' contexts on a database thread reuse that thread's cache objects;
    with Django's context-following Local every job built its own."""
    import contextvars
    import os
    import subprocess
    import sys

    from asgiref.local import Local
    from django.conf import settings
    from django.core.cache import caches

    from core.dbthread import DbThreads, cache_objects_per_thread

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "signplatform.settings", "SIGNPLATFORM_VAR_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import django; django.setup(); from django.core.cache import caches; "
                           "import threading; print(isinstance(caches._connections, threading.local))"],
                          cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "True"  # a threading.local: applied at start-up

    threads = DbThreads(1, name="test-cache")
    loop = asyncio.get_running_loop()

    async def objects_of_two_jobs():
        found = []
        for _ in range(2):  # each job in its own copy of the context, as db_sync_to_async runs them
            found.append(await threads.run(loop, contextvars.copy_context(), lambda: (caches["default"], caches["nonces"])))
        return found

    saved = caches._connections
    try:
        caches._connections = Local()  # Django's own
        first, second = await objects_of_two_jobs()
        assert first[0] is not second[0] and first[1] is not second[1]
        cache_objects_per_thread()
        first, second = await objects_of_two_jobs()
        assert first[0] is second[0] and first[1] is second[1]
    finally:
        caches._connections = saved
        await asyncio.to_thread(threads.shutdown)


@pytest.mark.parametrize("change", ["device max_length", "data trimmed", "no_hash default", "a new field"])
def test_a_change_to_the_sign_serializer_stops_the_fast_path_from_loading_until_it_follows(monkeypatch, change):
    """`api.fastsign._body_plain` copies SignRequestSerializer's reading of the plain body; the
    module checks the serializer still reads that way when it loads, and refuses to otherwise."""
    from rest_framework import serializers

    from api import fastsign

    fastsign._serializer_as_read_plainly()  # as declared: fine
    fields = dict(fastsign.s.SignRequestSerializer._declared_fields)
    if change == "device max_length":
        monkeypatch.setattr(fields["device"], "max_length", 50)
    elif change == "data trimmed":
        monkeypatch.setattr(fields["data"], "trim_whitespace", True)
    elif change == "no_hash default":
        monkeypatch.setattr(fields["no_hash"], "default", True)
    else:
        fields["priority"] = serializers.IntegerField(required=False)
    monkeypatch.setattr(fastsign.s.SignRequestSerializer, "_declared_fields", fields)
    with pytest.raises(AssertionError, match="_body_plain must follow"):
        fastsign._serializer_as_read_plainly()
