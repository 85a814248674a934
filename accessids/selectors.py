"""Access ID reads that more than one writer needs."""

from __future__ import annotations

import unicodedata

from .models import AccessId


def access_id_name_key(name: str) -> str:
    """What two names must not share: the name without outer spaces, NFKC-normalised (full-width
    ＥＲＰ is ERP) and case-folded."""
    return unicodedata.normalize("NFKC", name.strip()).casefold()


def access_id_name_holder(*, name: str, exclude_pk: int | None = None) -> AccessId | None:
    """The access ID that already has this name (case and width aside), if any. Compared in
    Python: SQLite's own case folding knows only ASCII, and access IDs are few."""
    wanted = access_id_name_key(name)
    for pk, other in AccessId.objects.exclude(pk=exclude_pk).values_list("pk", "name"):
        if access_id_name_key(other) == wanted:
            return AccessId.objects.get(pk=pk)
    return None
