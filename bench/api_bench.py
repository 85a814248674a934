"""HTTP benchmark of the signed API: `POST /api/v1/sign` through the real ASGI server.

"HMAC-signed POST /api/v1/sign through a real ASGI server: simulator at 20 ms per operation
with 16 concurrent clients -> card utilisation >= 0.97; at concurrency 1 the added latency over
a direct call of the simulator, p50 and p99; with a 0 ms simulator, requests per second."

Run from the project root:

    .venv/bin/python bench/api_bench.py [--latency-ms 20] [--concurrency 16] [--duration 10]
        [--single-calls 300] [--zero-concurrency 1,2,4,8,16,32] [--zero-duration 5]
        [--redis-url redis://127.0.0.1:6379/0] [--py-spy-dir DIR] [--json]

What it does, on its own, in one run:
  1. starts `manage.py ukey_simulator` (its own process) on a free loopback port;
  2. in a temporary SIGNPLATFORM_VAR_DIR (embedded defaults: SQLite, local-memory cache,
     in-memory channel layer, gateway inside the web process) migrates, creates an access ID
     with `manage.py accessid create --name bench --json` and lifts its rate limit (600/min by
     default, far below what is measured here);
  3. starts the platform as `make run` does (`manage.py runplatform`: uvicorn + the gateway)
     with UKEY_URL=ws://127.0.0.1:<sim port>, UKEY_PIN=<sim PIN> and UKEY_PIPELINE_DEPTH=2
     (set explicitly: it defaults to 1 when UKEY_URL is set; 2 is the simulator default);
     with --redis-url, REDIS_URL too (channels-redis, Redis nonces, external gateway process);
  4. measures, each figure a ratio of two things measured in this same run:
     - the card's own limit: the simulator driven directly over WebSocket, many requests
       outstanding (no platform in the way);
     - 16 HTTP clients against a 20 ms card: utilisation = the simulator's busy seconds
       (`sim_stats`) / wall time of the measured window, and platform req/s / the card's limit;
     - 1 HTTP client: HTTP p50/p99 minus direct WebSocket p50/p99, calls interleaved;
     - the simulator switched to 0 ms (`sim_setLatency`): req/s at several concurrencies.

The load generator is one lean asyncio process: requests are signed before each phase (own
nonce each; a phase lasts seconds, well inside the 300 s timestamp window) and sent as raw
bytes over keep-alive HTTP/1.1 connections. Every response is checked (status 200, a
signature, the card's certNo); sampled signatures are verified with the card certificate.
Exit status: 0 when the figures meet the target, 1 when utilisation < 0.97 (20 ms card,
>= 2 clients), 2 on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gateway_bench import (
    BENCH_PIN,
    SIGN_METHOD,
    UTILISATION_TARGET,
    BenchError,
    Simulator,
    card_stats,
    ms,
    percentile,
)
from core.ports import port_free
from signclient import sign_headers
from ukey import protocol

SIGN_PATH = "/api/v1/sign"
VERIFY_EVERY = 200  # verify the first signature of each phase and one in VERIFY_EVERY
MAX_FRAME_BYTES = 64 * 1024 * 1024  # the gateway's UKEY_MAX_FRAME_BYTES default
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting from /proc -------------------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    todo.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return pids


def cpu_seconds(pid: int | None, *, system_only: bool = False) -> float:
    """User + system CPU seconds of a process and its live descendants (only the system
    time, the kernel's work for it: sockets, files, with `system_only`)."""
    if pid is None:
        return 0.0
    total = 0.0
    for each in _process_tree(pid):
        try:
            with open(f"/proc/{each}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[12]) + (0 if system_only else int(fields[11]))) / CLK_TCK  # stime, utime
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU seconds used by the platform, the simulator and this load generator over a window,
    and by anything else on the machine (other people's work would skew the figures)."""

    def __init__(self, platform_pid: int, simulator_pid: int) -> None:
        self.pids = {"platform": platform_pid, "simulator": simulator_pid}

    def snapshot(self) -> dict[str, float]:
        snap = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["loadgen"] = time.process_time()
        snap["platform_kernel"] = cpu_seconds(self.pids["platform"], system_only=True)
        snap["machine"] = machine_cpu_seconds()
        return snap

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        used = {name: after[name] - before[name] for name in before}
        machine = used.pop("machine")
        kernel = used.pop("platform_kernel", 0.0)  # part of "platform"
        used["other"] = max(0.0, machine - sum(used.values()))
        used["platform_kernel"] = kernel
        return used


# --- pre-signed requests --------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    raw: bytes  # the whole HTTP/1.1 request
    data: str  # the text to be signed by the card


class RequestFactory:
    """Signed `POST /api/v1/sign` requests as ready-to-send bytes."""

    def __init__(self, host: str, port: int, access_id: str, secret: str) -> None:
        self.host, self.port = host, port
        self.access_id, self.secret = access_id, secret
        self.counter = 0

    def raw(self, method: str, path: str, body: bytes) -> bytes:
        headers = sign_headers(method, f"http://{self.host}:{self.port}{path}", body, self.access_id, self.secret)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body

    def sign_request(self, label: str) -> Prepared:
        self.counter += 1
        data = f"api bench {label} {self.counter}"
        body = json.dumps({"data": data}, separators=(",", ":")).encode("utf-8")
        return Prepared(self.raw("POST", SIGN_PATH, body), data)


class RequestPool:
    """Requests signed before a phase starts; signs more on the spot if a phase outruns it."""

    def __init__(self, factory: RequestFactory, label: str, size: int) -> None:
        self.factory, self.label = factory, label
        self.ready = deque(factory.sign_request(label) for _ in range(size))
        self.signed_late = 0

    def take(self) -> Prepared:
        if self.ready:
            return self.ready.popleft()
        self.signed_late += 1
        return self.factory.sign_request(self.label)


# --- a lean HTTP/1.1 keep-alive client ----------------------------------------------------


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0

    async def open(self) -> HttpConnection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self.opened += 1
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def _body_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request, read its response: (status, body). A connection the server
        asked to close (or that failed) is opened again for the next request."""
        if self.writer is None:
            await self.open()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        body = await self._body_chunked() if chunked else await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body


def sign_answer_check(status: int, body: bytes, cert_no: str) -> tuple[str | None, str]:
    """(signature, "") for a good answer, (None, what was wrong) otherwise."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None, f"HTTP {status}, not JSON: {body[:80]!r}"
    if status != 200:
        return None, f"HTTP {status} {answer.get('code') if isinstance(answer, dict) else answer!r}"
    signature = answer.get("signature") if isinstance(answer, dict) else None
    if not isinstance(signature, str) or not signature:
        return None, f"HTTP 200 without a signature: {body[:80]!r}"
    if answer.get("cert_no") != cert_no:
        return None, f"certNo {answer.get('cert_no')!r} != {cert_no!r}"
    return signature, ""


# --- a direct WebSocket connection to the simulator ---------------------------------------


class DirectCard:
    """The simulator called straight over WebSocket, opened with the gateway's connection
    options; any number of requests outstanding, answers matched by `_id`."""

    def __init__(self, url: str, pin: str) -> None:
        self.url, self.pin = url, pin
        self.ws = None
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.reader_task: asyncio.Task | None = None

    async def open(self) -> DirectCard:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, open_timeout=5, max_size=MAX_FRAME_BYTES, ping_interval=None,
                                close_timeout=2, compression=None)
        handshake = protocol.parse_frame(await asyncio.wait_for(self.ws.recv(), timeout=5))
        if handshake.kind != "handshake":
            raise BenchError(f"direct: the simulator's first frame was {handshake.kind}, not the handshake")
        self.reader_task = asyncio.create_task(self._read(), name="direct-card-reader")
        return self

    async def _read(self) -> None:
        async for message in self.ws:
            frame = protocol.parse_frame(message)
            waiter = self.pending.pop(frame.id, None) if frame.kind == "response" else None
            if waiter is not None and not waiter.done():
                waiter.set_result(frame.result)

    async def call(self, method: str, args: dict) -> protocol.CardResult:
        self.next_id += 1
        waiter = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = waiter
        await self.ws.send(protocol.build_request(method, self.next_id, args))
        return await asyncio.wait_for(waiter, timeout=30)

    async def sign(self, data: str) -> str:
        result = await self.call(SIGN_METHOD, {"inData": data, "passwd": self.pin})
        if not result.ok or not result.data:
            raise BenchError(f"direct call: the simulator refused to sign: {result.errors}")
        return str(result.data[0])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader_task is not None:
            self.reader_task.cancel()
            await asyncio.gather(self.reader_task, return_exceptions=True)


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Run:
    """What every phase needs: the endpoints, the card's facts, the meters."""

    args: argparse.Namespace
    factory: RequestFactory
    sim_url: str
    cert_no: str
    cpu: CpuMeter
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (phase, data, signature)
    checked: int = 0
    # The platform's CPU (cores) with no request at all (heartbeats, status, workers): taken
    # off a window's CPU for `platform_net_cpu_ms_per_req`, the request's own cost.
    idle_platform_cores: float | None = None

    async def idle_measure(self, seconds: float = 2.0) -> float:
        before = self.cpu.snapshot()
        await asyncio.sleep(seconds)
        used = CpuMeter.delta(before, self.cpu.snapshot())
        self.idle_platform_cores = round(used["platform"] / seconds, 4)
        return self.idle_platform_cores

    def offer(self, phase: str, data: str, signature: str, first: bool) -> None:
        if first or self.checked % VERIFY_EVERY == 0:
            self.samples.append((phase, data, signature))
        self.checked += 1


class Window:
    """A measured window bounded by two `sim_stats` snapshots; each bound is the midpoint of
    its snapshot call, the best guess of when the simulator read its clock."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def _mark(self) -> tuple[float, dict, dict]:
        cpu = self.run.cpu.snapshot()
        started = time.perf_counter()
        stats = await card_stats(self.run.sim_url)
        return (started + time.perf_counter()) / 2, stats, cpu

    async def begin(self) -> None:
        self.start, self.stats0, self.cpu0 = await self._mark()

    async def end(self) -> None:
        self.stop, self.stats1, self.cpu1 = await self._mark()

    def figures(self, completed: int) -> dict:
        wall = self.stop - self.start
        busy = self.stats1["busy_seconds"] - self.stats0["busy_seconds"]
        # The card runs one operation at a time, so every operation that ended after the first
        # snapshot's `last_end` also started after it: busy / (last_end1 - last_end0) is exact
        # for that span, with no operation cut in two at either edge.
        span = self.stats1["last_end"] - self.stats0["last_end"]
        ops = self.stats1["operations"] - self.stats0["operations"]
        cpu = CpuMeter.delta(self.cpu0, self.cpu1)
        per_request = {f"{name}_cpu_ms_per_req": round(1000 * used / completed, 3) if completed else None
                       for name, used in cpu.items()}
        return {
            "window_s": round(wall, 3),
            "card_busy_s": round(busy, 4),
            "card_ops": ops,
            "card_ops_per_s": round(ops / span, 3) if span > 0 else 0.0,
            "card_span_s": round(span, 4),
            "card_busy_fraction": round(busy / span, 4) if span > 0 else 0.0,
            "card_busy_over_window": round(busy / wall, 4),
            **{f"{name}_cpu_cores": round(used / wall, 3) for name, used in cpu.items()},
            **per_request,
            "platform_net_cpu_ms_per_req": round(1000 * (cpu["platform"] - self.run.idle_platform_cores * wall)
                                                 / completed, 3)
            if completed and self.run.idle_platform_cores is not None else None,
        }


async def http_load(run: Run, label: str, concurrency: int, warmup: float, duration: float,
                    expected_rate: float, profile_pid: int | None = None) -> dict:
    """`concurrency` clients, each on its own keep-alive connection, back to back."""
    pool = RequestPool(run.factory, label, int(expected_rate * (warmup + duration) * 1.2) + 4 * concurrency)
    conns = [await HttpConnection(run.factory.host, run.factory.port).open() for _ in range(concurrency)]
    state = {"counting": False, "stop": False, "first": True}
    done: list[tuple[float, float]] = []  # (finished at, latency)
    errors: list[str] = []

    async def client(conn: HttpConnection) -> None:
        while not state["stop"]:
            request = pool.take()
            started = time.perf_counter()
            try:
                status, body = await conn.exchange(request.raw)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                errors.append(f"{exc.__class__.__name__}: {exc}")
                conn.close()
                if len(errors) > 100:
                    return
                continue
            finished = time.perf_counter()
            signature, problem = sign_answer_check(status, body, run.cert_no)
            if signature is None:
                errors.append(problem)
                if len(errors) > 100:
                    return
                continue
            if state["counting"]:
                done.append((finished, finished - started))
                run.offer(label, request.data, signature, state["first"])
                state["first"] = False

    tasks = [asyncio.create_task(client(conn), name=f"{label}-client-{i}") for i, conn in enumerate(conns)]
    window = Window(run)
    spy = None
    try:
        await asyncio.sleep(warmup)
        state["counting"] = True
        await window.begin()
        if profile_pid is not None:
            spy = py_spy_start(run.args.py_spy_dir, label, profile_pid, duration)
        await asyncio.sleep(duration)
        await window.end()
        state["counting"] = False
        state["stop"] = True
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            conn.close()
        if spy is not None:
            spy.wait(timeout=duration + 30)

    latencies = [lat for at, lat in done if window.start <= at <= window.stop]
    figures = window.figures(len(latencies))
    figures.update({
        "concurrency": concurrency,
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / figures["window_s"], 2),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "errors": len(errors),
        "error_samples": errors[:5],
        "signed_during_run": pool.signed_late,
        "reconnects": sum(c.opened - 1 for c in conns),
    })
    return figures


async def direct_load(run: Run, label: str, outstanding: int, warmup: float, duration: float) -> dict:
    """The card's own limit: the simulator driven directly, `outstanding` requests in flight
    on one connection (as a control with a deep queue would be)."""
    card = await DirectCard(run.sim_url, BENCH_PIN).open()
    state = {"counting": False, "stop": False}
    finished: list[float] = []

    async def caller(n: int) -> None:
        i = 0
        while not state["stop"]:
            i += 1
            await card.sign(f"direct {label} {n} {i}")
            if state["counting"]:
                finished.append(time.perf_counter())

    tasks = [asyncio.create_task(caller(n)) for n in range(outstanding)]
    window = Window(run)
    try:
        await asyncio.sleep(warmup)
        state["counting"] = True
        await window.begin()
        await asyncio.sleep(duration)
        await window.end()
        state["stop"] = True
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await card.close()
    count = sum(1 for at in finished if window.start <= at <= window.stop)
    figures = window.figures(count)
    # The rate by the card's own clock (operations between the two `last_end`s): no operation
    # is cut in two at the edges of a short window.
    figures.update({"outstanding": outstanding, "ops": count, "ops_per_s": figures["card_ops_per_s"]})
    return figures


async def single_caller(run: Run, calls: int) -> dict:
    """One client: an HTTP call and a direct WebSocket call in turn (the order alternating),
    so both see the same machine at the same moments."""
    conn = await HttpConnection(run.factory.host, run.factory.port).open()
    card = await DirectCard(run.sim_url, BENCH_PIN).open()
    pool = RequestPool(run.factory, "single", calls + 5)
    http_lat: list[float] = []
    direct_lat: list[float] = []

    async def via_http() -> tuple[str, str]:
        request = pool.take()
        status, body = await conn.exchange(request.raw)
        signature, problem = sign_answer_check(status, body, run.cert_no)
        if signature is None:
            raise BenchError(f"single client: {problem}")
        return request.data, signature

    async def direct() -> tuple[None, str]:
        return None, await card.sign(f"direct single {time.perf_counter_ns()}")

    try:
        for _ in range(5):  # untimed
            await via_http()
            await direct()
        for i in range(calls):
            for name, fn in ((("http", via_http), ("direct", direct)) if i % 2 == 0 else
                             (("direct", direct), ("http", via_http))):
                started = time.perf_counter()
                data, signature = await fn()
                elapsed = time.perf_counter() - started
                if name == "http":
                    http_lat.append(elapsed)
                    run.offer("single", data, signature, i == 0)
                else:
                    direct_lat.append(elapsed)
    finally:
        conn.close()
        await card.close()
    h50, h99, d50, d99 = (percentile(http_lat, 50), percentile(http_lat, 99),
                          percentile(direct_lat, 50), percentile(direct_lat, 99))
    return {
        "calls": calls,
        "http_p50_ms": ms(h50), "http_p99_ms": ms(h99), "http_mean_ms": ms(sum(http_lat) / calls),
        "direct_p50_ms": ms(d50), "direct_p99_ms": ms(d99), "direct_mean_ms": ms(sum(direct_lat) / calls),
        "added_p50_ms": ms(h50 - d50), "added_p99_ms": ms(h99 - d99),
        "ratio_p50": round(h50 / d50, 4) if d50 > 0 else None,
    }


async def set_card_latency(run: Run, latency_ms: float) -> None:
    card = await DirectCard(run.sim_url, BENCH_PIN).open()
    try:
        result = await card.call("sim_setLatency", {"ms": latency_ms})
        if not result.ok:
            raise BenchError(f"sim_setLatency refused: {result.errors}")
    finally:
        await card.close()


def py_spy_start(directory: str, label: str, pid: int, duration: float) -> subprocess.Popen:
    """`py-spy record` of the platform's process for one window (only with --py-spy-dir)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = Path(directory) / f"{label}.txt"
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))), "--rate", "200", "--gil",
         "--nonblocking", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


