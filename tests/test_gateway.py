"""The UKey gateway against the real simulator process: called from its own process
(directly), over the channel layer, and over the card link from another process."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings

from core import certs
from signing.cards import device_status_get, ukey_call
from signing.gateway_host import GatewayHost
from tests.conftest import ROOT, test_database_url, wait_for
from ukey.client import UKeyCardError, UKeyTimeout, UKeyUnavailable

SIGN = "cus-sec_SpcSignDataAsPEM"
pytestmark = [pytest.mark.embedded, pytest.mark.usefixtures("fresh_channel_layer")]


@contextlib.asynccontextmanager
async def running_gateway(device):
    host = GatewayHost([device.slug])
    await host.start()
    try:
        await wait_for(
            lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no and s.algorithm,
            what=f"card {device.slug} connected",
        )
        yield host
    finally:
        await host.stop(grace=5)


async def card_certificate(slug):
    response = await ukey_call("cus-sec_SpcGetSignCertAsPEM", device=slug)
    return certs.certificate_load(response.result.data[0])


@pytest.mark.parametrize("algorithm,pipeline_depth", [("rsa", 1), ("rsa", 2), ("sm2", 2)])
async def test_concurrent_signs_each_verify_over_their_own_data(simulator_factory, device_factory, algorithm,
                                                                pipeline_depth):
    sim = simulator_factory(algorithm=algorithm, latency_ms=1)
    device = await device_factory(sim, pipeline_depth=pipeline_depth)
    calls = 200 if algorithm == "rsa" else 40  # SM2 verification in pure Python is slow
    async with running_gateway(device):
        cert = await card_certificate(device.slug)
        payloads = [f"订单-{algorithm}-{i}-{os.urandom(4).hex()}" for i in range(calls)]
        responses = await asyncio.gather(*(ukey_call(SIGN, {"inData": p}, device=device.slug) for p in payloads))
    for payload, response in zip(payloads, responses, strict=True):
        signature, cert_no = response.result.data
        assert cert_no == response.cert_no == device_status_get(device.slug).cert_no
        assert certs.signature_verify(cert, payload.encode(), signature), payload
    assert response.algorithm == (certs.ALG_RSA if algorithm == "rsa" else certs.ALG_SM2)
    assert len({r.result.data[0] for r in responses}) == calls
    stats = (await sim.control("sim_stats")).data[0]
    assert stats["max_in_flight"] == 1  # the card executed one operation at a time


@pytest.mark.parametrize("pipeline_depth", [1, 2])
async def test_never_answered_request_times_out_and_next_call_gets_its_own_answer(simulator_factory, device_factory,
                                                                                 pipeline_depth):
    sim = simulator_factory()
    device = await device_factory(sim, request_timeout=1.0, pipeline_depth=pipeline_depth)
    async with running_gateway(device):
        cert = await card_certificate(device.slug)
        await sim.control("sim_setFaults", {"faults": [{"kind": "noanswer", "count": 1}]})
        started = time.monotonic()
        with pytest.raises(UKeyTimeout):
            await ukey_call(SIGN, {"inData": "lost"}, device=device.slug)
        assert time.monotonic() - started < 5
        response = await ukey_call(SIGN, {"inData": "next"}, device=device.slug)
        assert certs.signature_verify(cert, b"next", response.result.data[0])
        assert not certs.signature_verify(cert, b"lost", response.result.data[0])


@pytest.mark.parametrize("pipeline_depth", [1, 2])
async def test_slow_answer_past_the_timeout_is_never_handed_to_the_next_caller(simulator_factory, device_factory,
                                                                              pipeline_depth):
    sim = simulator_factory()
    device = await device_factory(sim, request_timeout=0.5, pipeline_depth=pipeline_depth)
    async with running_gateway(device):
        cert = await card_certificate(device.slug)
        await sim.control("sim_setFaults", {"faults": [{"kind": "slow", "count": 1, "slow_ms": 1500}]})
        with pytest.raises(UKeyTimeout):
            await ukey_call(SIGN, {"inData": "slow one"}, device=device.slug)
        for i in range(5):
            response = await ukey_call(SIGN, {"inData": f"after {i}"}, device=device.slug)
            assert certs.signature_verify(cert, f"after {i}".encode(), response.result.data[0])
        await asyncio.sleep(1.2)  # the slow answer would have arrived by now
        response = await ukey_call(SIGN, {"inData": "later"}, device=device.slug)
        assert certs.signature_verify(cert, b"later", response.result.data[0])


async def test_simulator_restart_mid_run_reconnects(simulator_factory, device_factory):
    sim = simulator_factory(latency_ms=2)
    device = await device_factory(sim)
    async with running_gateway(device):
        cert = await card_certificate(device.slug)
        ok_before = await ukey_call(SIGN, {"inData": "before"}, device=device.slug)
        assert certs.signature_verify(cert, b"before", ok_before.result.data[0])
        sim.stop()
        await wait_for(lambda: not device_status_get(device.slug).connected, what="disconnect noticed")
        started = time.monotonic()
        with pytest.raises(UKeyUnavailable):
            await ukey_call(SIGN, {"inData": "while down"}, device=device.slug)
        # It waits for the reconnect a while (UKEY_RECONNECT_WAIT), then fails: no 30-second hang.
        assert time.monotonic() - started < settings.UKEY_RECONNECT_WAIT + 1.0
        sim.start()
        await wait_for(lambda: device_status_get(device.slug).connected, timeout=15, what="reconnect")
        response = await ukey_call(SIGN, {"inData": "after"}, device=device.slug)
        assert certs.signature_verify(cert, b"after", response.result.data[0])
        assert device_status_get(device.slug).connections >= 2


async def test_after_a_long_outage_the_card_is_used_within_seconds_of_coming_back(simulator_factory,
                                                                                  device_factory):
    """The reconnect backoff is capped (UKEY_RECONNECT_MAX, 5 s): a card back after an outage
    that grew the backoff is in use again within that, not 10-30 s later."""
    sim = simulator_factory(latency_ms=2)
    device = await device_factory(sim)
    async with running_gateway(device):
        sim.stop()
        await asyncio.sleep(8)  # six or seven failed attempts
        assert device_status_get(device.slug).reconnect_attempts >= 5
        sim.start()
        started = time.monotonic()
        await wait_for(lambda: device_status_get(device.slug).connected, timeout=30, interval=0.02,
                       what="reconnect")
        assert time.monotonic() - started < settings.UKEY_RECONNECT_MAX + 0.5
        response = await ukey_call(SIGN, {"inData": "back"}, device=device.slug)
        assert response.result.ok


async def test_close_mid_request_fails_that_call_and_recovers(simulator_factory, device_factory):
    sim = simulator_factory()
    device = await device_factory(sim)
    async with running_gateway(device):
        await sim.control("sim_setFaults", {"faults": [{"kind": "close", "count": 1}]})
        with pytest.raises(UKeyUnavailable, match="connection lost"):
            await ukey_call(SIGN, {"inData": "x"}, device=device.slug)
        await wait_for(lambda: device_status_get(device.slug).connected, what="reconnect")
        response = await ukey_call(SIGN, {"inData": "y"}, device=device.slug)
        assert response.result.ok


async def test_requests_arriving_while_a_dropped_socket_reconnects_wait_for_it(simulator_factory, device_factory):
    """A control that drops its socket often (one sign operation in ten): only the requests
    on the dropped socket fail; the ones that arrive during the reconnect wait for it."""
    sim = simulator_factory(latency_ms=5)
    device = await device_factory(sim, pipeline_depth=1)
    async with running_gateway(device):
        await sim.control("sim_setFaults", {"faults": [{"kind": "close", "rate": 0.1}]})
        results = await asyncio.gather(
            *(ukey_call(SIGN, {"inData": f"order {i}"}, device=device.slug) for i in range(80)),
            return_exceptions=True,
        )
        await sim.control("sim_setFaults", {"faults": []})
        stats = (await sim.control("sim_stats")).data[0]
    failed = [r for r in results if isinstance(r, Exception)]
    drops = stats["connections"] - 1  # every reconnect followed a drop
    assert drops >= 3, stats
    assert all(isinstance(r, UKeyUnavailable) and "connection lost" in r.message for r in failed), failed[:3]
    # With depth 1 only the request on the card when it dropped is lost: one per drop.
    assert len(failed) <= drops, (len(failed), drops)
    assert len(results) - len(failed) >= 80 - drops


async def test_card_error_comes_back_with_its_error_list(simulator_factory, device_factory):
    sim = simulator_factory(extra=["--fault", "reset:1"])
    device = await device_factory(sim)
    async with running_gateway(device):
        with pytest.raises(UKeyCardError) as excinfo:
            await ukey_call(SIGN, {"inData": "x"}, device=device.slug)
        assert excinfo.value.errors == ["[读卡器底层库]复位读卡器失败:错误码=50070", "Err:Custom50070"]
        assert excinfo.value.code == "UKEY_ERROR" and excinfo.value.http_status == 502
        passthrough = await ukey_call(SIGN, {"inData": ""}, device=device.slug, raise_card_errors=False)
        assert passthrough.result.ok is False and passthrough.result.error_code == "Base50000"


def sends_recorded(gateway) -> list[str]:
    """The `inData` of each request the gateway sends to its card from now on, in order."""
    sent: list[str] = []
    real_send = gateway._conn.send_nowait

    def send_nowait(method, args):
        sent.append(args["inData"])
        return real_send(method, args)

    gateway._conn.send_nowait = send_nowait
    return sent


async def submitted(gateway, text: str) -> asyncio.Future:
    """Submit a signing request straight to the gateway; the future of its reply."""
    from ukey import messages

    reply = asyncio.get_running_loop().create_future()
    await gateway.submit(messages.request_message(request=text, reply="", method=SIGN, args={"inData": text},
                                                  deadline=time.time() + 10), reply_future=reply)
    return reply


async def test_a_request_to_an_idle_card_is_sent_in_its_own_step_and_the_rest_keep_their_order(simulator_factory,
                                                                                               device_factory):
    """`CardGateway._dispatch_now`: with the executor idle, a slot free and the connection up, a
    submitted request is on its way to the card before `submit` returns (no executor wake-up);
    while the card is busy the next ones are queued and sent in the order they came."""
    sim = simulator_factory(latency_ms=50)
    device = await device_factory(sim, pipeline_depth=1)
    async with running_gateway(device) as host:
        gateway = host.gateways[device.slug]
        await wait_for(lambda: gateway._executor_idle, what="the executor idle")
        sent = sends_recorded(gateway)
        replies = []
        for n in range(4):
            replies.append(await submitted(gateway, f"order-{n}"))
            assert sent == ["order-0"]  # the first sent by submit itself; the card busy: the others queued
        answers = await asyncio.gather(*replies)
        assert sent == [f"order-{n}" for n in range(4)]
        assert all(answer["ok"] for answer in answers)
        assert (await sim.control("sim_stats")).data[0]["max_in_flight"] == 1


async def test_a_request_queued_for_the_waking_executor_is_not_overtaken_by_a_later_one(simulator_factory,
                                                                                         device_factory):
    """Between queueing a request for the idle executor and the executor resuming there are a
    couple of event loop steps: a slot freed meanwhile must not let a later request be sent
    first (`_enqueue` ends the executor's idleness at once)."""
    sim = simulator_factory(latency_ms=20)
    device = await device_factory(sim, pipeline_depth=1)
    async with running_gateway(device) as host:
        gateway = host.gateways[device.slug]
        await wait_for(lambda: gateway._executor_idle, what="the executor idle")
        sent = sends_recorded(gateway)
        gateway._slots.free -= 1  # as if a request were at the card
        first = await submitted(gateway, "first")  # queued: no free slot
        await asyncio.sleep(0)  # the executor's queue read has taken it; the executor has not resumed
        gateway._slots.release()  # as if that request's answer had freed its slot
        second = await submitted(gateway, "second")
        answers = await asyncio.gather(first, second)
        assert sent == ["first", "second"] and all(answer["ok"] for answer in answers)


async def test_requests_sent_without_the_executor_count_as_card_activity_for_the_health_probe(
        simulator_factory, device_factory, settings):
    """The health probe runs after UKEY_PROBE_INTERVAL without an operation: requests sent
    directly from `submit` (never waking the executor) still count as operations."""
    settings.UKEY_PROBE_INTERVAL = 0.4
    sim = simulator_factory(latency_ms=5)
    device = await device_factory(sim)
    async with running_gateway(device) as host:
        gateway = host.gateways[device.slug]
        await wait_for(lambda: gateway.status.last_probe_at, what="a first probe")
        await wait_for(lambda: gateway._executor_idle, what="the executor idle")
        probed = gateway.status.last_probe_at
        for n in range(12):  # 1.2 s of traffic, one request every 0.1 s, each sent directly
            response = await ukey_call(SIGN, {"inData": f"busy-{n}"}, device=device.slug)
            assert response.result.ok
            await asyncio.sleep(0.1)
        assert gateway.status.last_probe_at == probed
        await wait_for(lambda: gateway.status.last_probe_at != probed, timeout=5, what="a probe once idle")


async def test_a_request_that_cannot_be_sent_is_answered_and_its_slot_freed(simulator_factory, device_factory):
    """Anything unexpected while a request is sent from `submit` answers that request with an
    error and gives its pipeline slot back: the next request is sent as usual."""
    sim = simulator_factory(latency_ms=5)
    device = await device_factory(sim, pipeline_depth=1)
    async with running_gateway(device) as host:
        gateway = host.gateways[device.slug]
        await wait_for(lambda: gateway._executor_idle, what="the executor idle")
        real_send = gateway._conn.send_nowait

        def broken(method, args):
            gateway._conn.send_nowait = real_send
            raise RuntimeError("unexpected")

        gateway._conn.send_nowait = broken
        with pytest.raises(UKeyCardError, match="could not be sent"):
            await ukey_call(SIGN, {"inData": "first"}, device=device.slug)
        assert (await ukey_call(SIGN, {"inData": "second"}, device=device.slug)).result.ok
        assert gateway._slots.free == 1 and gateway._outstanding == 0


async def test_a_request_that_cannot_be_sent_after_the_answer_before_it_is_answered_and_the_card_goes_on(
        simulator_factory, device_factory):
    """The same from the callback of the previous answer (`_handoff`): the waiting request gets
    its error, and the executor, which had handed it its slot, is not left waiting forever."""
    sim = simulator_factory(latency_ms=400)
    device = await device_factory(sim, pipeline_depth=1)
    async with running_gateway(device) as host:
        gateway = host.gateways[device.slug]
        real_send = gateway._conn.send_nowait

        def send(method, args):
            if args.get("inData") == "second":
                raise RuntimeError("unexpected")
            return real_send(method, args)

        gateway._conn.send_nowait = send
        first = asyncio.create_task(ukey_call(SIGN, {"inData": "first"}, device=device.slug))
        await wait_for(lambda: gateway._outstanding == 1, interval=0.005, what="the first at the card")
        second = asyncio.create_task(ukey_call(SIGN, {"inData": "second"}, device=device.slug))
        await wait_for(lambda: gateway._holding is not None, interval=0.005, what="the second held for the slot")
        assert (await first).result.ok
        with pytest.raises(UKeyCardError, match="could not be sent"):
            await second
        assert (await asyncio.wait_for(ukey_call(SIGN, {"inData": "third"}, device=device.slug), 3)).result.ok


async def test_full_queue_is_refused_immediately(simulator_factory, device_factory):
    sim = simulator_factory(latency_ms=300)
    device = await device_factory(sim, queue_size=2)
    async with running_gateway(device):
        tasks = [asyncio.create_task(ukey_call(SIGN, {"inData": f"q{i}"}, device=device.slug)) for i in range(3)]
        await asyncio.sleep(0.1)  # one in flight, two queued
        started = time.monotonic()
        with pytest.raises(UKeyUnavailable, match="queue is full"):
            await ukey_call(SIGN, {"inData": "overflow"}, device=device.slug)
        assert time.monotonic() - started < 0.2
        results = await asyncio.gather(*tasks)
        assert all(r.result.ok for r in results)


async def test_wrong_pin_is_a_card_error(simulator_factory, device_factory):
    sim = simulator_factory()
    device = await device_factory(sim, pin="11112222")
    async with running_gateway(device):
        with pytest.raises(UKeyCardError) as excinfo:
            await ukey_call(SIGN, {"inData": "x", "passwd": sim.pin}, device=device.slug)
    assert excinfo.value.errors[-1] == "Err:Custom50006"


async def test_unknown_device_and_stopped_gateway_fail_fast(simulator_factory, device_factory):
    started = time.monotonic()
    with pytest.raises(UKeyUnavailable, match="no gateway"):
        await ukey_call(SIGN, {"inData": "x"}, device="no-such-card")
    sim = simulator_factory()
    device = await device_factory(sim)
    async with running_gateway(device):
        pass
    with pytest.raises(UKeyUnavailable):
        await ukey_call(SIGN, {"inData": "x"}, device=device.slug)
    assert time.monotonic() - started < 15


async def test_health_probe_detects_a_hung_card(simulator_factory, device_factory, settings):
    settings.UKEY_PROBE_INTERVAL = 0.5
    sim = simulator_factory()
    device = await device_factory(sim, request_timeout=0.5, connect_timeout=0.5)
    async with running_gateway(device):
        probes_before = device_status_get(device.slug).last_probe_at
        await wait_for(lambda: device_status_get(device.slug).last_probe_at != probes_before, what="a probe")
        os.kill(sim.proc.pid, signal.SIGSTOP)  # the control hangs: socket open, no answers
        try:
            await wait_for(lambda: not device_status_get(device.slug).connected, timeout=5, what="hang noticed")
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
        await wait_for(lambda: device_status_get(device.slug).connected, timeout=15, what="recovery")


async def test_graceful_shutdown_finishes_in_flight_operations(simulator_factory, device_factory):
    sim = simulator_factory(latency_ms=400)
    device = await device_factory(sim)
    host = GatewayHost([device.slug])
    await host.start()
    await wait_for(lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no, what="connected")
    in_flight = [asyncio.create_task(ukey_call(SIGN, {"inData": f"f{i}"}, device=device.slug)) for i in range(2)]
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(host.stop(grace=5))
    await asyncio.sleep(0.05)
    with pytest.raises(UKeyUnavailable):
        await ukey_call(SIGN, {"inData": "too late"}, device=device.slug)
    results = await asyncio.gather(*in_flight)
    await stopping
    assert all(r.result.ok for r in results)
    final = device_status_get(device.slug)
    assert final.connected is False and final.gateway_running is False


@contextlib.contextmanager
def gateway_process(slug, log_path, *, link: bool = True):
    """`manage.py ukey_gateway --device SLUG` with full debug logging into log_path."""
    env = dict(os.environ, DATABASE_URL=test_database_url(), LOG_LEVEL="DEBUG", UKEY_LINK="1" if link else "0")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "ukey_gateway", "--device", slug],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _needs_redis():
    if "Redis" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        pytest.skip("cross-process runs in the PostgreSQL + Redis pass of `make test`")


