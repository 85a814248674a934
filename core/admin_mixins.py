"""`ReadOnlyAdminMixin`: admin screens that only show records (audit events, stored XML,
secret versions) — nobody adds, changes or deletes through them, superusers included."""

from __future__ import annotations


class ReadOnlyAdminMixin:
    """For a ModelAdmin or an inline: view permission decides who sees; nothing is writable."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
