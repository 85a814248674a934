from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The admin screens that read across apps: the audit log and the dashboard. No models."""

    name = "console"
    verbose_name = "Console"
