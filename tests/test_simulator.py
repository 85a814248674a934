"""The card simulator speaks the protocol and signs for real (talked to directly)."""

import asyncio
import base64
import hashlib
import json
import os

import pytest
from websockets.asyncio.client import connect

from core import certs
from ukey import protocol

SIGN = "cus-sec_SpcSignDataAsPEM"


async def _session(sim):
    ws = await connect(sim.url)
    first = protocol.parse_frame(await ws.recv())
    assert first.kind == "handshake"
    return ws


async def _call(ws, method, args, request_id=1):
    await ws.send(protocol.build_request(method, request_id, args))
    return protocol.parse_frame(await ws.recv())


async def _certificate(ws):
    frame = await _call(ws, "cus-sec_SpcGetSignCertAsPEM", {}, 99)
    return certs.certificate_load(frame.result.data[0])


@pytest.fixture
def rsa_sim(simulator_factory):
    return simulator_factory(algorithm="rsa")


async def test_handshake_then_rsa_signature_verifies_with_card_certificate(rsa_sim):
    ws = await _session(rsa_sim)
    try:
        frame = await _call(ws, SIGN, {"inData": "报关数据 123", "passwd": rsa_sim.pin}, 5)
        assert frame.kind == "response" and frame.id == 5 and frame.status == "00" and frame.result.ok
        signature, cert_no = frame.result.data
        assert len(signature) == 172 and len(cert_no) == 8 and int(cert_no, 16) >= 0
        cert = await _certificate(ws)
        assert cert.algorithm == certs.ALG_RSA
        assert f"{cert.serial_number:08x}" == cert_no
        assert certs.signature_verify(cert, "报关数据 123".encode(), signature)
        assert not certs.signature_verify(cert, "报关数据 124".encode(), signature)
    finally:
        await ws.close()


async def test_sm2_card_signs_raw_r_s_88_chars_and_verifies(simulator_factory):
    sim = simulator_factory(algorithm="sm2")
    ws = await _session(sim)
    try:
        frame = await _call(ws, SIGN, {"inData": "<ds:SignedInfo/>", "passwd": sim.pin})
        signature, cert_no = frame.result.data
        assert len(signature) == 88 and len(base64.b64decode(signature)) == 64
        assert len(cert_no) == 16
        cert = await _certificate(ws)
        assert cert.algorithm == certs.ALG_SM2
        assert certs.signature_verify(cert, b"<ds:SignedInfo/>", signature)
        assert not certs.signature_verify(cert, b"<ds:SignedInfo />", signature)
    finally:
        await ws.close()


async def test_string_id_is_answered_with_an_integer(rsa_sim):
    ws = await _session(rsa_sim)
    try:
        await ws.send(json.dumps({"_method": "cus-sec_SpcGetCertNo", "_id": "42", "args": {}}))
        raw = json.loads(await ws.recv())
        assert raw["_id"] == 42 and raw["_args"]["Result"] is True
    finally:
        await ws.close()


async def test_no_hash_signature_equals_signature_over_the_data(rsa_sim):
    ws = await _session(rsa_sim)
    try:
        data = "订单 SO1710301150602574003"
        plain = await _call(ws, SIGN, {"inData": data, "passwd": rsa_sim.pin}, 1)
        digest = hashlib.sha1(data.encode()).hexdigest()
        no_hash = await _call(ws, "cus-sec_SpcSignDataNoHashAsPEM", {"inData": digest, "passwd": rsa_sim.pin}, 2)
        assert no_hash.result.ok and no_hash.result.data[0] == plain.result.data[0]
    finally:
        await ws.close()


async def test_wrong_or_missing_pin_is_a_card_error(rsa_sim):
    ws = await _session(rsa_sim)
    try:
        wrong = await _call(ws, SIGN, {"inData": "x", "passwd": "00000000"}, 1)
        missing = await _call(ws, SIGN, {"inData": "x"}, 2)
        for frame in (wrong, missing):
            assert frame.result.ok is False and frame.result.data == []
            assert frame.result.error_code == "Custom50006"
    finally:
        await ws.close()


async def test_missing_in_data_is_the_documented_base50000_error(rsa_sim):
    ws = await _session(rsa_sim)
    try:
        frame = await _call(ws, SIGN, {"inData": "   ", "passwd": rsa_sim.pin})
        assert frame.result.errors == ["参数检查失败,传入的args中必须包含必要的非空白参数:inData", "Err:Base50000"]
    finally:
        await ws.close()


