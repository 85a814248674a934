from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save
from django.utils.translation import gettext_lazy as _


class WebhooksConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "webhooks"
    verbose_name = _("Webhooks (notifications to other systems)")

    def ready(self):
        from audit.models import AuditEvent

        from . import signals
        from .models import Webhook

        # The outbox: deliveries written in the audit event's own transaction.
        post_save.connect(signals.audit_event_saved, sender=AuditEvent, dispatch_uid="webhooks.audit_event_saved")
        # The cached list of enabled webhooks follows every change made in this process.
        post_save.connect(signals.webhook_changed, sender=Webhook, dispatch_uid="webhooks.webhook_saved")
        post_delete.connect(signals.webhook_changed, sender=Webhook, dispatch_uid="webhooks.webhook_deleted")
        # `flush` (tests) empties the tables without signals, then emits post_migrate.
        post_migrate.connect(signals.webhooks_reloaded, dispatch_uid="webhooks.reloaded")
