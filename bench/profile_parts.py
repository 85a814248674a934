"""Where a signed request's server time goes: py-spy recordings (raw collapsed stacks, GIL-held
samples, as `bench/targets.py --py-spy DIR` writes them) summed by part of the request path.

    .venv/bin/python bench/profile_parts.py /tmp/spy/platform-0ms-*.txt [--cpu-ms 2.1]

Each sample goes to the first part of the list below that its stack is in (a signature
verified inside the view counts as the card's, the view as the view's and not Django's). With --cpu-ms (the measured server CPU per request) the
shares are also shown as milliseconds per request. GIL-held samples count wall time while the
thread holds the GIL, so a thread preempted inside a system call (a socket write that wakes the
reader) counts too: the shares are a guide, the CPU per request from /proc is the measure."""

from __future__ import annotations

import argparse
import collections
import sys

# (part, markers): a stack with a frame whose function contains a marker belongs to the part;
# the first part (in this order) that a stack belongs to counts it.
PARTS = [
    ("audit events: group commit (DB thread)", ("_audit_flush", "DbBatch")),
    ("authentication, nonce, scopes, rate limit (DB thread)", ("_initial_checked", "_checks")),
    ("card: gateway, card WebSocket", ("CardGateway.", "CardConnection.", "_FrameHookConnection", "_Slots.",
                                        "websockets/")),
    ("card: caller (ukey_call, the signature checked)", ("ukey_call", "card_call", "_local_call", "data_sign",
                                                         "signature_check", "card_target")),
    ("writing the answer to the socket (uvicorn)", ("RequestResponseCycle.send",)),
    ("the view (DRF's, or the fast path's): parse, validate, audit fields, render",
     ("SignView.", "SignedAPIView.", "APIView.", "rendered", "FastSign.", "_prepared", "_response")),
    ("Django handler, middleware, URL routing", ("ApiASGIHandler.", "BaseHandler.", "_Middleware", "ASGIRequest")),
    ("uvicorn: reading and parsing HTTP", ("httptools_impl", "RequestResponseCycle", "HttpToolsProtocol")),
    ("thread hand-offs (database threads, futures)", ("DbThreads.", "_settle", "concurrent/futures", "_chain_future",
                                                      "ThreadPoolExecutor", "run_in_executor")),
]


def part_of(frames: list[str]) -> str:
    for part, markers in PARTS:
        if any(marker in frame for frame in frames for marker in markers):
            return part
    return "other (event loop, timers, status publishing, logging)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--cpu-ms", type=float, help="measured server CPU per request (ms)")
    args = parser.parse_args(argv)
    counts: collections.Counter = collections.Counter()
    for path in args.files:
        with open(path) as fh:
            for line in fh:
                stack, _, n = line.rstrip("\n").rpartition(" ")
                if stack and n.isdigit():
                    counts[part_of(stack.split(";"))] += int(n)
    total = sum(counts.values())
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples")
    for part, n in counts.most_common():
        share = n / total
        extra = f"  ~{share * args.cpu_ms:.2f} ms" if args.cpu_ms else ""
        print(f"  {100 * share:5.1f}%{extra}  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
