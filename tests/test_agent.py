"""The card agent end to end on loopback: card simulator ← signagent → platform. The platform
never connects to the card's simulator; signatures through the agent verify with the card's
certificate; the agent and the E-Port control come and go; bad tokens are refused; a rogue
agent's stray answers are ignored; with Redis, callers on another web process sign through
the one holding the agent."""

from __future__ import annotations

import ast
import asyncio
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
from django.core.cache import cache
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from signing.agents import agent_owner_key, agent_token_create, agent_token_rotate, agent_tokens_revoke
from signing.models import CardDevice
from signing.services import card_device_create
from tests.conftest import SimulatorProcess, test_database_url
from tests.live import ROOT, Platform, get_json, only_card_row, poll, services_env
from tests.test_api import call
from ukey import agentproto, protocol

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

SLUG = "office-card"
CARD_PIN = "24681357"  # the simulator's (tests.conftest.SIM_PIN)


class AgentProcess:
    """`python -m signagent` in its own process, as a clerk starts it."""

    def __init__(self, platform: Platform, sim: SimulatorProcess, token: str, log_dir: Path, *extra: str,
                 pin: str | None = CARD_PIN):
        self.argv = [sys.executable, "-m", "signagent", "--platform", f"ws://127.0.0.1:{platform.port}",
                     "--token-env", "SIGNAGENT_TOKEN", "--eport", sim.url, *extra]
        self.env = dict(os.environ, SIGNAGENT_TOKEN=token)
        if pin is not None:
            self.argv += ["--pin-env", "SIGNAGENT_PIN"]
            self.env["SIGNAGENT_PIN"] = pin
        self.log_path = log_dir / f"agent-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()


def device_state(platform: Platform, slug: str = SLUG) -> dict:
    status, _, body = get_json(platform.base + "/api/v1/health")
    return next((d for d in body["devices"] if d["slug"] == slug), {"connected": False})


def sim_connections(sim: SimulatorProcess) -> int:
    return asyncio.run(sim.control("sim_stats")).data[0]["connections"]


@pytest.fixture
def agent_world(tmp_path):
    """A platform (its default card on one simulator) and an agent card on another simulator."""
    only_card_row("agent-default")
    cache.delete_many([f"ukey:status:{SLUG}", agent_owner_key(SLUG)])  # nothing left from another test
    platform_card = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys-default")).start()
    office_card = SimulatorProcess(algorithm="sm2", key_dir=str(tmp_path / "keys-office"), latency_ms=5).start()
    device = card_device_create(slug=SLUG, name="Office PC card", transport=CardDevice.TRANSPORT_AGENT)
    _, token = agent_token_create(device=device)
    env = services_env(test_database_url(), tmp_path / "var", UKEY_URL=platform_card.url, UKEY_PIN=platform_card.pin,
                       UKEY_DEFAULT_DEVICE="agent-default", UKEY_GATEWAY_MODE="embedded")
    platform = Platform(env, tmp_path).start()
    agents: list[AgentProcess] = []

    def agent(*extra: str, **kwargs) -> AgentProcess:
        started = AgentProcess(platform, office_card, kwargs.pop("token", token), tmp_path, *extra, **kwargs).start()
        agents.append(started)
        return started

    try:
        yield platform, office_card, device, token, agent
    finally:
        for started in agents:
            started.stop()
        platform.stop()
        platform_card.stop()
        office_card.stop()


def test_a_signature_through_the_agent_verifies_and_the_platform_never_dialled_the_card(agent_world):
    platform, office_card, device, _, agent = agent_world
    access, secret = access_id_create(name="ERP, office card", devices=[device])
    before = sim_connections(office_card)
    agent_process = agent()
    # The card's facts (certNo, algorithm) are read just after it connects.
    state = poll(lambda: (s := device_state(platform))["connected"] and s["algorithm"] and s, 15,
                 "the agent card connected, its facts read")
    assert state["algorithm"] == "SM2-SM3" and state["cert_no"]
    status, _, cert = call(platform, "GET", "/api/v1/certificate", access=access, secret=secret)
    assert status == 200 and cert["device"] == SLUG
    info = certificate_load(cert["certificate_pem"])
    for n in range(5):
        text = f"CEB311 order {n} through the office PC"
        status, _, body = call(platform, "POST", "/api/v1/sign", {"data": text}, access=access, secret=secret)
        assert status == 200 and body["device"] == SLUG, body
        assert signature_verify(info, text.encode(), body["signature"])
    # Only the agent connected to the office card's control, once.
    assert sim_connections(office_card) - before == 2  # the agent once, and this stats call itself
    connected = AuditEvent.objects.get(event_type=AuditEvent.AGENT_CONNECTED, device=SLUG)
    assert connected.details["pin_local"] is True and "PIN kept at the agent" in connected.message
    # The PIN stayed at the agent and the token appears in no log.
    assert CARD_PIN not in platform.log and agent_process.env["SIGNAGENT_TOKEN"] not in platform.log
    assert agent_process.env["SIGNAGENT_TOKEN"] not in agent_process.output


