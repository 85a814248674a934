"""Backup and restore (`manage.py backup create|restore`), the way an operator would use them:
access IDs made, a backup taken, the database dropped and the keys lost, the backup restored;
then the old secrets sign again through a running platform and the audit chain verifies.
Once on SQLite with key files, once on PostgreSQL with the keys in environment variables."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import uuid

import pytest

from core.certs import certificate_load, signature_verify
from signclient import SignClient
from tests.conftest import SimulatorProcess
from tests.live import ROOT, Platform, embedded_env

pytestmark = pytest.mark.services


def manage(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, f"manage.py {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


class PostgresDatabase:
    """A database of its own on the tests' PostgreSQL server, dropped and made again at will."""

    def __init__(self) -> None:
        from django.db import connection

        s = connection.settings_dict
        self.server = f"postgresql://{s['USER']}@{s['HOST']}:{s['PORT']}"
        self.name = f"backup_{uuid.uuid4().hex[:8]}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    @property
    def url(self) -> str:
        return f"{self.server}/{self.name}"

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def card():
    sim = SimulatorProcess(algorithm="rsa").start()
    yield sim
    sim.stop()


def _environment(engine: str, tmp_path, card: SimulatorProcess):
    var = tmp_path / "var"
    env = embedded_env(var, UKEY_URL=card.url, UKEY_PIN=card.pin, UKEY_FOLLOW_DEVICES="0")
    database = None
    if engine == "postgresql":
        database = PostgresDatabase()
        database.create()
        # Keys from the environment here (key files on SQLite): restore must check, not write, them.
        env.update(DATABASE_URL=database.url, SIGNPLATFORM_MASTER_KEY="ab" * 32,
                   AUDIT_CHAIN_KEY="chain-key-from-the-environment", DJANGO_SECRET_KEY="x" * 60)
    return env, var, database


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_backup_restored_into_a_dropped_database_signs_with_the_old_secrets_and_the_audit_verifies(
        engine, tmp_path, card):
    env, var, database = _environment(engine, tmp_path, card)
    try:
        manage(env, "migrate", "-v0")
        erp = json.loads(manage(env, "accessid", "create", "--name", "ERP", "--json").stdout)
        wms = json.loads(manage(env, "accessid", "create", "--name", "WMS", "--scopes", "sign", "--json").stdout)
        # A rotated one: its old secret stays valid in the grace period, its new one too.
        rotated = json.loads(manage(env, "accessid", "rotate", wms["access_id"], "--grace", "24h", "--json").stdout)
        backup = tmp_path / "platform.backup"
        manage(env, "backup", "create", str(backup))
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600

        # Lose everything: the database and every file in var/ (the key files on SQLite).
        if database is not None:
            database.drop()
            database.create()
        shutil.rmtree(var)
        refused = manage(env, "audit_verify", check=False)
        assert refused.returncode != 0  # nothing left to verify against

        restored = manage(env, "backup", "restore", str(backup))
        assert "Restored" in restored.stdout
        if engine == "sqlite":
            for name in ("master.key", "audit-chain.key"):
                assert stat.S_IMODE((var / name).stat().st_mode) == 0o600
        else:
            assert not (var / "master.key").exists()  # the environment's key is the backup's: nothing written
        verified = manage(env, "audit_verify")
        assert verified.stdout.startswith("OK:")

        platform = Platform(env, tmp_path, name=f"restored-{engine}").start(migrate=False)
        try:
            platform.wait_card()
            cert = certificate_load(SignClient(platform.base, erp["access_id"], erp["secret"]).certificate()
                                    ["certificate_pem"])
            for access_id, secret in ((erp["access_id"], erp["secret"]), (wms["access_id"], wms["secret"]),
                                      (wms["access_id"], rotated["secret"])):
                answer = SignClient(platform.base, access_id, secret).sign("报关单 restored")
                assert signature_verify(cert, "报关单 restored".encode(), answer["signature"])
        finally:
            platform.stop()
        # The requests after the restore extend the restored chain, which still verifies.
        after = manage(env, "audit_verify")
        assert after.stdout.startswith("OK:")
        events = manage(env, "shell", "-c", "from audit.models import AuditEvent as E; import json; print(json.dumps("
                        "[E.objects.filter(event_type=t).count() for t in (E.BACKUP_RESTORED, E.API_REQUEST)]))")
        assert json.loads(events.stdout.strip().splitlines()[-1]) == [1, 4]
    finally:
        if database is not None:
            database.drop()


def test_an_encrypted_backup_needs_its_passphrase_and_a_restore_never_overwrites_or_mismatches(tmp_path):
    from signplatform.backup import BackupError, backup_open

    env = embedded_env(tmp_path / "var", BACKUP_PASSPHRASE="correct horse battery staple")
    manage(env, "migrate", "-v0")
    access = json.loads(manage(env, "accessid", "create", "--name", "ERP", "--json").stdout)
    backup = tmp_path / "encrypted.backup"
    manage(env, "backup", "create", str(backup), "--passphrase-env", "BACKUP_PASSPHRASE")
    raw = backup.read_bytes()
    assert raw.startswith(b"SIGNPLATFORM-BACKUP-ENCRYPTED 1\n")
    master = (tmp_path / "var" / "master.key").read_text().strip()
    assert master.encode() not in raw and access["access_id"].encode() not in raw  # nothing readable in it
    # Nothing is read from it without the passphrase, with a wrong one, or with one byte changed.
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:])
    for path, passphrase, message in ((backup, None, "is encrypted"), (backup, "wrong", "wrong passphrase"),
                                      (damaged, "correct horse battery staple", "changed or damaged")):
        with pytest.raises(BackupError, match=message):
            with backup_open(path, passphrase=passphrase):
                pass
    # Into the same, used database: refused, nothing changed.
    used = manage(env, "backup", "restore", str(backup), "--passphrase-env", "BACKUP_PASSPHRASE", check=False)
    assert used.returncode != 0 and "already holds data" in used.stderr
    # Lost database and key files, and another master key in the environment: refused, no key written.
    shutil.rmtree(tmp_path / "var")
    other = dict(env, SIGNPLATFORM_MASTER_KEY="cd" * 32)
    refused = manage(other, "backup", "restore", str(backup), "--passphrase-env", "BACKUP_PASSPHRASE", check=False)
    assert refused.returncode != 0 and "SIGNPLATFORM_MASTER_KEY is not the backup's master key" in refused.stderr
    assert not (tmp_path / "var" / "master.key").exists()
    manage(env, "backup", "restore", str(backup), "--passphrase-env", "BACKUP_PASSPHRASE")
    assert (tmp_path / "var" / "master.key").read_text().strip() == master
    assert access["access_id"] in manage(env, "accessid", "list").stdout
    assert manage(env, "audit_verify").stdout.startswith("OK:")
