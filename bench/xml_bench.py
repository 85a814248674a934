"""HTTP benchmark of CEB XML signing: `POST /api/v1/sign/xml` against `POST /api/v1/sign`.

Run from the project root:

    .venv/bin/python bench/xml_bench.py [--latency-ms 20] [--concurrency 16] [--duration 10]
        [--single-calls 150] [--zero-concurrency 1,4,16] [--zero-duration 5] [--big-kb 1024]
        [--algorithm rsa|sm2] [--probe-hz 5] [--py-spy-dir DIR] [--json]

Self-contained like bench/api_bench.py (whose pieces it imports): a simulator process, a
temporary SIGNPLATFORM_VAR_DIR on the embedded defaults (SQLite, local-memory cache, in-memory
channel layer, gateway in the web process), an access ID from `manage.py accessid create --name
bench --json` with its rate limit lifted, and `manage.py runplatform` with UKEY_PIPELINE_DEPTH=2.
In one run it measures, each figure a ratio of two things measured in the same run:

  1. card-bound (20 ms card, 16 clients): req/s of /sign/xml with the 3.3 KB vector
     (tests/vectors/CEB621Message.xml; a distinct `filename` per request, so each is a new
     document) and of /sign with the very text the card signs for it (the vector's one-line
     SignedInfo, ~0.7 KB: the card does the same work for both, which matters for the SM2
     simulator, whose time grows with the data); xml / sign, and the card's busy fraction by its
     own clock (`sim_stats`) in each window;
  2. one client (20 ms card): /sign, /sign/xml 3.3 KB and /sign/xml ~1 MB called in turn (order
     rotating); p50/p99 of each, minus those of /sign: the latency the XML work adds;
  3. CPU-bound (the same simulator switched to 0 ms): req/s at each --zero-concurrency of /sign,
     /sign/xml 3.3 KB and /sign/xml ~1 MB (the vector with its ceb:InventoryList repeated inside
     ceb:Inventory up to --big-kb); xml / sign, and server CPU ms per request.

Requests are signed before each phase (own nonce each), sent as raw bytes on keep-alive
HTTP/1.1 connections. Every answer is checked: HTTP 200, the card's certNo; /sign a signature
(sampled ones verified with the card certificate); /sign/xml the expected DigestValue and a
`signed_xml` that is the request's document with exactly one ds:Signature inserted. Sampled
signed documents are verified independently with `core.ceb.ceb_verify` (valid, the card's
certificate inside). During each loaded window a probe calls `GET /api/v1/health` (--probe-hz per
second) on its own connection: its latency shows how long a light request waits behind the XML
work (event loop, thread hops). The platform's RSS and its log's warnings/errors are reported.
Exit status: 0 when done without errors, 2 on any failed request, failed check or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api_bench import (
    CpuMeter,
    HttpConnection,
    Prepared,
    RequestFactory,
    RequestPool,
    Run,
    Window,
    bench_main,
    bench_platform_start,
    certificate_fetch,
    concurrency_list,
    event_loop_run,
    py_spy_start,
    set_card_latency,
    sign_answer_check,
    verify_samples,
)
from bench.gateway_bench import BenchError, ms, percentile

SIGN_PATH = "/api/v1/sign"
XML_PATH = "/api/v1/sign/xml"
VECTOR = ROOT / "tests" / "vectors" / "CEB621Message.xml"
VERIFY_EVERY = 50  # ceb_verify the first signed document of each phase and one in VERIFY_EVERY
MAX_ERRORS = 100
_ITEM = re.compile(r"[ \t]*<ceb:InventoryList>.*?</ceb:InventoryList>\r?\n", re.S)
_SIGNATURE = re.compile(r"<ds:Signature[ >].*?</ds:Signature>", re.S)


def big_document(text: str, size_kb: int) -> str:
    """The vector with its ceb:InventoryList repeated (gnum 2, 3, ...) after the first one,
    inside ceb:Inventory, until the UTF-8 text reaches `size_kb` KiB."""
    item = _ITEM.search(text)
    if item is None:
        raise BenchError(f"{VECTOR} has no ceb:InventoryList to repeat")
    block = item.group(0)
    count = max(0, -(-(size_kb * 1024 - len(text.encode("utf-8"))) // len(block.encode("utf-8"))))
    items = "".join(block.replace("<ceb:gnum>1</ceb:gnum>", f"<ceb:gnum>{n}</ceb:gnum>", 1)
                    for n in range(2, count + 2))
    return text[: item.end()] + items + text[item.end():]


# --- the three kinds of request ---------------------------------------------------------------


class SignKind:
    """`POST /api/v1/sign` of `text` (the SignedInfo line the card signs for the vector): the baseline."""

    path = SIGN_PATH

    def __init__(self, name: str, factory: RequestFactory, text: str, run: Run) -> None:
        self.name, self.factory, self.text, self.run = name, factory, text, run

    def sign_request(self, label: str) -> Prepared:  # RequestPool's factory interface
        body = json.dumps({"data": self.text}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return Prepared(self.factory.raw("POST", self.path, body), self.text)

    def check(self, label: str, request: Prepared, status: int, body: bytes, first: bool) -> str:
        signature, problem = sign_answer_check(status, body, self.run.cert_no)
        if signature is not None:
            self.run.offer(label, request.data, signature, first)
        return problem


class XmlKind:
    """`POST /api/v1/sign/xml` of one document under a new filename each time."""

    path = XML_PATH

    def __init__(self, name: str, factory: RequestFactory, xml: str, run: Run, samples: list) -> None:
        self.name, self.factory, self.xml, self.run, self.samples = name, factory, xml, run, samples
        self.xml_json = json.dumps(xml, ensure_ascii=False).encode("utf-8")  # encoded once
        self.bytes = len(xml.encode("utf-8"))
        self.digest = ""  # the expected DigestValue, set before the first phase
        self.counter = self.checked = 0

    def sign_request(self, label: str) -> Prepared:
        self.counter += 1
        filename = f"bench-{self.name}-{label}-{self.counter}"
        body = b'{"filename":"' + filename.encode("ascii") + b'","xml":' + self.xml_json + b"}"
        return Prepared(self.factory.raw("POST", self.path, body), filename)

    def check(self, label: str, request: Prepared, status: int, body: bytes, first: bool) -> str:
        try:
            answer = json.loads(body)
        except ValueError:
            return f"{self.name}: HTTP {status}, not JSON: {body[:80]!r}"
        if status != 200 or not isinstance(answer, dict):
            return f"{self.name}: HTTP {status} {answer.get('code') if isinstance(answer, dict) else answer!r} " \
                   f"{str(answer.get('message', ''))[:120] if isinstance(answer, dict) else ''}"
        signed = answer.get("signed_xml")
        if not isinstance(signed, str) or not signed:
            return f"{self.name}: HTTP 200 without signed_xml"
        if answer.get("digest_value") != self.digest:
            return f"{self.name}: digest_value {answer.get('digest_value')!r} != expected {self.digest!r}"
        if answer.get("cert_no") != self.run.cert_no:
            return f"{self.name}: certNo {answer.get('cert_no')!r} != {self.run.cert_no!r}"
        if not str(answer.get("filename", "")).startswith(request.data):
            return f"{self.name}: stored as {answer.get('filename')!r}, asked for {request.data!r}"
        inserted = _SIGNATURE.search(signed, max(0, len(self.xml) - 200))  # it goes before the root's end tag
        if inserted is None or signed[: inserted.start()] + signed[inserted.end():] != self.xml:
            return f"{self.name}: signed_xml is not the document with one ds:Signature inserted"
        if first or self.checked % VERIFY_EVERY == 0:
            self.samples.append((label, self, signed))
        self.checked += 1
        return ""


# --- load -------------------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    values = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return round(values.get("VmRSS", 0.0), 1), round(values.get("VmHWM", 0.0), 1)


async def health_probe(run: Run, hz: float, state: dict, found: list[float]) -> None:
    """GET /api/v1/health every 1/hz s on its own connection, latencies kept while counting."""
    conn = await HttpConnection(run.factory.host, run.factory.port).open()
    raw = (f"GET /api/v1/health HTTP/1.1\r\nHost: {run.factory.host}:{run.factory.port}\r\n\r\n").encode()
    try:
        while not state["stop"]:
            started = time.perf_counter()
            status, _ = await conn.exchange(raw)
            if state["counting"]:
                found.append(time.perf_counter() - started)
            if status != 200:
                state["probe_errors"] = state.get("probe_errors", 0) + 1
            await asyncio.sleep(max(0.0, 1 / hz - (time.perf_counter() - started)))
    finally:
        conn.close()


async def load(run: Run, kind, label: str, concurrency: int, duration: float, expected_rate: float,
               platform_pid: int, profile: bool = False) -> dict:
    """`concurrency` clients back to back on their own keep-alive connections; one window."""
    args = run.args
    pool = RequestPool(kind, label, int(expected_rate * (args.warmup + duration) * 1.2) + 4 * concurrency)
    conns = [await HttpConnection(run.factory.host, run.factory.port).open() for _ in range(concurrency)]
    state = {"counting": False, "stop": False, "first": True}
    done: list[tuple[float, float]] = []
    errors: list[str] = []
    probe: list[float] = []

    async def client(conn: HttpConnection) -> None:
        while not state["stop"] and len(errors) <= MAX_ERRORS:
            request = pool.take()
            started = time.perf_counter()
            try:
                status, body = await conn.exchange(request.raw)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                errors.append(f"{exc.__class__.__name__}: {exc}")
                conn.close()
                continue
            finished = time.perf_counter()
            problem = kind.check(label, request, status, body, state["first"] and state["counting"])
            if problem:
                errors.append(problem)
            elif state["counting"]:
                done.append((finished, finished - started))
                state["first"] = False

    tasks = [asyncio.create_task(client(conn)) for conn in conns]
    if args.probe_hz > 0:
        tasks.append(asyncio.create_task(health_probe(run, args.probe_hz, state, probe)))
    window, spy = Window(run), None
    try:
        await asyncio.sleep(args.warmup)
        state["counting"] = True
        await window.begin()
        if profile and args.py_spy_dir:
            spy = py_spy_start(args.py_spy_dir, label, platform_pid, duration)
        await asyncio.sleep(duration)
        await window.end()
        state["counting"] = False
        state["stop"] = True
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
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
    rss, peak = rss_mb(platform_pid)
    figures.update({
        "kind": kind.name, "concurrency": concurrency, "requests": len(latencies),
        "req_per_s": round(len(latencies) / figures["window_s"], 2),
        "p50_ms": ms(percentile(latencies, 50)), "p99_ms": ms(percentile(latencies, 99)),
        "errors": len(errors), "error_samples": errors[:5], "signed_during_run": pool.signed_late,
        "reconnects": sum(c.opened - 1 for c in conns),
        "probe_calls": len(probe), "probe_errors": state.get("probe_errors", 0),
        "probe_p50_ms": ms(percentile(probe, 50)) if probe else None,
        "probe_max_ms": ms(max(probe)) if probe else None,
        "platform_rss_mb": rss, "platform_peak_rss_mb": peak,
    })
    return figures


async def single_client(run: Run, kinds: list, rounds: int) -> dict:
    """One client calling each kind in turn (the order rotating every round), so all see the
    same machine at the same moments; five untimed rounds first."""
    conn = await HttpConnection(run.factory.host, run.factory.port).open()
    pools = {k.name: RequestPool(k, "single", rounds + 6) for k in kinds}
    latencies: dict[str, list[float]] = {k.name: [] for k in kinds}
    try:
        for i in range(-5, rounds):
            for kind in kinds[i % len(kinds):] + kinds[: i % len(kinds)]:
                request = pools[kind.name].take()
                started = time.perf_counter()
                status, body = await conn.exchange(request.raw)
                elapsed = time.perf_counter() - started
                problem = kind.check("single", request, status, body, i == 0)
                if problem:
                    raise BenchError(f"one client: {problem}")
                if i >= 0:
                    latencies[kind.name].append(elapsed)
    finally:
        conn.close()
    out = {"rounds": rounds}
    base = latencies[kinds[0].name]
    b50, b99 = percentile(base, 50), percentile(base, 99)
    for name, values in latencies.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        out[name] = {"p50_ms": ms(p50), "p99_ms": ms(p99), "mean_ms": ms(sum(values) / len(values)),
                     "added_p50_ms": ms(p50 - b50), "added_p99_ms": ms(p99 - b99)}
    return out


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


async def measure(run: Run, kinds: dict, platform_pid: int, report: dict) -> None:
    args = run.args
    sign, xml, big = kinds["sign"], kinds["xml"], kinds["xml-big"]
    ceiling = 1000.0 / args.latency_ms if args.latency_ms > 0 else 1000.0

    # 1. card-bound
    card = {}
    for kind in (xml, sign):
        card[kind.name] = await load(run, kind, f"card-{kind.name}", args.concurrency, args.duration, ceiling,
                                     platform_pid, profile=kind is xml)
    card["ratio_xml_over_sign"] = ratio(card["xml"]["req_per_s"], card["sign"]["req_per_s"])
    report["card_bound"] = card

    # 2. one client, 20 ms card
    report["single"] = await single_client(run, [sign, xml, big], args.single_calls)

    # 3. CPU-bound
    await set_card_latency(run, 0)
    expected = {"sign": 300.0, "xml": 200.0, "xml-big": 20.0}
    rows = []
    for concurrency in args.zero_concurrency:
        row = {"concurrency": concurrency}
        for kind in (sign, xml, big):
            profile = concurrency == max(args.zero_concurrency)
            f = await load(run, kind, f"zero-{kind.name}-c{concurrency}", concurrency, args.zero_duration,
                           expected[kind.name], platform_pid, profile=profile)
            expected[kind.name] = max(expected[kind.name], f["req_per_s"] * 1.5)
            row[kind.name] = f
        row["ratio_xml_over_sign"] = ratio(row["xml"]["req_per_s"], row["sign"]["req_per_s"])
        row["ratio_big_over_sign"] = ratio(row["xml-big"]["req_per_s"], row["sign"]["req_per_s"])
        rows.append(row)
    report["zero"] = rows
    await set_card_latency(run, args.latency_ms)


def xml_samples_verify(samples: list, certificate_pem: str, report: dict, checked: int) -> None:
    """Every sampled signed document verified with `ceb_verify`, signed with the card's certificate."""
    from core.ceb import ceb_verify
    from core.certs import certificate_load

    card_der = certificate_load(certificate_pem).der_base64
    bad, seconds = [], {}
    for label, kind, signed in samples:
        started = time.perf_counter()
        result = ceb_verify(signed)
        seconds.setdefault(kind.name, []).append(time.perf_counter() - started)
        problem = (result.reason if not result.valid else
                   "another certificate" if result.certificate.der_base64 != card_der else
                   f"DigestValue {result.digest_value}" if result.digest_value != kind.digest else "")
        if problem:
            bad.append(f"{label}: {problem}")
    report["xml_verified"] = {"verified": len(samples) - len(bad), "failed": len(bad),
                              "of_total": checked,
                              "ceb_verify_ms": {n: ms(sum(v) / len(v)) for n, v in seconds.items()}}
    if bad:
        raise BenchError(f"{len(bad)} of {len(samples)} sampled signed documents do not verify, e.g. {bad[0]}")


