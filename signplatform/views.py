"""The few pages of the platform itself: the favicon browsers ask every site for."""

from pathlib import Path

from django.http import FileResponse
from django.views.decorators.http import require_GET

FAVICON = Path(__file__).resolve().parent / "static" / "signplatform" / "favicon.ico"


@require_GET
def favicon(request):
    """`/favicon.ico`, which browsers fetch for pages that name no icon (the admin's and the
    landing page name favicon.svg)."""
    return FileResponse(FAVICON.open("rb"), content_type="image/x-icon",
                        headers={"Cache-Control": "public, max-age=86400"})
