"""The targets of issue 16, measured in one run: the platform against the Flask sign-server it
replaces (bench/signserver_bridge.py), the same card stand-in and the same threaded load
generator (bench/loadgen.py) for both.

    .venv/bin/python bench/targets.py [--duration 8] [--only embedded,services,scaleout,xml] [--json]
    make bench          # installs bench/requirements.txt (Flask), then runs this and the others

Phases (each figure a ratio of things measured in this run, on this machine):
  embedded  `make run` defaults (SQLite, local-memory cache, in-memory channel layer, the
            gateway in the web process), one 20 ms simulator process, the bridge on the same
            simulator. The card is dialled by URL, so its pipeline depth is 1 (a real
            control's default):
            1. 0 ms card, 16 clients: platform req/s / bridge req/s (target >= 2); then the
               same with the card at depth 2 as `make run`'s own simulator (shown, not judged)
            2. server CPU per POST /api/v1/sign at 0 ms, 16 clients (target <= 2 ms)
            3. 1 client, 20 ms card: HTTP p50/p99 minus a direct call's (<= 3 / 6 ms)
            4. 20 ms card, 16 clients, depth 1: platform req/s / the card's own limit
               (the simulator driven directly, many requests outstanding) (>= 0.98), and the
               card's idle time between an answer and the next request
  services  the same platform with PostgreSQL + Redis (started here as the tests start them;
            the gateway in its own `ukey_gateway` process): 0 ms, 16 clients / bridge (>= 1.5)
  scaleout  PostgreSQL + Redis, two web processes, the gateway process, a pool of four 20 ms
            cards: pool req/s / one card's req/s, 0 errors (>= 3.8)
  xml       bench/xml_bench.py's figures: /sign/xml added latency over /sign (<= 4 ms), an SM2
            card's XML cost / an RSA card's (<= 1.2), 1 MiB documents' peak memory

The machine's load (`uptime`) is printed with each phase: other work on the same cores
disturbs every figure, ratios least. Exit status 0 when every target is met, 1 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api_bench import (
    RATE_LIMIT_LIFT,
    CpuMeter,
    DirectCard,
    RequestFactory,
    manage,
    platform_start,
    sign_answer_check,
)
from bench.gateway_bench import BENCH_PIN, BenchError, Simulator, card_stats, ms, percentile
from bench.loadgen import LoadResult, _Conn, threaded_load
from core.legacy_cipher import legacy_decrypt, legacy_encrypt, legacy_key_fold
from core.ports import port_free, port_wait_listening

BRIDGE_KEY = "bench-legacy-key-16"
# The targets are judged with the stand-in dialled by URL, at the pipeline depth a URL gets (1,
# a real control's default). `make run`'s built-in simulator takes 2: shown beside target 1, not judged.
SIMULATOR_DEPTH = 2

TARGETS = {  # name: (text, comparison, bound)
    "zero_vs_bridge": ("0 ms card, 16 clients, embedded: platform req/s / sign-server req/s", ">=", 2.0),
    # not a target: the same with a second request waiting at the card (the bridge cannot)
    "zero_vs_bridge_depth2": ("0 ms card, 16 clients, embedded, the platform at pipeline depth 2: platform req/s / "
                              "sign-server req/s", None, None),
    "cpu_per_request": ("server CPU per POST /api/v1/sign (0 ms card, 16 clients), ms", "<=", 2.0),
    "added_p50": ("1 client, 20 ms card: added p50 over a direct card call, ms", "<=", 3.0),
    "added_p99": ("1 client, 20 ms card: added p99 over a direct card call, ms", "<=", 6.0),
    "depth1_utilisation": ("20 ms card, 16 clients, depth 1: platform req/s / the card's own limit", ">=", 0.98),
    "services_vs_bridge": ("0 ms card, 16 clients, PostgreSQL + Redis: platform req/s / sign-server req/s", ">=", 1.5),
    "pool_scaleout": ("pool of 4 (20 ms), 2 web processes + gateway process: pool req/s / one card's", ">=", 3.8),
    "xml_added_p50": ("/sign/xml 3.3 KB, 1 client, 20 ms card: added p50 over /sign, ms", "<=", 4.0),
    "xml_sm2_cost": ("/sign/xml server CPU, SM2 card / RSA card", "<=", 1.2),
}


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Stack:
    """What a phase started: simulators, platforms, the bridge (stopped by the ExitStack)."""

    tmp: Path
    sims: list[Simulator] = field(default_factory=list)
    platforms: list = field(default_factory=list)  # tests.live.Platform
    access_id: str = ""
    secret: str = ""


def simulator_start(cleanup: contextlib.ExitStack, tmp: Path, *, latency_ms: float, name: str,
                    algorithm: str = "rsa") -> Simulator:
    sim = Simulator(port=port_free(), latency_ms=latency_ms, pin=BENCH_PIN, key_dir=str(tmp / f"sim-keys-{name}"),
                    algorithm=algorithm, env=dict(os.environ, SIGNPLATFORM_VAR_DIR=str(tmp), LOG_LEVEL="WARNING"))
    cleanup.callback(sim.stop)
    sim.start()
    return sim


def access_id_create(env: dict, *extra: str) -> tuple[str, str]:
    created = json.loads(manage(env, "accessid", "create", "--name", "bench", "--json", *extra).strip().splitlines()[-1])
    manage(env, "shell", "-c", RATE_LIMIT_LIFT.format(key=created["access_id"], limit=10**9))
    return created["access_id"], created["secret"]


def bridge_start(cleanup: contextlib.ExitStack, sim: Simulator, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = port_free()
    log = open(tmp / "bridge.log", "w")
    cleanup.callback(log.close)
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "signserver_bridge.py"), "--port", str(port),
                             "--card", sim.url, "--key-env", "BENCH_BRIDGE_KEY"], cwd=ROOT,
                            env=dict(os.environ, BENCH_BRIDGE_KEY=BRIDGE_KEY), stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    cleanup.callback(stop)
    port_wait_listening(port, proc, "sign-server bridge", 30)
    return proc, port


# --- requests and answers ----------------------------------------------------------------------


class SignRequests:
    """Signed `POST /api/v1/sign` requests, prepared before each window."""

    def __init__(self, factory: RequestFactory, cert_no: str) -> None:
        self.factory, self.cert_no = factory, cert_no
        self.ready: list[list[bytes]] = []

    def prepare(self, clients: int, per_client: int, label: str) -> None:
        self.ready = [[self.factory.sign_request(f"{label} {c}").raw for _ in range(per_client)] for c in range(clients)]

    def request(self, client: int, n: int) -> bytes:
        batch = self.ready[client]
        return batch[n - 1] if n <= len(batch) else self.factory.sign_request(f"late {client}").raw

    def check(self, status: int, body: bytes) -> str:
        return sign_answer_check(status, body, self.cert_no)[1]


class BridgeRequests:
    """`POST /getCode` requests of the sign-server protocol, encrypted before each window."""

    def __init__(self, port: int, cert_no: str) -> None:
        self.port, self.cert_no = port, cert_no
        self.key = legacy_key_fold(BRIDGE_KEY)
        self.ready: list[list[bytes]] = []

    def _one(self, text: str) -> bytes:
        body = legacy_encrypt(self.key, json.dumps({"str": text, "pwdstr": BENCH_PIN}, ensure_ascii=False)).encode()
        return (f"POST /getCode HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def prepare(self, clients: int, per_client: int, label: str) -> None:
        self.ready = [[self._one(f"bridge {label} {c} {n}") for n in range(per_client)] for c in range(clients)]

    def request(self, client: int, n: int) -> bytes:
        batch = self.ready[client]
        return batch[n - 1] if n <= len(batch) else self._one(f"bridge late {client} {n}")

    def check(self, status: int, body: bytes) -> str:
        try:
            answer = json.loads(body)
            if status != 200 or answer.get("code") != 200:
                return f"HTTP {status}: {body[:120]!r}"
            signed = json.loads(legacy_decrypt(self.key, answer["data"]))
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable answer ({exc}): {body[:120]!r}"
        if not signed.get("sign") or signed.get("certNo") != self.cert_no:
            return f"answer without a signature of card {self.cert_no}: {signed!r}"
        return ""


# --- measuring ---------------------------------------------------------------------------------


def sim_stats(sim: Simulator) -> dict:
    return asyncio.run(card_stats(sim.url))


def card_depth_set(env: dict, platform, sim: Simulator, depth: int) -> None:
    """The default card's pipeline depth changed in the database (as the admin would change
    it, without its audit event); returns once the platform's gateway has dialled the card
    again with it (`follow_devices` restarts the gateway of a changed card within seconds).
    The simulator counts every connection it accepted, each `sim_stats` call's own too: the
    platform's new one is the count beyond those."""
    from tests.live import poll

    counted = [sim_stats(sim)["connections"]]
    said = manage(env, "shell", "-c", "from django.conf import settings; from signing.models import CardDevice; "
                  "print(CardDevice.objects.filter(slug=settings.UKEY_DEFAULT_DEVICE)"
                  f".update(pipeline_depth={int(depth)}))").split()
    changed = said[-1] if said else ""  # the last word: the shell may first say what it imported
    if changed != "1":
        raise BenchError(f"the default card device was not found to set its pipeline depth ({changed!r} changed)")

    def redialled() -> bool:
        counted.append(sim_stats(sim)["connections"])
        return counted[-1] - counted[0] > len(counted) - 1  # more than our own stats connections

    try:
        poll(redialled, 30, f"the card gateway reconnected at pipeline depth {depth}")
        platform.wait_card(timeout=30)
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