class _BrokenLayer:
    """A channel layer that cannot send: a call that needs it fails."""

    async def new_channel(self):
        return "broken!reply"

    async def send(self, channel, message):
        raise ConnectionError("the channel layer is down")


@pytest.mark.services
@pytest.mark.parametrize("link", [True, False], ids=["card-link", "channel-layer"])
async def test_gateway_in_its_own_process_serves_this_process_over_redis(simulator_factory, device_factory, tmp_path,
                                                                         monkeypatch, link):
    _needs_redis()
    sim = simulator_factory(latency_ms=5)
    device = await device_factory(sim)
    log_path = tmp_path / "gateway.log"
    with gateway_process(device.slug, log_path, link=link) as proc:
        await wait_for(lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no,
                       timeout=20, what="gateway process connected")
        socket_path = device_status_get(device.slug).link
        if link:  # this process's calls never touch the channel layer; the socket is the user's alone
            assert socket_path and oct(os.stat(socket_path).st_mode & 0o777) == "0o600"
            monkeypatch.setattr("signing.cards.get_channel_layer", _BrokenLayer)
        else:
            assert socket_path == ""
        cert = await card_certificate(device.slug)
        payloads = [f"cross-process {i}" for i in range(50)]
        responses = await asyncio.gather(*(ukey_call(SIGN, {"inData": p}, device=device.slug) for p in payloads))
        for payload, response in zip(payloads, responses, strict=True):
            assert certs.signature_verify(cert, payload.encode(), response.result.data[0])
        # SIGTERM while an operation is in flight: it finishes, then the process exits cleanly.
        await sim.control("sim_setFaults", {"faults": [{"kind": "slow", "count": 1, "slow_ms": 800}]})
        in_flight = asyncio.create_task(ukey_call(SIGN, {"inData": "in flight"}, device=device.slug))
        await wait_for(_card_busy(sim), what="the slow operation executing on the card")
        proc.send_signal(signal.SIGTERM)
        response = await in_flight
        assert certs.signature_verify(cert, b"in flight", response.result.data[0])
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
    assert proc.returncode == 0
    assert "UKey gateway stopped" in log_path.read_text()
    assert not socket_path or not os.path.exists(socket_path)
    with pytest.raises(UKeyUnavailable):
        await ukey_call(SIGN, {"inData": "after stop"}, device=device.slug)


