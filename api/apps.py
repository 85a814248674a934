from django.apps import AppConfig


class ApiConfig(AppConfig):
    """Every HTTP endpoint: the native signed API, the XML store API, the legacy
    sign-server API and health. No models."""

    name = "api"
    verbose_name = "HTTP API"

    def ready(self):
        from . import schema  # noqa: F401  (registers the OpenAPI description of the signing headers)
