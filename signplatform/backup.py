"""Backup and restore: the database and the keys it cannot be read without, in one file.

A backup is a gzip-compressed tar archive with three members:

- `manifest.json`: format, when, the database it came from, the migrations applied to it, the
  number of rows per model and the audit chain's head;
- `keys.json`: the master key (App Secrets, card PINs, legacy AES keys, webhook secrets are
  encrypted under it), the audit chain key (the audit log's HMACs) and Django's secret key;
- `data.jsonl`: every row of every platform table, one JSON object per line (Django's
  serialisation with the datetimes' microseconds kept: the audit chain hashes them).

With a passphrase the whole archive is encrypted (scrypt, AES-256-GCM): the file then starts
with `MAGIC` and a JSON header line. Without one it holds the keys in clear, which is why it is
written with mode 0600.

The copy is taken in one read-only snapshot (PostgreSQL REPEATABLE READ, an SQLite read
transaction), so events written meanwhile never leave the chain head and the events apart.
It is portable between SQLite and PostgreSQL, but not between versions of the platform: a
backup is restored by the version that made it (same migrations), then upgraded with
`migrate`."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone
from django.utils.translation import gettext as _

from accessids.models import AccessId
from accessids.secrets import AppSecretService
from audit.models import AuditChainHead, AuditEvent
from audit.services import COMMAND, ChangeContext
from core.encryption import MasterKeyError, master_key, master_key_forget, master_key_parse

FORMAT = 1
MAGIC = b"SIGNPLATFORM-BACKUP-ENCRYPTED 1\n"
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}  # 32 MiB of memory, a fraction of a second
_TAG = 16
_CHUNK = 1 << 20
# Not backed up: rebuilt by `migrate` (content types, permissions), or worth nothing after a
# restore (sessions: everybody logs in again; django-axes' login attempts and lockouts).
EXCLUDED = {"contenttypes.contenttype", "auth.permission", "sessions.session"}
EXCLUDED_APPS = {"axes"}
# Rows a fresh `migrate` writes (the chain head at its genesis): not "data" of a database.
MIGRATION_ROWS = {"audit.auditchainhead"}


class BackupError(Exception):
    """A backup that cannot be made or restored; the message says why and what to do."""


@dataclass
class BackupSummary:
    path: Path
    counts: dict[str, int]
    encrypted: bool
    sha256: str

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


@dataclass
class RestoreSummary:
    counts: dict[str, int]
    created_at: str
    keys_written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # key file → where the key it replaced was kept (None: there was none), to undo a failed restore
    keys_replaced: dict[Path, Path | None] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


# --- what is backed up ------------------------------------------------------------------------


def backed_up_models() -> list:
    """The models whose rows a backup holds, in an order that loads (what a row refers to first)."""
    chosen: dict = {}
    for model in apps.get_models():
        label = model._meta.label_lower
        if label in EXCLUDED or model._meta.app_label in EXCLUDED_APPS:
            continue
        if model._meta.proxy or not model._meta.managed:
            continue
        chosen.setdefault(model._meta.app_config, []).append(model)
    return serializers.sort_dependencies(list(chosen.items()), allow_cycles=True)


def _migrations_applied(connection) -> list[str]:
    return sorted(f"{app}.{name}" for app, name in MigrationRecorder(connection).applied_migrations())


def _migrations_known(connection) -> list[str]:
    return sorted(f"{app}.{name}" for app, name in MigrationLoader(connection, ignore_no_migrations=True).graph.nodes)


def _keys_current() -> dict[str, str]:
    """The keys the database needs, as text."""
    configured = settings.SIGNPLATFORM_MASTER_KEY
    master = configured.strip() if configured else Path(settings.SIGNPLATFORM_MASTER_KEY_FILE).read_text().strip()
    master_key()  # it must be readable, or the backup would be worth nothing
    return {"master_key": master, "audit_chain_key": settings.AUDIT_CHAIN_KEY, "django_secret_key": settings.SECRET_KEY}


# --- JSON with every microsecond ------------------------------------------------------------------


class _Encoder(json.JSONEncoder):
    """Like Django's encoder, except that datetimes keep their microseconds (Django's cuts them
    to milliseconds, which would change every audit event's hash)."""

    def default(self, o):
        if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
            return o.isoformat()
        if isinstance(o, datetime.timedelta):
            return o.total_seconds()
        if isinstance(o, (Decimal, uuid.UUID)):
            return str(o)
        return super().default(o)