@pytest.mark.services
async def test_a_card_link_that_cannot_be_opened_falls_back_to_the_channel_layer(simulator_factory, device_factory,
                                                                                 tmp_path, monkeypatch):
    _needs_redis()
    sim = simulator_factory()
    device = await device_factory(sim)
    with gateway_process(device.slug, tmp_path / "gateway.log"):
        await wait_for(lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no,
                       timeout=20, what="gateway process connected")
        # The status names a socket this process cannot open (the gateway on another host, say).
        status = device_status_get(device.slug)
        status.link = str(tmp_path / "nobody-listens.sock")
        monkeypatch.setattr("signing.cards.device_status_get", lambda slug, strict=False: status)
        cert = await card_certificate(device.slug)
        response = await ukey_call(SIGN, {"inData": "over the layer"}, device=device.slug)
        assert certs.signature_verify(cert, b"over the layer", response.result.data[0])


@pytest.mark.services
async def test_a_card_link_lost_mid_call_fails_that_call_and_the_next_one_connects_again(simulator_factory,
                                                                                        device_factory, tmp_path):
    _needs_redis()
    sim = simulator_factory()
    device = await device_factory(sim)
    with gateway_process(device.slug, tmp_path / "one.log") as proc:
        await wait_for(lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no,
                       timeout=20, what="gateway process connected")
        await ukey_call(SIGN, {"inData": "warm"}, device=device.slug)  # the link is open
        await sim.control("sim_setFaults", {"faults": [{"kind": "noanswer", "count": 1}]})
        waiting = asyncio.create_task(ukey_call(SIGN, {"inData": "never answered"}, device=device.slug))
        await asyncio.sleep(0.5)  # sent over the link, waiting at the card
        proc.send_signal(signal.SIGKILL)  # the process and its end of the link are gone
        started = time.monotonic()
        with pytest.raises(UKeyUnavailable):
            await waiting
        assert time.monotonic() - started < 3
    with gateway_process(device.slug, tmp_path / "two.log"):
        await wait_for(lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no and s.link
                       and not s.link.endswith(f"-{proc.pid}.sock"), timeout=20, what="a new gateway process")
        cert = await card_certificate(device.slug)
        response = await ukey_call(SIGN, {"inData": "again"}, device=device.slug)
        assert certs.signature_verify(cert, b"again", response.result.data[0])


