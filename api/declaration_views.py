"""`/api/v1/declarations`: build a CEB message from JSON (or take the client's XML), sign it
as /sign/xml does, store it, submit it to the customs exchange server through the outbox,
and read where it stands (docs/declarations.md).

An access ID sees its own declarations; someone else's answers 404."""

from __future__ import annotations

import asyncio

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from api.base import SignedAPIView
from api.fields import StrictBooleanField, StrictCharField
from api.paging import MAX_ID, PAGE_PARAMETERS, page_answer, page_params, query_text
from api.serializers import XmlTextField
from api.views import ERRORS
from audit.services import data_digest
from core.cebmessages import MESSAGES, declaration_json_load
from core.dbthread import db_sync_to_async
from core.errors import invalid_request, not_found
from core.jsontext import JsonInputError, json_kind
from declarations import selectors
from declarations.models import Declaration
from declarations.services import declaration_prepare, declaration_record, declaration_sign, registration_for
from signing.pools import CARD_HEADER, card_target_for

REQUEST_FIELDS = ("message_type", "data", "xml", "submit", "device")


class DeclarationRequestSerializer(serializers.Serializer):
    """Documents the body; the view reads the raw bytes so numbers keep their text."""

    message_type = serializers.ChoiceField(choices=list(MESSAGES), required=False,
                                           help_text="Required with `data`; with `xml` it must match the root.")
    data = serializers.DictField(required=False, help_text="The document, named as the standard names its elements, "
                                 'e.g. {"OrderHead": {...}, "OrderList": [{...}]} (docs/declarations.md).')
    xml = XmlTextField(required=False, help_text="Instead of data: an unsigned CEB message of a supported type.")
    submit = StrictBooleanField(default=True, help_text="Submit to the customs exchange server (default true).")
    device = StrictCharField(required=False, allow_blank=True, help_text="Card device or card pool slug (optional).")


class SubmissionSerializer(serializers.Serializer):
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField()
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    last_http_status = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    reply = serializers.CharField(allow_blank=True)
    sent_at = serializers.DateTimeField(allow_null=True)
    server_url = serializers.CharField()


class ReceiptSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    receipt_type = serializers.CharField()
    return_status = serializers.CharField()
    return_info = serializers.CharField(allow_blank=True)
    return_time = serializers.DateTimeField(allow_null=True)
    outcome = serializers.CharField()
    matched_by = serializers.CharField(allow_blank=True)
    received_at = serializers.DateTimeField()


class DeclarationSerializer(serializers.ModelSerializer):
    reference = serializers.CharField()
    document_id = serializers.IntegerField()
    keys = serializers.SerializerMethodField()

    class Meta:
        model = Declaration
        fields = ["id", "message_type", "status", "status_text", "return_status", "source", "reference", "keys",
                  "guid", "head_guid", "cop_code", "dxp_id", "server_url", "device", "pool", "cert_no", "document_id",
                  "document_version", "resubmissions", "request_id", "created_at", "signed_at", "submitted_at",
                  "last_receipt_at"]

    def get_keys(self, declaration) -> dict[str, str]:
        columns = {"orderNo": "order_no", "ebpCode": "ebp_code", "ebcCode": "ebc_code", "copNo": "cop_no",
                   "preNo": "pre_no", "invtNo": "invt_no", "payTransactionId": "pay_transaction_id",
                   "payCode": "pay_code", "logisticsNo": "logistics_no", "logisticsCode": "logistics_code"}
        return {name: value for name, column in columns.items() if (value := getattr(declaration, column))}


class DeclarationDetailSerializer(DeclarationSerializer):
    signed_xml = serializers.CharField(source="document.content")
    submission = serializers.SerializerMethodField()
    receipts = serializers.SerializerMethodField()
    timeline = serializers.SerializerMethodField()

    class Meta(DeclarationSerializer.Meta):
        fields = DeclarationSerializer.Meta.fields + ["submission", "receipts", "timeline", "signed_xml"]

    def get_submission(self, declaration) -> dict | None:
        submission = selectors.declaration_submission(declaration)
        return SubmissionSerializer(submission).data if submission else None

    def get_receipts(self, declaration) -> list[dict]:
        return ReceiptSerializer(selectors.declaration_receipts(declaration), many=True).data

    def get_timeline(self, declaration) -> list[dict]:
        return [{"at": row["at"].isoformat(), "kind": row["kind"], "text": row["text"], "receipt": row["receipt"]}
                for row in selectors.declaration_timeline(declaration)]


class DeclarationPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    pages = serializers.IntegerField()
    results = DeclarationSerializer(many=True)


def _request_read(raw: bytes) -> dict:
    """The body, numbers kept as sent; every problem of its shape named by field."""
    try:
        body = declaration_json_load(raw)
    except JsonInputError as exc:
        raise invalid_request(f"the request body is refused: {exc.message}", {exc.path: [exc.message]}) from None
    except ValueError as exc:
        raise invalid_request(f"the request body is not valid JSON: {exc}", {"body": ["not valid JSON"]}) from None
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object", {"body": [f"must be an object, not {json_kind(body)}"]})
    errors: dict[str, list[str]] = {}
    for key in body:
        if key not in REQUEST_FIELDS:
            errors[key] = [f"unknown field (expected {', '.join(REQUEST_FIELDS)})"]
    for key, kind in (("message_type", str), ("xml", str), ("device", str), ("submit", bool), ("data", dict)):
        if key in body and not isinstance(body[key], kind):
            errors.setdefault(key, []).append(f"must be {json_kind(kind())}, not {json_kind(body[key])}")
    if ("data" in body) == ("xml" in body):
        errors.setdefault("data", []).append("send either data (JSON built into a message) or xml, not both or none")
    elif "data" in body and not body.get("message_type"):
        errors.setdefault("message_type", []).append(f"is required with data: one of {', '.join(MESSAGES)}")
    if isinstance(body.get("message_type"), str) and body["message_type"] and body["message_type"] not in MESSAGES:
        errors.setdefault("message_type", []).append(f"must be one of {', '.join(MESSAGES)}")
    if errors:
        raise invalid_request("the declaration request is refused: " + "; ".join(
            f"{k}: {v[0]}" for k, v in errors.items()), errors)
    return body


