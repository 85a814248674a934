from django.apps import AppConfig


class AccessIdsConfig(AppConfig):
    name = "accessids"
    verbose_name = "Access IDs"
