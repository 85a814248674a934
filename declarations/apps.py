from django.apps import AppConfig


class DeclarationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "declarations"
    verbose_name = "Customs declarations"