async def run_async(run: Run, platform_pid: int, report: dict) -> None:
    args = run.args
    profile = platform_pid if args.py_spy_dir else None
    ceiling = 1000.0 / args.latency_ms if args.latency_ms > 0 else 1000.0
    report["direct_limit"] = await direct_load(run, "direct-limit", args.concurrency, args.warmup,
                                               args.direct_duration)
    report["throughput"] = await http_load(run, "throughput", args.concurrency, args.warmup, args.duration,
                                           ceiling, profile)
    report["single"] = await single_caller(run, args.single_calls)

    await set_card_latency(run, 0)
    report["zero_direct_limit"] = await direct_load(run, "zero-direct-limit", max(args.zero_concurrency),
                                                    args.warmup, args.direct_duration)
    report["zero"] = []
    expected = 2000.0  # requests/s signed ahead; more are signed on the spot if needed
    for concurrency in args.zero_concurrency:
        figures = await http_load(run, f"zero-c{concurrency}", concurrency, args.warmup, args.zero_duration,
                                  expected, profile if concurrency == max(args.zero_concurrency) else None)
        report["zero"].append(figures)
        expected = max(expected, figures["req_per_s"] * 1.5)
    await set_card_latency(run, args.latency_ms)


def verify_samples(run: Run, certificate_pem: str, report: dict) -> None:
    from core import certs

    cert = certs.certificate_load(certificate_pem)
    report["card"]["algorithm"] = cert.algorithm
    bad = [(phase, data) for phase, data, sig in run.samples
           if not certs.signature_verify(cert, data.encode("utf-8"), sig)]
    report["signatures"] = {"verified": len(run.samples) - len(bad), "failed": len(bad), "of_total": run.checked}
    if bad:
        raise BenchError(f"{len(bad)} of {len(run.samples)} sampled signatures do not verify, e.g. {bad[0]}")


