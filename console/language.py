"""The admin's language: Chinese (zh-hans) or English, chosen in the header and remembered per
user (`AdminPreference`). Before a user has chosen, or logged in, Django's LocaleMiddleware
picks it from the browser (Accept-Language) and DJANGO_LANGUAGE_CODE is the default."""

from __future__ import annotations

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.utils import translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache

from .models import AdminPreference

SESSION_KEY = "admin_language"


def _language_of(request) -> str | None:
    """The signed-in user's language: from the session (one read per login), else the table."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    language = request.session.get(SESSION_KEY)
    if language is None:
        language = AdminPreference.objects.filter(user=user).values_list("language", flat=True).first() or ""
        request.session[SESSION_KEY] = language
    return language or None


class UserLanguageMiddleware:
    """After AuthenticationMiddleware (and LocaleMiddleware): a signed-in user's own choice
    wins over the browser's."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        language = _language_of(request) if request.path.startswith("/admin/") else None
        if language:
            translation.activate(language)
            request.LANGUAGE_CODE = translation.get_language()
        return self.get_response(request)


@never_cache
@staff_member_required
def language_set(request):
    """POST language=<code>[&next=<url>]: remember the user's language, go back."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    language = request.POST.get("language", "")
    if language in dict(settings.LANGUAGES):
        AdminPreference.objects.update_or_create(user=request.user, defaults={"language": language})
        request.session[SESSION_KEY] = language
        translation.activate(language)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = "/admin/"
    response = HttpResponseRedirect(target)
    if language in dict(settings.LANGUAGES):
        response.set_cookie(settings.LANGUAGE_COOKIE_NAME, language, samesite="Lax",
                            secure=settings.SESSION_COOKIE_SECURE, httponly=True)
    return response
