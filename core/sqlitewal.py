"""SQLite's WAL checkpoints off the request path (the embedded defaults' web process).

SQLite copies its write-ahead log back into the database file every 1,000 pages, in the
connection whose commit crossed that mark, and syncs the file to disk there: with the audit
log's indexes a request writes some 15 pages, so about one request in 65 waited for that
(p99 of a commit ~8 ms here, its mean five times its median). The web process turns
automatic checkpoints off for its own connections and checkpoints from a thread of its own
once a second (PASSIVE: it never blocks a writer). Durability is unchanged: a commit is in the
log before it returns, as before; only the copying back moved."""

from __future__ import annotations

import logging
import sqlite3
import threading

from django.conf import settings
from django.db.backends.signals import connection_created

logger = logging.getLogger(__name__)


def _no_autocheckpoint(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint=0")


class WalCheckpointer:
    """A thread that checkpoints the SQLite database every `interval` seconds."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)

    def start(self) -> None:
        connection_created.connect(_no_autocheckpoint, dispatch_uid="core.sqlitewal")
        self._thread.start()

    def stop(self) -> None:
        """The last checkpoint (the log emptied), and automatic checkpoints again."""
        connection_created.disconnect(dispatch_uid="core.sqlitewal")
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=20, isolation_level=None)
        try:
            while not self._stop.wait(self.interval):
                self._checkpoint(conn, "PASSIVE")
            self._checkpoint(conn, "TRUNCATE")
        finally:
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})")
        except sqlite3.Error as exc:  # busy, locked: the next round does it
            logger.debug("WAL checkpoint (%s) skipped: %s", mode, exc)


def wal_checkpointer_for_default_database() -> WalCheckpointer | None:
    """A checkpointer for the default database when it is an SQLite file, else None."""
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("sqlite3") or str(db["NAME"]) in ("", ":memory:"):
        return None
    return WalCheckpointer(str(db["NAME"]))
