from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ConsoleConfig(AppConfig):
    """The admin screens that read across apps: the audit log and the dashboard. No models."""

    name = "console"
    verbose_name = _("Console")
