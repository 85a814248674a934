from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SignplatformConfig(AppConfig):
    """The platform itself: its commands (runplatform, ensure_admin, rotate_master_key) and
    the wiring of the metrics to the apps' signals."""

    name = "signplatform"
    verbose_name = _("Signing platform")

    def ready(self):
        from django.core import checks

        from . import metrics  # noqa: F401  (connects the metrics receivers)
        from .master_key import encrypted_columns_check

        checks.register(encrypted_columns_check)
