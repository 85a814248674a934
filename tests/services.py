"""A pytest plugin (loaded with `-p tests.services`) that starts real Redis and PostgreSQL
servers on free loopback ports before Django's settings are read, and stops them at the end.

SIGNPLATFORM_TEST_BACKENDS=services (default): PostgreSQL + Redis.
SIGNPLATFORM_TEST_BACKENDS=embedded: the embedded defaults (SQLite, local-memory cache,
in-memory channel layer), no services.
The binaries come from Debian packages that `make test` installs when missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from core.ports import port_free, port_wait_listening

_started: list[subprocess.Popen] = []
_dirs: list[str] = []


free_port = port_free
_wait_port = port_wait_listening


def _start_redis(workdir: Path) -> str:
    binary = shutil.which("redis-server")
    if not binary:
        raise pytest.UsageError("redis-server is not installed: run `make test` (it installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    _started.append(proc)
    _wait_port(port, proc, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def _postgres_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise pytest.UsageError("PostgreSQL server is not installed: run `make test` (it installs it)")
    return Path(candidates[-1]).parent


def _start_postgres(workdir: Path) -> str:
    bindir = _postgres_bin()
    datadir = workdir / "pgdata"
    run_as: dict = {}
    if os.geteuid() == 0:
        # PostgreSQL's server tools refuse to run as root: run them as the postgres user
        # (set in the child itself, so signals reach the server directly).
        pw = pwd.getpwnam("postgres")
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--no-sync", "--locale=C"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=workdir,
        **run_as,
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port), "-k", str(workdir),
                       "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                       "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        **run_as,
    )
    _started.append(proc)
    _wait_port(port, proc, "postgres")
    # Accepting TCP is not quite ready for queries; wait for a real login.
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return f"postgres://postgres@127.0.0.1:{port}/signplatform"


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # Runs around pytest-django's hook of the same name, which reads the settings.
    mode = os.environ.setdefault("SIGNPLATFORM_TEST_BACKENDS", "services")
    base = tempfile.mkdtemp(prefix="signplatform-test-")
    os.chmod(base, 0o755)
    _dirs.append(base)
    os.environ["SIGNPLATFORM_VAR_DIR"] = str(Path(base) / "var")
    os.environ["SIGNPLATFORM_ENV_FILE"] = ""  # a developer's .env must not change the tests
    # Connections opened in database_sync_to_async threads must not outlive a test.
    os.environ["DATABASE_CONN_MAX_AGE"] = "0"
    os.environ.pop("UKEY_URL", None)
    os.environ.pop("SIGNPLATFORM_MASTER_KEY", None)
    if mode == "services":
        redis_dir = Path(base) / "redis"
        pg_dir = Path(base) / "pg"
        redis_dir.mkdir()
        pg_dir.mkdir()
        os.environ["REDIS_URL"] = _start_redis(redis_dir)
        os.environ["DATABASE_URL"] = _start_postgres(pg_dir)
    elif mode == "embedded":
        os.environ.pop("REDIS_URL", None)
        os.environ.pop("DATABASE_URL", None)
    else:
        raise pytest.UsageError("SIGNPLATFORM_TEST_BACKENDS must be 'services' or 'embedded'")
    return (yield)


def pytest_report_header(config):
    mode = os.environ.get("SIGNPLATFORM_TEST_BACKENDS")
    if mode == "services":
        return f"backends: PostgreSQL {os.environ['DATABASE_URL']} + Redis {os.environ['REDIS_URL']}"
    return "backends: embedded defaults (SQLite, local-memory cache, in-memory channel layer)"


def pytest_unconfigure(config):
    for proc in reversed(_started):
        if proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for clients); Redis takes either.
            proc.send_signal(signal.SIGINT)
    for proc in reversed(_started):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    _started.clear()
    for path in _dirs:
        shutil.rmtree(path, ignore_errors=True)
