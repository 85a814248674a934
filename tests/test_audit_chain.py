"""The tamper-evident audit log: a hash chain that `audit_verify` walks (edits, deletions,
reorderings and forged checkpoints are named), `audit_prune` keeping it verifiable, appends
that never fork under concurrency (threads, the group commit of concurrent requests, two web
processes at once), card events from the gateway, one event per request of every kind, a
request whose event cannot be written is never answered as a success (alone or written with
others), and every answered request is in the log when the server is killed (kill -9)."""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.utils import timezone

from accessids.services import access_id_create, access_id_set_legacy_key, app_secret_rotate
from audit.chain import chain_append, chain_verify
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from audit.services import audit_event_record, data_digest
from core.legacy_cipher import legacy_encrypt, legacy_key_fold
from tests.conftest import SimulatorProcess, rpc_access_id_create, test_database_url
from tests.live import CardPlatforms, Platform, http, only_card_row, poll, services_env
from tests.test_api import call
from tests.test_resilience import children_of

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

VECTORS = Path(__file__).resolve().parent / "vectors"


def verify() -> str:
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue()


def verify_fails() -> str:
    with pytest.raises(CommandError) as failure:
        verify()
    return str(failure.value)


def some_events(count: int = 6) -> list[AuditEvent]:
    access, _ = access_id_create(name="ERP")  # one event
    app_secret_rotate(access_id=access)  # one event
    for n in range(count - 2):
        audit_event_record(event_type=AuditEvent.API_REQUEST, source="api", access_id=access, endpoint="POST /api/v1/sign",
                           request_id=f"req-{n}", client_ip="::ffff:10.0.0.1", duration_ms=1.25 + n,
                           details={"n": n, "b": [1, "二"]})
    return list(AuditEvent.objects.order_by("seq"))


# --- the chain -------------------------------------------------------------------------------


def test_a_clean_log_verifies_and_every_event_links_to_the_one_before():
    events = some_events()
    assert [e.seq for e in events] == list(range(1, 7))
    assert all(e.prev_hash == p.hash for p, e in zip(events, events[1:], strict=False)) and events[0].prev_hash == "0" * 64
    assert AuditChainHead.objects.get().seq == 6 and AuditChainHead.objects.get().last_hash == events[-1].hash
    assert "OK: 6 events verified (seq 1–6)" in verify()


def test_editing_one_event_is_named():
    events = some_events()
    AuditEvent.objects.filter(pk=events[3].pk).update(outcome="SIGNATURE_VALIDATION_FAILED")
    message = verify_fails()
    assert f"event id {events[3].pk} (seq 4" in message and "content does not match its hash" in message
    assert "3 events before it verified" in message


@pytest.mark.parametrize("change", [
    {"details": {"n": 1, "b": [1, "三"]}}, {"client_ip": "10.0.0.2"}, {"duration_ms": 2.26},
    {"access_key": "AKSOMEONEELSE"}, {"created_at": timezone.now() - datetime.timedelta(days=1)},
])
def test_any_chained_column_edited_is_named(change):
    events = some_events()
    AuditEvent.objects.filter(pk=events[2].pk).update(**change)
    assert f"event id {events[2].pk} (seq 3" in verify_fails()


def test_deleting_one_event_names_the_gap():
    events = some_events()
    AuditEvent.objects.filter(pk=events[2].pk).delete()
    message = verify_fails()
    assert f"event id {events[3].pk} (seq 4" in message and "event seq 3 missing before it" in message


def test_deleting_the_newest_events_is_noticed_by_the_head():
    some_events()
    AuditEvent.objects.filter(seq__gte=5).delete()
    assert "the chain ends at seq 4 but its head says 6" in verify_fails()


def test_reordering_two_events_is_named():
    events = some_events()
    a, b = events[1], events[4]
    AuditEvent.objects.filter(pk=a.pk).update(seq=-1)
    AuditEvent.objects.filter(pk=b.pk).update(seq=a.seq)
    AuditEvent.objects.filter(pk=a.pk).update(seq=b.seq)
    message = verify_fails()
    assert f"event id {b.pk} (seq {a.seq}" in message