async def test_the_channel_layer_still_reaches_a_gateway_of_this_process(simulator_factory, device_factory):
    """Callers of other processes reach an embedded gateway (an agent's card in a web process)
    over the layer; this process's own calls skip it."""
    from channels.layers import get_channel_layer

    from ukey.client import card_call

    sim = simulator_factory()
    device = await device_factory(sim)
    async with running_gateway(device):
        cert = await card_certificate(device.slug)
        response = await card_call(get_channel_layer(), SIGN, {"inData": "over the layer"}, device=device.slug,
                                   status=device_status_get(device.slug), timeout=10)
        assert certs.signature_verify(cert, b"over the layer", response.result.data[0])


@pytest.mark.services
async def test_wrong_pin_is_a_card_error_and_the_pin_is_in_no_log_line(simulator_factory, device_factory, tmp_path):
    _needs_redis()
    sim = simulator_factory()
    configured_pin = "97531864"
    device = await device_factory(sim, pin=configured_pin)
    log_path = tmp_path / "gateway.log"
    with gateway_process(device.slug, log_path):
        await wait_for(lambda: (s := device_status_get(device.slug)) and s.connected and s.cert_no,
                       timeout=20, what="gateway process connected")
        with pytest.raises(UKeyCardError) as excinfo:
            await ukey_call(SIGN, {"inData": "x", "passwd": sim.pin}, device=device.slug)
        assert excinfo.value.errors[-1] == "Err:Custom50006"
    sim.stop()
    output = log_path.read_text()
    assert "Custom50006" in output  # the failure itself is logged...
    assert '"passwd"' in output  # ...and so are the frames sent to the card (debug level)
    for line in output.splitlines() + "".join(sim.output).splitlines():
        assert configured_pin not in line and sim.pin not in line, line
    assert configured_pin not in str(excinfo.value) and configured_pin not in str(excinfo.value.errors)