async def test_card_facts_methods(rsa_sim):
    ws = await _session(rsa_sim)
    try:
        cert_no = (await _call(ws, "cus-sec_SpcGetCertNo", {}, 1)).result.data[0]
        ent = (await _call(ws, "cus-sec_SpcGetEntName", {}, 2)).result.data[0]
        valid = json.loads((await _call(ws, "cus-sec_SpcGetValidTimeFromCert", {}, 3)).result.data[0])
        digest = (await _call(ws, "cus-sec_SpcSHA1DigestAsPEM", {"szInfo": "abc"}, 4)).result.data[0]
        env_cert = (await _call(ws, "cus-sec_SpcGetEnvCertAsPEM", {}, 5)).result.data[0]
        sign = (await _call(ws, SIGN, {"inData": "v", "passwd": rsa_sim.pin}, 6)).result.data[0]
        verified = await _call(ws, "cus-sec_SpcVerifySignData", {"inData": "v", "signData": sign}, 7)
        refused = await _call(ws, "cus-sec_SpcVerifySignData", {"inData": "w", "signData": sign}, 8)
        unknown = await _call(ws, "cus-sec_NoSuchMethod", {}, 9)
        for method in ("cus-sec_SpcGetCardID", "cus-sec_SpcGetUName", "cus-sec_SpcGetEntID",
                       "cus-sec_SpcGetEntMode", "cus-sec_SpcGetCardUserInfo"):
            assert (await _call(ws, method, {}, 10)).result.ok, method
    finally:
        await ws.close()
    assert len(cert_no) == 8 and ent
    assert valid["szStartTime"] < valid["szEndTime"]
    assert base64.b64decode(digest) == hashlib.sha1(b"abc").digest()
    certs.certificate_load(env_cert)
    assert verified.result.ok and not refused.result.ok
    assert unknown.result.ok is False and unknown.result.error_code == "Base50001"


async def test_cert_no_is_stable_across_restarts(rsa_sim):
    ws = await _session(rsa_sim)
    before = (await _call(ws, "cus-sec_SpcGetCertNo", {})).result.data[0]
    await ws.close()
    rsa_sim.restart()
    ws = await _session(rsa_sim)
    after = (await _call(ws, "cus-sec_SpcGetCertNo", {})).result.data[0]
    await ws.close()
    assert before == after


async def test_one_operation_at_a_time_across_connections(simulator_factory):
    sim = simulator_factory(latency_ms=30)
    sockets = [await _session(sim) for _ in range(4)]
    try:
        started = asyncio.get_running_loop().time()
        frames = await asyncio.gather(*(_call(ws, SIGN, {"inData": f"d{i}", "passwd": sim.pin}) for i, ws in enumerate(sockets)))
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        for ws in sockets:
            await ws.close()
    assert all(f.result.ok for f in frames)
    stats = (await sim.control("sim_stats")).data[0]
    assert stats["max_in_flight"] == 1
    assert elapsed >= 4 * 0.030  # serialised, not parallel


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def test_a_20_ms_card_takes_20_ms_and_waits_without_spinning(simulator_factory):
    """The benchmarks' card: each operation lasts its latency to within a fraction of a
    millisecond, and the simulator sleeps through it (a card that spun the CPU for the last
    milliseconds of every operation would take the CPU its caller needs, on a small machine)."""
    sim = simulator_factory(latency_ms=20)
    ws = await _session(sim)
    try:
        await _call(ws, SIGN, {"inData": "warm", "passwd": sim.pin})
        before_stats = (await sim.control("sim_stats")).data[0]
        cpu_before = _cpu_seconds(sim.proc.pid)
        for i in range(50):
            assert (await _call(ws, SIGN, {"inData": f"d{i}", "passwd": sim.pin}, i + 2)).result.ok
        cpu = _cpu_seconds(sim.proc.pid) - cpu_before
        stats = (await sim.control("sim_stats")).data[0]
    finally:
        await ws.close()
    operations = stats["operations"] - before_stats["operations"]
    busy = stats["busy_seconds"] - before_stats["busy_seconds"]
    assert operations == 50
    assert 0.020 <= busy / operations < 0.0205
    # Signing, answering and the last moment's spin: ~1.6 ms per operation here; spinning
    # through the last 3 ms of each cost ~3.6 ms.
    assert cpu < operations * 0.0026, f"{cpu:.3f} s of CPU for {operations} operations"


