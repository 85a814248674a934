"""`python -m signagent --platform URL --token-env VAR [--eport URL] [--pin-env VAR]
[--restart-command CMD]`. Secrets come from the environment or a file, never the command line
(which other users of the PC can read)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from signagent import __version__, system
from signagent.agent import Agent, AgentConfig


def _secret(parser: argparse.ArgumentParser, *, env: str | None, file: str | None, what: str,
            required: bool) -> str:
    if env:
        value = os.environ.get(env, "")
        if not value:
            parser.error(f"environment variable {env} (the {what}) is empty or not set")
        return value.strip()
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            parser.error(f"cannot read the {what} from {file}: {exc.strerror}")
    if required:
        parser.error(f"give the {what} with --{what.split()[-1]}-env VAR or --{what.split()[-1]}-file PATH")
    return ""


def parser_build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signagent", description="Connect this PC's operator card (through the E-Port client) to the "
        "signing platform. The platform never connects to this PC: the agent dials out.")
    parser.add_argument("--platform", required=True, metavar="URL",
                        help="the platform, e.g. wss://sign.example.com (ws:// only on a trusted network)")
    parser.add_argument("--token-env", metavar="VAR", help="environment variable holding the agent token")
    parser.add_argument("--token-file", metavar="PATH", help="file holding the agent token")
    parser.add_argument("--eport", default="ws://127.0.0.1:61232", metavar="URL",
                        help="the E-Port client's control (default %(default)s)")
    parser.add_argument("--pin-env", metavar="VAR", help="the card PIN, kept here and never sent to the platform")
    parser.add_argument("--pin-file", metavar="PATH", help="file holding the card PIN")
    parser.add_argument("--restart-command", default="", metavar="CMD",
                        help="run when the E-Port control stalls, e.g. a script that restarts the E-Port client")
    parser.add_argument("--restart-after", type=int, default=3, metavar="N",
                        help="consecutive unanswered calls or probes before the restart command (default 3)")
    parser.add_argument("--restart-cooldown", type=float, default=300.0, metavar="SECONDS",
                        help="at most one restart per this many seconds (default 300)")
    parser.add_argument("--probe-interval", type=float, default=30.0, metavar="SECONDS",
                        help="probe the control after this long without a call (default 30)")
    parser.add_argument("--ca-file", default="", metavar="PATH",
                        help="CA certificates to verify the platform with (default: the system's)")
    parser.add_argument("--pin-sha256", action="append", default=[], metavar="FINGERPRINT",
                        help="accept only a platform certificate with this SHA-256 (hex); repeatable")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"signagent {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = parser_build()
    options = parser.parse_args(argv)
    if not options.platform.startswith(("ws://", "wss://")):
        parser.error("--platform must start with wss:// (or ws:// on a trusted network)")
    token = _secret(parser, env=options.token_env, file=options.token_file, what="agent token", required=True)
    pin = _secret(parser, env=options.pin_env, file=options.pin_file, what="card pin", required=False)
    logging.basicConfig(level=options.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # websockets at DEBUG logs every frame, the card PIN included: never below INFO.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLevelName(options.log_level)))
    config = AgentConfig(platform_url=options.platform, token=token, eport_url=options.eport, pin=pin,
                         restart_command=options.restart_command, restart_after=max(1, options.restart_after),
                         restart_cooldown=options.restart_cooldown, probe_interval=options.probe_interval,
                         ca_file=options.ca_file, pin_sha256=options.pin_sha256)
    logging.getLogger("signagent").info("signagent %s on %s: E-Port %s, platform %s%s", __version__, config.host,
                                        config.eport_url, config.endpoint, " (PIN kept here)" if pin else "")
    return asyncio.run(_run(config))


async def _run(config: AgentConfig) -> int:
    agent = Agent(config)
    system.stop_signals_install(asyncio.get_running_loop(), agent.stop)
    return await agent.run()