def test_the_agent_and_its_control_come_and_go_without_touching_the_platform(agent_world):
    platform, office_card, device, _, agent = agent_world
    access, secret = access_id_create(name="ERP", devices=[device])
    first = agent()
    poll(lambda: device_state(platform)["connected"], 15, "connected")
    first.kill()
    started = time.monotonic()
    poll(lambda: not device_state(platform)["connected"], 10, "the device reported down")
    assert time.monotonic() - started < 10
    status, _, body = call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret)
    assert (status, body["code"]) == (503, "UKEY_UNAVAILABLE")
    assert get_json(platform.base + "/api/v1/health")[0] == 200  # the platform's own card still signs
    agent()  # restarted: signing works again, the platform untouched
    poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "back"}, access=access, secret=secret)[0] == 200,
         15, "signing through the restarted agent")
    # The E-Port control restarts under the agent: the agent reconnects to it.
    office_card.stop()
    poll(lambda: not device_state(platform)["connected"], 15, "the control's loss reported")
    office_card.start()
    poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "again"}, access=access, secret=secret)[0] == 200,
         20, "signing after the control came back")
    assert AuditEvent.objects.filter(event_type=AuditEvent.AGENT_DISCONNECTED, device=SLUG).count() >= 1


def test_a_hung_control_runs_the_restart_command_once_per_cooldown(agent_world, tmp_path):
    platform, office_card, device, _, agent = agent_world
    access, secret = access_id_create(name="ERP", devices=[device])
    marker = tmp_path / "restarts.txt"
    # The "restart" of this E-Port client: note the run and clear the hang.
    script = tmp_path / "restart_eport.py"
    script.write_text(
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.conftest import SimulatorProcess\n"
        f"open({str(marker)!r}, 'a').write('restarted\\n')\n"
        f"sim = SimulatorProcess.__new__(SimulatorProcess); sim.port = {office_card.port}\n"
        "asyncio.run(sim.control('sim_setFaults', {'faults': []}))\n")
    agent("--restart-command", f"{sys.executable} {script}", "--restart-after", "2", "--restart-cooldown", "300",
          "--probe-interval", "1")
    poll(lambda: device_state(platform)["connected"], 15, "connected")
    asyncio.run(office_card.control("sim_setFaults", {"faults": [{"kind": "noanswer", "methods": [
        "cus-sec_SpcSignDataAsPEM", "cus-sec_SpcGetCertNo"]}]}))
    event = poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.AGENT_RESTARTED, device=SLUG).first(),
                 60, "card.agent_restarted")
    assert "restart command exited with 0" in event.message and "the control is back" in event.message
    assert marker.read_text() == "restarted\n"
    poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "after"}, access=access, secret=secret)[0] == 200,
         20, "signing after the restart")
    # Hung again at once: within the cooldown the command does not run again.
    asyncio.run(office_card.control("sim_setFaults", {"faults": [{"kind": "noanswer", "methods": [
        "cus-sec_SpcGetCertNo"]}]}))
    time.sleep(6)
    assert marker.read_text() == "restarted\n"
    assert AuditEvent.objects.filter(event_type=AuditEvent.AGENT_RESTARTED, device=SLUG).count() == 1


async def _rogue(platform: Platform, token: str, messages: list[str], *, wait: float = 1.0):
    """A hand-written agent: says what it is told, returns what the platform said and how it closed."""
    received = []
    async with connect(f"ws://127.0.0.1:{platform.port}/agent/v1",
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        try:
            for message in messages:
                await ws.send(message)
        except ConnectionClosed:  # refused before it could speak
            pass
        try:
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=wait)))
        except (asyncio.TimeoutError, ConnectionClosed):
            pass
        return received, ws.close_code


