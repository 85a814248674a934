from django.contrib import admin
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from signing import api_views, legacy
from signing import views as signing_views
from signing.api import ApiNotFoundView
from signplatform.metrics import metrics_view
from xmlstore import api_views as xml_api_views

admin.site.site_header = "Signing platform"
admin.site.site_title = "Signing platform"
admin.site.index_title = "Operations"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/health", signing_views.health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/sign", api_views.SignView.as_view(), name="api-sign"),
    path("api/v1/sign/xml", api_views.SignXmlView.as_view(), name="api-sign-xml"),
    path("api/v1/verify/xml", api_views.VerifyXmlView.as_view(), name="api-verify-xml"),
    path("api/v1/sign/179", api_views.Sign179View.as_view(), name="api-sign-179"),
    path("api/v1/xml-documents", xml_api_views.XmlDocumentListView.as_view(), name="api-xml-documents"),
    path("api/v1/xml-documents/<int:pk>", xml_api_views.XmlDocumentDetailView.as_view(), name="api-xml-document"),
    path("api/v1/rpc", api_views.RpcView.as_view(), name="api-rpc"),
    path("api/v1/certificate", api_views.CertificateView.as_view(), name="api-certificate"),
    path("api/v1/access-ids/self/rotate", api_views.RotateSelfView.as_view(), name="api-rotate-self"),
    re_path(r"^api/v1/.*$", ApiNotFoundView.as_view(), name="api-not-found"),
    # The legacy sign-server API (shared/spec/sign-server-compat.md)
    path("", legacy.service_index, name="legacy-index"),
    path("health", signing_views.legacy_health, name="legacy-health"),
    path("getCode", legacy.get_code, name="legacy-get-code"),
    path("xml-files/add", legacy.xml_files_add, name="legacy-xml-add"),
    path("xml-files/list", legacy.xml_files_list, name="legacy-xml-list"),
    path("xml-files/delete", legacy.xml_files_delete, name="legacy-xml-delete"),
]