class DeclarationListView(SignedAPIView):
    required_scopes = ("declare",)

    @extend_schema(
        request=DeclarationRequestSerializer, responses={201: DeclarationDetailSerializer, **ERRORS},
        description=(
            "Build a CEB message (CEB311, 303, 621, 623, 411 or 511) from `data` (JSON: the header and its items), "
            "or take a ready `xml`; the platform fills the guid, the company's registration (copCode, dxpId, ...) "
            "and the send time, signs it with the card and, unless `submit` is false, queues it for the customs "
            "exchange server (sent once, by the declaration worker). 201 with the declaration, its signed "
            "document and its timeline. Scope `declare`; docs/declarations.md."),
    )
    async def post(self, request):
        body = _request_read(request._request.body)
        access = request.user.access
        target = await card_target_for(devices=access.devices, pools=access.pools, requested=body.get("device") or None)
        pool = target.pool.slug if target.pool else None
        registration = await db_sync_to_async(registration_for)(access_pk=access.pk, pool_slug=pool)
        prepared = await asyncio.to_thread(
            declaration_prepare, message_type=body.get("message_type"), data=body.get("data"), xml=body.get("xml"),
            registration=registration, submit=body.get("submit", True))
        request.audit["data_sha256"] = data_digest(prepared.xml)
        request._request.card_trace = trace = {}  # the audit event names the card
        signed = await declaration_sign(xml=prepared.xml, target=target, owner=request.user.key, trace=trace)
        request.audit["cert_no"] = signed.cert_no

        def store():
            declaration = declaration_record(access_pk=access.pk, prepared=prepared, signed=signed,
                                             request_id=request.request_id, pool=trace.get("pool", ""))
            request.audit["details"] = {
                "declaration": declaration.pk, "message_type": declaration.message_type, "guid": declaration.guid,
                "reference": declaration.reference, "document_id": declaration.document_id,
                "submit": prepared.submit, "digest_value": signed.digest_value,
            }
            return DeclarationDetailSerializer(declaration).data

        data = await db_sync_to_async(self.commit_with_audit)(request, store, status_code=201)
        response = Response({**data, "request_id": request.request_id}, status=201)
        response[CARD_HEADER] = signed.device
        return response

    @extend_schema(
        operation_id="declarations_list",
        description=(
            "Your own declarations, newest first, filtered by status, message type, a reference (order, copNo, "
            "invtNo, payment or waybill number) or guid; paged (`page`, `page_size`). Scope `declare`."),
        parameters=[
            OpenApiParameter("status", str, enum=[s for s, _ in Declaration.STATUSES]),
            OpenApiParameter("message_type", str, enum=list(MESSAGES)),
            OpenApiParameter("reference", str, description="An order, copNo, invtNo, payment or waybill number."),
            OpenApiParameter("guid", str, description="The message's or the document's guid."),
            *PAGE_PARAMETERS,
        ],
        responses={200: DeclarationPageSerializer, **ERRORS},
    )
    async def get(self, request):
        params = request.query_params
        page, size = page_params(params)
        status = params.get("status")
        if status and status not in selectors.LIST_STATUSES:
            raise invalid_request(f"status must be one of {', '.join(selectors.LIST_STATUSES)}", {"status": ["invalid"]})
        message_type = params.get("message_type")
        if message_type and message_type not in MESSAGES:
            raise invalid_request(f"message_type must be one of {', '.join(MESSAGES)}", {"message_type": ["invalid"]})

        def query():
            rows = selectors.declarations_filter(
                selectors.declarations_visible(access_pk=request.user.access.pk), status=status,
                message_type=message_type, reference=query_text(params.get("reference"), name="reference"),
                guid=query_text(params.get("guid"), name="guid"),
            ).defer("data", "original_xml")
            return page_answer(rows, DeclarationSerializer, page=page, size=size, order=("-created_at", "-pk"))

        return Response(await db_sync_to_async(query)())


class DeclarationDetailView(SignedAPIView):
    required_scopes = ("declare",)

    @extend_schema(
        operation_id="declarations_retrieve", responses={200: DeclarationDetailSerializer, **ERRORS},
        description=(
            "One of your declarations with its submission (attempts, outcome), the customs receipts received and "
            "its timeline; someone else's answers 404. Scope `declare`."),
    )
    async def get(self, request, pk: int):
        def read():
            declaration = None if pk > MAX_ID else \
                selectors.declarations_visible(access_pk=request.user.access.pk).filter(pk=pk).first()
            if declaration is None:
                raise not_found(f"no declaration {pk}")
            request.audit["details"] = {"declaration": declaration.pk}
            return DeclarationDetailSerializer(declaration).data

        return Response(await db_sync_to_async(read)())

