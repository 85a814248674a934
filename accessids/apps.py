from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccessIdsConfig(AppConfig):
    name = "accessids"
    verbose_name = _("Access IDs")