def test_an_event_inserted_without_the_chain_is_named():
    some_events()
    forged = AuditEvent.objects.create(event_type=AuditEvent.API_REQUEST, outcome="OK", request_id="forged")
    assert f"event id {forged.pk}" in verify_fails()


def test_a_recomputed_hash_without_the_key_does_not_verify(settings):
    from audit.chain import event_hash

    events = some_events()
    real_key = settings.AUDIT_CHAIN_KEY
    # Someone with write access to the database only rewrites event 3 and re-hashes the rest
    # of the chain with a key of their own.
    settings.AUDIT_CHAIN_KEY = "a key the attacker chose"
    AuditEvent.objects.filter(pk=events[2].pk).update(outcome="OK", message="nothing happened")
    prev = events[1].hash
    for event in AuditEvent.objects.filter(seq__gte=3).order_by("seq"):
        event.prev_hash, event.hash = prev, event_hash(prev, event)
        AuditEvent.objects.filter(pk=event.pk).update(prev_hash=event.prev_hash, hash=event.hash)
        prev = event.hash
    AuditChainHead.objects.update(last_hash=prev)
    settings.AUDIT_CHAIN_KEY = real_key
    assert f"event id {events[2].pk} (seq 3" in verify_fails()


# --- pruning -----------------------------------------------------------------------------------


def old_and_new_events(old: int = 10, new: int = 5) -> None:
    long_ago = timezone.now() - datetime.timedelta(days=200)
    for n in range(old):
        chain_append(AuditEvent(event_type=AuditEvent.API_REQUEST, outcome="OK", request_id=f"old-{n}",
                                created_at=long_ago + datetime.timedelta(minutes=n)))
    for n in range(new):
        audit_event_record(event_type=AuditEvent.API_REQUEST, request_id=f"new-{n}")


def test_prune_keeps_the_rest_verifiable_from_a_checkpoint():
    old_and_new_events()
    out = io.StringIO()
    call_command("audit_prune", "--older-than", "180d", stdout=out)
    assert "Removed events up to seq 10" in out.getvalue()
    assert not AuditEvent.objects.filter(request_id__startswith="old-").exists()
    assert AuditEvent.objects.filter(request_id__startswith="new-").count() == 5
    (pruned,) = AuditEvent.objects.filter(event_type=AuditEvent.AUDIT_PRUNED)
    assert pruned.details["pruned"] == 10 and pruned.seq == 16
    checkpoint = AuditCheckpoint.objects.get()
    assert (checkpoint.seq, checkpoint.pruned) == (10, 10)
    result = verify()
    assert "Starting after checkpoint" in result and "OK: 6 events verified (seq 11–16)" in result

    # Nothing more is old enough; then tampering after a prune is still caught.
    call_command("audit_prune", "--older-than", "180d", stdout=out)
    assert "Nothing to remove" in out.getvalue()
    first = AuditEvent.objects.order_by("seq").first()
    AuditEvent.objects.filter(pk=first.pk).delete()
    assert "event seq 11 missing before it" in verify_fails()


def test_a_forged_checkpoint_is_refused():
    old_and_new_events()
    call_command("audit_prune", "--older-than", "180d", stdout=io.StringIO())
    AuditCheckpoint.objects.update(seq=12)  # hide two more events
    AuditEvent.objects.filter(seq__in=(11, 12)).delete()
    assert "checkpoint" in verify_fails() and "was altered" in verify_fails()


def test_prune_refuses_a_broken_chain_and_removes_nothing():
    old_and_new_events()
    AuditEvent.objects.filter(seq=3).update(outcome="EDITED")
    with pytest.raises(CommandError, match="nothing was removed"):
        call_command("audit_prune", "--older-than", "180d")
    assert AuditEvent.objects.count() == 15 and not AuditCheckpoint.objects.exists()