def _card_busy(sim):
    async def busy():
        return (await sim.control("sim_stats")).data[0]["in_flight"] == 1

    return busy


async def test_pipelined_calls_around_a_lost_request_never_get_another_callers_answer(simulator_factory,
                                                                                     device_factory):
    sim = simulator_factory(latency_ms=5)
    device = await device_factory(sim, request_timeout=0.5, pipeline_depth=2)
    async with running_gateway(device):
        cert = await card_certificate(device.slug)
        await sim.control("sim_setFaults", {"faults": [{"kind": "noanswer", "count": 1}]})
        payloads = [f"pipelined {i}" for i in range(30)]
        results = await asyncio.gather(
            *(ukey_call(SIGN, {"inData": p}, device=device.slug) for p in payloads), return_exceptions=True
        )
    answered = [(p, r) for p, r in zip(payloads, results, strict=True) if not isinstance(r, Exception)]
    failed = [r for r in results if isinstance(r, Exception)]
    assert failed and all(isinstance(r, (UKeyTimeout, UKeyUnavailable)) for r in failed)
    assert len(answered) >= 25
    for payload, response in answered:
        assert certs.signature_verify(cert, payload.encode(), response.result.data[0]), payload


async def test_several_cards_are_served_at_once(simulator_factory, device_factory):
    rsa_device = await device_factory(simulator_factory(algorithm="rsa", latency_ms=100))
    sm2_device = await device_factory(simulator_factory(algorithm="sm2", latency_ms=100))
    host = GatewayHost([rsa_device.slug, sm2_device.slug])
    await host.start()
    try:
        for device in (rsa_device, sm2_device):
            await wait_for(lambda d=device: (s := device_status_get(d.slug)) and s.connected and s.algorithm,
                           what=f"{device.slug} connected")
        rsa_cert, sm2_cert = await card_certificate(rsa_device.slug), await card_certificate(sm2_device.slug)
        started = time.monotonic()
        rsa_calls = [ukey_call(SIGN, {"inData": f"r{i}"}, device=rsa_device.slug) for i in range(5)]
        sm2_calls = [ukey_call(SIGN, {"inData": f"s{i}"}, device=sm2_device.slug) for i in range(5)]
        results = await asyncio.gather(*rsa_calls, *sm2_calls)
        elapsed = time.monotonic() - started
    finally:
        await host.stop(grace=5)
    assert rsa_cert.algorithm == certs.ALG_RSA and sm2_cert.algorithm == certs.ALG_SM2
    for i, response in enumerate(results[:5]):
        assert certs.signature_verify(rsa_cert, f"r{i}".encode(), response.result.data[0])
    for i, response in enumerate(results[5:]):
        assert certs.signature_verify(sm2_cert, f"s{i}".encode(), response.result.data[0])
    # 5 operations of 100 ms on each card: about 0.5 s in parallel, 1.0 s one card after the other.
    assert elapsed < 0.85