async def test_fault_reset_50070(simulator_factory):
    sim = simulator_factory(extra=["--fault", "reset:1"])
    ws = await _session(sim)
    try:
        first = await _call(ws, SIGN, {"inData": "x", "passwd": sim.pin}, 1)
        second = await _call(ws, SIGN, {"inData": "x", "passwd": sim.pin}, 2)
    finally:
        await ws.close()
    assert first.result.errors == ["[读卡器底层库]复位读卡器失败:错误码=50070", "Err:Custom50070"]
    assert second.result.ok


async def test_fault_close_mid_request_drops_the_socket(rsa_sim):
    await rsa_sim.control("sim_setFaults", {"faults": [{"kind": "close", "count": 1}]})
    ws = await _session(rsa_sim)
    await ws.send(protocol.build_request(SIGN, 1, {"inData": "x", "passwd": rsa_sim.pin}))
    with pytest.raises(Exception) as excinfo:
        await asyncio.wait_for(ws.recv(), timeout=5)
    assert "Connection" in type(excinfo.value).__name__


async def test_fault_noanswer_and_slow(rsa_sim):
    await rsa_sim.control("sim_setFaults", {"faults": [{"kind": "noanswer", "count": 1}]})
    ws = await _session(rsa_sim)
    try:
        await ws.send(protocol.build_request(SIGN, 1, {"inData": "x", "passwd": rsa_sim.pin}))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), timeout=0.5)
        # The next request is answered with its own _id.
        frame = await _call(ws, SIGN, {"inData": "y", "passwd": rsa_sim.pin}, 2)
        assert frame.id == 2 and frame.result.ok
        await rsa_sim.control("sim_setFaults", {"faults": [{"kind": "slow", "count": 1, "slow_ms": 400}]})
        started = asyncio.get_running_loop().time()
        slow = await _call(ws, SIGN, {"inData": "z", "passwd": rsa_sim.pin}, 3)
        assert slow.result.ok and asyncio.get_running_loop().time() - started >= 0.4
    finally:
        await ws.close()


async def test_bare_response_mode(simulator_factory):
    sim = simulator_factory(extra=["--bare-responses"])
    ws = await _session(sim)
    try:
        frame = await _call(ws, "cus-sec_SpcGetCertNo", {})
    finally:
        await ws.close()
    assert frame.kind == "bare" and frame.result.ok and len(frame.result.data[0]) == 8


def test_compiled_and_pure_python_sm2_signatures_verify_with_each_other(tmp_path):
    """The simulator signs SM2 through Tongsuo (compiled); gmssl's pure-Python SM2 is the
    independent check, both ways round, over text with non-ASCII characters."""
    from ukey.simulator import SimulatedCard

    card = SimulatedCard("sm2", tmp_path)
    assert certs._ts_ec is not None  # the compiled path is the one in use here
    for i in range(5):
        data = f"报关单 {i} {'x' * i}".encode()
        compiled = certs.sm2_sign(card._sm2_private, card._sm2_public, data)
        python = certs.sm2_sign_python(card._sm2_private, card._sm2_public, data)
        assert len(compiled) == len(python) == 64 and compiled != python  # a random k each time
        assert certs.sm2_verify(card._sm2_public, data, compiled)  # gmssl accepts Tongsuo's
        assert certs.signature_verify(card.cert, data, base64.b64encode(python).decode())  # and the reverse
        assert not certs.sm2_verify(card._sm2_public, data + b"!", compiled)


def test_sm2_verification_is_computed_once_per_document_signature_and_never_for_a_failure(tmp_path, monkeypatch):
    """A CEB signature is verified when the card returns it and again in the signed document:
    the second SM2 verification of the same key, data and signature is remembered; anything
    else (other data, another signature) is verified for real and still fails."""
    from ukey.simulator import SimulatedCard

    card = SimulatedCard("sm2", tmp_path)
    calls = []
    real = certs._sm2_verify_fast

    def counted(public_hex, data, signature):
        calls.append(data)
        return real(public_hex, data, signature)

    monkeypatch.setattr(certs, "_sm2_verify_fast", counted)
    data = "<ds:SignedInfo>报关</ds:SignedInfo>".encode()
    signature = card.sign(data)
    assert certs.signature_verify(card.cert, data, signature)
    assert certs.signature_verify(card.cert, data, signature)
    assert calls == [data]
    assert not certs.signature_verify(card.cert, data + b" ", signature)
    assert not certs.signature_verify(card.cert, data + b" ", signature)  # failures are not remembered
    other = card.sign(data)  # a random k: another valid signature of the same data
    assert certs.signature_verify(card.cert, data, other)
    assert calls == [data, data + b" ", data + b" ", data]
    forged = base64.b64encode(bytes(64 - 1) + b"\x01").decode()
    assert not certs.signature_verify(card.cert, data, forged)
