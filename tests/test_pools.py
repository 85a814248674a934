"""Card pools: the least-loaded usable card, failover once to another card, one enterprise per
pool; and end to end, a pool of three simulated cards losing one under load."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import types

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from signing import pools
from signing.cards import device_status_publish
from signing.models import CardDevice, CardPool
from signing.pools import CardTarget, PoolEnterpriseError, card_target_choose, card_target_run, pool_enterprise_check
from ukey.client import UKeyCardError, UKeyTimeout, UKeyUnavailable
from ukey.status import DeviceStatus

ACME = "宁波甲贸易有限公司"
OTHER = "杭州乙物流有限公司"


def publish(slug: str, *, connected: bool = True, enterprise: str = ACME, queue: int = 0) -> None:
    device_status_publish(DeviceStatus(slug=slug, connected=connected, heartbeat_at=time.time(),
                                       cert_organization=enterprise, cert_no=f"{slug}-cert", queue_depth=queue))


@pytest.fixture
def pool_abc(db):
    cards = [CardDevice.objects.create(slug=f"card-{x}", url=f"ws://127.0.0.1:{9000 + i}")
             for i, x in enumerate("abc")]
    pool = CardPool.objects.create(slug="acme-pool", name="ACME cards")
    pool.devices.set(cards)
    pools.pools_forget()
    pools._suspect.clear()
    for card in cards:
        publish(card.slug)
    yield pools.pool_load("acme-pool")
    pools.pools_forget()
    pools._suspect.clear()


def run(target, operation, **kwargs):
    trace = {}
    result = asyncio.run(card_target_run(target, operation, trace=trace, **kwargs))
    return result, trace


def test_requests_spread_over_the_least_loaded_cards(pool_abc):
    seen = []

    async def sign_many():
        async def operation(card):
            seen.append(card)
            await asyncio.sleep(0.05)
            return card
        return await asyncio.gather(*(card_target_run(CardTarget(pool=pool_abc), operation) for _ in range(9)))

    results = asyncio.run(sign_many())
    assert sorted(results) == sorted(seen) and {card: seen.count(card) for card in set(seen)} == {
        "card-a": 3, "card-b": 3, "card-c": 3}


def test_a_card_down_or_of_another_enterprise_is_never_chosen(pool_abc):
    publish("card-a", connected=False)
    publish("card-c", enterprise=OTHER)
    used = {run(CardTarget(pool=pool_abc), lambda card: asyncio.sleep(0, card))[0] for _ in range(10)}
    assert used == {"card-b"}
    enterprise, cards = pools.pool_cards(pool_abc)
    assert enterprise == ACME
    assert {c.slug: c.up for c in cards} == {"card-a": False, "card-b": True, "card-c": False}
    assert "not connected" in cards[0].reason and OTHER in cards[2].reason
    publish("card-b", connected=False)
    with pytest.raises(UKeyUnavailable, match="no card of pool acme-pool can sign"):
        run(CardTarget(pool=pool_abc), lambda card: asyncio.sleep(0, card))


def _failing_on(failing: str, error):
    calls = []

    async def operation(card):
        calls.append(card)
        if card == failing:
            raise error
        return f"signed by {card}"
    return operation, calls


@pytest.mark.parametrize("error", [
    UKeyUnavailable("card card-a connection lost during signing", device="card-a"),
    UKeyTimeout("card card-a did not answer", device="card-a"),
    UKeyCardError("reader reset", device="card-a", errors=["[读卡器底层库]复位读卡器失败:错误码=50070", "Err:Custom50070"]),
], ids=["disconnect", "timeout", "reader-reset"])
def test_a_card_that_fails_without_answering_hands_the_request_to_another_once(pool_abc, error):
    publish("card-b", queue=5)
    publish("card-c", queue=5)  # card-a is chosen first: the others report queues
    operation, calls = _failing_on("card-a", error)
    result, trace = run(CardTarget(pool=pool_abc), operation)
    assert calls[0] == "card-a" and len(calls) == 2 and calls[1] in ("card-b", "card-c")
    assert result == f"signed by {calls[1]}"
    assert trace["device"] == calls[1] and trace["pool"] == "acme-pool"
    assert trace["failover"]["from"] == "card-a" and trace["failover"]["code"] == error.code
    # The failed card is left alone a moment, even though its status still says connected.
    assert run(CardTarget(pool=pool_abc), lambda card: asyncio.sleep(0, card))[0] != "card-a"


def test_no_failover_for_an_answer_a_second_failure_or_an_unrepeatable_method(pool_abc):
    publish("card-b", queue=5)
    publish("card-c", queue=5)
    # The card answered (a wrong PIN, say): that is the answer, not a reason to try another card.
    operation, calls = _failing_on("card-a", UKeyCardError("PIN wrong", device="card-a",
                                                           errors=["口令错误", "Err:Custom50013"]))
    with pytest.raises(UKeyCardError, match="PIN wrong"):
        run(CardTarget(pool=pool_abc), operation)
    assert calls == ["card-a"]
    pools._suspect.clear()
    operation, calls = _failing_on("card-a", UKeyUnavailable("gone", device="card-a"))
    with pytest.raises(UKeyUnavailable):
        run(CardTarget(pool=pool_abc), operation, repeatable=False)
    assert calls == ["card-a"]
    pools._suspect.clear()

    async def always_failing(card):
        calls.append(card)
        raise UKeyTimeout(f"{card} hung", device=card)
    calls = []
    with pytest.raises(UKeyTimeout):
        run(CardTarget(pool=pool_abc), always_failing)
    assert len(calls) == 2 and len(set(calls)) == 2  # once more, on another card; not a third time


def test_a_retry_gets_only_what_is_left_of_the_request_time(pool_abc, settings):
    from signing.cards import card_deadline

    settings.UKEY_CALL_TIMEOUT = 5.0
    budgets = []

    async def operation(card):
        budgets.append(card_deadline.get() - time.time())
        if len(budgets) == 1:
            await asyncio.sleep(1.0)
            raise UKeyTimeout("slow", device=card)
        return card

    run(CardTarget(pool=pool_abc), operation)
    assert 4.8 < budgets[0] <= 5.0 and 3.7 < budgets[1] < 4.1


def test_who_may_use_which_pool_and_card(pool_abc):
    from core.errors import ApiError

    other = CardPool.objects.create(slug="other-pool")
    CardDevice.objects.create(slug="card-z", url="ws://127.0.0.1:9100")
    assert card_target_choose(devices=(), pools=("acme-pool",), requested=None).pool.slug == "acme-pool"
    assert card_target_choose(devices=(), pools=("acme-pool",), requested="card-b").device == "card-b"
    for requested in ("other-pool", "card-z"):
        with pytest.raises(ApiError) as refused:
            card_target_choose(devices=(), pools=("acme-pool",), requested=requested)
        assert refused.value.code == "PERMISSION_DENIED"
    assert card_target_choose(devices=(), pools=(), requested="other-pool").pool.slug == "other-pool"
    other.enabled = False
    other.save()
    pools.pools_forget()
    with pytest.raises(UKeyUnavailable, match="disabled"):
        card_target_choose(devices=(), pools=(), requested="other-pool")


def test_a_pool_is_one_enterprise(pool_abc):
    assert pool_enterprise_check(devices=["card-a", "card-b"], enterprise="") == ACME
    publish("card-c", enterprise=OTHER)
    with pytest.raises(PoolEnterpriseError, match="different enterprises"):
        pool_enterprise_check(devices=["card-a", "card-c"], enterprise="")
    with pytest.raises(PoolEnterpriseError, match=f"card-c belongs to {OTHER}"):
        pool_enterprise_check(devices=["card-a", "card-c"], enterprise=ACME)


def test_the_admin_refuses_a_pool_of_two_enterprises_and_audits_the_one_it_saves(pool_abc, client):
    user = get_user_model().objects.create_superuser("root", "", "a long admin pass")
    client.force_login(user)
    publish("card-c", enterprise=OTHER)
    ids = {c.slug: c.pk for c in CardDevice.objects.all()}
    refused = client.post("/admin/signing/cardpool/add/", {"slug": "mixed", "name": "", "enterprise": "",
                                                           "enabled": "on", "devices": [ids["card-a"], ids["card-c"]]})
    assert refused.status_code == 200 and "different enterprises" in refused.content.decode()
    assert not CardPool.objects.filter(slug="mixed").exists()
    saved = client.post("/admin/signing/cardpool/add/", {"slug": "two", "name": "", "enterprise": "",
                                                         "enabled": "on", "devices": [ids["card-a"], ids["card-b"]]})
    assert saved.status_code == 302, saved.content[:2000]
    pool = CardPool.objects.get(slug="two")
    assert pool.enterprise == ACME  # learned from the connected cards
    event = AuditEvent.objects.get(event_type=AuditEvent.CARD_POOL_CREATED, device="two")
    assert event.details["cards"] == ["card-a", "card-b"] and event.actor.username == "root"
    client.post(f"/admin/signing/cardpool/{pool.pk}/change/", {"slug": "two", "name": "", "enterprise": ACME,
                                                              "enabled": "on", "devices": [ids["card-a"]]})
    changed = AuditEvent.objects.get(event_type=AuditEvent.CARD_POOL_CHANGED, device="two")
    assert changed.details["removed"] == ["card-b"] and changed.details["changed"] == ["devices"]
    listing = client.get("/admin/signing/cardpool/")
    assert "1/1 cards up" in listing.content.decode()
    # A pool may not take a card's slug (requests name either).
    clash = client.post("/admin/signing/cardpool/add/", {"slug": "card-a", "enabled": "on",
                                                         "devices": [ids["card-b"]]})
    assert clash.status_code == 200 and "already has this slug" in clash.content.decode()


def test_health_reports_each_pools_capacity(pool_abc, client):
    publish("card-b", connected=False)
    body = client.get("/api/v1/health").json()
    (pool,) = body["pools"]
    assert (pool["slug"], pool["up"], pool["size"], pool["enterprise"]) == ("acme-pool", 2, 3, ACME)
    assert body["status"] == "degraded"
    assert client.get("/api/v1/health?device=acme-pool").status_code == 200
    assert client.get("/api/v1/health?device=card-b").status_code == 503
    assert client.get("/api/v1/health?device=nothing").status_code == 404


# --- end to end: three simulated cards, one killed under load -----------------------------------


def _manage(env, *args) -> str:
    from tests.live import ROOT

    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def pool_platform(tmp_path_factory):
    from tests.conftest import SimulatorProcess
    from tests.live import Platform, embedded_env

    tmp = tmp_path_factory.mktemp("pool")
    # pool-1 is slow (300 ms an operation), so that requests are surely waiting on it when it dies.
    cards = [SimulatorProcess(algorithm=alg, latency_ms=latency, key_dir=str(tmp / f"k{i}")).start()
             for i, (alg, latency) in enumerate((("rsa", 20), ("sm2", 300), ("rsa", 20)))]
    env = embedded_env(tmp / "var", SIM_PIN=cards[0].pin)
    _manage(env, "migrate", "-v0")
    for i, card in enumerate(cards):
        _manage(env, "carddevice", "create", "--slug", f"pool-{i}", "--url", card.url, "--pin-env", "SIM_PIN")
    out = _manage(env, "cardpool", "create", "--slug", "customs", "--devices", "pool-0,pool-1,pool-2")
    assert "card pool customs created with 3 card(s)" in out
    created = json.loads(_manage(env, "accessid", "create", "--name", "ERP", "--pools", "customs",
                                 "--rate-limit", "100000", "--json"))
    platform = Platform(env, tmp).start(migrate=False)
    from tests.live import get_json, poll

    poll(lambda: get_json(platform.base + "/api/v1/health")[2]["pools"][0]["up"] == 3, 30, "the pool's 3 cards up")
    yield platform, cards, types.SimpleNamespace(key=created["access_id"]), created["secret"], env
    platform.stop()
    for card in cards:
        card.stop()


def test_a_pool_loses_a_card_under_load_and_no_request_fails(pool_platform):
    from tests.live import get_json, poll
    from tests.test_api import call

    platform, cards, access, secret, env = pool_platform
    results: list[tuple] = []
    stop = threading.Event()

    def client(n: int):
        i = 0
        while not stop.is_set():
            status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": f"order {n}-{i}"},
                                         access=access, secret=secret)
            results.append((status, body.get("device", ""), body.get("code", ""), headers.get("X-Card-Device")))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    cards[1].proc.kill()  # pulled out: no goodbye, requests in flight on it
    killed_at = len(results)
    time.sleep(5.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    before = {r[1] for r in results[:killed_at]}
    after = {r[1] for r in results[killed_at + 40:]}
    assert {"pool-0", "pool-2"} <= before and after == {"pool-0", "pool-2"}
    assert all(r[1] == r[3] for r in results)  # the header names the same card as the body
    health = poll(lambda: (h := get_json(platform.base + "/api/v1/health"))[2]["pools"][0]["up"] == 2 and h, 10,
                  "the pool reporting 2/3")
    assert health[2]["pools"][0]["size"] == 3
    assert get_json(platform.base + "/api/v1/health?device=pool-1")[0] == 503
    # The requests that were on the dead card went to another: their audit events say so.
    script = ("import json; from audit.models import AuditEvent as E; "
              "rows = E.objects.filter(event_type='api.request', details__pool='customs'); "
              "print(json.dumps([[e.device, e.outcome, (e.details.get('failover') or {}).get('from')] for e in rows]))")
    events = json.loads(_manage(env, "shell", "-c", script).strip().splitlines()[-1])
    assert len(events) == len(results) and all(outcome == "OK" for _, outcome, _ in events)
    moved = [e for e in events if e[2] == "pool-1"]
    assert moved and all(device in ("pool-0", "pool-2") for device, _, _ in moved)


def test_a_pool_signature_verifies_with_the_certificate_of_the_card_it_names(pool_platform):
    from tests.test_api import call

    platform, cards, access, secret, _ = pool_platform
    status, headers, body = call(platform, "POST", "/api/v1/sign", {"data": "每一张卡"}, access=access, secret=secret)
    assert status == 200 and body["pool"] == "customs"
    status, _, cert = call(platform, "GET", f"/api/v1/certificate?device={body['device']}", access=access,
                           secret=secret)
    assert status == 200 and cert["device"] == body["device"] and cert["cert_no"] == body["cert_no"]
    assert signature_verify(certificate_load(cert["certificate_pem"]), "每一张卡".encode(), body["signature"])
