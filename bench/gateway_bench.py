"""Load generator for the UKey gateway benchmark.

"Simulator at 20 ms per operation, 16 concurrent callers through the gateway: card
utilisation (operations per second x 20 ms) >= 0.97; one caller: added latency over a
direct WebSocket call of the simulator, p50 and p99."

Run from the project root:

    .venv/bin/python bench/gateway_bench.py [--latency-ms 20] [--concurrency 16]
        [--duration 10] [--single-calls 300] [--algorithm rsa] [--json]

It starts `manage.py ukey_simulator` as a separate process on a free loopback port, migrates
a throw-away SQLite database in a temporary SIGNPLATFORM_VAR_DIR (unless DATABASE_URL /
REDIS_URL are set, which are used as given), creates a CardDevice, runs the gateway
in-process (GatewayHost) and drives it with `ukey_call`. Signatures are verified against the
card's certificate. Exit status: 0 when the figures meet the target, 1 when utilisation is
below 0.97 (20 ms card, >= 2 callers), 2 on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.ports import port_free, port_wait_listening

UTILISATION_TARGET = 0.97
SIGN_METHOD = "cus-sec_SpcSignDataAsPEM"
BENCH_PIN = "13572468"
VERIFY_EVERY = 50  # verify the first signature and one in VERIFY_EVERY of the rest


class BenchError(Exception):
    pass


# --- small helpers -----------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    try:
        port_wait_listening(port, proc, "ukey_simulator", timeout)
    except RuntimeError as exc:
        out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
        raise BenchError(f"{exc}\n{out}") from None


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


# --- the simulator process -----------------------------------------------------------------


class Simulator:
    def __init__(self, *, port: int, latency_ms: float, pin: str, key_dir: str, algorithm: str, env: dict) -> None:
        self.port = port
        self.argv = [
            sys.executable, str(ROOT / "manage.py"), "ukey_simulator",
            "--host", "127.0.0.1", "--port", str(port), "--latency-ms", str(latency_ms),
            "--pin", pin, "--key-dir", key_dir, "--algorithm", algorithm,
        ]
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.output = ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wait_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        else:
            out, _ = self.proc.communicate()
        self.output = out or ""


async def card_stats(url: str) -> dict:
    """The simulator's own counters (`sim_stats`): how long the card spent executing."""
    from websockets.asyncio.client import connect

    from ukey import protocol

    async with connect(url) as ws:
        await ws.recv()  # handshake
        await ws.send(protocol.build_request("sim_stats", 1, {}))
        return protocol.parse_frame(await ws.recv()).result.data[0]


# --- the benchmark ---------------------------------------------------------------------------


async def wait_connected(slug: str, timeout: float = 20.0):
    from signing.cards import device_status_get

    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        current = device_status_get(slug)
        if current is not None and current.connected and current.cert_no:
            return current
        await asyncio.sleep(0.05)
    raise BenchError(f"the gateway did not report card {slug} connected with a certNo within {timeout:.0f}s "
                     f"(last status: {current})")


