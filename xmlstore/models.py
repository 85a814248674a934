"""Stored XML documents: the current content of a (owner, directory, filename) name, every
earlier content of that name as a version, soft deletion. Nothing is ever removed.

`directory` and `filename` are names inside the database, never paths on disk."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accessids.models import AccessId


class XmlDocument(models.Model):
    """The current state of one stored XML name. A signed document keeps the unsigned
    original next to the signed text."""

    access_id = models.ForeignKey(
        AccessId, on_delete=models.PROTECT, related_name="xml_documents", verbose_name=_("access ID")
    )
    directory = models.CharField(_("directory"), max_length=200, blank=True, db_index=True, help_text=_("Logical folder name."))
    filename = models.CharField(_("filename"), max_length=200, db_index=True)
    content = models.TextField(help_text=_("The document as stored (the signed text for a signed document)."))
    sha256 = models.CharField("SHA-256", max_length=64, db_index=True)
    size = models.PositiveIntegerField(help_text=_("bytes (UTF-8)"))
    version = models.PositiveIntegerField(_("version"), default=1, help_text=_("1 for the first content of this name."))
    message_type = models.CharField(max_length=40, blank=True, help_text=_("e.g. CEB621Message"))
    # Signing (empty for documents stored without signing)
    signed = models.BooleanField(_("signed"), default=False, db_index=True)
    original_content = models.TextField(blank=True, help_text=_("The unsigned document that was signed."))
    original_sha256 = models.CharField(max_length=64, blank=True)
    cert_no = models.CharField(_("certNo"), max_length=64, blank=True, db_index=True)
    signature_method = models.CharField(max_length=100, blank=True)
    digest_value = models.CharField(max_length=64, blank=True)
    signature_value = models.TextField(blank=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    device = models.CharField(_("card device"), max_length=50, blank=True)
    # Who wrote it last
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    source = models.CharField(max_length=20, blank=True, help_text=_("api, legacy or admin"))
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True, db_index=True)
    deleted_request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-updated_at", "-pk"]
        verbose_name = _("XML document")
        verbose_name_plural = _("XML documents")
        constraints = [
            models.UniqueConstraint(
                fields=["access_id", "directory", "filename"],
                condition=Q(deleted_at__isnull=True),
                name="xml_document_live_name_unique",
            )
        ]
        indexes = [models.Index(fields=["access_id", "directory", "filename"], name="xml_document_name_idx")]

    def __str__(self) -> str:
        return self.path

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.filename}" if self.directory else self.filename

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


class XmlDocumentVersion(models.Model):
    """An earlier content of a document, kept when the name was written again."""

    document = models.ForeignKey(XmlDocument, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    content = models.TextField()
    sha256 = models.CharField("SHA-256", max_length=64)
    size = models.PositiveIntegerField()
    signed = models.BooleanField(default=False)
    original_content = models.TextField(blank=True)
    cert_no = models.CharField(_("certNo"), max_length=64, blank=True)
    signature_method = models.CharField(max_length=100, blank=True)
    digest_value = models.CharField(max_length=64, blank=True)
    signature_value = models.TextField(blank=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    device = models.CharField(max_length=50, blank=True)
    request_id = models.CharField(max_length=64, blank=True, help_text=_("The request that wrote this content."))
    source = models.CharField(max_length=20, blank=True)
    written_at = models.DateTimeField(help_text=_("When this content was written."))
    replaced_at = models.DateTimeField(auto_now_add=True, help_text=_("When newer content replaced it."))
    replaced_request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["document", "-version"]
        verbose_name = _("XML document version")
        verbose_name_plural = _("XML document versions")
        constraints = [models.UniqueConstraint(fields=["document", "version"], name="xml_version_unique")]

    def __str__(self) -> str:
        return f"{self.document} v{self.version}"