def test_prune_age_must_be_written_clearly():
    with pytest.raises(CommandError, match="like 180d"):
        call_command("audit_prune", "--older-than", "half a year")


# --- concurrency: the chain never forks --------------------------------------------------------


def test_concurrent_appends_from_many_connections_never_fork():
    threads, per_thread = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                audit_event_record(event_type=AuditEvent.API_REQUEST, request_id=f"t{n}-{i}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, threads * per_thread + 1))
    assert chain_verify().ok


# --- through real servers: card events, one event per request, no success without its event ----


@pytest.fixture(scope="module")
def platforms(django_db_setup, django_db_blocker, tmp_path_factory):
    def start(kind: str):
        tmp = tmp_path_factory.mktemp(f"chain-{kind}")
        sim = SimulatorProcess(algorithm="rsa", key_dir=str(tmp / "keys")).start()
        with django_db_blocker.unblock():
            only_card_row(f"chain-{kind}")
            env = services_env(test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin,
                               UKEY_DEFAULT_DEVICE=f"chain-{kind}", UKEY_RECONNECT_MAX="1",
                               UKEY_PROBE_INTERVAL="3600", UKEY_REQUEST_TIMEOUT="1.5")
            return sim, Platform(env, tmp).start()

    pool = CardPlatforms(start, db_blocker=django_db_blocker)
    yield pool
    pool.stop()


def test_card_connects_disconnects_errors_and_reconnects_are_chained_events(platforms):
    sim, platform = platforms("card")
    poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.CARD_CONNECTED, device="chain-card").exists()
         or AuditEvent.objects.filter(event_type=AuditEvent.CARD_RECONNECTED, device="chain-card").exists(),
         15, "card.connected")
    sim.stop()
    down = poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.CARD_DISCONNECTED,
                                                  device="chain-card").first(), 15, "card.disconnected")
    assert down.outcome == "CARD_DISCONNECTED" and down.source == "gateway" and down.message
    sim.restart()
    platform.wait_card()
    poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.CARD_RECONNECTED, device="chain-card").exists(),
         15, "card.reconnected")
    # A failed operation: the card refuses to verify a signature that is not one. (A missing
    # argument no longer reaches the card: the API refuses it first.)
    access, secret = rpc_access_id_create(name="ERP")
    refused = {"_method": "cus-sec_SpcVerifySignData", "args": {"inData": "x", "signData": "AAAA"}}
    status, _, body = call(platform, "POST", "/api/v1/rpc", refused, access=access, secret=secret)
    assert status == 502, body
    error = poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.CARD_ERROR, device="chain-card").first(),
                 10, "card.error")
    assert error.outcome == "UKEY_ERROR"
    # Everything the platform process and this test process wrote forms one chain.
    assert chain_verify().ok


def _legacy_body(key: str, payload: dict) -> bytes:
    return legacy_encrypt(legacy_key_fold(key), json.dumps(payload)).encode()


