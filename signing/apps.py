from django.apps import AppConfig


class SigningConfig(AppConfig):
    name = "signing"
    verbose_name = "Signing and card devices"

    def ready(self):
        from . import schema  # noqa: F401  (registers the OpenAPI description of the signing headers)
