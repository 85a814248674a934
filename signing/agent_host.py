"""Where a card agent's connection ends: a Channels WebSocket consumer at /agent/v1.

The agent authenticates with its device's agent token (`Authorization: Bearer ...`), says
hello, and from then on its link *is* that device's card connection: this process runs the
device's card gateway (the same single owner, bounded queue, pipeline, `_id` matching,
timeouts, probe, status and card events as a card the platform dials), fed from the channel
`ukey.<slug>`, so callers in every process reach it. When the agent's E-Port control is down,
the gateway sees a disconnected card; when the agent goes, the gateway stops and the card is
reported down.

One agent per device: a newer connection replaces an older one (an agent restarted after a
crash must not wait for its dead TCP connection to time out); the older one is told `bye` and
closed with code 4409, after its gateway has stopped, and a card.agent_replaced event is
written. A token that is revoked, rotated out or whose device is disabled cuts the agent off
within AGENT_RECHECK seconds (at once for a revocation in this platform)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.cache import cache

from audit.models import AuditEvent
from audit.services import audit_event_record
from core.networks import client_address_from
from ukey import agentproto
from ukey.gateway import CARD_AGENT_RESTARTED, DeviceConfig
from ukey.protocol import RPC_METHODS

from .agents import AgentTokenError, agent_owner_key, agent_token_check, agent_token_valid
from .gateway_host import GatewayHost

logger = logging.getLogger("signing.agent_host")

HELLO_TIMEOUT = 10.0
AGENT_RECHECK = 5.0
REGISTRY_TTL = 30
REPLACE_WAIT = 5.0
# The close code uvicorn gives every open WebSocket when its server shuts down ("service restart").
SERVER_SHUTDOWN_CLOSE_CODE = 1012
_AGENT_EVENTS = {CARD_AGENT_RESTARTED: AuditEvent.AGENT_RESTARTED}


@database_sync_to_async
def _record(**fields) -> None:
    audit_event_record(source="agent", **fields)


class AgentConsumer(AsyncWebsocketConsumer):
    identity = None
    slug = ""
    host_name = ""

    # --- the link --------------------------------------------------------------------------
    async def connect(self) -> None:
        self.connection_id = uuid.uuid4().hex
        self.client_ip = client_address_from(self.scope)
        self.card: agentproto.AgentCardConnection | None = None
        self.eport: dict[str, Any] = {"connected": False}
        self.eport_up = asyncio.Event()
        self.host: GatewayHost | None = None
        self.tasks: list[asyncio.Task] = []
        self.released = asyncio.Event()
        self.closing = False
        self.started = False
        self.request_timeout = 10.0
        headers = dict(self.scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise AgentTokenError("no agent token (Authorization: Bearer ...)")
            self.identity = await database_sync_to_async(agent_token_check)(token.strip())
        except AgentTokenError as exc:
            logger.warning("refused a card agent from %s: %s", self.client_ip, exc)
            await _record(event_type=AuditEvent.AGENT_REFUSED, outcome="AGENT_REFUSED", client_ip=self.client_ip,
                          message=str(exc))
            await self.accept()
            await self.send(agentproto.bye_message(reason=str(exc)))
            await self.close(code=agentproto.CLOSE_UNAUTHORIZED)
            return
        self.slug = self.identity.device.slug
        await self.accept()
        self.tasks.append(asyncio.create_task(self._hello_deadline()))

    async def _hello_deadline(self) -> None:
        await asyncio.sleep(HELLO_TIMEOUT)
        if self.host is None and not self.closing:
            await self._end(agentproto.CLOSE_PROTOCOL, "no hello within 10 s")

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.identity is None or self.closing:
            return
        try:
            message = agentproto.message_parse(text_data if text_data is not None else bytes_data)
        except agentproto.AgentProtocolError as exc:
            logger.warning("card %s: its agent sent a frame that is not an agent message (%s); ignored", self.slug, exc)
            return
        kind = message["type"]
        if kind == "hello" and not self.started:
            self.started = True
            self.tasks.append(asyncio.create_task(self._start(message)))
        elif kind == "result":
            self._result(message)
        elif kind == "status":
            self._eport_state(message.get("eport"))
        elif kind == "event":
            await self._agent_event(message)
        else:
            logger.warning("card %s: its agent sent a %r message, which agents do not send; ignored", self.slug, kind)

    async def disconnect(self, code) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()
        if code == SERVER_SHUTDOWN_CLOSE_CODE:
            # This web process is stopping (uvicorn closes every WebSocket with 1012 first): a
            # planned stop of the card's gateway, not a lost card.
            await self._stop_gateway("the platform process is shutting down", planned=True)
        else:
            await self._stop_gateway("the agent disconnected")
        if self.identity is not None and self.host_name:
            await _record(event_type=AuditEvent.AGENT_DISCONNECTED, outcome="AGENT_DISCONNECTED", device=self.slug,
                          client_ip=self.client_ip, message=f"agent on {self.host_name} disconnected (code {code})")

    async def _end(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        try:
            await self.send(agentproto.bye_message(reason=reason))
        except Exception:
            pass
        await self._stop_gateway(reason)
        await self.close(code=code)

    # --- the session -------------------------------------------------------------------------
    async def _start(self, hello: dict[str, Any]) -> None:
        self.host_name = str(hello.get("host") or "?")[:100]
        self.pin_local = hello.get("pin_local") is True
        await self._take_over()
        self._eport_state(hello.get("eport"))
        methods = sorted(RPC_METHODS)
        await self.send(agentproto.welcome_message(device=self.slug, methods=methods))

        def configure(config: DeviceConfig) -> DeviceConfig:
            # A PIN kept at the agent never travels: the platform sends none (nor a client's).
            self.request_timeout = config.request_timeout
            return dataclasses.replace(config, url=f"agent://{self.host_name}",
                                       pin="" if self.pin_local else config.pin)

        self.host = GatewayHost([self.slug], connect=self._card_connection, configure=configure)
        await self.host.start()
        await _record(event_type=AuditEvent.AGENT_CONNECTED, device=self.slug, client_ip=self.client_ip,
                      message=f"agent {str(hello.get('version'))[:40]} on {self.host_name} connected"
                              f"{' (PIN kept at the agent)' if self.pin_local else ''}",
                      details={"host": self.host_name, "version": str(hello.get("version"))[:40],
                               "pin_local": self.pin_local, "token_version": self.identity.token_version})
        logger.info("card %s: agent on %s connected from %s", self.slug, self.host_name, self.client_ip)
        self.tasks.append(asyncio.create_task(self._recheck()))

    async def _take_over(self) -> None:
        """Become the device's one agent: an older connection (here or in another process) is
        told to go, and waited for until its gateway has stopped."""
        mine = {"channel": self.channel_name, "connection": self.connection_id}
        previous = await database_sync_to_async(cache.get)(agent_owner_key(self.slug))
        await database_sync_to_async(cache.set)(agent_owner_key(self.slug), mine, REGISTRY_TTL)
        if previous and previous.get("connection") != self.connection_id:
            try:
                await self.channel_layer.send(previous["channel"], {
                    "type": "agent.replaced", "by": self.channel_name, "host": self.host_name})
                await asyncio.wait_for(self.released.wait(), timeout=REPLACE_WAIT)
            except (asyncio.TimeoutError, Exception):  # gone already (its process died)
                pass

    async def _recheck(self) -> None:
        """Keep the registry fresh and cut off a token that is no longer valid."""
        device_pk, version = self.identity.device.pk, self.identity.token_version
        while not self.closing:
            await asyncio.sleep(AGENT_RECHECK)
            if not await database_sync_to_async(agent_token_valid)(device_pk=device_pk, token_version=version):
                await _record(event_type=AuditEvent.AGENT_REFUSED, outcome="AGENT_REFUSED", device=self.slug,
                              client_ip=self.client_ip, message="the agent's token is no longer valid: cut off")
                await self._end(agentproto.CLOSE_REVOKED, "this agent token is no longer valid")
                return
            owner = await database_sync_to_async(cache.get)(agent_owner_key(self.slug))
            if owner is None or owner.get("connection") == self.connection_id:
                await database_sync_to_async(cache.set)(
                    agent_owner_key(self.slug), {"channel": self.channel_name, "connection": self.connection_id},
                    REGISTRY_TTL)

    async def _stop_gateway(self, reason: str, *, planned: bool = False) -> None:
        """Stop the card's gateway. Unplanned (the agent went away): the card connection is
        lost first, so the gateway reports a disconnected card; planned: the gateway stops
        first (a `card.gateway_stopped` event) and the link is dropped after."""
        if self.card is not None and not planned:
            self.card.lost(reason)
        host, self.host = self.host, None
        if host is not None:
            await host.stop(grace=2.0, reason=reason)
        if self.card is not None and planned:
            self.card.lost(reason)
        owner = await database_sync_to_async(cache.get)(agent_owner_key(self.slug)) if self.slug else None
        if owner and owner.get("connection") == self.connection_id:
            await database_sync_to_async(cache.delete)(agent_owner_key(self.slug))

    # --- the card connection the gateway uses ----------------------------------------------------
    async def _card_connection(self) -> agentproto.AgentCardConnection:
        """Opened by the gateway: as soon as the agent's E-Port control is connected."""
        try:
            await asyncio.wait_for(self.eport_up.wait(), timeout=5.0)
        except asyncio.TimeoutError:
            raise ConnectionError(f"the agent's E-Port control is not connected: "
                                  f"{self.eport.get('last_error') or 'no answer'}") from None
        if self.closing:
            raise ConnectionError("the agent is going away")
        self.card = agentproto.AgentCardConnection(self.send, self.slug, request_timeout=self.request_timeout,
                                                   on_abort=self._reset_agent)
        return self.card

    def _reset_agent(self, reason: str) -> None:
        self.tasks.append(asyncio.create_task(self.send(agentproto.reset_message(reason=reason))))

    def _result(self, message: dict[str, Any]) -> None:
        call_id, result, error = agentproto.result_parse(message)
        card = self.card
        if call_id is None or card is None or not card.deliver(call_id, result, error):
            known = card is not None and call_id in card.issued
            (logger.info if known else logger.warning)(
                "card %s: its agent answered call %r, which %s; ignored", self.slug, call_id,
                "is no longer waiting (too late)" if known else "it was never given")

    def _eport_state(self, eport: Any) -> None:
        eport = eport if isinstance(eport, dict) else {}
        up = eport.get("connected") is True
        self.eport = {"connected": up, "cert_no": str(eport.get("cert_no") or "")[:64],
                      "last_error": str(eport.get("last_error") or "")[:300], "at": time.time()}
        if up:
            self.eport_up.set()
        else:
            self.eport_up.clear()
            if self.card is not None:
                self.card.lost(f"the agent's E-Port control disconnected: {self.eport['last_error'] or 'no reason'}")

    async def _agent_event(self, message: dict[str, Any]) -> None:
        event_type = _AGENT_EVENTS.get(str(message.get("kind")))
        if event_type is None:
            logger.warning("card %s: its agent reported an unknown event %r; ignored", self.slug, message.get("kind"))
            return
        text = str(message.get("message") or "")[:500]
        logger.warning("card %s: agent on %s: %s", self.slug, self.host_name, text)
        await _record(event_type=event_type, outcome="AGENT_RESTARTED", device=self.slug, client_ip=self.client_ip,
                      message=text, details={"host": self.host_name})

    # --- messages from other processes -------------------------------------------------------
    async def agent_replaced(self, message: dict[str, Any]) -> None:
        host = str(message.get("host") or "?")
        await _record(event_type=AuditEvent.AGENT_REPLACED, outcome="AGENT_REPLACED", device=self.slug,
                      client_ip=self.client_ip, message=f"agent on {self.host_name} replaced by one on {host}")
        await self._end(agentproto.CLOSE_REPLACED, f"replaced by a newer agent connection (from {host})")
        try:
            await self.channel_layer.send(message["by"], {"type": "agent.released"})
        except Exception:
            pass

    async def agent_released(self, message: dict[str, Any]) -> None:
        self.released.set()

    async def agent_cut_off(self, message: dict[str, Any]) -> None:
        await self._end(agentproto.CLOSE_REVOKED, str(message.get("reason") or "cut off by the platform"))