def test_every_request_kind_writes_exactly_one_event_with_its_outcome(platforms):
    _, platform = platforms("kinds")
    access, secret = rpc_access_id_create(name="ERP")
    access_id_set_legacy_key(access_id=access, legacy_key="kinds-legacy-key")
    ceb = (VECTORS / "CEB621Message.xml").read_text(encoding="utf-8")
    pay179 = json.loads((VECTORS / "179-payload.json").read_text(encoding="utf-8"))

    def native(method, path, payload=None, **kw):
        status, headers, body = call(platform, method, path, payload, access=access, secret=secret, **kw)
        return status, headers["X-Request-ID"]

    def anonymous(method, path, payload=None, headers=None):
        status, response_headers, _ = call(platform, method, path, payload, headers=headers)
        return status, response_headers["X-Request-ID"]

    def legacy(path, body):
        status, headers, _ = http("POST", platform.base + path, body=body, headers={"Content-Type": "text/plain"})
        return status, headers["X-Request-ID"]

    cases = [
        ("sign", lambda: native("POST", "/api/v1/sign", {"data": "x"}), 200, "OK"),
        ("sign/xml", lambda: native("POST", "/api/v1/sign/xml", {"xml": ceb}), 200, "OK"),
        ("verify/xml", lambda: native("POST", "/api/v1/verify/xml", {"xml": ceb}), 200, "OK"),
        ("sign/179", lambda: native("POST", "/api/v1/sign/179", pay179), 200, "OK"),
        ("rpc", lambda: native("POST", "/api/v1/rpc", {"_method": "cus-sec_SpcGetCertNo"}), 200, "OK"),
        ("certificate", lambda: native("GET", "/api/v1/certificate"), 200, "OK"),
        ("xml list", lambda: native("GET", "/api/v1/xml-documents"), 200, "OK"),
        ("xml create", lambda: native("POST", "/api/v1/xml-documents", {"filename": "a", "xml": "<a/>"}), 201, "OK"),
        ("xml get missing", lambda: native("GET", "/api/v1/xml-documents/999999"), 404, "NOT_FOUND"),
        ("bad body", lambda: native("POST", "/api/v1/sign", {"no": "data"}), 400, "INVALID_REQUEST"),
        ("no headers", lambda: anonymous("POST", "/api/v1/sign", {"data": "x"}), 401, "MISSING_AUTH_HEADERS"),
        ("unknown id", lambda: anonymous("POST", "/api/v1/sign", {"data": "x"}, headers={
            "X-Access-Id": "AKNOPE", "X-Timestamp": str(int(timezone.now().timestamp() * 1000)),
            "X-Nonce": "n" * 20, "X-Signature": "0" * 64}), 401, "INVALID_ACCESS_ID"),
        ("bad signature", lambda: native("POST", "/api/v1/sign", {"data": "x"}, headers={"X-Signature": "0" * 64}),
         401, "SIGNATURE_VALIDATION_FAILED"),
        ("unknown path", lambda: native("GET", "/api/v1/nothing-here"), 404, "NOT_FOUND"),
        ("legacy getCode", lambda: legacy("/getCode", _legacy_body("kinds-legacy-key",
                                                                   {"str": "x", "pwdstr": "ignored"})), 200, "OK"),
        ("legacy bad body", lambda: legacy("/getCode", b"not hex"), 400, "INVALID_REQUEST"),
        ("legacy list", lambda: legacy("/xml-files/list", _legacy_body("kinds-legacy-key", {})), 200, "OK"),
    ]
    for name, send, status, outcome in cases:
        got, request_id = send()
        assert got == status, name
        events = list(AuditEvent.objects.filter(request_id=request_id))
        assert [(e.outcome, e.http_status) for e in events] == [(outcome, status)], (name, events)
    assert chain_verify().ok


def test_a_sign_whose_event_cannot_be_written_is_not_answered_as_success(platforms):
    _, platform = platforms("kinds")
    access, secret = access_id_create(name="ERP")
    poison = data_digest("poison 42")
    with connection.cursor() as cursor:  # PostgreSQL refuses exactly that event
        cursor.execute(f"""
            CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
            BEGIN IF NEW.data_sha256 = '{poison}' THEN RAISE EXCEPTION 'audit store refused'; END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_auditevent
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();""")
    try:
        status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "poison 42"}, access=access, secret=secret)
        assert status == 500 and body["code"] == "INTERNAL_ERROR" and "signature" not in body, body
        assert not AuditEvent.objects.filter(data_sha256=poison).exists()
        # The same failure for the legacy API and for XML signing, which also stores a document.
        xml = (VECTORS / "CEB621Message.xml").read_text(encoding="utf-8")
        from xmlstore.models import XmlDocument

        before = XmlDocument.objects.count()
        with connection.cursor() as cursor:
            cursor.execute(f"""
                CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
                BEGIN IF NEW.data_sha256 IN ('{poison}', '{data_digest(xml)}') THEN
                RAISE EXCEPTION 'audit store refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql;""")
        status, _, body = call(platform, "POST", "/api/v1/sign/xml", {"xml": xml, "filename": "p"},
                               access=access, secret=secret)
        assert status == 500 and "signed_xml" not in body, body
        assert XmlDocument.objects.count() == before  # the document and its event: both or neither
        status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "fine"}, access=access, secret=secret)
        assert status == 200, body
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS refuse_poison ON audit_auditevent; "
                           "DROP FUNCTION IF EXISTS refuse_poison();")
    assert chain_verify().ok


