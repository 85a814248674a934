"""Signal receivers (connected in apps.py)."""

from __future__ import annotations

from .services import deliveries_enqueue, enabled_webhooks, enabled_webhooks_invalidate


def audit_event_saved(sender, instance, created, raw=False, **kwargs):
    """Every audit event (every API request): the deliveries it owes, in its transaction.
    Without an enabled webhook that wants it, this costs no query."""
    if created and not raw:
        deliveries_enqueue(instance)


def webhook_changed(sender, instance, **kwargs):
    enabled_webhooks_invalidate()


def webhooks_reloaded(sender, **kwargs):
    enabled_webhooks.invalidate()
