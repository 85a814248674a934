import os
import signal
import socket
import sys
import time

import uvicorn
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from django.utils.translation import gettext as _

from audit.models import AuditEvent
from audit.services import audit_event_record
from core.encryption import master_key_file_ensure
from core.ports import port_is_open
from core.supervisor import ChildExit, Supervisor, exit_text
from signing.services import card_device_sync_default
from signplatform.http_server import LimitedHttpToolsProtocol


class Command(BaseCommand):
    help = _(
        "Start the whole platform in the foreground: the ASGI server with the UKey gateway, "
        "and the card simulator when UKEY_URL is not set. Ctrl-C stops everything."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or "8000"))
        parser.add_argument(
            "--web-only",
            action="store_true",
            help=_("only the ASGI server: another process (with UKEY_GATEWAY_MODE=external) owns the cards; "
                   "run several of these behind a load balancer, sharing REDIS_URL and DATABASE_URL"),
        )
        parser.add_argument(
            "--prepare",
            action="store_true",
            help=_("once the port is ours: migrate the database and make sure an administrator exists "
                   "(what `make run` does), so that a start that cannot listen changes nothing"),
        )

    def handle(self, *args, **options):
        web_only = options["web_only"]
        if web_only and settings.UKEY_GATEWAY_MODE != "external":
            raise CommandError(_("--web-only needs UKEY_GATEWAY_MODE=external (and REDIS_URL): the cards are served "
                                 "elsewhere"))
        host, port = options["host"], options["port"]
        # Before anything changes: a second `make run` next to a running one must not migrate,
        # touch the administrator or rewrite the default card (its URL would point at a
        # simulator that never starts). The socket is bound here and handed to the server.
        listener = _listening_socket(host, port)
        if options["prepare"]:
            call_command("platform_prepare", stdout=self.stdout, stderr=self.stderr)
        else:
            key_file = master_key_file_ensure()
            if key_file:
                self.stdout.write(_("Master key: %(path)s (set SIGNPLATFORM_MASTER_KEY to use your own)")
                                  % {"path": key_file})
        device = card_device_sync_default()
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        supervisor = Supervisor(on_exit=_process_exit_record)
        try:
            if web_only:
                self.stdout.write(_("Web process only: the card gateways, webhook deliveries and declaration "
                                    "submissions run elsewhere"))
                # The ASGI lifespan of this process then starts no webhook or declaration worker.
                settings.WEBHOOK_WORKER_EMBEDDED = False
                settings.DECLARATION_WORKER_EMBEDDED = False
            elif not settings.UKEY_URL:
                sim_port = settings.UKEY_SIMULATOR_PORT
                if port_is_open(sim_port):
                    raise CommandError(
                        _("port %(port)s is taken; set UKEY_SIMULATOR_PORT, or UKEY_URL to use a real card")
                        % {"port": sim_port}
                    )
                self.stdout.write(_("No UKEY_URL set: starting the card simulator on ws://127.0.0.1:%(port)s")
                                  % {"port": sim_port})
                simulator = supervisor.spawn("card simulator", manage + ["ukey_simulator", "--port", str(sim_port)])
                deadline = time.monotonic() + 20
                while not port_is_open(sim_port):
                    if simulator.proc.poll() is not None or time.monotonic() > deadline:
                        raise CommandError(_("the card simulator did not start"))
                    time.sleep(0.1)
            else:
                self.stdout.write(_("Card: %(url)s (UKEY_URL)") % {"url": device.url})
            if settings.UKEY_GATEWAY_MODE == "external" and not web_only:
                # One process for every card the platform dials; it follows the admin's changes.
                # (`manage.py ukey_gateway --device SLUG` runs one card in a process of its own.)
                self.stdout.write(_("Starting the UKey gateway process (every card the platform dials)"))
                supervisor.spawn("ukey_gateway --all", manage + ["ukey_gateway", "--all"])
            # From here on a child that dies is restarted (logged, and an audit event).
            supervisor.watch()
            url_host = f"[{host}]" if ":" in host else host
            banner = _("Signing platform on http://%(host)s:%(port)s/  admin: /admin/  API docs: /api/v1/docs/  "
                       "health: /api/v1/health   (Ctrl-C stops everything)") % {"host": url_host, "port": port}
            config = uvicorn.Config(
                "signplatform.asgi:application",
                http=LimitedHttpToolsProtocol,  # limits on the request head (431)
                host=host,
                port=port,
                lifespan="on",
                log_level=settings.LOG_LEVEL.lower(),
                log_config=None,  # Django's LOGGING applies
                # X-Forwarded-For is judged by the platform against TRUSTED_PROXIES
                # (core/networks.py client_address); uvicorn must not rewrite the peer first.
                proxy_headers=False,
                access_log=False,
                timeout_graceful_shutdown=int(settings.UKEY_SHUTDOWN_GRACE) + 5,
            )
            server = _PlatformServer(config, banner=lambda: (self.stdout.write(banner), self.stdout.flush()))
            # uvicorn re-raises the signal that stopped it once it has shut down; with
            # these handlers in place that only gets noted, so the children are stopped below.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: None)
            server.run(sockets=[listener])
            if not server.started:
                raise CommandError(_("the server could not start on %(host)s:%(port)s") % {"host": host, "port": port})
        finally:
            listener.close()
            supervisor.stop(grace=settings.UKEY_SHUTDOWN_GRACE + 5)
            self.stdout.write(_("Signing platform stopped"))


class _PlatformServer(uvicorn.Server):
    """Says the platform is up only once it is: after the application's start-up (the card
    gateways, the webhook worker) succeeded."""

    def __init__(self, config: uvicorn.Config, *, banner) -> None:
        super().__init__(config)
        self._banner = banner

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._banner()


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a port another process holds (a platform already
    running, on this address or on all of them) fails here, before anything has changed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name == "nt":  # Windows' SO_REUSEADDR would let two servers share the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    else:  # a restart may bind at once over connections in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # from now on no other server can take it; early callers wait in the backlog
    except OSError as exc:
        sock.close()
        raise CommandError(
            _("cannot listen on %(host)s:%(port)s: %(reason)s. Is the platform running already? Stop it, or "
              "start this one on another port (PORT=8001 make run). Nothing was changed.")
            % {"host": host, "port": port, "reason": exc.strerror or exc}
        ) from None
    sock.set_inheritable(False)
    return sock


def _process_exit_record(exit: ChildExit) -> None:
    """A supervised process died: an audit event (from the supervisor's thread)."""
    device = exit.name.split("--device ", 1)[1] if "--device " in exit.name else ""
    try:
        audit_event_record(
            event_type=AuditEvent.PROCESS_EXITED, source="runplatform", outcome="PROCESS_EXITED", device=device,
            message=f"{exit.name} (pid {exit.pid}) exited with {exit_text(exit.returncode)}; "
                    f"restart {exit.restarts} in {exit.delay:.1f} s",
            details={"process": exit.name, "pid": exit.pid, "returncode": exit.returncode,
                     "restarts": exit.restarts, "restart_in_seconds": exit.delay},
        )
    finally:
        close_old_connections()
