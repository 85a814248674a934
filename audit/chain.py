"""The audit log's hash chain: every event carries `seq` (1, 2, 3, ...), the hash of the event
before it and its own hash, an HMAC-SHA256 under AUDIT_CHAIN_KEY of
`prev_hash + "\\n" + canonical content`. Editing, deleting or reordering an event breaks the
chain at that event; without the key (kept outside the database) nobody can rebuild it.

Appends are serialised by one row, `AuditChainHead`: its UPDATE takes the row lock
(PostgreSQL) or the write lock (SQLite) before the previous hash is read, so two concurrent
requests can never both chain onto the same event, and the lock is held until the
transaction that writes the event commits (a rolled-back event leaves no gap).

Pruning keeps the chain verifiable: an `AuditCheckpoint` (itself MACed) records the seq and
hash of the last removed event, and verification starts from the latest checkpoint."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Iterator

from django.conf import settings
from django.db import connection, transaction
from django.db.models.signals import post_save

from core.rowsinsert import rows_insert

from .models import AuditChainHead, AuditCheckpoint, AuditEvent

GENESIS = "0" * 64
# The columns a hash covers, in this order (id is not one: `seq` is the event's place).
CHAINED_FIELDS = (
    "seq", "created_at", "event_type", "request_id", "access_key", "access_id_id", "actor_id", "actor_name",
    "source", "endpoint", "outcome", "http_status", "duration_ms", "client_ip", "device", "cert_no",
    "data_sha256", "secret_version", "message", "details",
)


def chain_key() -> bytes:
    return settings.AUDIT_CHAIN_KEY.encode("utf-8")


def _ip(value: str | None) -> str | None:
    # PostgreSQL's inet may print an address differently from how it was given.
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _value(event: AuditEvent, name: str) -> Any:
    value = getattr(event, name)
    if name == "created_at":
        return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if name == "client_ip":
        return _ip(value)
    return value


# Columns added later: chained only when set, so events written before they existed keep
# their hashes.
CHAINED_WHEN_SET = ("profile",)


def event_canonical(event: AuditEvent) -> bytes:
    """The event's chained content as compact, key-sorted JSON."""
    content = {name: _value(event, name) for name in CHAINED_FIELDS}
    content.update({name: value for name in CHAINED_WHEN_SET if (value := getattr(event, name))})
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(prev_hash: str, event: AuditEvent, *, key: bytes | None = None) -> str:
    message = prev_hash.encode("ascii") + b"\n" + event_canonical(event)
    return hmac.new(key or chain_key(), message, hashlib.sha256).hexdigest()


def chain_append(event: AuditEvent) -> AuditEvent:
    """Give an unsaved event its place in the chain and save it (inside the caller's
    transaction, which holds the chain's lock until it commits)."""
    return chain_append_many([event])[0]


def chain_append_many(events: list[AuditEvent], *, savepoint: bool = True) -> list[AuditEvent]:
    """Give unsaved events consecutive places in the chain, in their order, and save them in
    one statement (inside the caller's transaction, which holds the chain's lock until it
    commits): the group commit of many requests' events costs one lock, one insert and one
    update. `post_save` is sent for each event, as `Model.save` would. `savepoint=False`: the
    caller's transaction fails as a whole if this does (no savepoint to roll back to)."""
    if not events:
        return events
    for event in events:
        if event.client_ip:
            event.client_ip = _ip(event.client_ip)
    head_table = connection.ops.quote_name(AuditChainHead._meta.db_table)
    claim = f"UPDATE {head_table} SET seq = seq + %s WHERE id = 1 RETURNING seq, last_hash"
    with transaction.atomic(savepoint=savepoint), connection.cursor() as cursor:
        # One UPDATE ... RETURNING takes the lock and reads the previous hash (PostgreSQL and
        # SQLite >= 3.35): the lock is taken before the previous hash is read.
        cursor.execute(claim, [len(events)])
        row = cursor.fetchone()
        if row is None:  # a new (or flushed) database: start the chain
            AuditChainHead.objects.get_or_create(pk=1, defaults={"seq": 0, "last_hash": GENESIS})
            cursor.execute(claim, [len(events)])
            row = cursor.fetchone()
        seq, prev_hash = row[0] - len(events), row[1]
        key = chain_key()
        for event in events:
            seq += 1
            event.seq, event.prev_hash = seq, prev_hash
            event.hash = prev_hash = event_hash(prev_hash, event, key=key)
        rows_insert(cursor, AuditEvent, events)
        cursor.execute(f"UPDATE {head_table} SET last_hash = %s WHERE id = 1", [prev_hash])
        for event in events:
            post_save.send(sender=AuditEvent, instance=event, created=True, update_fields=None, raw=False,
                           using=connection.alias)
    return events