def _sign_many(platform, access, secret, texts: list[str], threads: int = 8) -> list[tuple[int, str, dict]]:
    """Concurrent signed sign requests: (status, request id, body) of each."""

    def one(text: str):
        status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": text}, access=access, secret=secret)
        return status, headers["X-Request-ID"], body

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, texts))


def test_a_poisoned_event_written_with_others_fails_only_its_own_request(platforms):
    _, platform = platforms("kinds")
    access, secret = access_id_create(name="ERP")
    texts = [f"batch {i}" for i in range(24)]
    poison = data_digest(texts[11])
    with connection.cursor() as cursor:
        cursor.execute(f"""
            CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
            BEGIN IF NEW.data_sha256 = '{poison}' THEN RAISE EXCEPTION 'audit store refused'; END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_auditevent
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();""")
    try:
        answers = _sign_many(platform, access, secret, texts, threads=12)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS refuse_poison ON audit_auditevent; "
                           "DROP FUNCTION IF EXISTS refuse_poison();")
    for text, (status, request_id, body) in zip(texts, answers, strict=True):
        if text == texts[11]:
            assert status == 500 and "signature" not in body, body
            assert not AuditEvent.objects.filter(request_id=request_id).exists()
        else:
            assert status == 200, body
            assert AuditEvent.objects.filter(request_id=request_id, outcome="OK").count() == 1
    assert chain_verify().ok


def test_concurrent_requests_at_two_web_processes_form_one_chain(platforms):
    """Two platforms on one PostgreSQL database, each writing its requests' events in groups:
    one chain, no gap, no fork; `audit_verify` says so."""
    first, second = platforms("kinds")[1], platforms("second")[1]
    access, secret = access_id_create(name="ERP")
    results: dict[str, list] = {}

    def load(name, platform):
        results[name] = _sign_many(platform, access, secret, [f"{name} {i}" for i in range(60)], threads=8)

    workers = [threading.Thread(target=load, args=(name, p)) for name, p in (("one", first), ("two", second))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    request_ids = [rid for answers in results.values() for status, rid, body in answers if status == 200]
    assert len(request_ids) == 120
    assert AuditEvent.objects.filter(request_id__in=request_ids).count() == 120
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert chain_verify().ok
    assert verify().startswith("OK:")


def test_every_answered_request_is_in_the_log_when_the_server_is_killed(platforms):
    """kill -9 of the web process under load: every request answered with a signature has its
    event (each answer waits for its event's commit); the chain still verifies."""
    _, platform = platforms("killed")
    access, secret = access_id_create(name="ERP")
    answered: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": f"kill {n} {i}"},
                                             access=access, secret=secret)
            except Exception:  # the server is gone
                return
            if status == 200 and body.get("signature"):
                answered.append(headers["X-Request-ID"])

    workers = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    poll(lambda: len(answered) >= 40, 30, "requests answered")
    children = children_of(platform.proc.pid, "manage.py")  # its ukey_gateway process (Redis mode)
    os.kill(platform.proc.pid, signal.SIGKILL)
    for child in children:  # the whole host went down, say
        os.kill(child, signal.SIGKILL)
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    platform.proc.wait(timeout=10)
    time.sleep(0.5)  # anything the server had in flight is gone with it
    recorded = set(AuditEvent.objects.filter(request_id__in=answered).values_list("request_id", flat=True))
    assert len(answered) >= 40 and set(answered) <= recorded
    assert chain_verify().ok

