from django.apps import AppConfig


class ApiConfig(AppConfig):
    """Every HTTP endpoint: the native signed API, the XML store API, the legacy
    sign-server API and health. No models."""

    name = "api"
    verbose_name = "HTTP API"

    def ready(self):
        from core.dbthread import cache_objects_per_thread

        from . import schema  # noqa: F401  (registers the OpenAPI description of the signing headers)

        cache_objects_per_thread()