async def certificate_fetch(factory: RequestFactory) -> dict:
    conn = await HttpConnection(factory.host, factory.port).open()
    try:
        status, body = await conn.exchange(factory.raw("GET", "/api/v1/certificate", b""))
    finally:
        conn.close()
    if status != 200:
        raise BenchError(f"GET /api/v1/certificate answered {status}: {body[:200]!r}")
    return json.loads(body)


# --- setting up the platform ------------------------------------------------------------------


def manage(env: dict, *argv: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(argv[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


RATE_LIMIT_LIFT = """
from accessids.models import AccessId
from accessids.services import COMMAND, access_id_update
access = AccessId.objects.get(key={key!r})
access.rate_limit_per_minute = {limit}
access_id_update(access_id=access, changed=["rate_limit_per_minute"], context=COMMAND)
"""


def platform_env(args, tmp: Path, sim: Simulator) -> dict:
    from tests.live import embedded_env

    extra = {
        "UKEY_URL": sim.url,
        "UKEY_PIN": BENCH_PIN,
        "UKEY_PIPELINE_DEPTH": str(args.pipeline_depth),
        "UKEY_SIMULATOR_KEY_DIR": str(tmp / "sim-keys"),
    }
    env = embedded_env(tmp, **extra)
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    return env


def describe_backends(args) -> str:
    if args.redis_url:
        return ("REDIS_URL set: channels-redis layer, Redis nonces and rate limits, the gateway in its own "
                "`ukey_gateway` process (UKEY_GATEWAY_MODE=external), SQLite database")
    return "embedded defaults: SQLite, local-memory cache, in-memory channel layer, gateway in the web process"


# --- the report -------------------------------------------------------------------------------


def print_report(args, report: dict, command: str) -> None:
    print(f"HTTP API benchmark (POST {SIGN_PATH}) — {command}")
    card = report.get("card", {})
    print(f"  platform: `manage.py runplatform` (uvicorn, one worker) with {report.get('backends')}; "
          f"UKEY_PIPELINE_DEPTH={args.pipeline_depth}")
    print(f"  card: simulator process, {card.get('algorithm', '?')} certNo {card.get('cert_no', '?')}; "
          f"machine: {os.cpu_count()} CPUs, load generator: one asyncio process, keep-alive HTTP/1.1, "
          f"pre-signed requests")
    rows = []
    header = ("phase", "sim ms", "conc", "done", "per s", "p50 ms", "p99 ms", "card busy", "errors",
              "server CPU", "srv ms/req", "sim CPU", "loadgen CPU", "other CPU")

    def cpu_row(f: dict) -> tuple:
        return (f"{f['platform_cpu_cores']:.2f}", f"{f['platform_cpu_ms_per_req']}" if f.get("platform_cpu_ms_per_req")
                is not None else "-", f"{f['simulator_cpu_cores']:.2f}", f"{f['loadgen_cpu_cores']:.2f}",
                f"{f['other_cpu_cores']:.2f}")

    lat = f"{args.latency_ms:g}"
    if "direct_limit" in report:
        f = report["direct_limit"]
        rows.append(("direct WS (card limit)", lat, f["outstanding"], f["ops"], f"{f['ops_per_s']:.2f}", "", "",
                     f"{f['card_busy_fraction']:.4f}", 0, *cpu_row(f)))
    if "throughput" in report:
        f = report["throughput"]
        rows.append(("HTTP sign", lat, f["concurrency"], f["requests"], f"{f['req_per_s']:.2f}",
                     f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}", f"{f['card_busy_fraction']:.4f}", f["errors"],
                     *cpu_row(f)))
    if "zero_direct_limit" in report:
        f = report["zero_direct_limit"]
        rows.append(("direct WS (card limit)", "0", f["outstanding"], f["ops"], f"{f['ops_per_s']:.2f}", "", "",
                     f"{f['card_busy_fraction']:.4f}", 0, *cpu_row(f)))
    for f in report.get("zero", []):
        rows.append(("HTTP sign", "0", f["concurrency"], f["requests"], f"{f['req_per_s']:.2f}",
                     f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}", f"{f['card_busy_fraction']:.4f}", f["errors"],
                     *cpu_row(f)))
    if rows:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        line = "  " + "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
        print()
        print(line.format(*header))
        print("  " + "  ".join("-" * w for w in widths))
        for r in rows:
            print(line.format(*[str(c) for c in r]))
        print("  card busy = the simulator's busy seconds / wall time between its last operation ends at the "
              "window's two sim_stats snapshots (its own clock);\n  CPU = cores used over the window "
              "(platform = uvicorn process and its children; other = the rest of the machine, should be ~0);\n  "
              "srv ms/req = platform CPU per request")

    print()
    t, d = report.get("throughput"), report.get("direct_limit")
    if t:
        print(f"  utilisation at {lat} ms, {t['concurrency']} clients: {t['card_busy_fraction']:.4f} "
              f"(target >= {UTILISATION_TARGET}); {t['req_per_s']:.2f} req/s x {lat} ms = "
              f"{t['req_per_s'] * args.latency_ms / 1000:.4f}")
        if d:
            print(f"  platform throughput / the card's own limit (direct, same run): "
                  f"{t['req_per_s']:.2f} / {d['ops_per_s']:.2f} = {t['req_per_s'] / d['ops_per_s']:.4f}")
    s = report.get("single")
    if s:
        print(f"  one client ({s['calls']} calls each way, interleaved): HTTP p50 {s['http_p50_ms']:.2f} ms, "
              f"p99 {s['http_p99_ms']:.2f} ms; direct WebSocket p50 {s['direct_p50_ms']:.2f} ms, "
              f"p99 {s['direct_p99_ms']:.2f} ms")
        print(f"    added latency of the platform: p50 {s['added_p50_ms']:+.2f} ms, p99 {s['added_p99_ms']:+.2f} ms "
              f"(p50 ratio {s['ratio_p50']})")
    zero, zd = report.get("zero"), report.get("zero_direct_limit")
    if zero:
        best = max(zero, key=lambda f: f["req_per_s"])
        curve = ", ".join(f"c{f['concurrency']} {f['req_per_s']:.0f}" for f in zero)
        print(f"  0 ms card: best {best['req_per_s']:.2f} req/s at concurrency {best['concurrency']} "
              f"(p50 {best['p50_ms']:.2f} ms, p99 {best['p99_ms']:.2f} ms); curve: {curve}")
        if zd:
            print(f"    / the simulator's own 0 ms limit (direct, same run) {zd['ops_per_s']:.2f} ops/s = "
                  f"{best['req_per_s'] / zd['ops_per_s']:.4f}; server CPU per request "
                  f"{best['platform_cpu_ms_per_req']} ms")
    sig = report.get("signatures")
    if sig:
        print(f"  signatures verified with the card certificate: {sig['verified']} sampled of {sig['of_total']}, "
              f"{sig['failed']} failed")
    busy = [f"{name} {f['other_cpu_cores']:.2f}" for name, f in phase_figures(report) if f["other_cpu_cores"] > 0.25]
    if busy:
        print(f"  WARNING: other work on the machine used CPU during: {', '.join(busy)} (cores); "
              "those figures understate the platform")
    for problem in report.get("problems", []):
        print(f"  FAIL: {problem}")
    print(f"  result: {'PASS' if not report.get('problems') else 'FAIL'}")


def phase_figures(report: dict) -> list[tuple[str, dict]]:
    phases = [(key, report[key]) for key in ("direct_limit", "throughput", "zero_direct_limit") if key in report]
    return phases + [(f"zero-c{f['concurrency']}", f) for f in report.get("zero", [])]


# --- main ---------------------------------------------------------------------------------------


def concurrency_list(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of integers >= 1")
    return values


NUMBER_OPTIONS = (  # (flag, type, default, help)
    ("--latency-ms", float, 20.0, "the simulator's time per operation (default %(default)s)"),
    ("--concurrency", int, 16, "HTTP clients of the throughput phase (default %(default)s)"),
    ("--duration", float, 10.0, "measured seconds of the throughput phase (default %(default)s)"),
    ("--warmup", float, 1.0, "unmeasured seconds before each window (default %(default)s)"),
    ("--single-calls", int, 300, "one client: calls each way, HTTP and direct (default %(default)s)"),
    ("--zero-duration", float, 5.0, "measured seconds per concurrency with the 0 ms card (default %(default)s)"),
    ("--direct-duration", float, 3.0, "measured seconds of each direct (card limit) phase (default %(default)s)"),
    ("--pipeline-depth", int, 2, "UKEY_PIPELINE_DEPTH given to the platform (default %(default)s)"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, kind, default, text in NUMBER_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--zero-concurrency", type=concurrency_list, default=[1, 2, 4, 8, 16, 32],
                        help="client counts tried with the 0 ms card (default 1,2,4,8,16,32)")
    parser.add_argument("--algorithm", choices=["rsa", "sm2"], default="rsa", help="the simulated card's key")
    parser.add_argument("--redis-url", help="run the platform with this REDIS_URL (default: embedded defaults)")
    parser.add_argument("--py-spy-dir", help="record the server with py-spy during the throughput window and "
                        "the highest 0 ms concurrency (raw collapsed stacks; slows the server a little)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.single_calls, args.pipeline_depth) < 1 or args.latency_ms < 0 or \
            min(args.duration, args.zero_duration, args.direct_duration) <= 0:
        parser.error("counts must be >= 1, durations > 0 and the latency >= 0")
    return args


@dataclass
class BenchPlatform:
    """A simulator and the platform in front of it, started for one benchmark run."""

    sim: Simulator
    platform: object  # tests.live.Platform
    access_id: str
    secret: str
    device: dict  # the card as GET /api/v1/health reports it


def bench_platform_start(args: argparse.Namespace, cleanup: contextlib.ExitStack, *, prefix: str,
                         after_stop=None) -> BenchPlatform:
    """In a temporary var dir: the simulator, the migrated database, an access ID without a
    useful rate limit, and `runplatform` with its card connected. Everything is stopped by
    `cleanup`; `after_stop(log_path)` runs once the platform has stopped (its log flushed)."""

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    cleanup.callback(lambda: print(f"temporary directory kept: {tmp}", file=sys.stderr) if args.keep_tmp
                     else shutil.rmtree(tmp, ignore_errors=True))
    sim = Simulator(port=port_free(), latency_ms=args.latency_ms, pin=BENCH_PIN, key_dir=str(tmp / "sim-keys"),
                    algorithm=args.algorithm,
                    env=dict(os.environ, SIGNPLATFORM_VAR_DIR=str(tmp),
                             LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING")))
    cleanup.callback(sim.stop)
    sim.start()

    env = platform_env(args, tmp, sim)
    manage(env, "migrate", "-v0")
    created = json.loads(manage(env, "accessid", "create", "--name", "bench", "--json").strip().splitlines()[-1])
    manage(env, "shell", "-c", RATE_LIMIT_LIFT.format(key=created["access_id"], limit=10**9))

    platform = platform_start(cleanup, env, tmp, name="platform", after_stop=after_stop)
    device = platform.wait_card(timeout=30)["devices"][0]
    return BenchPlatform(sim, platform, created["access_id"], created["secret"], device)


def platform_start(cleanup: contextlib.ExitStack, env: dict, tmp: Path, *, name: str, args: tuple = (),
                   after_stop=None):
    """`manage.py runplatform` (tests.live.Platform) with `env`, stopped by `cleanup` (its last
    log lines printed when the run failed); `after_stop(log_path)` runs once it has stopped."""
    from tests.live import Platform

    platform = Platform(env, tmp, name=name, args=args)
    if after_stop is not None:
        cleanup.callback(after_stop, platform.log_path)

    def down(exc_type, exc, tb) -> None:
        platform.stop()
        if exc_type is not None and platform.log_path.exists():
            print(f"--- {name} log (last lines) ---\n{platform.log[-3000:]}", file=sys.stderr)

    cleanup.push(down)
    platform.start(migrate=False)
    return platform


def event_loop_run(coroutine):
    """Run the load generator's coroutine on uvloop when installed (its own CPU matters on 2 cores)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def bench_main(args: argparse.Namespace, report: dict, bench_run, print_report_fn) -> int:
    """Run `bench_run(args, report, cleanup)`, turn failures into report problems (exit 2),
    print the report (or its JSON). Returns the exit status."""
    status = 2
    try:
        with contextlib.ExitStack() as cleanup:
            status = bench_run(args, report, cleanup)
    except BenchError as exc:
        report["problems"].append(str(exc))
    except KeyboardInterrupt:
        report["problems"].append("interrupted")
    except Exception as exc:
        traceback.print_exc()
        report["problems"].append(repr(exc))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, default=str))
    else:
        print_report_fn(args, report, report["command"])
    return status


def bench(args: argparse.Namespace, report: dict, cleanup: contextlib.ExitStack) -> int:
    """Start everything (registering its clean-up), measure, judge. Returns the exit status."""
    started = bench_platform_start(args, cleanup, prefix="api-bench-")
    sim, platform, device = started.sim, started.platform, started.device
    report["card"] = {"cert_no": device["cert_no"], "device": device["slug"]}

    factory = RequestFactory("127.0.0.1", platform.port, started.access_id, started.secret)
    run = Run(args=args, factory=factory, sim_url=sim.url, cert_no=device["cert_no"],
              cpu=CpuMeter(platform.proc.pid, sim.proc.pid))

    async def measure() -> str:
        certificate = await certificate_fetch(factory)
        if certificate.get("cert_no") != run.cert_no:
            raise BenchError(f"GET /api/v1/certificate says certNo {certificate.get('cert_no')}, "
                             f"the health check {run.cert_no}")
        await run_async(run, platform.proc.pid, report)
        return certificate["certificate_pem"]

    pem = event_loop_run(measure())
    verify_samples(run, pem, report)

    loaded = [report["throughput"], *report["zero"]]
    failed = sum(f["errors"] for f in loaded)
    if failed:
        raise BenchError(f"{failed} failed requests, e.g. {[e for f in loaded for e in f['error_samples']][:3]}")
    busy = report["throughput"]["card_busy_fraction"]
    if args.latency_ms == 20 and args.concurrency >= 2 and busy < UTILISATION_TARGET:
        report["problems"].append(f"utilisation {busy:.4f} < {UTILISATION_TARGET}: the card stood idle "
                                  f"{(1 - busy) * 1000:.1f} ms of every second")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/api_bench.py", *(sys.argv[1:] if argv is None else argv)])
    report: dict = {"command": command, "latency_ms": args.latency_ms, "pipeline_depth": args.pipeline_depth,
                    "backends": describe_backends(args), "cpus": os.cpu_count(), "problems": []}
    return bench_main(args, report, bench, print_report)


if __name__ == "__main__":
    sys.exit(main())
