from django.contrib import admin
from django.urls import include, path

from console.language import language_set

from .metrics import metrics_view

admin.site.site_header = "Signing platform"
admin.site.site_title = "Signing platform"
admin.site.index_title = "Operations"

urlpatterns = [
    path("admin/language/", language_set, name="admin-language"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("", include("api.urls")),
]
