from django.apps import AppConfig


class XmlStoreConfig(AppConfig):
    name = "xmlstore"
    verbose_name = "XML documents"
