from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from console.language import language_set

from .metrics import metrics_view
from .views import favicon

admin.site.site_header = _("Signing platform")
admin.site.site_title = _("Signing platform")
admin.site.index_title = _("Operations")
# The navigation sidebar takes 300 px of every page; on a 1366 px laptop the list tables need
# them (the home page and the breadcrumbs lead everywhere it did).
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/language/", language_set, name="admin-language"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("favicon.ico", favicon, name="favicon"),
    path("", include("api.urls")),
]