def _rows(models: list, batch: int = 500) -> Iterator[tuple[str, dict]]:
    """(model label, serialised row) for every row, read in batches."""
    serializer = serializers.get_serializer("python")()
    for model in models:
        chunk: list = []
        queryset = model._default_manager.order_by(model._meta.pk.name)
        for obj in queryset.iterator(chunk_size=batch):
            chunk.append(obj)
            if len(chunk) == batch:
                yield from ((model._meta.label_lower, row) for row in serializer.serialize(
                    chunk, use_natural_foreign_keys=True))
                chunk = []
        if chunk:
            yield from ((model._meta.label_lower, row) for row in serializer.serialize(
                chunk, use_natural_foreign_keys=True))


@contextmanager
def _snapshot(connection):
    """One consistent read of every table while the platform keeps writing."""
    if connection.vendor == "postgresql":
        with transaction.atomic(using=connection.alias):
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
    elif connection.vendor == "sqlite":
        # A deferred read transaction sees one snapshot (WAL) and never blocks the writers,
        # where Django's atomic() would take the write lock for the whole copy.
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
    else:
        with transaction.atomic(using=connection.alias):
            yield


# --- the file -------------------------------------------------------------------------------------


def _private_file(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")


class _EncryptingWriter(io.RawIOBase):
    """Writes MAGIC, a header line, then AES-256-GCM ciphertext and its tag at close."""

    def __init__(self, raw: BinaryIO, passphrase: str) -> None:
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        header = {"kdf": "scrypt", **_SCRYPT, "salt": salt.hex(), "cipher": "AES-256-GCM", "nonce": nonce.hex()}
        header_line = json.dumps(header, sort_keys=True).encode() + b"\n"
        raw.write(MAGIC + header_line)
        self._raw = raw
        self._encryptor = Cipher(algorithms.AES(_derive(passphrase, salt, header)), modes.GCM(nonce)).encryptor()
        self._encryptor.authenticate_additional_data(MAGIC + header_line)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._raw.write(self._encryptor.update(bytes(data)))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.write(self._encryptor.finalize() + self._encryptor.tag)
        super().close()


def _derive(passphrase: str, salt: bytes, header: dict) -> bytes:
    if not passphrase:
        raise BackupError(_("the passphrase is empty"))
    return Scrypt(salt=salt, length=32, n=int(header["n"]), r=int(header["r"]), p=int(header["p"])).derive(
        passphrase.encode("utf-8"))


def backup_is_encrypted(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def _decrypt_to(path: Path, passphrase: str | None, out: BinaryIO) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.read(len(MAGIC))
        header_line = fh.readline(4096)
        try:
            header = json.loads(header_line)
            salt, nonce = bytes.fromhex(header["salt"]), bytes.fromhex(header["nonce"])
        except (ValueError, KeyError, TypeError):
            raise BackupError(_("%(path)s is damaged: its header cannot be read") % {"path": path}) from None
        if not passphrase:
            raise BackupError(_("%(path)s is encrypted: give its passphrase (--passphrase-env VAR or "
                                "--passphrase-file)") % {"path": path})
        left = size - fh.tell() - _TAG
        if left < 0:
            raise BackupError(_("%(path)s is damaged: it is too short") % {"path": path})
        decryptor = Cipher(algorithms.AES(_derive(passphrase, salt, header)), modes.GCM(nonce)).decryptor()
        decryptor.authenticate_additional_data(MAGIC + header_line)
        while left > 0:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise BackupError(_("%(path)s is damaged: it is too short") % {"path": path})
            left -= len(chunk)
            out.write(decryptor.update(chunk))
        tag = fh.read(_TAG)
        try:
            out.write(decryptor.finalize_with_tag(tag))
        except Exception:  # cryptography's InvalidTag, or a short tag
            raise BackupError(_("%(path)s: wrong passphrase, or the file was changed or damaged")
                              % {"path": path}) from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes | Path) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o600, int(timezone.now().timestamp())
    if isinstance(data, Path):
        info.size = data.stat().st_size
        with open(data, "rb") as fh:
            tar.addfile(info, fh)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


# --- create -------------------------------------------------------------------------------------


def backup_create(*, path: Path, passphrase: str | None = None, overwrite: bool = False,
                  context: ChangeContext = COMMAND, using: str = DEFAULT_DB_ALIAS) -> BackupSummary:
    """Write a backup of the database and its keys to `path` (mode 0600; encrypted with
    `passphrase` when given), then record a `platform.backup_created` event (which the backup,
    taken before it, does not hold)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise BackupError(_("%(path)s exists; choose another name (or --overwrite)") % {"path": path})
    if not path.parent.is_dir():
        raise BackupError(_("%(path)s is not a folder") % {"path": path.parent})
    try:
        keys = _keys_current()
    except (MasterKeyError, OSError) as exc:
        raise BackupError(_("the master key cannot be read (%(error)s): a backup without it would be worthless")
                          % {"error": exc}) from None
    connection = connections[using]
    models = backed_up_models()
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=path.parent))
    try:
        data_path = work / "data.jsonl"
        counts: dict[str, int] = {}
        with _snapshot(connection):
            head = AuditChainHead.objects.using(using).order_by("pk").values("seq", "last_hash").first()
            migrations = _migrations_applied(connection)
            with _private_file(data_path) as out:
                for label, row in _rows(models):
                    out.write(json.dumps(row, cls=_Encoder, ensure_ascii=False, separators=(",", ":")).encode())
                    out.write(b"\n")
                    counts[label] = counts.get(label, 0) + 1
        manifest = {
            "format": FORMAT,
            "created_at": timezone.now().isoformat(),
            "database_vendor": connection.vendor,
            "migrations": migrations,
            "models": [m._meta.label_lower for m in models],
            "counts": counts,
            "audit_chain_head": head,
        }
        partial = work / "backup.partial"
        with _private_file(partial) as raw:
            sink: BinaryIO = _EncryptingWriter(raw, passphrase) if passphrase else raw
            with tarfile.open(fileobj=sink, mode="w|gz") as tar:
                _add_member(tar, "manifest.json", json.dumps(manifest, indent=1).encode())
                _add_member(tar, "keys.json", json.dumps(keys).encode())
                _add_member(tar, "data.jsonl", data_path)
            if passphrase:
                sink.close()
        os.replace(partial, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = BackupSummary(path=path, counts=counts, encrypted=bool(passphrase), sha256=_file_sha256(path))
    with transaction.atomic(using=using):
        context.record(
            event_type=AuditEvent.BACKUP_CREATED,
            message=f"backup of {summary.rows} rows written to {path.name}",
            details={"file": str(path), "sha256": summary.sha256, "encrypted": summary.encrypted,
                     "rows": summary.rows, "audit_chain_seq": (head or {}).get("seq")},
        )
    return summary


# --- read ---------------------------------------------------------------------------------------


@dataclass
class _OpenedBackup:
    manifest: dict
    keys: dict[str, str]
    tar: tarfile.TarFile

    def rows(self) -> Iterator[dict]:
        member = self.tar.extractfile("data.jsonl")
        if member is None:
            raise BackupError(_("the backup has no data"))
        for line in member:
            if line.strip():
                yield json.loads(line)


@contextmanager
def backup_open(path: Path, *, passphrase: str | None = None) -> Iterator[_OpenedBackup]:
    """The backup's manifest, keys and rows (decrypted into a private temporary file first, so
    that nothing is used before the whole file has been authenticated)."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(_("%(path)s: no such file") % {"path": path})
    work = Path(tempfile.mkdtemp(prefix=".restore-"))
    try:
        source = path
        if backup_is_encrypted(path):
            source = work / "backup.tar.gz"
            with _private_file(source) as out:
                _decrypt_to(path, passphrase, out)
        try:
            tar = tarfile.open(source, mode="r:gz")
        except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
            raise BackupError(_("%(path)s is not a platform backup, or it is damaged (%(error)s)")
                              % {"path": path, "error": exc}) from None
        with tar:
            try:
                manifest = json.loads(tar.extractfile("manifest.json").read())
                keys = json.loads(tar.extractfile("keys.json").read())
            except (KeyError, AttributeError, ValueError, tarfile.TarError, EOFError) as exc:
                raise BackupError(_("%(path)s is not a platform backup, or it is damaged (%(error)s)")
                                  % {"path": path, "error": exc}) from None
            if manifest.get("format") != FORMAT:
                raise BackupError(_("%(path)s has backup format %(format)s; this version reads %(known)s")
                                  % {"path": path, "format": repr(manifest.get("format")), "known": FORMAT})
            yield _OpenedBackup(manifest=manifest, keys=keys, tar=tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- restore ------------------------------------------------------------------------------------


def _database_has_data(models: list, using: str) -> list[str]:
    return [m._meta.label_lower for m in models
            if m._meta.label_lower not in MIGRATION_ROWS and m._default_manager.using(using).exists()]


def _write_key_file(path: Path, text: str, summary: RestoreSummary) -> None:
    """Put the backup's key in place; a different key already there is kept beside it."""
    path = Path(path)
    keep = None
    if path.exists():
        if path.read_text().strip() == text.strip():
            return
        keep = path.with_name(f"{path.name}.before-restore-{timezone.now():%Y%m%d%H%M%S}")
        os.replace(path, keep)
        summary.warnings.append(_("%(path)s held another key: kept as %(kept)s") % {"path": path, "kept": keep})
    staged = path.with_name(path.name + ".restoring")
    with _private_file(staged) as out:
        out.write((text.strip() + "\n").encode())
    os.replace(staged, path)
    summary.keys_written.append(path)
    summary.keys_replaced[path] = keep


def _keys_undo(summary: RestoreSummary) -> None:
    """A restore that failed leaves the keys as they were."""
    for path, kept in summary.keys_replaced.items():
        if kept is not None:
            os.replace(kept, path)
        else:
            path.unlink(missing_ok=True)
    summary.keys_written.clear()
    master_key_forget()


def _keys_restore(keys: dict[str, str], summary: RestoreSummary) -> None:
    """The backup's keys where this installation reads them: key files are written; a key set
    by an environment variable must already be the backup's (it cannot be changed from here)."""
    try:
        backup_master = master_key_parse(keys["master_key"])
    except (KeyError, MasterKeyError):
        raise BackupError(_("the backup's master key is missing or malformed")) from None
    if settings.SIGNPLATFORM_MASTER_KEY:
        if master_key_parse(settings.SIGNPLATFORM_MASTER_KEY) != backup_master:
            raise BackupError(_("SIGNPLATFORM_MASTER_KEY is not the backup's master key, so nothing it encrypted "
                                "could be read. Set it to the backup's key (`manage.py backup keys FILE` prints it) "
                                "or unset it to use the key file, then restore again. Nothing was changed."))
    if os.environ.get("AUDIT_CHAIN_KEY") and settings.AUDIT_CHAIN_KEY != keys.get("audit_chain_key"):
        raise BackupError(_("AUDIT_CHAIN_KEY is not the backup's audit chain key, so the restored audit log would "
                            "not verify. Set it to the backup's key (`manage.py backup keys FILE`) or unset it, then "
                            "restore again. Nothing was changed."))
    if not settings.SIGNPLATFORM_MASTER_KEY:
        _write_key_file(settings.SIGNPLATFORM_MASTER_KEY_FILE, keys["master_key"], summary)
    if not os.environ.get("AUDIT_CHAIN_KEY"):
        _write_key_file(settings.AUDIT_CHAIN_KEY_FILE, keys["audit_chain_key"], summary)
    if not os.environ.get("DJANGO_SECRET_KEY") and keys.get("django_secret_key"):
        _write_key_file(settings.DJANGO_SECRET_KEY_FILE, keys["django_secret_key"], summary)
    # This process goes on with the backup's keys (for the restore's own audit event).
    settings.AUDIT_CHAIN_KEY = keys["audit_chain_key"]
    master_key_forget()


def _flush(connection, models: list) -> None:
    """Empty the tables of the backed-up models (and their many-to-many tables)."""
    tables = set()
    for model in models:
        tables.add(model._meta.db_table)
        tables.update(f.remote_field.through._meta.db_table for f in model._meta.local_many_to_many)
    existing = set(connection.introspection.table_names())
    statements = connection.ops.sql_flush(no_style(), sorted(tables & existing), allow_cascade=True)
    connection.ops.execute_sql_flush(statements)


def backup_restore(*, path: Path, passphrase: str | None = None, replace: bool = False,
                   context: ChangeContext = COMMAND, using: str = DEFAULT_DB_ALIAS) -> RestoreSummary:
    """Restore a backup into this installation's database (created with `migrate` first when
    its tables are missing) and put its keys in place. The database must hold no data, unless
    `replace` (then everything in it is replaced). One transaction: the rows, the sequences and
    a `platform.backup_restored` event, chained onto the restored audit log."""
    connection = connections[using]
    with backup_open(path, passphrase=passphrase) as backup:
        manifest = backup.manifest
        known = set(_migrations_known(connection))
        made_with = set(manifest.get("migrations") or [])
        if made_with - known:
            raise BackupError(_("this backup was made by a newer version of the platform (migrations "
                                "%(migrations)s are unknown here): restore it with that version. Nothing was "
                                "changed.") % {"migrations": ", ".join(sorted(made_with - known)[:5])})
        if known - made_with:
            raise BackupError(_("this backup was made by an older version of the platform (it lacks migrations "
                                "%(migrations)s): restore it with that version, then upgrade (`manage.py migrate`). "
                                "Nothing was changed.") % {"migrations": ", ".join(sorted(known - made_with)[:5])})
        call_command("migrate", interactive=False, verbosity=0, database=using)
        models = backed_up_models()
        labels = {m._meta.label_lower for m in models}
        unknown = set(manifest.get("models") or []) - labels
        if unknown:
            raise BackupError(_("the backup holds tables this installation does not back up: %(tables)s")
                              % {"tables": ", ".join(sorted(unknown))})
        busy = _database_has_data(models, using)
        if busy and not replace:
            raise BackupError(_("the database already holds data (%(tables)s…): restore into an empty database, or "
                                "pass --replace to replace everything in it. Nothing was changed.")
                              % {"tables": ", ".join(busy[:4])})
        summary = RestoreSummary(counts={}, created_at=str(manifest.get("created_at")))
        previous_chain_key = settings.AUDIT_CHAIN_KEY
        try:
            _keys_restore(backup.keys, summary)
            _rows_load(backup, connection, models, summary, context, path)
        except BaseException:
            settings.AUDIT_CHAIN_KEY = previous_chain_key
            _keys_undo(summary)
            raise
    for key in AccessId.objects.using(using).values_list("key", flat=True):
        AppSecretService.invalidate(key)
    return summary


def _rows_load(backup: _OpenedBackup, connection, models: list, summary: RestoreSummary,
               context: ChangeContext, path: Path) -> None:
    using = connection.alias
    with transaction.atomic(using=using):
        _flush(connection, models)
        deferred = []
        with connection.constraint_checks_disabled():
            objects = serializers.deserialize("python", backup.rows(), using=using,
                                              handle_forward_references=True)
            for obj in objects:
                obj.save(using=using)
                if obj.deferred_fields:
                    deferred.append(obj)
                label = obj.object._meta.label_lower
                summary.counts[label] = summary.counts.get(label, 0) + 1
            for obj in deferred:
                obj.save_deferred_fields(using=using)
        connection.check_constraints(table_names=[m._meta.db_table for m in models])
        expected = backup.manifest.get("counts") or {}
        if summary.counts != {k: v for k, v in expected.items() if v}:
            raise BackupError(_("the backup's rows do not match its manifest (%(rows)d read): it is damaged")
                              % {"rows": summary.rows})
        with connection.cursor() as cursor:
            for statement in connection.ops.sequence_reset_sql(no_style(), models):
                cursor.execute(statement)
        context.record(
            event_type=AuditEvent.BACKUP_RESTORED,
            message=f"backup of {backup.manifest.get('created_at')} restored from {Path(path).name} "
                    f"({summary.rows} rows)",
            details={"file": str(path), "backup_created_at": backup.manifest.get("created_at"),
                     "rows": summary.rows, "database_vendor": backup.manifest.get("database_vendor"),
                     "audit_chain_head": backup.manifest.get("audit_chain_head")},
        )
