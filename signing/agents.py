"""Card agents: the tokens an agent presents for its device (created, rotated with a grace
period, revoked: each change with its audit event in the same transaction), and checking a
presented token. A token is shown once, when it is made; only its SHA-256 is stored."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.models import AuditEvent
from audit.services import COMMAND, ChangeContext

from .models import AgentToken, CardDevice

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "sat_"  # "signing agent token": recognisable in a config file, never in a log
MAX_GRACE = datetime.timedelta(days=7)
_LAST_USED_EVERY = datetime.timedelta(minutes=1)


class AgentTokenError(Exception):
    """A token refused, or a change refused (those messages are for people: translated; the
    refusals of `agent_token_check` go to the agent's log and the audit log: English)."""


def agent_owner_key(slug: str) -> str:
    """The cache key naming the consumer (channel) that holds `slug`'s agent right now."""
    return f"ukey:agent:{slug}"


def agent_cut_off(slug: str, reason: str) -> None:
    """Tell the process holding `slug`'s agent to close it now. Best effort (the holder
    rechecks its token every few seconds anyway); call after the change has committed."""
    owner = cache.get(agent_owner_key(slug))
    if not owner:
        return
    try:
        async_to_sync(get_channel_layer().send)(owner["channel"], {"type": "agent.cut_off", "reason": reason})
    except Exception as exc:
        logger.warning("card %s: could not reach its agent's host (%s)", slug, exc.__class__.__name__)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new(device: CardDevice, version: int) -> tuple[AgentToken, str]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return AgentToken.objects.create(device=device, version=version, token_sha256=_hash(token)), token


@transaction.atomic
def agent_token_create(*, device: CardDevice, context: ChangeContext = COMMAND) -> tuple[AgentToken, str]:
    """The first token of an agent device (or a new current one after a revocation)."""
    device = CardDevice.objects.select_for_update().get(pk=device.pk)
    if device.agent_tokens.filter(state=AgentToken.CURRENT).exists():
        raise AgentTokenError(_("card %(slug)s already has an agent token: rotate it instead") % {"slug": device.slug})
    latest = device.agent_tokens.order_by("-version").values_list("version", flat=True).first() or 0
    row, token = _new(device, latest + 1)
    context.record(event_type=AuditEvent.AGENT_TOKEN_CREATED, device=device.slug,
                   details={"version": row.version, "fingerprint": row.fingerprint})
    return row, token


@transaction.atomic
def agent_token_rotate(*, device: CardDevice, grace: datetime.timedelta = datetime.timedelta(hours=24),
                       context: ChangeContext = COMMAND) -> tuple[AgentToken, str]:
    """A new current token; the old one keeps working for `grace` (0: not at all), an older
    previous one stops now."""
    if not datetime.timedelta(0) <= grace <= MAX_GRACE:
        raise AgentTokenError(_("the grace period must be between 0 and 7 days"))
    device = CardDevice.objects.select_for_update().get(pk=device.pk)
    now = timezone.now()
    device.agent_tokens.filter(state=AgentToken.PREVIOUS).update(state=AgentToken.REVOKED, revoked_at=now)
    current = device.agent_tokens.filter(state=AgentToken.CURRENT).first()
    if current is not None:
        if grace:
            current.state, current.valid_until = AgentToken.PREVIOUS, now + grace
        else:
            current.state, current.revoked_at = AgentToken.REVOKED, now
        current.save(update_fields=["state", "valid_until", "revoked_at"])
    latest = device.agent_tokens.order_by("-version").values_list("version", flat=True).first() or 0
    row, token = _new(device, latest + 1)
    context.record(event_type=AuditEvent.AGENT_TOKEN_ROTATED, device=device.slug, details={
        "version": row.version, "fingerprint": row.fingerprint, "grace_seconds": int(grace.total_seconds()),
        "previous_version": current.version if current else None,
    })
    return row, token


@transaction.atomic
def agent_tokens_revoke(*, device: CardDevice, context: ChangeContext = COMMAND) -> int:
    """Every token of the device stops now (a connected agent is cut off by its host)."""
    now = timezone.now()
    versions = list(device.agent_tokens.exclude(state=AgentToken.REVOKED).values_list("version", flat=True))
    device.agent_tokens.filter(version__in=versions).update(state=AgentToken.REVOKED, revoked_at=now)
    context.record(event_type=AuditEvent.AGENT_TOKEN_REVOKED, device=device.slug,
                   details={"revoked_versions": sorted(versions)})
    slug = device.slug
    transaction.on_commit(lambda: agent_cut_off(slug, "this agent token was revoked"))
    return len(versions)


@dataclass(frozen=True)
class AgentIdentity:
    device: CardDevice
    token_version: int


def agent_token_check(token: str) -> AgentIdentity:
    """The agent device a presented token belongs to; AgentTokenError (with a reason fit for
    the agent's log, never the token) when it is not a valid one."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise AgentTokenError("not an agent token")
    digest = _hash(token)
    row = AgentToken.objects.select_related("device").filter(token_sha256=digest).first()
    # The lookup is by hash; the comparison again in constant time, for form's sake.
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        raise AgentTokenError("unknown agent token")
    now = timezone.now()
    if row.state == AgentToken.REVOKED:
        raise AgentTokenError(f"this agent token (version {row.version}) was revoked")
    if row.state == AgentToken.PREVIOUS and (row.valid_until is None or row.valid_until <= now):
        raise AgentTokenError(f"this agent token (version {row.version}) was rotated out")
    device = row.device
    if not device.is_agent:
        raise AgentTokenError(f"card {device.slug} is not an agent card")
    if not device.enabled:
        raise AgentTokenError(f"card {device.slug} is disabled")
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_EVERY:
        AgentToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return AgentIdentity(device=device, token_version=row.version)


def agent_token_valid(*, device_pk: int, token_version: int) -> bool:
    """Is this token still good, and its device an enabled agent card (checked while its
    agent stays connected: a revoked token, or a card disabled, removed or switched to a URL
    in the admin, cuts the agent off)?"""
    row = AgentToken.objects.select_related("device").filter(device_id=device_pk, version=token_version).first()
    if row is None or row.state == AgentToken.REVOKED or not row.device.enabled or not row.device.is_agent:
        return False
    return row.state == AgentToken.CURRENT or bool(row.valid_until and row.valid_until > timezone.now())
