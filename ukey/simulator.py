"""A card simulator that speaks the E-Port control's protocol and signs for real.

It stands in for the Windows E-Port client with an operator card: one WebSocket
server, the handshake frame, `_id` correlation, the response envelope, `Result:false`
errors with `Err:` codes, one card operation at a time, a PIN, and faults on demand.
Keys and certificates are generated once and kept on disk so the certNo is stable.
It reuses the protocol module and knows nothing of the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from Crypto.PublicKey import RSA
from gmssl import sm2 as gm_sm2
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core import certs

from . import protocol

logger = logging.getLogger("ukey.simulator")

SIGN_METHODS = protocol.SIGN_METHODS
# swap: answer a signing request with the result of the previous one (a control, or a relay,
# that mixes answers up: the caller would get a signature over somebody else's data).
FAULT_KINDS = ("reset", "close", "noanswer", "slow", "swap")
ENT_NAME = "模拟海关申报测试有限公司"


# --- the card: keys, certificate and what it answers -------------------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _subject(common_name: str, enterprise: str) -> asn1_x509.Name:
    return asn1_x509.Name.build(
        {
            "country_name": "CN",
            "organization_name": enterprise,
            "organizational_unit_name": "UKey Simulator",
            "common_name": common_name,
        }
    )


def _build_certificate(*, serial: int, algorithm: str, spki: asn1_keys.PublicKeyInfo, sign,
                       enterprise: str = ENT_NAME) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    sig_oid = certs.OID_SM3_WITH_SM2 if algorithm == certs.ALG_SM2 else certs.OID_SHA1_WITH_RSA
    name = _subject(f"Operator card {serial:x}", enterprise)
    tbs = asn1_x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": {"algorithm": sig_oid},
            "issuer": name,
            "validity": {
                "not_before": asn1_x509.Time(name="utc_time", value=now - datetime.timedelta(days=1)),
                "not_after": asn1_x509.Time(name="utc_time", value=now + datetime.timedelta(days=730)),
            },
            "subject": name,
            "subject_public_key_info": spki,
        }
    )
    cert = asn1_x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": {"algorithm": sig_oid},
            "signature_value": sign(tbs.dump()),
        }
    )
    return cert.dump()


class SimulatedCard:
    """An operator card's key material, loaded from or created in `key_dir`. `enterprise`
    is the organization its certificate names (a stored certificate of another enterprise is
    replaced by a new card)."""

    def __init__(self, algorithm: str, key_dir: Path, *, enterprise: str = ENT_NAME) -> None:
        if algorithm not in ("rsa", "sm2"):
            raise ValueError("algorithm must be rsa or sm2")
        self.enterprise = enterprise
        self.algorithm = certs.ALG_RSA if algorithm == "rsa" else certs.ALG_SM2
        self.dir = Path(key_dir) / algorithm
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        cert_path = self.dir / "cert.der"
        key_path = self.dir / ("key.pem" if algorithm == "rsa" else "key.hex")
        if not (cert_path.exists() and key_path.exists()) \
                or certs.certificate_load(cert_path.read_bytes()).organization != enterprise:
            self._generate(key_path, cert_path)
        self._load(key_path, cert_path)
        self.card_id = "SIM" + f"{self.cert.serial_number:x}"[-10:].upper()

    def _generate(self, key_path: Path, cert_path: Path) -> None:
        if self.algorithm == certs.ALG_RSA:
            key = RSA.generate(1024)
            serial = secrets.randbits(31) | (1 << 28)  # 8 hex digits
            spki = asn1_keys.PublicKeyInfo.load(key.public_key().export_key(format="DER"))
            der = _build_certificate(
                serial=serial, algorithm=self.algorithm, spki=spki, sign=lambda tbs: certs.rsa_sha1_sign(key, tbs),
                enterprise=self.enterprise,
            )
            _write_private(key_path, key.export_key(format="PEM"))
        else:
            private_hex = "%064x" % (secrets.randbelow(certs.SM2_ORDER - 1) + 1)
            crypt = gm_sm2.CryptSM2(private_key=private_hex, public_key="")
            public_hex = crypt._kg(int(private_hex, 16), gm_sm2.default_ecc_table["g"])
            serial = (0x03 << 56) | secrets.randbits(48)  # 16 hex digits, like 03000000000cde6f
            spki = asn1_keys.PublicKeyInfo(
                {
                    "algorithm": asn1_keys.PublicKeyAlgorithm(
                        {
                            "algorithm": "ec",
                            "parameters": asn1_keys.ECDomainParameters(name="named", value=certs.OID_SM2_CURVE),
                        }
                    ),
                    "public_key": b"\x04" + bytes.fromhex(public_hex),
                }
            )

            def sign(tbs: bytes) -> bytes:
                raw = certs.sm2_sign(private_hex, public_hex, tbs)
                r = asn1_core.Integer(int.from_bytes(raw[:32], "big"))
                s = asn1_core.Integer(int.from_bytes(raw[32:], "big"))
                return _der_sequence(r.dump() + s.dump())

            der = _build_certificate(serial=serial, algorithm=self.algorithm, spki=spki, sign=sign,
                                     enterprise=self.enterprise)
            _write_private(key_path, (private_hex + "\n" + public_hex + "\n").encode())
        _write_private(cert_path, der)

    def _load(self, key_path: Path, cert_path: Path) -> None:
        self.cert = certs.certificate_load(cert_path.read_bytes())
        if self.algorithm == certs.ALG_RSA:
            self._rsa_key = RSA.import_key(key_path.read_bytes())
            self.cert_no = f"{self.cert.serial_number:08x}"
        else:
            private_hex, public_hex = key_path.read_text().split()
            self._sm2_private, self._sm2_public = private_hex, public_hex
            self.cert_no = f"{self.cert.serial_number:016x}"

    def sign(self, data: bytes) -> str:
        if self.algorithm == certs.ALG_RSA:
            raw = certs.rsa_sha1_sign(self._rsa_key, data)
        else:
            raw = certs.sm2_sign(self._sm2_private, self._sm2_public, data)
        return base64.b64encode(raw).decode("ascii")

    def sign_sha1_digest(self, digest: bytes) -> str:
        if self.algorithm == certs.ALG_RSA:
            raw = certs.rsa_sha1_sign_digest(self._rsa_key, digest)
        else:
            # An SM2 card cannot sign a bare SHA-1 digest per the SM2 scheme; this
            # simulator signs the 20 digest bytes as the message (documented in the README).
            raw = certs.sm2_sign(self._sm2_private, self._sm2_public, digest)
        return base64.b64encode(raw).decode("ascii")


def _der_sequence(content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        header = bytes([0x30, length])
    else:
        size = (length.bit_length() + 7) // 8
        header = bytes([0x30, 0x80 | size]) + length.to_bytes(size, "big")
    return header + content


# --- faults -------------------------------------------------------------------------


@dataclass
class FaultRule:
    kind: str
    count: int | None = None  # None: every matching operation
    rate: float = 1.0
    methods: frozenset[str] = SIGN_METHODS
    slow_ms: int = 2000

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FaultRule:
        kind = str(spec.get("kind"))
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(FAULT_KINDS)}")
        methods = spec.get("methods")
        return cls(
            kind=kind,
            count=int(spec["count"]) if spec.get("count") is not None else None,
            rate=float(spec.get("rate", 1.0)),
            methods=frozenset(methods) if methods else SIGN_METHODS,
            slow_ms=int(spec.get("slow_ms", 2000)),
        )

    @classmethod
    def from_cli(cls, text: str, rate: float, slow_ms: int) -> FaultRule:
        """`KIND` or `KIND:COUNT`, e.g. `reset:3`."""
        kind, _, count = text.partition(":")
        return cls.from_dict({"kind": kind, "count": count or None, "rate": rate, "slow_ms": slow_ms})


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)

    def draw(self, method: str) -> FaultRule | None:
        for rule in self.rules:
            if method not in rule.methods or (rule.count is not None and rule.count <= 0):
                continue
            if rule.rate < 1.0 and random.random() >= rule.rate:
                continue
            if rule.count is not None:
                rule.count -= 1
            return rule
        return None


# --- the control's WebSocket server ------------------------------------------------


@dataclass
class SimulatorStats:
    operations: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0
    busy_seconds: float = 0.0  # time the card spent executing operations
    first_start: float = 0.0
    last_end: float = 0.0


class CardSimulator:
    """The E-Port control with one card inserted."""

    def __init__(
        self,
        card: SimulatedCard,
        *,
        latency_ms: float = 0.0,
        pin: str = "",
        faults: FaultPlan | None = None,
        bare_responses: bool = False,
    ) -> None:
        self.card = card
        self.latency = max(0.0, latency_ms) / 1000.0
        self._pin = pin
        self.faults = faults or FaultPlan()
        self.bare_responses = bare_responses
        self.stats = SimulatorStats()
        # The card executes one operation at a time, in arrival order.
        self._card_queue: asyncio.Queue = asyncio.Queue()
        self._card_task: asyncio.Task | None = None
        self._reply_tasks: set[asyncio.Task] = set()
        self._connections: set[ServerConnection] = set()
        self._last_signature: protocol.CardResult | None = None  # for the "swap" fault

    async def serve(self, host: str = "127.0.0.1", port: int = 61232):
        """Start listening; returns the websockets server (use `async with` or `.close()`)."""
        return await serve(self._handle_connection, host, port, max_size=64 * 1024 * 1024, ping_interval=None)

    async def _handle_connection(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self._connections.add(ws)
        if self._card_task is None or self._card_task.done():
            self._card_task = asyncio.create_task(self._card_worker(), name="simulated-card")
        try:
            await ws.send(protocol.build_handshake())
            async for message in ws:
                try:
                    frame = protocol.parse_frame(message)
                except protocol.FrameError:
                    logger.debug("simulator dropped a frame that is not JSON")
                    continue
                if frame.kind != "request" or frame.id is None or not frame.method:
                    continue
                method = frame.method
                if method.startswith("sim_"):
                    self._send_later(ws, frame.id, method, self._control(method, frame.args or {}))
                    continue
                fault = self.faults.draw(method)
                if fault and fault.kind == "noanswer":
                    logger.info("simulator fault: request %s (%s) will never be answered", frame.id, method)
                    continue
                self._card_queue.put_nowait((ws, frame, fault))
        except ConnectionClosed:
            pass
        finally:
            self._connections.discard(ws)

    async def _card_worker(self) -> None:
        """The card: takes requests in arrival order and executes them one at a time.
        A request that arrived while the card was busy starts the moment it is free."""
        while True:
            ws, frame, fault = await self._card_queue.get()
            if ws not in self._connections:
                continue  # the control drops requests of a closed connection
            method, args = frame.method or "", frame.args or {}
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                op_start = time.perf_counter()
                if not self.stats.first_start:
                    self.stats.first_start = op_start
                deadline = op_start + self.latency
                if fault and fault.kind == "slow":
                    deadline += fault.slow_ms / 1000.0
                if fault and fault.kind == "close":
                    logger.info("simulator fault: closing the socket mid-request %s", frame.id)
                    ws.transport.abort()
                    continue
                if fault and fault.kind == "reset":
                    result = protocol.card_error("[读卡器底层库]复位读卡器失败:错误码=50070", "Custom", 50070)
                else:
                    result = self.execute(method, args)
                    if method in SIGN_METHODS and result.ok:
                        if fault and fault.kind == "swap" and self._last_signature is not None:
                            logger.info("simulator fault: request %s answered with the previous signature", frame.id)
                            result, self._last_signature = self._last_signature, result
                        else:
                            self._last_signature = result
                await _sleep_until(deadline)
                self.stats.operations += 1
                self.stats.last_end = time.perf_counter()
                self.stats.busy_seconds += self.stats.last_end - op_start
            finally:
                self.stats.in_flight -= 1
            self._send_later(ws, frame.id, method, result)

    def _send_later(self, ws: ServerConnection, request_id: int, method: str, result: protocol.CardResult) -> None:
        """Answer without holding up the card."""
        task = asyncio.create_task(self._reply(ws, request_id, method, result))
        self._reply_tasks.add(task)
        task.add_done_callback(self._reply_tasks.discard)

    async def _reply(self, ws: ServerConnection, request_id: int, method: str, result: protocol.CardResult) -> None:
        text = protocol.build_bare_response(result) if self.bare_responses else protocol.build_response(
            request_id, method, result
        )
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass

    def _control(self, method: str, args: dict[str, Any]) -> protocol.CardResult:
        """Simulator-only methods (`sim_*`) that tests use to steer faults."""
        if method == "sim_setFaults":
            try:
                self.faults.rules = [FaultRule.from_dict(spec) for spec in args.get("faults", [])]
            except (ValueError, TypeError, KeyError) as exc:
                return protocol.card_error(str(exc), "Base", 50000)
            return protocol.CardResult(ok=True, data=[len(self.faults.rules)])
        if method == "sim_setLatency":
            self.latency = max(0.0, float(args.get("ms", 0))) / 1000.0
            return protocol.CardResult(ok=True)
        if method == "sim_stats":
            return protocol.CardResult(ok=True, data=[self.stats.__dict__.copy()])
        return protocol.card_error(f"不支持的方法:{method}", "Base", 50001)

    # The card operations. Pure and synchronous: they run while holding the card lock.
    def execute(self, method: str, args: dict[str, Any]) -> protocol.CardResult:
        handler = _METHODS.get(method)
        if handler is None:
            return protocol.card_error(f"不支持的方法:{method}", "Base", 50001)
        if method in protocol.PIN_METHODS and self._pin:
            passwd = args.get("passwd")
            if not isinstance(passwd, str) or not secrets.compare_digest(passwd.encode(), self._pin.encode()):
                return protocol.card_error("[用户口令]口令验证失败:错误码=50006", "Custom", 50006)
        try:
            return handler(self.card, args)
        except Exception:  # the control reports, it does not crash
            logger.exception("simulator: %s failed", method)
            return protocol.card_error(f"内部错误:{method}", "Base", 59999)


def _missing(name: str) -> protocol.CardResult:
    return protocol.card_error(f"参数检查失败,传入的args中必须包含必要的非空白参数:{name}", "Base", 50000)


def _required(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def _ok(*data: Any) -> protocol.CardResult:
    return protocol.CardResult(ok=True, data=list(data))


def _sign(card: SimulatedCard, args: dict[str, Any]) -> protocol.CardResult:
    in_data = _required(args, "inData")
    if in_data is None:
        return _missing("inData")
    return _ok(card.sign(in_data.encode("utf-8")), card.cert_no)


def _sign_no_hash(card: SimulatedCard, args: dict[str, Any]) -> protocol.CardResult:
    in_data = _required(args, "inData")
    if in_data is None:
        return _missing("inData")
    try:
        digest = bytes.fromhex(in_data.strip())
    except ValueError:
        digest = b""
    if len(digest) != 20:
        return protocol.card_error("参数检查失败,inData必须是SHA-1摘要的十六进制文本", "Base", 50000)
    return _ok(card.sign_sha1_digest(digest), card.cert_no)


def _valid_time(card: SimulatedCard, args: dict[str, Any]) -> protocol.CardResult:
    cert = card.cert
    if _required(args, "cert"):
        try:
            cert = certs.certificate_load(args["cert"])
        except certs.CertificateError as exc:
            return protocol.card_error(f"证书解析失败:{exc}", "Base", 50000)
    fmt = "%Y%m%d%H%M%S"
    return _ok(json.dumps({"szStartTime": cert.not_before.strftime(fmt), "szEndTime": cert.not_after.strftime(fmt)}))


def _sha1_digest(card: SimulatedCard, args: dict[str, Any]) -> protocol.CardResult:
    info = args.get("szInfo")
    if not isinstance(info, str) or info == "":
        return _missing("szInfo")
    return _ok(base64.b64encode(hashlib.sha1(info.encode("utf-8")).digest()).decode("ascii"))


def _verify(card: SimulatedCard, args: dict[str, Any]) -> protocol.CardResult:
    in_data, sign_data = _required(args, "inData"), _required(args, "signData")
    if in_data is None:
        return _missing("inData")
    if sign_data is None:
        return _missing("signData")
    cert = card.cert
    if _required(args, "certDataPEM"):
        try:
            cert = certs.certificate_load(args["certDataPEM"])
        except certs.CertificateError as exc:
            return protocol.card_error(f"证书解析失败:{exc}", "Base", 50000)
    if certs.signature_verify(cert, in_data.encode("utf-8"), sign_data):
        return _ok(True)
    return protocol.card_error("验证签名失败", "Custom", 50100)


_METHODS = {
    "cus-sec_SpcSignDataAsPEM": _sign,
    "cus-sec_SpcSignDataNoHashAsPEM": _sign_no_hash,
    "cus-sec_SpcGetCertNo": lambda card, args: _ok(card.cert_no),
    "cus-sec_SpcGetEntName": lambda card, args: _ok(card.enterprise),
    "cus-sec_SpcGetSignCertAsPEM": lambda card, args: _ok(card.cert.der_base64),
    "cus-sec_SpcGetEnvCertAsPEM": lambda card, args: _ok(card.cert.der_base64),
    "cus-sec_SpcGetValidTimeFromCert": _valid_time,
    "cus-sec_SpcSHA1DigestAsPEM": _sha1_digest,
    "cus-sec_SpcVerifySignData": _verify,
    "cus-sec_SpcGetCardID": lambda card, args: _ok(card.card_id),
    "cus-sec_SpcGetUName": lambda card, args: _ok("模拟操作员"),
    "cus-sec_SpcGetEntID": lambda card, args: _ok("4403960000"),
    "cus-sec_SpcGetEntMode": lambda card, args: _ok("1"),
    "cus-sec_SpcGetCardUserInfo": lambda card, args: _ok(
        json.dumps({"szCardID": card.card_id, "szUserName": "模拟操作员", "szEntName": card.enterprise}, ensure_ascii=False)
    ),
}


_SPIN_SECONDS = 0.0002  # the last moment of an operation, spun (a sleep may end ~0.1 ms late)


async def _sleep_until(deadline: float) -> None:
    """Sleep until a perf_counter deadline, precisely: the event loop's timers are only
    millisecond-accurate, and the benchmark's utilisation figure depends on a 20 ms
    card taking 20 ms, not 21."""
    remaining = deadline - time.perf_counter()
    if remaining > 0.004:
        # asyncio rounds timer waits up to whole milliseconds (twice, on Python 3.11), so a
        # sleep can end ~2 ms late: sleep short, ...
        await asyncio.sleep(remaining - 0.003)
    remaining = deadline - time.perf_counter()
    if remaining > _SPIN_SECONDS:
        # ... then the operating system's sleep (late by ~0.05-0.1 ms; the card is busy, so
        # holding up this loop is what a card does), and spin only the last moment: spinning
        # through the last 3 ms took ~15 % of a core at 50 operations/s, CPU that the platform
        # and the load generator beside it need on a small machine.
        time.sleep(remaining - _SPIN_SECONDS)
    while time.perf_counter() < deadline:
        pass
