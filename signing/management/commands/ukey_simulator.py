import asyncio
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from signagent.system import stop_signals_install
from ukey.simulator import ENT_NAME, FAULT_KINDS, CardSimulator, FaultPlan, FaultRule, SimulatedCard


class Command(BaseCommand):
    help = _("Run the card simulator: an E-Port control with one RSA or SM2 operator card.")

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.UKEY_SIMULATOR_PORT)
        parser.add_argument("--algorithm", choices=["rsa", "sm2"], default=settings.UKEY_SIMULATOR_ALGORITHM)
        parser.add_argument("--latency-ms", type=float, default=settings.UKEY_SIMULATOR_LATENCY_MS,
                            help=_("time one card operation takes (default %(default)s)"))
        parser.add_argument("--pin", default=None, help=_("card PIN (default UKEY_SIMULATOR_PIN); '' for none"))
        parser.add_argument("--key-dir", default=str(settings.UKEY_SIMULATOR_KEY_DIR),
                            help=_("where the card's key and certificate are kept"))
        parser.add_argument("--enterprise", default=ENT_NAME,
                            help=_("the enterprise the card's certificate names (default %(default)s)"))
        parser.add_argument("--fault", action="append", default=[], metavar="KIND[:COUNT]",
                            help=_("inject a fault into sign operations; KIND is one of %(kinds)s")
                            % {"kinds": ", ".join(FAULT_KINDS)})
        parser.add_argument("--fault-rate", type=float, default=1.0, help=_("probability a matching operation faults"))
        parser.add_argument("--slow-ms", type=int, default=2000, help=_("extra delay of the 'slow' fault"))
        parser.add_argument("--bare-responses", action="store_true",
                            help=_("answer with bare {Result,Data,Error} frames like old wrappers"))

    def handle(self, *args, **options):
        pin = settings.UKEY_SIMULATOR_PIN if options["pin"] is None else options["pin"]
        try:
            faults = FaultPlan([FaultRule.from_cli(f, options["fault_rate"], options["slow_ms"]) for f in options["fault"]])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        card = SimulatedCard(options["algorithm"], Path(options["key_dir"]), enterprise=options["enterprise"])
        simulator = CardSimulator(
            card, latency_ms=options["latency_ms"], pin=pin, faults=faults, bare_responses=options["bare_responses"]
        )
        asyncio.run(self._serve(simulator, options["host"], options["port"]))

    async def _serve(self, simulator: CardSimulator, host: str, port: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop_signals_install(loop, stop.set)  # Windows too (no add_signal_handler there)
        try:
            server = await simulator.serve(host, port)
        except OSError as exc:
            raise CommandError(_("cannot listen on %(host)s:%(port)s: %(reason)s")
                               % {"host": host, "port": port, "reason": exc.strerror}) from None
        card = simulator.card
        names = {"host": host, "port": port, "algorithm": card.algorithm, "cert_no": card.cert_no,
                 "ms": simulator.latency * 1000, "dir": card.dir}
        self.stdout.write(
            (_("UKey simulator listening on ws://%(host)s:%(port)s — %(algorithm)s card, certNo %(cert_no)s, "
               "%(ms).0f ms per operation, PIN set, keys in %(dir)s") if simulator._pin else
             _("UKey simulator listening on ws://%(host)s:%(port)s — %(algorithm)s card, certNo %(cert_no)s, "
               "%(ms).0f ms per operation, PIN not set, keys in %(dir)s")) % names
        )
        self.stdout.flush()
        await stop.wait()
        server.close()
        await server.wait_closed()
        self.stdout.write(_("UKey simulator stopped"))
