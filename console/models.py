"""What the console remembers of the people who use it."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class AdminPreference(models.Model):
    """One administrator's choices that follow them from browser to browser: the language."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="admin_preference")
    language = models.CharField(_("language"), max_length=10, choices=settings.LANGUAGES)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("admin preference")

    def __str__(self) -> str:
        return f"{self.user} ({self.language})"