class Signatures:
    """Samples of (data, signature) to verify against the card certificate."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, str, str]] = []  # (phase, data, signature)
        self.seen = 0
        self._phases: set[str] = set()

    def offer(self, phase: str, data: str, result) -> None:
        """Keep the first signature of each phase and one in VERIFY_EVERY overall."""
        if not result.ok or not result.data:
            raise BenchError(f"{phase}: card answered without a signature: {result.errors}")
        if phase not in self._phases or self.seen % VERIFY_EVERY == 0:
            self._phases.add(phase)
            self.samples.append((phase, data, str(result.data[0])))
        self.seen += 1


async def throughput_phase(args, slug: str, signatures: Signatures, cert_no: str) -> dict:
    from signing.cards import ukey_call
    from ukey.client import UKeyError

    counter = iter(range(10**12))
    state = {"counting": False, "stop": False}
    completions: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []

    async def caller() -> None:
        while not state["stop"]:
            data = f"bench {next(counter)}"
            started = time.perf_counter()
            try:
                response = await ukey_call(SIGN_METHOD, {"inData": data}, device=slug)
            except UKeyError as exc:
                errors.append(f"{exc.__class__.__name__} {exc.code}: {exc.message}")
                if len(errors) > 50:
                    return
                continue
            done = time.perf_counter()
            if state["counting"]:
                completions.append(done)
                latencies.append(done - started)
                signatures.offer("throughput", data, response.result)
                if len(response.result.data) > 1 and str(response.result.data[1]) != cert_no:
                    errors.append(f"certNo {response.result.data[1]} != {cert_no}")

    tasks = [asyncio.create_task(caller(), name=f"bench-caller-{i}") for i in range(args.concurrency)]
    try:
        await asyncio.sleep(args.warmup)
        window_start = time.perf_counter()
        state["counting"] = True
        await asyncio.sleep(args.duration)
        state["counting"] = False
        window_end = time.perf_counter()
        state["stop"] = True
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    elapsed = window_end - window_start
    ops = sum(1 for t in completions if window_start <= t <= window_end)
    ops_per_second = ops / elapsed
    return {
        "concurrency": args.concurrency,
        "window_s": round(elapsed, 3),
        "operations": ops,
        "ops_per_second": round(ops_per_second, 3),
        "utilisation": round(ops_per_second * args.latency_ms / 1000.0, 4),
        "ceiling_ops_per_second": round(1000.0 / args.latency_ms, 3) if args.latency_ms > 0 else None,
        "caller_latency_p50_ms": ms(percentile(latencies, 50)),
        "caller_latency_p99_ms": ms(percentile(latencies, 99)),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


async def single_phase(args, slug: str, sim_url: str, pin: str, signatures: Signatures) -> dict:
    """One caller, interleaving a gateway call and a direct call so both see the same machine."""
    from django.conf import settings
    from websockets.asyncio.client import connect

    from signing.cards import ukey_call
    from ukey import protocol

    gateway_lat: list[float] = []
    direct_lat: list[float] = []
    # The same connection options as the gateway's CardConnection.open, for a fair comparison.
    ws = await connect(sim_url, open_timeout=5, max_size=settings.UKEY_MAX_FRAME_BYTES,
                       ping_interval=None, close_timeout=2, compression=None)
    try:
        first = protocol.parse_frame(await asyncio.wait_for(ws.recv(), timeout=5))
        if first.kind != "handshake":
            raise BenchError(f"direct: the simulator's first frame was {first.kind}, not the handshake")
        next_id = 0

        async def direct(data: str):
            nonlocal next_id
            next_id += 1
            await ws.send(protocol.build_request(SIGN_METHOD, next_id, {"inData": data, "passwd": pin}))
            while True:
                frame = protocol.parse_frame(await asyncio.wait_for(ws.recv(), timeout=10))
                if frame.kind == "response" and frame.id == next_id:
                    return frame.result

        async def via_gateway(data: str):
            return (await ukey_call(SIGN_METHOD, {"inData": data}, device=slug)).result

        # A few untimed calls each way first.
        for i in range(3):
            await via_gateway(f"warm g {i}")
            await direct(f"warm d {i}")

        for i in range(args.single_calls):
            order = (("gateway", via_gateway), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("gateway", via_gateway))
            for name, fn in order:
                data = f"bench single {name} {i}"
                started = time.perf_counter()
                result = await fn(data)
                elapsed = time.perf_counter() - started
                if not result.ok:
                    raise BenchError(f"single caller ({name}) call {i}: card error {result.errors}")
                signatures.offer(f"single-{name}", data, result)
                (gateway_lat if name == "gateway" else direct_lat).append(elapsed)
    finally:
        await ws.close()

    g50, g99 = percentile(gateway_lat, 50), percentile(gateway_lat, 99)
    d50, d99 = percentile(direct_lat, 50), percentile(direct_lat, 99)
    return {
        "calls": args.single_calls,
        "gateway_p50_ms": ms(g50),
        "gateway_p99_ms": ms(g99),
        "gateway_mean_ms": ms(sum(gateway_lat) / len(gateway_lat)),
        "direct_p50_ms": ms(d50),
        "direct_p99_ms": ms(d99),
        "direct_mean_ms": ms(sum(direct_lat) / len(direct_lat)),
        "added_p50_ms": ms(g50 - d50),
        "added_p99_ms": ms(g99 - d99),
        "ratio_p50": round(g50 / d50, 4) if d50 > 0 else None,
    }


async def run_async(args, slug: str, sim: Simulator, report: dict) -> None:
    from core import certs
    from signing.cards import ukey_call
    from signing.gateway_host import GatewayHost

    host = GatewayHost([slug])
    await host.start()
    try:
        current = await wait_connected(slug)
        cert_text = (await ukey_call("cus-sec_SpcGetSignCertAsPEM", device=slug)).result.data[0]
        cert = certs.certificate_load(str(cert_text))
        report["card"] = {"cert_no": current.cert_no, "algorithm": cert.algorithm, "subject": cert.subject}

        signatures = Signatures()
        before = await card_stats(sim.url)
        started = time.perf_counter()
        report["throughput"] = t = await throughput_phase(args, slug, signatures, current.cert_no)
        after = await card_stats(sim.url)
        # The card's own view over the whole phase (warm-up included): busy time / wall time.
        t["card_busy_fraction"] = round((after["busy_seconds"] - before["busy_seconds"]) /
                                        (time.perf_counter() - started), 4)
        if t["errors"]:
            raise BenchError(f"{t['errors']} errors in the throughput phase, e.g. {t['error_samples'][:3]}")
        report["single"] = await single_phase(args, slug, sim.url, BENCH_PIN, signatures)

        bad = [(phase, data) for phase, data, sig in signatures.samples
               if not certs.signature_verify(cert, data.encode("utf-8"), sig)]
        report["signatures"] = {"verified": len(signatures.samples) - len(bad), "failed": len(bad),
                                "of_total": signatures.seen}
        if not signatures.samples:
            raise BenchError("no signature was sampled for verification")
        if bad:
            raise BenchError(f"{len(bad)} of {len(signatures.samples)} sampled signatures do not verify, e.g. {bad[0]}")
    finally:
        await host.stop(grace=5)


def print_report(args, report: dict, command: str) -> None:
    t, s = report.get("throughput", {}), report.get("single", {})
    card = report.get("card", {})
    print(f"UKey gateway benchmark — {command}")
    print(f"  card: {card.get('algorithm')} certNo {card.get('cert_no')}, simulator {args.latency_ms:g} ms/op, "
          f"channel layer {report['channel_layer']}, database {report['database']}")
    if t:
        print(f"  throughput ({t['concurrency']} callers, {t['window_s']:.2f} s after {args.warmup:g} s warm-up):")
        print(f"    operations {t['operations']}, {t['ops_per_second']:.2f} ops/s (ceiling {t['ceiling_ops_per_second']}), "
              f"utilisation {t['utilisation']:.4f} (target >= {UTILISATION_TARGET})")
        print(f"    caller latency p50 {t['caller_latency_p50_ms']:.2f} ms, p99 {t['caller_latency_p99_ms']:.2f} ms; "
              f"errors {t['errors']}")
    if t.get("card_busy_fraction") is not None:
        print(f"    the simulator's own clock: card busy {t['card_busy_fraction']:.4f} of the phase")
    if s:
        print(f"  single caller ({s['calls']} calls each way, interleaved):")
        print(f"    through gateway: p50 {s['gateway_p50_ms']:.3f} ms, p99 {s['gateway_p99_ms']:.3f} ms")
        print(f"    direct WebSocket: p50 {s['direct_p50_ms']:.3f} ms, p99 {s['direct_p99_ms']:.3f} ms")
        print(f"    added latency: p50 {s['added_p50_ms']:+.3f} ms, p99 {s['added_p99_ms']:+.3f} ms; "
              f"ratio p50 {s['ratio_p50']}")
    sig = report.get("signatures")
    if sig:
        print(f"  signatures verified with the card certificate: {sig['verified']} sampled of {sig['of_total']}, "
              f"{sig['failed']} failed")
    for problem in report.get("problems", []):
        print(f"  FAIL: {problem}")
    print(f"  result: {'PASS' if not report.get('problems') else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds of the throughput phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before the window")
    parser.add_argument("--single-calls", type=int, default=300, help="sequential calls each way (gateway, direct)")
    parser.add_argument("--algorithm", choices=["rsa", "sm2"], default="rsa")
    parser.add_argument("--pipeline-depth", type=int, default=2,
                        help="requests outstanding at the control (the card device's pipeline_depth)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.single_calls < 1 or args.latency_ms < 0:
        parser.error("concurrency and single-calls must be >= 1, duration > 0, latency >= 0")
    command = " ".join([".venv/bin/python", "bench/gateway_bench.py", *(argv if argv is not None else sys.argv[1:])])

    tmp = tempfile.mkdtemp(prefix="gateway-bench-")
    os.environ["SIGNPLATFORM_VAR_DIR"] = tmp
    os.environ["DJANGO_SETTINGS_MODULE"] = "signplatform.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    report: dict = {"command": command, "latency_ms": args.latency_ms, "algorithm": args.algorithm, "problems": []}
    sim: Simulator | None = None
    device = None
    exit_code = 0
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from signing.models import CardDevice
        from signing.services import card_device_set_pin

        report["database"] = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        report["channel_layer"] = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
        call_command("migrate", verbosity=0, interactive=False)

        sim = Simulator(port=port_free(), latency_ms=args.latency_ms, pin=BENCH_PIN,
                        key_dir=str(Path(tmp) / "sim-keys"), algorithm=args.algorithm, env=os.environ.copy())
        sim.start()

        slug = f"bench-{uuid.uuid4().hex[:8]}"
        device = CardDevice.objects.create(slug=slug, name="gateway benchmark", url=sim.url,
                                           request_timeout=10.0, connect_timeout=5.0, queue_size=256,
                                           pipeline_depth=args.pipeline_depth)
        report["pipeline_depth"] = args.pipeline_depth
        card_device_set_pin(device=device, pin=BENCH_PIN)

        asyncio.run(run_async(args, slug, sim, report))

        t = report["throughput"]
        if args.latency_ms == 20 and args.concurrency >= 2 and t["utilisation"] < UTILISATION_TARGET:
            gap = 1000.0 / t["ops_per_second"] - args.latency_ms if t["ops_per_second"] else float("nan")
            report["problems"].append(
                f"utilisation {t['utilisation']:.4f} < {UTILISATION_TARGET}: {t['ops_per_second']:.2f} ops/s means "
                f"{gap:.3f} ms between card operations on average; at most "
                f"{args.latency_ms * (1 / UTILISATION_TARGET - 1):.3f} ms is allowed"
            )
            exit_code = 1
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            report["problems"].append("interrupted")
        elif isinstance(exc, BenchError):
            report["problems"].append(str(exc))
        else:
            import traceback

            traceback.print_exc()
            report["problems"].append(f"{exc.__class__.__name__}: {exc}")
        exit_code = 2
    finally:
        if sim is not None:
            sim.stop()
        if device is not None:
            try:
                device.delete()
            except Exception:  # the temp database goes away anyway
                pass
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print_report(args, report, command)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
