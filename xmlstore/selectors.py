"""XML store reads: what a caller may see, filtered."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import XmlDocument
from .services import xml_directory_clean, xml_filename_clean


def xml_documents_visible(*, access_pk: int, read_all: bool = False) -> QuerySet[XmlDocument]:
    """Live (not deleted) documents the access ID may read: its own, or every access ID's
    with the xml_read_all scope."""
    documents = XmlDocument.objects.filter(deleted_at__isnull=True).select_related("access_id")
    return documents if read_all else documents.filter(access_id_id=access_pk)


def xml_documents_filter(
    documents: QuerySet[XmlDocument],
    *,
    directory: str | None = None,
    filename: str | None = None,
    signed: bool | None = None,
    q: str | None = None,
) -> QuerySet[XmlDocument]:
    """`directory` exact (None: any; "" : the top folder), `filename` exact (`.xml` may be
    left out), `signed`, and `q`: text contained in the filename or the content (e.g. an
    order number), case-insensitive."""
    if directory is not None:
        documents = documents.filter(directory=xml_directory_clean(directory))
    if filename:
        documents = documents.filter(filename=xml_filename_clean(filename))
    if signed is not None:
        documents = documents.filter(signed=signed)
    if q:
        documents = documents.filter(filename__icontains=q) | documents.filter(content__icontains=q)
    return documents


def xml_document_find(*, access_pk: int, directory: str | None, filename: str) -> XmlDocument | None:
    """The live document stored under this name by this access ID."""
    return (
        XmlDocument.objects.filter(
            access_id_id=access_pk,
            directory=xml_directory_clean(directory),
            filename=xml_filename_clean(filename),
            deleted_at__isnull=True,
        )
        .first()
    )


def xml_documents_in_directory(*, access_pk: int, directory: str) -> list[dict[str, str]]:
    """The access ID's live documents in one folder, sorted by filename, with content
    (what the legacy list answers)."""
    return list(
        XmlDocument.objects.filter(access_id_id=access_pk, directory=directory, deleted_at__isnull=True)
        .order_by("filename")
        .values("filename", "content")
    )
