"""Request signing pieces: the canonical query and string to sign against hand-written
expectations from the spec, the nonce stores, client addresses behind proxies, and the
whole flow on the embedded defaults (SQLite nonce table, no Redis)."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import caches
from django.test import RequestFactory, override_settings
from django_redis.cache import RedisCache

from api.auth import address_allowed, client_address
from api.nonces import DatabaseNonceStore, NonceStoreUnavailable, RedisNonceStore
from signclient import canonical_query, sign_headers, string_to_sign
from tests.live import Platform, embedded_env, http


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", ""),
        ("b=2&a=1", "a=1&b=2"),
        ("b=2&a=3&a=1", "a=1&a=3&b=2"),
        ("a=&a=x", "a=&a=x"),
        ("flag", "flag="),
        ("q=hello%20world", "q=hello%20world"),
        ("q=a+b", "q=a%20b"),
        ("x=a%2Fb&y=a/b", "x=a%2Fb&y=a%2Fb"),
        ("name=%E4%B8%AD", "name=%E4%B8%AD"),
        ("t=-_.~", "t=-_.~"),
        ("k%20ey=*", "k%20ey=%2A"),
    ],
)
def test_canonical_query(query, expected):
    assert canonical_query(query) == expected


def test_string_to_sign_is_the_eight_lines_of_the_spec():
    body = b'{"data": "x"}'
    text = string_to_sign("post", "/api/v1/sign", "b=2&a=1", "AK1", "1700000000000", "n" * 16, body)
    assert text == (
        "HMAC-SHA256\nPOST\n/api/v1/sign\na=1&b=2\nAK1\n1700000000000\nnnnnnnnnnnnnnnnn\n"
        + hashlib.sha256(body).hexdigest()
    )
    assert string_to_sign("GET", "/api/v1/certificate", "", "AK1", "1", "n" * 16, b"").endswith(
        "\n\nAK1\n1\nnnnnnnnnnnnnnnnn\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.django_db(transaction=True)
def test_database_nonce_store_claims_once_even_concurrently():
    store = DatabaseNonceStore(600)
    barrier = threading.Barrier(8)

    def claim(_):
        barrier.wait()
        from django.db import connection

        try:
            return store.claim("AK1", "nonce-0123456789abcdef")
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))
    assert results.count(True) == 1
    assert store.claim("AK2", "nonce-0123456789abcdef") is True  # per access ID


@pytest.mark.django_db(transaction=True)
def test_database_nonce_store_forgets_after_the_ttl():
    store = DatabaseNonceStore(0)
    assert store.claim("AK1", "nonce-aaaaaaaaaaaaaaaa") is True
    assert store.claim("AK1", "nonce-aaaaaaaaaaaaaaaa") is True


@pytest.mark.services
def test_redis_nonce_store_claims_once_and_fails_closed_when_unreachable():
    store = RedisNonceStore(600)
    assert store.claim("AK1", "nonce-bbbbbbbbbbbbbbbb") is True
    assert store.claim("AK1", "nonce-bbbbbbbbbbbbbbbb") is False
    assert caches["nonces"].ttl("nonce:AK1:nonce-bbbbbbbbbbbbbbbb") <= 600
    unreachable = RedisCache("redis://127.0.0.1:9/0", {"OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5}})
    with pytest.raises(NonceStoreUnavailable):
        RedisNonceStore(600, cache=unreachable).claim("AK1", "nonce-cccccccccccccccc")


@pytest.mark.parametrize(
    "trusted, remote, forwarded, expected",
    [
        ([], "203.0.113.9", "10.0.0.1", "203.0.113.9"),  # no trusted proxy: the header is ignored
        (["127.0.0.1/32"], "127.0.0.1", "198.51.100.7", "198.51.100.7"),
        (["127.0.0.1/32", "10.0.0.0/8"], "127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7"),
        (["127.0.0.1/32"], "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # spoofed left part ignored
        (["127.0.0.1/32"], "192.0.2.1", "198.51.100.7", "192.0.2.1"),  # peer not a proxy
    ],
)
def test_client_address_behind_trusted_proxies(trusted, remote, forwarded, expected):
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(TRUSTED_PROXIES=trusted):
        assert client_address(request) == expected


def test_address_allow_list_matching():
    assert address_allowed("10.1.2.3", ())
    assert address_allowed("10.1.2.3", ("10.0.0.0/8",))
    assert not address_allowed("11.1.2.3", ("10.0.0.0/8",))
    assert address_allowed("::1", ("::1/128",))
    assert not address_allowed(None, ("10.0.0.0/8",))


@pytest.mark.embedded
def test_embedded_platform_signs_and_refuses_a_replay(simulator_factory, tmp_path):
    """No Redis: nonces in the database table, audit in SQLite, the gateway in-process."""
    import subprocess
    import sys

    from tests.live import ROOT

    sim = simulator_factory(algorithm="sm2")
    env = embedded_env(tmp_path / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin)
    platform = Platform(env, tmp_path).start()
    try:
        platform.wait_card()
        created = subprocess.run([sys.executable, "manage.py", "accessid", "create", "--name", "ERP", "--json"],
                                 cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        pair = json.loads(created.stdout)
        body = json.dumps({"data": "hello"}).encode()
        headers = dict(sign_headers("POST", platform.base + "/api/v1/sign", body, pair["access_id"], pair["secret"]),
                       **{"Content-Type": "application/json"})
        barrier = threading.Barrier(10)

        def fire(_):
            barrier.wait()
            return http("POST", platform.base + "/api/v1/sign", body=body, headers=headers)

        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(fire, range(10)))
    finally:
        platform.stop()
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] + [409] * 9
    ok = next(json.loads(r[2]) for r in results if r[0] == 200)
    assert ok["algorithm"] == "SM2-SM3" and len(ok["signature"]) == 88