def log_scan(path: Path, report: dict) -> None:
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    flagged = [line for line in lines if re.search(r"\b(ERROR|CRITICAL|WARNING|Traceback)\b", line)]
    report["platform_log"] = {"lines": len(lines), "flagged": len(flagged), "samples": flagged[:8]}


# --- setup ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, report: dict, cleanup: contextlib.ExitStack) -> int:
    from core.ceb import ceb_digest, ceb_signed_info, signature_method_uri

    started = bench_platform_start(args, cleanup, prefix="xml-bench-",
                                   after_stop=lambda log_path: log_scan(log_path, report))
    sim, platform, device = started.sim, started.platform, started.device
    report["card"] = {"cert_no": device["cert_no"], "device": device["slug"]}
    memory = report["platform_memory_mb"] = {"rss_at_start": rss_mb(platform.proc.pid)[0]}

    factory = RequestFactory("127.0.0.1", platform.port, started.access_id, started.secret)
    run = Run(args=args, factory=factory, sim_url=sim.url, cert_no=device["cert_no"],
              cpu=CpuMeter(platform.proc.pid, sim.proc.pid))
    text = VECTOR.read_text(encoding="utf-8")
    xml_samples: list = []
    kinds = {"xml": XmlKind("xml", factory, text, run, xml_samples),
             "xml-big": XmlKind("xml-big", factory, big_document(text, args.big_kb), run, xml_samples)}
    for kind in kinds.values():
        kind.digest = ceb_digest(kind.xml)
    signed_info = ceb_signed_info(signature_method_uri=signature_method_uri(device["algorithm"]),
                                  digest=kinds["xml"].digest)
    kinds["sign"] = SignKind("sign", factory, signed_info, run)
    report["documents"] = {"xml_bytes": kinds["xml"].bytes, "xml_big_bytes": kinds["xml-big"].bytes,
                           "sign_data_bytes": len(signed_info.encode("utf-8")),
                           "xml_big_items": kinds["xml-big"].xml.count("<ceb:InventoryList>")}

    async def main_async() -> str:
        certificate = await certificate_fetch(factory)
        if certificate.get("cert_no") != run.cert_no:
            raise BenchError(f"GET /api/v1/certificate says certNo {certificate.get('cert_no')}, "
                             f"the health check {run.cert_no}")
        report["idle_platform_cores"] = await run.idle_measure()
        await measure(run, kinds, platform.proc.pid, report)
        return certificate["certificate_pem"]

    pem = event_loop_run(main_async())
    memory.update(zip(("rss_after_run", "peak_rss"), rss_mb(platform.proc.pid), strict=True))
    verify_samples(run, pem, report)
    xml_samples_verify(xml_samples, pem, report, kinds["xml"].checked + kinds["xml-big"].checked)
    loaded = phases(report)
    failed = sum(f["errors"] for _, f in loaded)
    if failed:
        raise BenchError(f"{failed} failed requests, e.g. {[e for _, f in loaded for e in f['error_samples']][:3]}")
    return 0