def sim_latency_set(sim: Simulator, latency_ms: float) -> None:
    async def call() -> None:
        card = await DirectCard(sim.url, BENCH_PIN).open()
        try:
            await card.call("sim_setLatency", {"ms": latency_ms})
        finally:
            await card.close()

    asyncio.run(call())


PROFILE = {"dir": None}  # --py-spy DIR: record the platform's windows (GIL-holding samples only)


def card_window(sims: list[Simulator], cpu: CpuMeter | None, *, profile: tuple[int, str, float] | None = None):
    """`on_window` for threaded_load: snapshots of the simulators' own clocks and of CPU, and a
    py-spy recording of `profile` = (pid, name, seconds) over the window."""
    marks: dict[str, tuple] = {}
    spy: list[subprocess.Popen] = []

    def on_window(edge: str) -> None:
        if edge == "end" and spy:
            spy[0].wait(timeout=60)
        marks[edge] = ([sim_stats(sim) for sim in sims], cpu.snapshot() if cpu else None)
        if edge == "begin" and profile is not None:
            pid, name, seconds = profile
            binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy.append(subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--subprocesses", "--gil", "--rate", "250", "--nonblocking",
                 "--duration", str(max(1, int(seconds))), "--format", "raw",
                 "--output", str(Path(PROFILE["dir"]) / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

    return marks, on_window


def window_figures(result: LoadResult, marks: dict) -> dict:
    (stats0, cpu0), (stats1, cpu1) = marks["begin"], marks["end"]
    figures = {
        "clients": result.clients, "requests": result.requests, "req_per_s": round(result.per_second, 2),
        "p50_ms": ms(percentile(result.latencies, 50)), "p99_ms": ms(percentile(result.latencies, 99)),
        "errors": len(result.errors), "error_samples": result.errors[:3], "connections": result.connections,
    }
    cards = []
    for s0, s1 in zip(stats0, stats1, strict=True):
        span = s1["last_end"] - s0["last_end"]
        busy = s1["busy_seconds"] - s0["busy_seconds"]
        ops = s1["operations"] - s0["operations"]
        cards.append({"ops": ops, "busy_fraction": round(busy / span, 4) if span > 0 else 0.0,
                      "idle_ms_per_op": round(1000 * (span - busy) / ops, 3) if ops else None})
    figures["cards"] = cards
    if cpu0 is not None:
        used = CpuMeter.delta(cpu0, cpu1)
        wall = result.window_s
        figures["cpu_cores"] = {name: round(value / wall, 3) for name, value in used.items()}
        figures["server_cpu_ms_per_req"] = round(1000 * used["platform"] / result.requests, 3) if result.requests else None
        figures["server_kernel_ms_per_req"] = (round(1000 * used["platform_kernel"] / result.requests, 3)
                                               if result.requests else None)
        figures["cpu_ms_per_req"] = ({name: 1000 * value / result.requests for name, value in used.items()}
                                     if result.requests else {})
    return figures


def direct_limit(sim: Simulator, *, outstanding: int, warmup: float, duration: float) -> dict:
    """The card's own limit: the simulator driven directly, `outstanding` requests in flight."""

    async def run() -> dict:
        card = await DirectCard(sim.url, BENCH_PIN).open()
        stop = asyncio.Event()

        async def caller(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                await card.sign(f"direct {n} {i}")

        tasks = [asyncio.create_task(caller(n)) for n in range(outstanding)]
        try:
            await asyncio.sleep(warmup)
            s0 = await card_stats(sim.url)
            await asyncio.sleep(duration)
            s1 = await card_stats(sim.url)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await card.close()
        span = s1["last_end"] - s0["last_end"]
        ops = s1["operations"] - s0["operations"]
        return {"ops": ops, "ops_per_s": round(ops / span, 3) if span > 0 else 0.0,
                "busy_fraction": round((s1["busy_seconds"] - s0["busy_seconds"]) / span, 4) if span > 0 else 0.0}

    return asyncio.run(run())


def single_client(sim: Simulator, host: str, port: int, requests, *, calls: int) -> dict:
    """One client: an HTTP call and a direct WebSocket call of the same card in turn."""
    from websockets.sync.client import connect

    from ukey import protocol

    conn = _Conn(host, port)
    ws = connect(sim.url, max_size=64 * 1024 * 1024, compression=None, legacy=True)
    ws.recv(timeout=10)
    http_lat, direct_lat, errors = [], [], []
    requests.prepare(1, calls + 10, "single")

    def via_http(n: int) -> None:
        status, body = conn.exchange(requests.request(0, n))
        if problem := requests.check(status, body):
            errors.append(problem)

    def direct(n: int) -> None:
        ws.send(protocol.build_request("cus-sec_SpcSignDataAsPEM", n, {"inData": f"direct single {n}",
                                                                         "passwd": BENCH_PIN}))
        if not protocol.parse_frame(ws.recv(timeout=30)).result.ok:
            errors.append("direct call refused")

    try:
        for n in range(1, 6):  # untimed
            via_http(n)
            direct(n)
        for i in range(calls):
            order = ((via_http, http_lat), (direct, direct_lat))
            for fn, into in (order if i % 2 == 0 else order[::-1]):
                started = time.perf_counter()
                fn(i + 6)
                into.append(time.perf_counter() - started)
    finally:
        conn.close()
        ws.close()
    h50, h99, d50, d99 = (percentile(http_lat, 50), percentile(http_lat, 99), percentile(direct_lat, 50),
                          percentile(direct_lat, 99))
    return {"calls": calls, "http_p50_ms": ms(h50), "http_p99_ms": ms(h99), "direct_p50_ms": ms(d50),
            "direct_p99_ms": ms(d99), "added_p50_ms": ms(h50 - d50), "added_p99_ms": ms(h99 - d99),
            "errors": len(errors), "error_samples": errors[:3]}


def interleaved(sides: dict[str, tuple], *, tag: str, rounds: int, clients: int, warmup: float, duration: float,
                sims: list[Simulator], rate_guess: float, card: Simulator | None = None) -> dict[str, dict]:
    """Windows of each side in turn (A B, B A, A B, ...), `duration` seconds per side in all,
    so that both see the same machine: other work on it comes and goes. `sides` maps a name to
    (port, requests, cpu meter). With `card`, the card's own limit (driven directly) is a side
    too ("card"). Returns each side's windows added up."""
    windows: dict[str, list[dict]] = {name: [] for name in [*sides, *(["card"] if card else [])]}
    names = list(windows)
    for round_ in range(rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            if name == "card" and card is not None and name not in sides:
                limit = direct_limit(card, outstanding=clients, warmup=min(warmup, 0.5), duration=duration / rounds)
                windows[name].append({"requests": limit["ops"], "req_per_s": limit["ops_per_s"],
                                      "busy_fraction": limit["busy_fraction"], "load": load_average()})
                continue
            port, requests, cpu = sides[name]
            windows[name].append(load_phase(port, requests, clients=clients, warmup=warmup, duration=duration / rounds,
                                            sims=sims, cpu=cpu, label=f"{name}-{tag}-{round_}", rate_guess=rate_guess))
    return {name: windows_sum(found) for name, found in windows.items()}


def windows_sum(windows: list[dict]) -> dict:
    """Several windows of one side as one: requests and time added up, CPU per request over all."""
    requests = sum(w["requests"] for w in windows)
    seconds = sum(w["requests"] / w["req_per_s"] for w in windows if w["req_per_s"])
    cpu = sum(w["server_cpu_ms_per_req"] * w["requests"] for w in windows if w.get("server_cpu_ms_per_req"))
    kernel = sum(w["server_kernel_ms_per_req"] * w["requests"] for w in windows if w.get("server_kernel_ms_per_req"))
    out = {"windows": len(windows), "requests": requests, "req_per_s": round(requests / seconds, 2) if seconds else 0.0,
           "per_window_req_per_s": [w["req_per_s"] for w in windows], "load": [w["load"] for w in windows]}
    if "p50_ms" not in windows[0]:  # the card driven directly
        out["busy_fraction"] = [w["busy_fraction"] for w in windows]
        return out
    return {
        **out,
        "p50_ms_max": max(w["p50_ms"] for w in windows), "p99_ms_max": max(w["p99_ms"] for w in windows),
        "errors": sum(w["errors"] for w in windows), "error_samples": [e for w in windows for e in w["error_samples"]][:3],
        "server_cpu_ms_per_req": round(cpu / requests, 3) if requests else None,
        "server_kernel_ms_per_req": round(kernel / requests, 3) if requests else None,
        "other_cpu_cores": [w["cpu_cores"]["other"] for w in windows],
        # CPU per request of every process (the load generator, the card stand-in, the rest of
        # the machine), over all windows: what any server would have to share the machine with
        "cpu_ms_per_req": {name: round(sum(w["cpu_ms_per_req"].get(name, 0.0) * w["requests"] for w in windows)
                                       / requests, 3) if requests else None
                           for name in windows[0].get("cpu_ms_per_req", {})},
        "cards": [w["cards"] for w in windows],
    }


def load_phase(port: int | list[int], requests, *, clients: int, warmup: float, duration: float, sims: list[Simulator],
               cpu: CpuMeter | None, label: str, rate_guess: float) -> dict:
    requests.prepare(clients, int(rate_guess * (warmup + duration) / clients * 1.3) + 20, label)
    profile = None
    if PROFILE["dir"] and cpu is not None and label.startswith("platform"):
        Path(PROFILE["dir"]).mkdir(parents=True, exist_ok=True)
        profile = (cpu.pids["platform"], label, duration)
    marks, on_window = card_window(sims, cpu, profile=profile)
    result = threaded_load(host="127.0.0.1", port=port, clients=clients, warmup=warmup, duration=duration,
                           request=requests.request, check=requests.check, on_window=on_window)
    figures = window_figures(result, marks)
    figures["load"] = load_average()
    return figures


# --- phases ------------------------------------------------------------------------------------


def embedded_phase(args, report: dict, cleanup: contextlib.ExitStack) -> None:
    from tests.live import embedded_env

    tmp = Path(tempfile.mkdtemp(prefix="targets-embedded-"))
    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
    sim = simulator_start(cleanup, tmp, latency_ms=20, name="card")
    env = embedded_env(tmp, UKEY_URL=sim.url, UKEY_PIN=BENCH_PIN, UKEY_SIMULATOR_KEY_DIR=str(tmp / "sim-keys"),
                       LOG_LEVEL="WARNING")
    manage(env, "migrate", "-v0")
    access_id, secret = access_id_create(env)
    platform = platform_start(cleanup, env, tmp, name="platform")
    cert_no = platform.wait_card(timeout=30)["devices"][0]["cert_no"]
    bridge_proc, bridge_port = bridge_start(cleanup, sim, tmp)
    factory = RequestFactory("127.0.0.1", platform.port, access_id, secret)
    sign = SignRequests(factory, cert_no)
    bridge = BridgeRequests(bridge_port, cert_no)
    cpu = CpuMeter(platform.proc.pid, sim.proc.pid)
    bridge_cpu = CpuMeter(bridge_proc.pid, sim.proc.pid)
    out = report.setdefault("embedded", {"load_at_start": load_average()})
    w, d = args.warmup, args.duration

    three = interleaved({"platform": (platform.port, sign, cpu), "bridge": (bridge_port, bridge, bridge_cpu)},
                        tag="20ms", rounds=args.rounds, clients=16, warmup=w, duration=d, sims=[sim], rate_guess=60,
                        card=sim)
    out["card_limit_20ms"], out["platform_20ms_c16"], out["bridge_20ms_c16"] = (
        three["card"], three["platform"], three["bridge"])
    out["single"] = single_client(sim, "127.0.0.1", platform.port, sign, calls=args.single_calls)
    out["single"]["load"] = load_average()
    sim_latency_set(sim, 0)
    both = interleaved({"platform": (platform.port, sign, cpu), "bridge": (bridge_port, bridge, bridge_cpu)},
                       tag="0ms", rounds=args.rounds, clients=16, warmup=w, duration=d, sims=[sim], rate_guess=1000)
    out["platform_0ms_c16"], out["bridge_0ms_c16"] = both["platform"], both["bridge"]
    # Shown, not judged: the platform at the depth of `make run`'s own simulator, a second
    # request waiting at the card while it works (the bridge: one at a time under its lock).
    card_depth_set(env, platform, sim, SIMULATOR_DEPTH)
    both = interleaved({"platform": (platform.port, sign, cpu), "bridge": (bridge_port, bridge, bridge_cpu)},
                       tag="0ms-depth2", rounds=args.rounds, clients=16, warmup=w, duration=d, sims=[sim],
                       rate_guess=1000)
    out["platform_0ms_c16_depth2"], out["bridge_0ms_c16_depth2"] = both["platform"], both["bridge"]
    sim_latency_set(sim, 20)


def services_start(cleanup: contextlib.ExitStack, tmp: Path) -> tuple[str, str]:
    """PostgreSQL and Redis on free loopback ports, as the tests start them (tests/services.py);
    returns (DATABASE_URL, REDIS_URL) of a new, empty database."""
    import psycopg

    from tests import services

    tmp.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    for name in ("redis", "pg"):
        (tmp / name).mkdir()

    def stop() -> None:
        for proc in reversed(services._started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        for proc in reversed(services._started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        services._started.clear()

    cleanup.callback(stop)
    redis_url = services._start_redis(tmp / "redis")
    database_url = services._start_postgres(tmp / "pg")
    server = database_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE signplatform")
    return database_url, redis_url


def services_platform_env(tmp: Path, database_url: str, redis_url: str, **extra: str) -> dict:
    from tests.live import embedded_env

    env = embedded_env(tmp, LOG_LEVEL="WARNING", **extra)
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    return env


def services_phase(args, report: dict, cleanup: contextlib.ExitStack) -> None:
    """The platform on PostgreSQL + Redis (its gateway in its own process) against the bridge."""
    tmp = Path(tempfile.mkdtemp(prefix="targets-services-"))
    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
    database_url, redis_url = services_start(cleanup, tmp)
    sim = simulator_start(cleanup, tmp, latency_ms=0, name="card")
    env = services_platform_env(tmp, database_url, redis_url, UKEY_URL=sim.url, UKEY_PIN=BENCH_PIN)
    manage(env, "migrate", "-v0")
    access_id, secret = access_id_create(env)
    platform = platform_start(cleanup, env, tmp, name="platform-services")
    cert_no = platform.wait_card(timeout=60)["devices"][0]["cert_no"]
    bridge_proc, bridge_port = bridge_start(cleanup, sim, tmp)
    sign = SignRequests(RequestFactory("127.0.0.1", platform.port, access_id, secret), cert_no)
    bridge = BridgeRequests(bridge_port, cert_no)
    out = report.setdefault("services", {"load_at_start": load_average()})
    both = interleaved({"platform": (platform.port, sign, CpuMeter(platform.proc.pid, sim.proc.pid)),
                        "bridge": (bridge_port, bridge, CpuMeter(bridge_proc.pid, sim.proc.pid))},
                       tag="services-0ms", rounds=args.rounds, clients=16, warmup=args.warmup, duration=args.duration,
                       sims=[sim], rate_guess=1000)
    out["platform_0ms_c16"], out["bridge_0ms_c16"] = both["platform"], both["bridge"]


class PoolRequests(SignRequests):
    """Signed sign requests naming a card or a pool; an answer is checked against the
    certificate of the card it names."""

    def __init__(self, factories: list[RequestFactory], certs: dict[str, str], target: str) -> None:
        super().__init__(factories[0], "")
        self.factories, self.certs, self.target = factories, certs, target

    def prepare(self, clients: int, per_client: int, label: str) -> None:
        self.ready = [[self._one(c, f"{label} {c} {n}") for n in range(per_client)] for c in range(clients)]

    def _one(self, client: int, text: str) -> bytes:
        factory = self.factories[client % len(self.factories)]  # the port this client talks to
        return factory.raw("POST", "/api/v1/sign", json.dumps({"data": text, "device": self.target}).encode())

    def request(self, client: int, n: int) -> bytes:
        batch = self.ready[client]
        return batch[n - 1] if n <= len(batch) else self._one(client, f"late {client} {n}")

    def check(self, status: int, body: bytes) -> str:
        try:
            answer = json.loads(body)
        except ValueError:
            return f"HTTP {status}, not JSON: {body[:80]!r}"
        if status != 200 or not answer.get("signature"):
            return f"HTTP {status}: {body[:120]!r}"
        if self.certs.get(answer.get("device")) != answer.get("cert_no"):
            return f"card {answer.get('device')} answered with certNo {answer.get('cert_no')}"
        return ""


def scaleout_phase(args, report: dict, cleanup: contextlib.ExitStack) -> None:
    """Two web processes and the gateway process on PostgreSQL + Redis, a pool of four 20 ms
    cards: the pool's requests/s over one card's."""
    from tests.live import get_json, poll

    tmp = Path(tempfile.mkdtemp(prefix="targets-scaleout-"))
    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
    database_url, redis_url = services_start(cleanup, tmp)
    cards = [f"card-{i}" for i in range(1, 5)]
    sims = [simulator_start(cleanup, tmp, latency_ms=20, name=card) for card in cards]
    env = services_platform_env(tmp, database_url, redis_url, UKEY_URL=sims[0].url, UKEY_PIN=BENCH_PIN,
                                UKEY_DEFAULT_DEVICE=cards[0], BENCH_PIN=BENCH_PIN)
    manage(env, "migrate", "-v0")
    manage(env, "shell", "-c", "from signing.services import card_device_sync_default; card_device_sync_default()")
    for card, sim in list(zip(cards, sims, strict=True))[1:]:
        manage(env, "carddevice", "create", "--slug", card, "--url", sim.url, "--pin-env", "BENCH_PIN")
    manage(env, "cardpool", "create", "--slug", "pool4", "--devices", ",".join(cards))
    access_id, secret = access_id_create(env)
    web1 = platform_start(cleanup, env, tmp, name="web-1")  # and the `ukey_gateway --all` process
    web2 = platform_start(cleanup, env, tmp, name="web-2", args=("--web-only",))

    def all_up():
        status, _, health = get_json(web2.base + "/api/v1/health")
        found = {d["slug"]: d["cert_no"] for d in health["devices"] if d["connected"] and d["cert_no"]}
        return found if status == 200 and set(cards) <= set(found) else None

    certs = poll(all_up, 60, "four cards connected")
    factories = [RequestFactory("127.0.0.1", web.port, access_id, secret) for web in (web1, web2)]
    ports = [web1.port, web2.port]
    cpu = CpuMeter(web1.proc.pid, web2.proc.pid)
    out = report.setdefault("scaleout", {"load_at_start": load_average()})
    out["one_card"] = load_phase(ports, PoolRequests(factories, certs, cards[0]), clients=16, warmup=args.warmup,
                                 duration=args.duration / 2, sims=sims[:1], cpu=cpu, label="one", rate_guess=60)
    out["pool"] = load_phase(ports, PoolRequests(factories, certs, "pool4"), clients=32, warmup=args.warmup,
                             duration=args.duration / 2, sims=sims, cpu=cpu, label="pool", rate_guess=240)


def xml_phase(args, report: dict, cleanup: contextlib.ExitStack) -> None:
    """bench/xml_bench.py with an RSA card and with an SM2 card (each its own platform)."""
    out = report.setdefault("xml", {"load_at_start": load_average()})
    for algorithm in ("rsa", "sm2"):
        argv = [sys.executable, str(ROOT / "bench" / "xml_bench.py"), "--algorithm", algorithm, "--json",
                "--duration", str(max(2.0, args.duration / 3)), "--zero-concurrency", "4",
                "--zero-duration", str(max(3.0, args.duration / 2)), "--single-calls", str(args.single_calls // 2),
                "--probe-hz", "0"]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        try:
            figures = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"xml_bench ({algorithm}) gave no figures:\n{done.stdout[-2000:]}{done.stderr[-2000:]}") from None
        if figures.get("problems"):
            report["problems"].extend(f"xml_bench ({algorithm}): {p}" for p in figures["problems"])
        zero = figures["zero"][0]
        memory = figures["platform_memory_mb"]
        out[algorithm] = {
            "single": {name: figures["single"][name] for name in ("sign", "xml", "xml-big")},
            "zero_c4_cpu_ms_per_req": {name: zero[name]["platform_cpu_ms_per_req"] for name in ("sign", "xml", "xml-big")},
            # without the platform's own idle CPU (its share grows as fewer requests are served)
            "zero_c4_net_cpu_ms_per_req": {name: zero[name]["platform_net_cpu_ms_per_req"]
                                           for name in ("sign", "xml", "xml-big")},
            "idle_platform_cores": figures.get("idle_platform_cores"),
            "zero_c4_req_per_s": {name: zero[name]["req_per_s"] for name in ("sign", "xml", "xml-big")},
            "memory_mb": memory, "documents": figures["documents"], "load": load_average(),
        }


# --- judging and the report ----------------------------------------------------------------------


def judge(report: dict) -> list[tuple[str, float | None, str]]:
    """(target, figure, comparison text) for every target measured."""
    e = report.get("embedded", {})
    rows = []
    if "platform_0ms_c16" in e:
        p, b = e["platform_0ms_c16"], e["bridge_0ms_c16"]
        rows.append(("zero_vs_bridge", round(p["req_per_s"] / b["req_per_s"], 3) if b["req_per_s"] else None,
                     f"{p['req_per_s']:.1f} vs {b['req_per_s']:.1f} req/s"))
        rows.append(("cpu_per_request", p.get("server_cpu_ms_per_req"),
                     f"sign-server {b.get('server_cpu_ms_per_req')} ms per /getCode"))
        if "platform_0ms_c16_depth2" in e:
            p2, b2 = e["platform_0ms_c16_depth2"], e["bridge_0ms_c16_depth2"]
            rows.append(("zero_vs_bridge_depth2", round(p2["req_per_s"] / b2["req_per_s"], 3) if b2["req_per_s"] else None,
                         f"{p2['req_per_s']:.1f} vs {b2['req_per_s']:.1f} req/s; platform CPU "
                         f"{p2['server_cpu_ms_per_req']} ms per request; the card idle per op (ms) "
                         f"{[c[0]['idle_ms_per_op'] for c in p2['cards']]}"))
    if "single" in e:
        s = e["single"]
        rows.append(("added_p50", s["added_p50_ms"], f"HTTP {s['http_p50_ms']} vs direct {s['direct_p50_ms']} ms"))
        rows.append(("added_p99", s["added_p99_ms"], f"HTTP {s['http_p99_ms']} vs direct {s['direct_p99_ms']} ms"))
    if "platform_20ms_c16" in e:
        p, lim, b = e["platform_20ms_c16"], e["card_limit_20ms"], e["bridge_20ms_c16"]
        rows.append(("depth1_utilisation", round(p["req_per_s"] / lim["req_per_s"], 4),
                     f"{p['req_per_s']:.2f} / {lim['req_per_s']:.2f} req/s (windows in turn); card idle per op (ms) "
                     f"{[c[0]['idle_ms_per_op'] for c in p['cards']]}; sign-server {b['req_per_s'] / lim['req_per_s']:.4f}"))
    s = report.get("services", {})
    if "platform_0ms_c16" in s:
        p, b = s["platform_0ms_c16"], s["bridge_0ms_c16"]
        rows.append(("services_vs_bridge", round(p["req_per_s"] / b["req_per_s"], 3) if b["req_per_s"] else None,
                     f"{p['req_per_s']:.1f} vs {b['req_per_s']:.1f} req/s; server CPU {p['server_cpu_ms_per_req']} "
                     f"ms per request (web + gateway processes)"))
    o = report.get("scaleout", {})
    if "pool" in o:
        one, pool = o["one_card"], o["pool"]
        ratio = round(pool["req_per_s"] / one["req_per_s"], 3) if one["req_per_s"] and not pool["errors"] else None
        rows.append(("pool_scaleout", ratio,
                     f"{pool['req_per_s']:.1f} vs {one['req_per_s']:.1f} req/s, {pool['errors'] + one['errors']} errors; "
                     f"cards busy {[c['busy_fraction'] for c in pool['cards']]}"))
    x = report.get("xml", {})
    if "rsa" in x:
        r = x["rsa"]
        rows.append(("xml_added_p50", r["single"]["xml"]["added_p50_ms"],
                     f"/sign/xml p50 {r['single']['xml']['p50_ms']} vs /sign {r['single']['sign']['p50_ms']} ms; "
                     f"p99 added {r['single']['xml']['added_p99_ms']} ms; 1 MiB: added p50 "
                     f"{r['single']['xml-big']['added_p50_ms']} ms"))
    if "sm2" in x and "rsa" in x:
        rsa, sm2 = x["rsa"]["zero_c4_net_cpu_ms_per_req"]["xml"], x["sm2"]["zero_c4_net_cpu_ms_per_req"]["xml"]
        big = x["rsa"]["memory_mb"]
        rows.append(("xml_sm2_cost", round(sm2 / rsa, 3) if rsa else None,
                     f"server CPU per /sign/xml (0 ms card, 4 clients, idle CPU taken off): SM2 {sm2} ms, RSA {rsa} "
                     f"ms; 1 MiB documents "
                     f"at 4 clients: peak RSS {big['peak_rss']} MB from {big['rss_at_start']} MB at start"))
    return rows


def machine_budget(report: dict) -> str | None:
    """What the machine leaves a server at the 0 ms comparison: the load generator and the
    card stand-in are needed by any server; on this machine's cores, how fast could a server
    that cost nothing be, and how little CPU per request would the platform need for 2x."""
    e = report.get("embedded", {})
    if "platform_0ms_c16" not in e:
        return None
    p, b = e["platform_0ms_c16"], e["bridge_0ms_c16"]
    used = p.get("cpu_ms_per_req") or {}
    if not (b["req_per_s"] and p["req_per_s"] and all(used.get(name) for name in ("loadgen", "simulator", "platform"))):
        return None  # a side served nothing, or was not measured
    shared = used["loadgen"] + used["simulator"]
    cores = os.cpu_count() or 1
    free_server = 1000 * cores / shared
    goal = TARGETS["zero_vs_bridge"][2]
    wanted = goal * b["req_per_s"]
    allowed = 1000 * cores / wanted - shared
    one_core = 1000 / wanted  # one process runs its Python on one core at a time (the GIL)
    user = used["platform"] - used.get("platform_kernel", 0.0)  # the kernel's part can overlap
    return (f"machine budget at 0 ms: the load generator {used['loadgen']:.3f} + the card stand-in "
            f"{used['simulator']:.3f} ms CPU per request; on {cores} cores a server that cost nothing would serve at "
            f"most {free_server:.0f} req/s = {free_server / b['req_per_s']:.2f}x the sign-server; {goal}x "
            f"({wanted:.0f} req/s) leaves the platform {allowed:.3f} ms CPU per request on the machine, and one "
            f"core's {one_core:.3f} ms for the Python of its one process (it used {used['platform']:.3f} ms, of "
            f"which {user:.3f} outside the kernel, on {p['req_per_s'] * used['platform'] / 1000:.2f} cores; the "
            f"sign-server {(b.get('cpu_ms_per_req') or {}).get('platform', 0):.3f})")


def passed(name: str, figure: float | None) -> bool:
    _, comparison, bound = TARGETS[name]
    if comparison is None:  # shown for comparison, judged by nobody
        return True
    if figure is None:
        return False
    return figure >= bound if comparison == ">=" else figure <= bound


def print_report(report: dict) -> None:
    print(f"Issue 16 targets — {report['command']}")
    print(f"  machine: {os.cpu_count()} CPUs; load average at start {report['load_at_start']}, "
          f"at end {report.get('load_at_end', '?')}")
    for name, figure, comparison in judge(report):
        text, op, bound = TARGETS[name]
        if op is None:
            print(f"  [INFO] {text}: {figure} — {comparison}")
            continue
        verdict = "PASS" if passed(name, figure) else "FAIL"
        print(f"  [{verdict}] {text}: {figure} (target {op} {bound}) — {comparison}")
    if budget := machine_budget(report):
        print(f"  {budget}")
    for phase, figures in report.items():
        if isinstance(figures, dict) and phase in ("embedded", "services", "scaleout", "xml"):
            for key, value in figures.items():
                print(f"    {phase}.{key}: {json.dumps(value, ensure_ascii=False)}")
    for problem in report.get("problems", []):
        print(f"  FAIL: {problem}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=9.0, help="measured seconds per side of a comparison")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per side when two sides are compared")
    parser.add_argument("--single-calls", type=int, default=300, help="one client: calls each way")
    parser.add_argument("--only", default="embedded,services,scaleout,xml",
                        help="phases to run (comma-separated; default all: embedded,services,scaleout,xml)")
    parser.add_argument("--py-spy", metavar="DIR", help="record the platform (and its child processes) with py-spy "
                        "during its windows, GIL-holding samples (raw collapsed stacks, one file per window)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/targets.py", *(sys.argv[1:] if argv is None else argv)])
    report: dict = {"command": command, "load_at_start": load_average(), "problems": []}
    PROFILE["dir"] = args.py_spy
    phases = {"embedded": embedded_phase, "services": services_phase, "scaleout": scaleout_phase, "xml": xml_phase}
    try:
        with contextlib.ExitStack() as cleanup:
            for name in args.only.split(","):
                phases[name.strip()](args, report, cleanup)
    except BenchError as exc:
        report["problems"].append(str(exc))
    report["load_at_end"] = load_average()
    if args.json:
        print(json.dumps(report, ensure_ascii=False, default=str))
    else:
        print_report(report)
    ok = not report["problems"] and all(passed(name, figure) for name, figure, _ in judge(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
