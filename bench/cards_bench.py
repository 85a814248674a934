"""HTTP benchmark of card pools and of the card agent, against a running platform.

"A pool of 3 simulated cards at 20 ms: throughput >= 2.85x one card" and "the agent path:
added p50/p99 latency of the agent hop over a direct card, and utilisation of a 20 ms card
through the agent at 16 clients (goal >= 0.97)".

Run from the project root (after `make install-test`):

    .venv/bin/python bench/cards_bench.py [--latency-ms 20] [--concurrency 16] [--duration 8]
        [--single-calls 200] [--json]

In one run it starts five `manage.py ukey_simulator` processes (20 ms each): a card the
platform dials (the default card), a card behind `python -m signagent`, and three cards of a
pool; migrates a throw-away SQLite database, creates the devices, the pool, an agent token and
an access ID with the management commands; starts `manage.py runplatform` (embedded
defaults) and the agent; then drives `POST /api/v1/sign` over keep-alive HTTP/1.1:

  1. 16 clients naming one pool card, then 16 naming the pool: the ratio of requests/s;
  2. 16 clients naming the agent card: its utilisation (the simulator's busy time / time);
     the same for the direct card, for comparison;
  3. one client, alternating the agent card and the direct card: added p50/p99 of the hop.

Every answer is checked (HTTP 200, a signature, the certNo of the card the answer names).
Exit status 0 when the figures meet the goals, 1 when one does not, 2 on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api_bench import RATE_LIMIT_LIFT, HttpConnection, RequestFactory, manage
from bench.gateway_bench import BenchError, Simulator, card_stats, ms, percentile
from core.ports import port_free, port_wait_listening

PIN = "24681357"
POOL_TARGET = 2.85
UTILISATION_TARGET = 0.97
SETUP = """
from signing.models import CardDevice
CardDevice.objects.update(pipeline_depth=2)
"""


class Load:
    """Signed sign requests naming one card or pool, sent by keep-alive clients."""

    def __init__(self, factory: RequestFactory, certs: dict[str, str]) -> None:
        self.factory, self.certs = factory, certs

    def request(self, target: str, n: int) -> bytes:
        body = json.dumps({"data": f"cards bench {target} {n}", "device": target}).encode()
        return self.factory.raw("POST", "/api/v1/sign", body)

    def check(self, status: int, body: bytes) -> str:
        answer = json.loads(body)
        if status != 200 or not answer.get("signature"):
            raise BenchError(f"HTTP {status}: {body[:200]!r}")
        if self.certs.get(answer["device"]) != answer["cert_no"]:
            raise BenchError(f"card {answer['device']} answered with certNo {answer['cert_no']}")
        return answer["device"]

    async def clients(self, target: str, concurrency: int, warmup: float, duration: float,
                      watch: list[str]) -> dict:
        """`concurrency` clients back to back; the busy time of the `watch` simulators."""
        state = {"count": False, "stop": False, "n": 0}
        done: list[float] = []
        used: dict[str, int] = {}

        async def client() -> None:
            conn = await HttpConnection(self.factory.host, self.factory.port).open()
            try:
                while not state["stop"]:
                    state["n"] += 1
                    started = time.perf_counter()
                    status, body = await conn.exchange(self.request(target, state["n"]))
                    device = self.check(status, body)
                    if state["count"]:
                        done.append(time.perf_counter() - started)
                        used[device] = used.get(device, 0) + 1
            finally:
                conn.close()

        tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
        try:
            await asyncio.sleep(warmup)
            before = [await card_stats(url) for url in watch]
            state["count"], start = True, time.perf_counter()
            await asyncio.sleep(duration)
            state["count"], wall = False, time.perf_counter() - start
            after = [await card_stats(url) for url in watch]
            state["stop"] = True
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        busy = [round((b["busy_seconds"] - a["busy_seconds"]) / wall, 4) for a, b in zip(before, after, strict=True)]
        return {"target": target, "concurrency": concurrency, "requests": len(done),
                "req_per_s": round(len(done) / wall, 2), "p50_ms": ms(percentile(done, 50)),
                "p99_ms": ms(percentile(done, 99)), "cards_used": used, "card_busy": busy}

    async def alternate(self, targets: tuple[str, str], calls: int) -> dict:
        """One client, calls alternating between two targets (same machine, same moment)."""
        conn = await HttpConnection(self.factory.host, self.factory.port).open()
        latencies: dict[str, list[float]] = {t: [] for t in targets}
        try:
            for i in range(calls * 2 + 6):
                target = targets[i % 2]
                started = time.perf_counter()
                status, body = await conn.exchange(self.request(target, i))
                elapsed = time.perf_counter() - started
                self.check(status, body)
                if i >= 6:  # a few untimed calls first
                    latencies[target].append(elapsed)
        finally:
            conn.close()
        return {t: {"p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99))} for t, v in latencies.items()}


def wait_health(base: str, want: set[str], timeout: float = 60) -> dict:
    import urllib.request

    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/api/v1/health", timeout=5) as response:
                body = json.loads(response.read())
        except OSError:
            body = {}
        up = {d["slug"]: d["cert_no"] for d in body.get("devices", []) if d["connected"] and d["cert_no"]}
        if want <= set(up):
            return up
        time.sleep(0.3)
    raise BenchError(f"cards not connected within {timeout:.0f}s: want {sorted(want)}, health {body}")


async def measure(args, load: Load, sims: dict[str, Simulator], report: dict) -> None:
    c, w, d = args.concurrency, args.warmup, args.duration
    report["one_card"] = one = await load.clients("pool-0", c, w, d, [sims["pool-0"].url])
    report["pool"] = pool = await load.clients("pool", c, w, d, [sims[f"pool-{i}"].url for i in range(3)])
    report["pool_ratio"] = round(pool["req_per_s"] / one["req_per_s"], 3)
    report["agent"] = await load.clients("agent-card", c, w, d, [sims["agent-card"].url])
    report["direct"] = await load.clients("direct", c, w, d, [sims["direct"].url])
    single = await load.alternate(("agent-card", "direct"), args.single_calls)
    report["single"] = {
        **single,
        "added_p50_ms": round(single["agent-card"]["p50_ms"] - single["direct"]["p50_ms"], 3),
        "added_p99_ms": round(single["agent-card"]["p99_ms"] - single["direct"]["p99_ms"], 3),
    }


async def in_process(args, report: dict) -> None:
    """The pool without HTTP: this process runs the three pool cards' gateways and calls
    `card_target_run` + `data_sign` (the path a request takes after the HTTP layer), 16 callers
    on one card, then on the pool."""
    from signing.gateway_host import GatewayHost
    from signing.pools import CardTarget, pool_load

    slugs = ["pool-0", "pool-1", "pool-2"]
    host = GatewayHost(slugs)
    await host.start()
    try:
        from signing.cards import device_status_get

        deadline = time.monotonic() + 20
        while not all((st := device_status_get(s)) and st.connected and st.cert_no for s in slugs):
            if time.monotonic() > deadline:
                raise BenchError("the pool cards did not connect to the in-process gateways")
            await asyncio.sleep(0.1)
        pool = await asyncio.to_thread(pool_load, "pool")
        figures = {"one_card": await _drive(args, CardTarget(device="pool-0")),
                   "pool": await _drive(args, CardTarget(pool=pool))}
        report["in_process"] = {**{f"{k}_ops_per_s": v for k, v in figures.items()},
                                "ratio": round(figures["pool"] / figures["one_card"], 3)}
    finally:
        await host.stop(grace=5)


async def _drive(args, target) -> float:
    """Operations per second of `args.concurrency` callers signing through `target`."""
    from signing.pools import card_target_run
    from signing.services import data_sign

    state = {"count": False, "stop": False, "n": 0, "done": 0}

    async def caller() -> None:
        while not state["stop"]:
            state["n"] += 1
            data = f"in-process {state['n']}"
            await card_target_run(target, lambda card, text=data: data_sign(data=text, no_hash=False, device=card))
            if state["count"]:
                state["done"] += 1

    tasks = [asyncio.create_task(caller()) for _ in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    state["count"], start = True, time.perf_counter()
    await asyncio.sleep(args.duration)
    state["count"], wall = False, time.perf_counter() - start
    state["stop"] = True
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return round(state["done"] / wall, 2)


def in_process_run(args, env: dict, report: dict) -> None:
    os.environ.update({k: env[k] for k in ("SIGNPLATFORM_VAR_DIR",)})
    os.environ["DJANGO_SETTINGS_MODULE"] = "signplatform.settings"
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    asyncio.run(in_process(args, report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--single-calls", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cards-bench-"))
    from tests.live import embedded_env

    sims = {name: Simulator(port=port_free(), latency_ms=args.latency_ms, pin=PIN, key_dir=str(tmp / name),
                            algorithm="sm2" if name == "pool-1" else "rsa", env=os.environ.copy())
            for name in ("direct", "agent-card", "pool-0", "pool-1", "pool-2")}
    port = port_free()
    env = embedded_env(tmp / "var", UKEY_URL=sims["direct"].url, UKEY_PIN=PIN, UKEY_DEFAULT_DEVICE="direct",
                       UKEY_PIPELINE_DEPTH="2", BENCH_PIN=PIN, PORT=str(port), HOST="127.0.0.1",
                       LOG_LEVEL="WARNING")
    procs: list[subprocess.Popen] = []
    report: dict = {"latency_ms": args.latency_ms, "problems": []}
    code = 0
    try:
        for sim in sims.values():
            sim.start()
        manage(env, "migrate", "-v0")
        for i in range(3):
            manage(env, "carddevice", "create", "--slug", f"pool-{i}", "--url", sims[f"pool-{i}"].url,
                   "--pin-env", "BENCH_PIN")
        token = json.loads(manage(env, "carddevice", "create", "--slug", "agent-card", "--agent", "--json"))
        manage(env, "cardpool", "create", "--slug", "pool", "--devices", "pool-0,pool-1,pool-2")
        created = json.loads(manage(env, "accessid", "create", "--name", "cards bench", "--json"))
        manage(env, "shell", "-c", RATE_LIMIT_LIFT.format(key=created["access_id"], limit=10**7) + SETUP)
        log = open(tmp / "platform.log", "w")
        procs.append(subprocess.Popen([sys.executable, "manage.py", "runplatform"], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
        port_wait_listening(port, procs[0], "runplatform", 60)
        agent_env = dict(os.environ, AGENT_TOKEN=token["agent_token"], AGENT_PIN=PIN)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "signagent", "--platform", f"ws://127.0.0.1:{port}", "--token-env", "AGENT_TOKEN",
             "--eport", sims["agent-card"].url, "--pin-env", "AGENT_PIN", "--log-level", "WARNING"],
            cwd=ROOT, env=agent_env, stdout=log, stderr=subprocess.STDOUT))
        certs = wait_health(f"http://127.0.0.1:{port}", set(sims))
        load = Load(RequestFactory("127.0.0.1", port, created["access_id"], created["secret"]), certs)
        asyncio.run(measure(args, load, sims, report))
        for proc in reversed(procs):  # the pool cards are the in-process gateways' now
            proc.terminate()
            proc.wait(timeout=30)
        in_process_run(args, env, report)
        if report["pool_ratio"] < POOL_TARGET:
            report["problems"].append(f"pool of 3 over HTTP: {report['pool_ratio']}x one card, goal >= {POOL_TARGET} "
                                      "(the HTTP path's CPU per request caps it: issue 16)")
        if report["in_process"]["ratio"] < POOL_TARGET:
            report["problems"].append(f"pool of 3 without HTTP: {report['in_process']['ratio']}x one card, "
                                      f"goal >= {POOL_TARGET}")
        if report["agent"]["card_busy"][0] < UTILISATION_TARGET:
            report["problems"].append(f"agent card utilisation {report['agent']['card_busy'][0]}, "
                                      f"goal >= {UTILISATION_TARGET}")
        code = 1 if report["problems"] else 0
    except BenchError as exc:
        report["problems"].append(f"error: {exc}")
        code = 2
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for sim in sims.values():
            sim.stop()
        if code != 2:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            report["kept"] = str(tmp)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print_report(report)
    return code


def print_report(r: dict) -> None:
    print(f"Card pools and the card agent — simulators at {r['latency_ms']:g} ms, POST /api/v1/sign over HTTP")
    for key, label in (("one_card", "one pool card"), ("pool", "the pool of 3"), ("agent", "the agent card"),
                       ("direct", "the direct card")):
        f = r.get(key)
        if f:
            print(f"  {label:16} {f['concurrency']} clients: {f['req_per_s']:7.2f} req/s, p50 {f['p50_ms']:.1f} ms, "
                  f"p99 {f['p99_ms']:.1f} ms, card busy {', '.join(f'{b:.3f}' for b in f['card_busy'])}"
                  + (f", cards used {f['cards_used']}" if key == "pool" else ""))
    if "pool_ratio" in r:
        print(f"  pool throughput / one card, over HTTP: {r['pool_ratio']:.3f}x (goal >= {POOL_TARGET})")
    p = r.get("in_process")
    if p:
        print(f"  without HTTP (card_target_run + data_sign, 16 callers): one card {p['one_card_ops_per_s']:.2f} ops/s, "
              f"pool {p['pool_ops_per_s']:.2f} ops/s: {p['ratio']:.3f}x")
    s = r.get("single")
    if s:
        print(f"  one client, alternating: agent p50 {s['agent-card']['p50_ms']:.2f} / p99 {s['agent-card']['p99_ms']:.2f} ms, "
              f"direct p50 {s['direct']['p50_ms']:.2f} / p99 {s['direct']['p99_ms']:.2f} ms; "
              f"the agent hop adds p50 {s['added_p50_ms']:+.2f} ms, p99 {s['added_p99_ms']:+.2f} ms")
    for problem in r["problems"]:
        print(f"  FAIL: {problem}")
    print(f"  result: {'PASS' if not r['problems'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