def test_wrong_revoked_and_rotated_out_tokens_are_refused_and_audited(agent_world):
    platform, office_card, device, token, agent = agent_world
    hello = agentproto.hello_message(version="rogue", host="rogue-pc", pin_local=True,
                                     eport=agentproto.eport_state(connected=False))
    received, code = asyncio.run(_rogue(platform, "sat_not-a-real-token", [hello]))
    assert code == agentproto.CLOSE_UNAUTHORIZED and received[0]["type"] == "bye"
    assert received[0]["reason"] == "unknown agent token"
    # Rotated with no grace: the old token is out, the new one works.
    _, new_token = agent_token_rotate(device=device, grace=datetime.timedelta(0))
    received, code = asyncio.run(_rogue(platform, token, [hello]))
    assert code == agentproto.CLOSE_UNAUTHORIZED and "revoked" in received[0]["reason"]
    live = agent(token=new_token)
    poll(lambda: device_state(platform)["connected"], 15, "the agent with the new token")
    # Revoked: the connected agent is cut off at once, and stays out.
    agent_tokens_revoke(device=device)
    poll(lambda: not device_state(platform)["connected"], 10, "cut off")
    poll(lambda: "refused" in live.output or "revoked" in live.output, 10, "the agent told why")
    refused = AuditEvent.objects.filter(event_type=AuditEvent.AGENT_REFUSED)
    assert refused.count() >= 2 and all(token not in e.message and new_token not in e.message for e in refused)
    assert token not in platform.log and new_token not in platform.log


def test_stray_answers_and_messages_from_an_agent_are_ignored_and_logged(agent_world):
    platform, office_card, device, token, agent = agent_world
    hello = agentproto.hello_message(version="rogue", host="rogue-pc", pin_local=False,
                                     eport=agentproto.eport_state(connected=True, cert_no="x"))
    stray = agentproto.result_message(call_id=99999, result=protocol.CardResult(ok=True, data=["forged", "x"]))
    call_from_agent = json.dumps({"type": "call", "id": 1, "method": "cus-sec_SpcChangePIN", "args": {}})
    received, _ = asyncio.run(_rogue(platform, token, [hello, stray, call_from_agent], wait=2.0))
    assert received[0]["type"] == "welcome" and "cus-sec_SpcChangePIN" not in received[0]["methods"]
    # What the platform asked (card facts) is all it sent: calls with ids it chose.
    assert all(m["type"] == "call" and m["method"] in protocol.RPC_METHODS for m in received[1:])
    poll(lambda: "answered call 99999, which it was never given; ignored" in platform.log, 5, "the stray logged")
    assert "sent a 'call' message, which agents do not send; ignored" in platform.log


def test_a_second_agent_for_the_device_replaces_the_first(agent_world):
    platform, office_card, device, token, agent = agent_world
    access, secret = access_id_create(name="ERP", devices=[device])
    first = agent()
    poll(lambda: device_state(platform)["connected"], 15, "first agent")
    second = agent()
    poll(lambda: AuditEvent.objects.filter(event_type=AuditEvent.AGENT_REPLACED, device=SLUG).exists(), 15,
         "replaced")
    poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "x"}, access=access, secret=secret)[0] == 200,
         15, "signing through the newer agent")
    assert "replaced by a newer agent connection" in first.output
    assert second.proc.poll() is None


def test_with_redis_callers_on_another_web_process_sign_through_the_agent(tmp_path):
    only_card_row("agent-default")
    cache.delete_many([f"ukey:status:{SLUG}", agent_owner_key(SLUG)])
    platform_card = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys-default")).start()
    office_card = SimulatorProcess(algorithm="rsa", key_dir=str(tmp_path / "keys-office"), latency_ms=5).start()
    device = card_device_create(slug=SLUG, transport=CardDevice.TRANSPORT_AGENT)
    _, token = agent_token_create(device=device)
    common = dict(UKEY_URL=platform_card.url, UKEY_PIN=platform_card.pin, UKEY_DEFAULT_DEVICE="agent-default",
                  UKEY_GATEWAY_MODE="external")
    holder = Platform(services_env(test_database_url(), tmp_path / "a", **common), tmp_path, name="holder").start()
    other = Platform(services_env(test_database_url(), tmp_path / "b", **common), tmp_path, args=("--web-only",),
                     name="other").start(migrate=False)
    agent_process = AgentProcess(holder, office_card, token, tmp_path).start()
    try:
        access, secret = access_id_create(name="ERP", devices=[device])
        poll(lambda: device_state(other)["connected"], 20, "the agent card seen from the other process")
        info = certificate_load(call(other, "GET", "/api/v1/certificate", access=access, secret=secret)[2]
                                ["certificate_pem"])
        for base in (holder, other, other, holder):
            status, _, body = call(base, "POST", "/api/v1/sign", {"data": f"from {base.port}"}, access=access,
                                   secret=secret)
            assert status == 200 and signature_verify(info, f"from {base.port}".encode(), body["signature"]), body
    finally:
        agent_process.stop()
        other.stop()
        holder.stop()
        platform_card.stop()
        office_card.stop()


