"""Every HTTP endpoint of the API: native (docs/signing-api.md), the XML store, the legacy
sign-server API (docs/sign-server-compat.md), health, and the OpenAPI schema."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from . import acs, declaration_views, health, legacy, views, xml_views
from .base import ApiNotFoundView

urlpatterns = [
    path("api/v1/health", health.health, name="health"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/sign", views.SignView.as_view(), name="api-sign"),
    path("api/v1/sign/xml", views.SignXmlView.as_view(), name="api-sign-xml"),
    path("api/v1/verify/xml", views.VerifyXmlView.as_view(), name="api-verify-xml"),
    path("api/v1/sign/179", views.Sign179View.as_view(), name="api-sign-179"),
    path("api/v1/xml-documents", xml_views.XmlDocumentListView.as_view(), name="api-xml-documents"),
    path("api/v1/xml-documents/<int:pk>", xml_views.XmlDocumentDetailView.as_view(), name="api-xml-document"),
    path("api/v1/declarations", declaration_views.DeclarationListView.as_view(), name="api-declarations"),
    path("api/v1/declarations/<int:pk>", declaration_views.DeclarationDetailView.as_view(), name="api-declaration"),
    path("api/v1/rpc", views.RpcView.as_view(), name="api-rpc"),
    path("api/v1/certificate", views.CertificateView.as_view(), name="api-certificate"),
    path("api/v1/access-ids/self/rotate", views.RotateSelfView.as_view(), name="api-rotate-self"),
    re_path(r"^api/v1/[\s\S]*$", ApiNotFoundView.as_view(), name="api-not-found"),  # newlines too
    # The chinaport-proxy's endpoints (docs/client-profiles.md, cp-md5)
    path("rpc", views.ProxyRpcView.as_view(), name="proxy-rpc"),
    path("api/customs179", views.Customs179View.as_view(), name="proxy-customs179"),
    # The access system profile (docs/client-profiles.md, acs)
    path("acs/token/<str:sender>", acs.AcsTokenView.as_view(), name="acs-token"),
    path("acs/sign", acs.AcsSignView.as_view(), name="acs-sign"),
    path("acs/sign/xml", acs.AcsSignXmlView.as_view(), name="acs-sign-xml"),
    path("acs/sign/179", acs.AcsSign179View.as_view(), name="acs-sign-179"),
    re_path(r"^acs/[\s\S]*$", acs.AcsNotFoundView.as_view(), name="acs-not-found"),
    # The legacy sign-server API
    path("", legacy.service_index, name="legacy-index"),
    path("health", health.legacy_health, name="legacy-health"),
    path("getCode", legacy.get_code, name="legacy-get-code"),
    path("xml-files/add", legacy.xml_files_add, name="legacy-xml-add"),
    path("xml-files/list", legacy.xml_files_list, name="legacy-xml-list"),
    path("xml-files/delete", legacy.xml_files_delete, name="legacy-xml-delete"),
]