def checkpoint_mac(*, seq: int, last_hash: str, pruned: int, key: bytes | None = None) -> str:
    message = f"checkpoint\n{seq}\n{last_hash}\n{pruned}".encode("ascii")
    return hmac.new(key or chain_key(), message, hashlib.sha256).hexdigest()


@dataclass
class ChainReport:
    ok: bool
    checked: int = 0
    start_seq: int = 1
    last_seq: int = 0
    event: AuditEvent | None = None  # the first event that does not verify
    reason: str = ""


def _events_from(seq: int, batch: int) -> Iterator[AuditEvent]:
    # Keyset pagination on the unique seq: constant memory on any table size.
    last = seq - 1
    while True:
        rows = list(AuditEvent.objects.filter(seq__gt=last).order_by("seq")[:batch])
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def chain_verify(*, batch: int = 5000, progress=None) -> ChainReport:
    """Walk the chain from the latest checkpoint (or the first event) to the head."""
    key = chain_key()
    checkpoint = AuditCheckpoint.objects.order_by("-seq").first()
    if checkpoint is not None:
        if not hmac.compare_digest(checkpoint.mac, checkpoint_mac(seq=checkpoint.seq, last_hash=checkpoint.last_hash,
                                                                   pruned=checkpoint.pruned, key=key)):
            return ChainReport(False, reason=f"checkpoint #{checkpoint.pk} (seq {checkpoint.seq}) was altered")
        expected_seq, prev_hash = checkpoint.seq + 1, checkpoint.last_hash
    else:
        expected_seq, prev_hash = 1, GENESIS
    report = ChainReport(True, start_seq=expected_seq, last_seq=expected_seq - 1)
    unchained = AuditEvent.objects.filter(seq__isnull=True).order_by("id").first()
    if unchained is not None:
        return ChainReport(False, event=unchained, reason="the event has no place in the chain (inserted around it)")
    for event in _events_from(expected_seq if checkpoint else 0, batch):
        if event.seq != expected_seq:
            missing = (f"event seq {expected_seq}" if event.seq == expected_seq + 1
                       else f"events seq {expected_seq}–{event.seq - 1}")
            reason = (f"{missing} missing before it (deleted?)" if event.seq > expected_seq
                      else f"seq {event.seq} is out of order (expected {expected_seq})")
            return ChainReport(False, report.checked, report.start_seq, report.last_seq, event, reason)
        if event.prev_hash != prev_hash:
            return ChainReport(False, report.checked, report.start_seq, report.last_seq, event,
                               "its link to the event before it is broken (an event was removed or reordered)")
        if not hmac.compare_digest(event.hash, event_hash(prev_hash, event, key=key)):
            return ChainReport(False, report.checked, report.start_seq, report.last_seq, event,
                               "its content does not match its hash (the event was changed)")
        prev_hash, expected_seq = event.hash, expected_seq + 1
        report.checked += 1
        report.last_seq = event.seq
        if progress and report.checked % batch == 0:
            progress(report.checked)
    head = AuditChainHead.objects.filter(pk=1).values_list("seq", "last_hash").first()
    if head and head[0] != report.last_seq:
        return ChainReport(False, report.checked, report.start_seq, report.last_seq, None,
                           f"the chain ends at seq {report.last_seq} but its head says {head[0]} "
                           "(the newest events were deleted)")
    return report


class ChainBroken(RuntimeError):
    def __init__(self, report: ChainReport):
        super().__init__(report.reason)
        self.report = report