# --- what the clerk copies: one file, or a wheel ------------------------------------------------


@pytest.fixture(scope="module")
def agent_build(tmp_path_factory):
    """dist/ of scripts/build_agent.py, and a fresh virtual environment with nothing in it."""
    out = tmp_path_factory.mktemp("agent-dist")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_agent.py"), "--out", str(out)], check=True,
                   timeout=300, capture_output=True)
    env_dir = out / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    return out, env_dir / "bin" / "python"


def test_the_one_file_agent_runs_alone_with_its_bundled_websockets(agent_world, agent_build):
    platform, office_card, device, token, _ = agent_world
    out, python = agent_build
    pyz = out / "signagent.pyz"
    probe = subprocess.run([str(python), "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import websockets;"
                            " print(websockets.__version__, websockets.__file__)", str(pyz)],
                           capture_output=True, text=True, check=True)
    version, location = probe.stdout.split()
    assert version == "13.1" and location.startswith(str(pyz))  # the CPython 3.8 one, from the file
    access, secret = access_id_create(name="ERP", devices=[device])
    agent_process = AgentProcess(platform, office_card, token, out)
    agent_process.argv = [str(python), "-I", str(pyz), *agent_process.argv[3:]]
    agent_process.start()
    try:
        poll(lambda: call(platform, "POST", "/api/v1/sign", {"data": "one file"}, access=access,
                          secret=secret)[0] == 200, 20, "signing through the one-file agent")
    finally:
        agent_process.stop()


def test_the_wheel_installs_with_its_console_script(agent_build):
    out, python = agent_build
    (wheel,) = out.glob("signagent-*-py3-none-any.whl")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=120)
    script = python.parent / "signagent"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    # websockets is the wheel's one dependency (not installed here): the script says what is missing.
    assert "No module named 'websockets'" in result.stderr
    listed = subprocess.run([str(python), "-m", "pip", "show", "-f", "signagent"], capture_output=True, text=True,
                            check=True).stdout
    assert "Requires: websockets" in listed and "ukey/agentproto.py" in listed and "signagent/cli.py" in listed
    assert "ukey/gateway.py" not in listed  # the agent ships only what it runs


def test_the_agent_is_python_3_8_code():
    """Parsed as Python 3.8 (no newer syntax), and every module defers its annotations (no
    `list[str]` or `X | None` evaluated at run time on 3.8)."""
    spec = importlib.util.spec_from_file_location("build_agent", ROOT / "scripts" / "build_agent.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for name in build.MODULES:
        source = (ROOT / name).read_text(encoding="utf-8")
        ast.parse(source, filename=name, feature_version=(3, 8))
        tree = ast.parse(source)
        annotated = any(isinstance(node, (ast.AnnAssign, ast.arg)) and getattr(node, "annotation", None)
                        or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns
                        for node in ast.walk(tree))
        if annotated:
            assert "from __future__ import annotations" in source, name


def test_stopping_the_web_process_is_a_planned_stop_of_the_agent_card_not_a_lost_card(agent_world):
    from audit.selectors import card_failures

    platform, office_card, device, token, agent = agent_world
    agent()
    poll(lambda: device_state(platform)["connected"], 20, "the agent card connected")
    platform.proc.send_signal(signal.SIGTERM)  # systemd's or docker's stop
    platform.proc.wait(timeout=60)
    events = list(AuditEvent.objects.filter(device=SLUG).order_by("seq").values_list("event_type", "message"))
    types = [event_type for event_type, _ in events]
    assert AuditEvent.CARD_GATEWAY_STOPPED in types, types
    stopped = dict(events)[AuditEvent.CARD_GATEWAY_STOPPED]
    assert "shutting down" in stopped
    assert AuditEvent.CARD_DISCONNECTED not in types and SLUG not in card_failures()
