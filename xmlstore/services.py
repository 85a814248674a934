"""XML store writes: store a document under a name (the earlier content becomes a version),
soft-delete it. Nothing is ever overwritten without a copy or removed.

Names are checked here, once, for every caller (native API, legacy API, signing):
`directory` is a logical folder inside the database and `filename` a plain name, so
`..`, absolute paths, drive letters and control characters are refused outright."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accessids.models import AccessId
from core.ceb import XmlInputError, xml_parse_safe
from core.errors import ApiError, invalid_request, xml_input_error
from core.rowsinsert import rows_insert

from .models import XmlDocument, XmlDocumentVersion

MAX_NAME = 200
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\:*?\"<>|]")


def _name_error(field: str, message: str) -> ApiError:
    return invalid_request(f"{field}: {message}", {field: [message]})


def xml_filename_clean(filename: str) -> str:
    """A plain file name, `.xml` appended when missing."""
    name = (filename or "").strip()
    if not name:
        raise _name_error("filename", "a file name is required")
    if "/" in name or _FORBIDDEN_CHARS.search(name):
        raise _name_error("filename", "must be a plain name: no / \\ : * ? \" < > | or control characters")
    if name.strip(".") == "":
        raise _name_error("filename", f"{name!r} is not a file name")
    if not name.lower().endswith(".xml"):
        name += ".xml"
    if len(name) > MAX_NAME:
        raise _name_error("filename", f"at most {MAX_NAME} characters")
    return name


def xml_directory_clean(directory: str | None) -> str:
    """A logical folder: empty, or names separated by `/` (never `.`/`..`, never absolute)."""
    text = (directory or "").strip()
    if not text:
        return ""
    if text.startswith("/") or _FORBIDDEN_CHARS.search(text):
        raise _name_error(
            "directory", "must be a relative folder name: no leading /, no \\ : * ? \" < > | or control characters"
        )
    parts = text.rstrip("/").split("/")
    if any(part.strip() in ("", ".", "..") for part in parts):
        raise _name_error("directory", "empty, '.' and '..' folder names are not allowed")
    cleaned = "/".join(part.strip() for part in parts)
    if len(cleaned) > MAX_NAME:
        raise _name_error("directory", f"at most {MAX_NAME} characters")
    return cleaned


def xml_content_check(content: str) -> None:
    """Well-formed XML without DOCTYPE or entities (parsed defused); raises INVALID_REQUEST."""
    if not isinstance(content, str) or not content.strip():
        raise invalid_request("xml: the XML content is empty", {"xml": ["the XML content is empty"]})
    try:
        xml_parse_safe(content)
    except XmlInputError as exc:
        raise xml_input_error(exc) from None


@dataclass(frozen=True)
class XmlSignature:
    """What signing adds to a stored document."""

    original_content: str
    cert_no: str
    signature_method: str
    digest_value: str
    signature_value: str
    device: str
    signed_at: object = None


def _sha256(text: str) -> tuple[str, int]:
    raw = text.encode("utf-8")
    return hashlib.sha256(raw).hexdigest(), len(raw)


def _fill(document: XmlDocument, *, content: str, message_type: str, signature: XmlSignature | None,
          request_id: str, source: str) -> None:
    document.content = content
    document.sha256, document.size = _sha256(content)
    document.message_type = message_type[:40]
    document.request_id = request_id[:64]
    document.source = source
    document.signed = signature is not None
    if signature is None:
        document.original_content = document.original_sha256 = ""
        document.cert_no = document.signature_method = document.digest_value = document.signature_value = ""
        document.device, document.signed_at = "", None
    else:
        document.original_content = signature.original_content
        document.original_sha256 = _sha256(signature.original_content)[0]
        document.cert_no = signature.cert_no[:64]
        document.signature_method = signature.signature_method[:100]
        document.digest_value = signature.digest_value[:64]
        document.signature_value = signature.signature_value
        document.device = signature.device[:50]
        document.signed_at = signature.signed_at or timezone.now()


def _version_keep(document: XmlDocument, *, replaced_request_id: str) -> XmlDocumentVersion:
    return XmlDocumentVersion.objects.create(
        document=document,
        version=document.version,
        content=document.content,
        sha256=document.sha256,
        size=document.size,
        signed=document.signed,
        original_content=document.original_content,
        cert_no=document.cert_no,
        signature_method=document.signature_method,
        digest_value=document.digest_value,
        signature_value=document.signature_value,
        signed_at=document.signed_at,
        device=document.device,
        request_id=document.request_id,
        source=document.source,
        written_at=document.updated_at,
        replaced_request_id=replaced_request_id[:64],
    )


_live_name_sqls: dict[str, str] = {}


def _live_name_sql(db) -> str:
    """The primary key of the live document with a name (access ID, directory, filename: its
    three parameters), locked where `db` has row locks (PostgreSQL; on SQLite the
    transaction's write lock serialises writers)."""
    sql = _live_name_sqls.get(db.vendor)
    if sql is None:
        quote = db.ops.quote_name
        column = {name: quote(XmlDocument._meta.get_field(name).column)
                  for name in ("id", "access_id", "directory", "filename", "deleted_at")}
        sql = (f"SELECT {column['id']} FROM {quote(XmlDocument._meta.db_table)} WHERE {column['access_id']} = %s "
               f"AND {column['directory']} = %s AND {column['filename']} = %s AND {column['deleted_at']} IS NULL "
               "LIMIT 1")
        if db.features.has_select_for_update:
            sql += " " + db.ops.for_update_sql()
        _live_name_sqls[db.vendor] = sql
    return sql


def xml_document_write(
    *,
    access_id: AccessId | int,
    directory: str | None,
    filename: str,
    content: str,
    request_id: str = "",
    source: str = "api",
    message_type: str = "",
    signature: XmlSignature | None = None,
    checked: bool = False,
) -> XmlDocument:
    """Store `content` under (access ID, directory, filename). When the name exists, its
    current content is kept as a version first and the document's version goes up by one.
    `checked`: the caller has already parsed the content (defused); otherwise it is checked."""
    directory = xml_directory_clean(directory)
    filename = xml_filename_clean(filename)
    if not checked:
        xml_content_check(content)
    access_pk = getattr(access_id, "pk", access_id)
    for attempt in range(2):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                # The key first (one column, locked), the whole row only when the name is taken;
                # a new name (most writes) is inserted without the ORM: compiling its queries
                # costs more than running them.
                cursor.execute(_live_name_sql(cursor.db), [access_pk, directory, filename])
                taken = cursor.fetchone()
                if taken is None:
                    document = XmlDocument(access_id_id=access_pk, directory=directory, filename=filename, version=1)
                else:
                    document = XmlDocument.objects.get(pk=taken[0])
                    _version_keep(document, replaced_request_id=request_id)
                    document.version += 1
                _fill(document, content=content, message_type=message_type, signature=signature,
                      request_id=request_id, source=source)
                if taken is None:
                    rows_insert(cursor, XmlDocument, [document])
                else:
                    document.save()
                return document
        except IntegrityError:
            # Another request created the same name at the same moment: write again, as a new version.
            if attempt:
                raise
    raise AssertionError("unreachable")


@transaction.atomic
def xml_document_delete(*, document: XmlDocument, request_id: str = "") -> XmlDocument:
    """Soft delete: the document disappears from its owner's listings, stays in the database
    with all its versions, and its name can be used again."""
    locked = XmlDocument.objects.select_for_update().get(pk=document.pk)
    if locked.deleted_at is None:
        locked.deleted_at = timezone.now()
        locked.deleted_request_id = request_id[:64]
        locked.save(update_fields=["deleted_at", "deleted_request_id", "updated_at"])
    return locked
