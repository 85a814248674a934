from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class XmlStoreConfig(AppConfig):
    name = "xmlstore"
    verbose_name = _("XML documents")
