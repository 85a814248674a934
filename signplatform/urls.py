from django.contrib import admin
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from signing import api_views
from signing import views as signing_views
from signing.api import ApiNotFoundView

admin.site.site_header = "Signing platform"
admin.site.site_title = "Signing platform"
admin.site.index_title = "Operations"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/health", signing_views.health, name="health"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/sign", api_views.SignView.as_view(), name="api-sign"),
    path("api/v1/rpc", api_views.RpcView.as_view(), name="api-rpc"),
    path("api/v1/certificate", api_views.CertificateView.as_view(), name="api-certificate"),
    path("api/v1/access-ids/self/rotate", api_views.RotateSelfView.as_view(), name="api-rotate-self"),
    re_path(r"^api/v1/.*$", ApiNotFoundView.as_view(), name="api-not-found"),
    path("health", signing_views.legacy_health, name="legacy-health"),
]
