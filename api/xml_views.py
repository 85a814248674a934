"""`/api/v1/xml-documents`: list, store, read, soft-delete XML documents.

An access ID sees its own documents; with the `xml_read_all` scope it reads everyone's
(it still deletes only its own). Someone else's document answers 404, not 403, so that
document ids do not reveal what exists."""

from __future__ import annotations

from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from api.base import SignedAPIView
from api.fields import StrictCharField
from api.paging import MAX_ID, PAGE_PARAMETERS, page_answer, page_params, query_bool, query_text
from api.serializers import XmlTextField
from api.views import ERRORS
from audit.services import data_digest
from core.dbthread import db_sync_to_async
from core.errors import not_found
from xmlstore.models import XmlDocument
from xmlstore.selectors import xml_documents_filter, xml_documents_visible
from xmlstore.services import xml_document_delete, xml_document_write


class DocumentSerializer(serializers.ModelSerializer):
    access_id = serializers.CharField(source="access_id.key")
    path = serializers.CharField()

    class Meta:
        model = XmlDocument
        fields = [
            "id", "directory", "filename", "path", "version", "sha256", "size", "message_type", "signed", "cert_no",
            "signature_method", "digest_value", "signed_at", "device", "access_id", "request_id", "created_at",
            "updated_at",
        ]


class DocumentDetailSerializer(DocumentSerializer):
    xml = serializers.CharField(source="content")
    original_xml = serializers.CharField(source="original_content", help_text="The unsigned original (signed only).")
    signature_value = serializers.CharField()
    versions = serializers.SerializerMethodField()

    class Meta(DocumentSerializer.Meta):
        fields = DocumentSerializer.Meta.fields + ["signature_value", "xml", "original_xml", "versions"]

    def get_versions(self, document) -> list[dict]:
        return [
            {"version": v.version, "sha256": v.sha256, "size": v.size, "signed": v.signed, "cert_no": v.cert_no,
             "written_at": v.written_at.isoformat(), "replaced_at": v.replaced_at.isoformat()}
            for v in document.versions.all()
        ]


class DocumentCreateSerializer(serializers.Serializer):
    filename = StrictCharField(help_text="File name; .xml is added when missing.")
    xml = XmlTextField(help_text="Well-formed XML (no DOCTYPE).")
    directory = StrictCharField(required=False, allow_blank=True, default="", help_text="Logical folder.")


class DocumentPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    pages = serializers.IntegerField()
    results = DocumentSerializer(many=True)


class DeletedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    deleted = serializers.BooleanField()
    deleted_at = serializers.DateTimeField()
    request_id = serializers.CharField()


READ_SCOPES = ("xml_read", "xml_read_all")


class XmlDocumentListView(SignedAPIView):
    required_scopes = {"GET": READ_SCOPES, "POST": ("xml_write",)}

    @extend_schema(
        description=gettext_lazy(
            "The calling access ID's stored XML documents (everyone's with `xml_read_all`), newest first, without "
            "their content: filter by folder, file name, signed or not, or text in the name or content (an order "
            "number). Scope `xml_read`."),
        operation_id="xml_documents_list",
        parameters=[
            OpenApiParameter("directory", str, description="Exact folder (empty: the top folder)."),
            OpenApiParameter("filename", str, description="Exact file name (.xml may be left out)."),
            OpenApiParameter("signed", bool),
            OpenApiParameter("q", str, description="Text in the file name or the content, e.g. an order number."),
            *PAGE_PARAMETERS,
        ],
        responses={200: DocumentPageSerializer, **ERRORS},
    )
    async def get(self, request):
        params = request.query_params
        page, size = page_params(params)
        signed = query_bool(params.get("signed"), name="signed")
        client = request.user

        def query():
            documents = xml_documents_filter(
                xml_documents_visible(access_pk=client.access.pk, read_all=client.has_scope("xml_read_all")),
                directory=query_text(params.get("directory"), name="directory"),
                filename=query_text(params.get("filename"), name="filename"),
                signed=signed,
                q=query_text(params.get("q"), name="q"),
            ).defer("content", "original_content", "signature_value")
            return page_answer(documents, DocumentSerializer, page=page, size=size,
                               order=("directory", "filename", "pk"))

        return Response(await db_sync_to_async(query)())

    @extend_schema(
        request=DocumentCreateSerializer, responses={201: DocumentSerializer, **ERRORS},
        description=gettext_lazy(
            "Store an XML document under a folder and file name. Writing a name that exists keeps the old content "
            "as a version. The XML is parsed defused (no DOCTYPE) and is not signed here: use /api/v1/sign/xml. "
            "Scope `xml_write`."),
    )
    async def post(self, request):
        serializer = DocumentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        request.audit["data_sha256"] = data_digest(values["xml"])

        def store():
            document = xml_document_write(
                access_id=request.user.access.pk, directory=values["directory"], filename=values["filename"],
                content=values["xml"], request_id=request.request_id, source="api",
            )
            request.audit["details"] = {"document_id": document.pk, "path": document.path,
                                        "version": document.version}
            return DocumentSerializer(document).data

        data = await db_sync_to_async(self.commit_with_audit)(request, store, status_code=201)
        return Response(data, status=201)


class XmlDocumentDetailView(SignedAPIView):
    required_scopes = {"GET": READ_SCOPES, "DELETE": ("xml_write",)}
    request_line_bound = ("DELETE",)  # a GET's headers must not delete the document

    def _document(self, request, pk: int, *, for_delete: bool) -> XmlDocument:
        client = request.user
        read_all = client.has_scope("xml_read_all") and not for_delete
        if pk > MAX_ID:
            raise not_found(f"no XML document {pk}")
        document = xml_documents_visible(access_pk=client.access.pk, read_all=read_all).filter(pk=pk).first()
        if document is None:
            raise not_found(f"no XML document {pk}")
        request.audit["details"] = {"document_id": document.pk, "path": document.path}
        return document

    @extend_schema(
        operation_id="xml_documents_retrieve", responses={200: DocumentDetailSerializer, **ERRORS},
        description=gettext_lazy(
            "One stored document with its content (signed and unsigned original when it was signed here) and its "
            "earlier versions. Scope `xml_read` (another access ID's document: `xml_read_all`)."),
    )
    async def get(self, request, pk: int):
        def read():
            document = self._document(request, pk, for_delete=False)
            return DocumentDetailSerializer(document).data

        return Response(await db_sync_to_async(read)())

    @extend_schema(
        responses={200: DeletedSerializer, **ERRORS},
        description=gettext_lazy(
            "Delete one of the calling access ID's documents: a soft delete, the document and its versions stay "
            "for administrators. Scope `xml_write`."),
    )
    async def delete(self, request, pk: int):
        def delete():
            document = xml_document_delete(
                document=self._document(request, pk, for_delete=True), request_id=request.request_id
            )
            return DeletedSerializer({"id": document.pk, "deleted": True, "deleted_at": document.deleted_at,
                                      "request_id": request.request_id}).data

        return Response(await db_sync_to_async(self.commit_with_audit)(request, delete))