def phases(report: dict) -> list[tuple[str, dict]]:
    out = [(f"card {name}", report["card_bound"][name]) for name in ("xml", "sign") if name in
           report.get("card_bound", {})]
    for row in report.get("zero", []):
        out += [(f"0ms {name} c{row['concurrency']}", row[name]) for name in ("sign", "xml", "xml-big")]
    return out


# --- the report -------------------------------------------------------------------------------


def print_report(args, report: dict, command: str) -> None:
    docs, card = report.get("documents", {}), report.get("card", {})
    print(f"CEB XML signing benchmark (POST {XML_PATH} vs POST {SIGN_PATH}) — {command}")
    print(f"  platform: `manage.py runplatform` (uvicorn, one process), embedded defaults (SQLite, in-memory "
          f"channel layer, gateway in process), UKEY_PIPELINE_DEPTH={args.pipeline_depth}; "
          f"machine {os.cpu_count()} CPUs")
    print(f"  card: simulator, {card.get('algorithm', '?')} certNo {card.get('cert_no', '?')}; documents: "
          f"xml = {docs.get('xml_bytes', '?')} B vector, xml-big = {docs.get('xml_big_bytes', '?')} B "
          f"({docs.get('xml_big_items', '?')} ceb:InventoryList); sign = the {docs.get('sign_data_bytes', '?')} B "
          f"SignedInfo line the card signs for the 3.3 KB vector")
    header = ("phase", "conc", "done", "per s", "p50 ms", "p99 ms", "card busy", "err", "srv CPU",
              "srv ms/req", "loadgen", "other", "probe p50/max ms", "RSS MB")
    rows = []
    for name, f in phases(report):
        rows.append((name, f["concurrency"], f["requests"], f"{f['req_per_s']:.2f}", f"{f['p50_ms']:.1f}",
                     f"{f['p99_ms']:.1f}", f"{f['card_busy_fraction']:.4f}", f["errors"],
                     f"{f['platform_cpu_cores']:.2f}", f["platform_cpu_ms_per_req"],
                     f"{f['loadgen_cpu_cores']:.2f}", f"{f['other_cpu_cores']:.2f}",
                     f"{f['probe_p50_ms']}/{f['probe_max_ms']}" if f["probe_calls"] else "-",
                     f"{f['platform_rss_mb']:.0f}"))
    if rows:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        line = "  " + "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
        print()
        print(line.format(*header))
        print("  " + "  ".join("-" * w for w in widths))
        for r in rows:
            print(line.format(*[str(c) for c in r]))
        print("  card busy = simulator busy s / its own clock span; CPU in cores over the window (srv = uvicorn "
              "process); probe = GET /api/v1/health latency under that load")
    print()
    c = report.get("card_bound")
    if c and "sign" in c:
        x, s = c["xml"], c["sign"]
        print(f"  1. card-bound, {args.latency_ms:g} ms card, {args.concurrency} clients: "
              f"xml {x['req_per_s']:.2f} req/s, sign {s['req_per_s']:.2f} req/s, "
              f"xml / sign = {c['ratio_xml_over_sign']}; card busy during xml {x['card_busy_fraction']:.4f} "
              f"(sign {s['card_busy_fraction']:.4f})")
    single = report.get("single")
    if single:
        s = single["sign"]
        print(f"  2. one client, {args.latency_ms:g} ms card ({single['rounds']} calls each, interleaved): sign p50 "
              f"{s['p50_ms']:.2f} / p99 {s['p99_ms']:.2f} ms")
        for name in ("xml", "xml-big"):
            k = single[name]
            print(f"     {name}: p50 {k['p50_ms']:.2f} / p99 {k['p99_ms']:.2f} ms -> added by the XML work: "
                  f"p50 {k['added_p50_ms']:+.2f} ms, p99 {k['added_p99_ms']:+.2f} ms")
    for row in report.get("zero", []):
        s, x, b = row["sign"], row["xml"], row["xml-big"]
        print(f"  3. 0 ms card, c{row['concurrency']}: sign {s['req_per_s']:.1f}, xml {x['req_per_s']:.1f} "
              f"(x{row['ratio_xml_over_sign']}), xml-big {b['req_per_s']:.2f} (x{row['ratio_big_over_sign']}) req/s; "
              f"server CPU ms/req {s['platform_cpu_ms_per_req']} / {x['platform_cpu_ms_per_req']} / "
              f"{b['platform_cpu_ms_per_req']}")
    sig, xv = report.get("signatures"), report.get("xml_verified")
    if sig:
        print(f"  /sign signatures verified with the card certificate: {sig['verified']} sampled of "
              f"{sig['of_total']}, {sig['failed']} failed")
    if xv:
        print(f"  signed documents verified with core.ceb.ceb_verify: {xv['verified']} sampled of "
              f"{xv['of_total']}, {xv['failed']} failed (ceb_verify in the load generator: "
              f"{', '.join(f'{k} {v} ms' for k, v in xv['ceb_verify_ms'].items())})")
    mem = report.get("platform_memory_mb")
    if mem:
        print(f"  platform memory (MiB): {', '.join(f'{k} {v}' for k, v in mem.items())}")
    log = report.get("platform_log")
    if log:
        print(f"  platform log: {log['lines']} lines, {log['flagged']} with WARNING/ERROR/Traceback")
        for line in log["samples"]:
            print(f"    {line[:200]}")
    busy = [f"{name} {f['other_cpu_cores']:.2f}" for name, f in phases(report) if f["other_cpu_cores"] > 0.25]
    if busy:
        print(f"  WARNING: other work on the machine used CPU during: {', '.join(busy)} (cores)")
    for problem in report.get("problems", []):
        print(f"  FAIL: {problem}")
    print(f"  result: {'OK' if not report.get('problems') else 'FAIL'}")


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, kind, default, text in (
        ("--latency-ms", float, 20.0, "the simulator's time per operation (default %(default)s)"),
        ("--concurrency", int, 16, "HTTP clients of the card-bound phase (default %(default)s)"),
        ("--duration", float, 10.0, "measured seconds of each card-bound window (default %(default)s)"),
        ("--warmup", float, 1.0, "unmeasured seconds before each window (default %(default)s)"),
        ("--single-calls", int, 150, "one client: calls of each kind (default %(default)s)"),
        ("--zero-duration", float, 5.0, "measured seconds per kind and concurrency, 0 ms card (default %(default)s)"),
        ("--big-kb", int, 1024, "size of the big generated CEB621Message in KiB (default %(default)s)"),
        ("--probe-hz", float, 5.0, "GET /api/v1/health probes per second during loaded windows, 0: none"),
        ("--pipeline-depth", int, 2, "UKEY_PIPELINE_DEPTH given to the platform (default %(default)s)"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--zero-concurrency", type=concurrency_list, default=[1, 4, 16],
                        help="client counts with the 0 ms card (default 1,4,16)")
    parser.add_argument("--algorithm", choices=["rsa", "sm2"], default="rsa", help="the simulated card's key")
    parser.add_argument("--py-spy-dir", help="py-spy record (raw collapsed stacks) of the server during the "
                        "card-bound xml window and each kind (sign, xml, xml-big) at the highest 0 ms concurrency")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, database)")
    parser.set_defaults(redis_url=None)  # platform_env's option: embedded defaults only here
    args = parser.parse_args(argv)
    if min(args.concurrency, args.single_calls, args.pipeline_depth, args.big_kb) < 1 or args.latency_ms < 0 \
            or min(args.duration, args.zero_duration) <= 0 or args.warmup < 0 or args.probe_hz < 0:
        parser.error("counts and sizes must be >= 1, durations > 0, the latency and --probe-hz >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/xml_bench.py", *(sys.argv[1:] if argv is None else argv)])
    report: dict = {"command": command, "latency_ms": args.latency_ms, "algorithm": args.algorithm,
                    "cpus": os.cpu_count(), "problems": []}
    return bench_main(args, report, bench, print_report)


if __name__ == "__main__":
    sys.exit(main())