def test_a_card_status_that_can_sign_is_read_once_per_half_second_and_any_other_every_time(monkeypatch):
    """A web process calling a gateway in another process reads the card's status from the
    shared cache (Redis): a usable one is kept STATUS_REUSE_SECONDS, an unusable one (no
    gateway, not connected, a stale heartbeat) is read before every call."""
    from signing import cards
    from ukey.status import DeviceStatus

    now = time.time()
    statuses = {
        "up": DeviceStatus(slug="up", connected=True, heartbeat_at=now),
        "connecting": DeviceStatus(slug="connecting", connected=False, heartbeat_at=now),
        "stopped": DeviceStatus(slug="stopped", connected=True, gateway_running=False, heartbeat_at=now),
        "stale": DeviceStatus(slug="stale", connected=True, heartbeat_at=now - 60),
    }
    reads: list[str] = []
    monkeypatch.setattr(cards, "device_status_get", lambda slug, strict=False: reads.append(slug) or statuses[slug])
    monkeypatch.setattr(cards, "_statuses_read", {})
    clock = [1000.0]
    monkeypatch.setattr(cards.time, "monotonic", lambda: clock[0])
    for _ in range(3):
        for slug in statuses:
            assert cards._remote_status(slug) is statuses[slug]
        clock[0] += 0.1
    assert {slug: reads.count(slug) for slug in statuses} == {"up": 1, "connecting": 3, "stopped": 3, "stale": 3}
    clock[0] += cards.STATUS_REUSE_SECONDS  # kept no longer: read again
    statuses["up"] = DeviceStatus(slug="up", connected=False, heartbeat_at=now)
    assert cards._remote_status("up").connected is False and reads.count("up") == 2
    assert cards._remote_status("up").connected is False and reads.count("up") == 3  # not kept now
