"""CEB customs messages built from JSON: the element lists of the message standard, the
checks a field must pass, and the unsigned XML written in the standard's order.

Pure functions: no models, no I/O. Contract: docs/declarations.md, which also names the
public sources of every element list (the customs XSDs of the 202205 standard).

The JSON mirrors the standard's element names: `{"OrderHead": {...}, "OrderList": [{...}]}`
for a CEB311Message. The platform generates the message guid, the head's guid and appTime,
fills BaseTransfer from the company registration and the defaults the standard fixes (e.g.
currency "142" for imports), and writes every element in the standard's order. Anything
else is refused field by field: missing mandatory fields, unknown fields, a wrong JSON type
(text in a number field), values too long or of the wrong fixed length, bad dates.

Numbers must be parsed with `parse_float=decimal.Decimal` (see `declaration_json_load`) so
the client's text survives: 143.60 is written 143.60."""

from __future__ import annotations

import datetime
import decimal
import re
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from django.utils.translation import gettext_lazy as _
from lxml import etree

from core.ceb import CEB_NS, XmlInputError, ceb_document_check
from core.jsontext import json_kind, json_loads_strict

# --- the element lists --------------------------------------------------------------------------
#
# One line per element, in the standard's order: name, format, M(andatory) or O(ptional).
# Formats are the standard's own notation: C..n text of at most n characters, Cn exactly n,
# D a decimal of at most 19 digits with at most 5 after the point, N an integer, T14 a time
# YYYYMMDDhhmmss, T8 a date YYYYMMDD.

_ORDER_HEAD_311 = """
guid C36 M; appType C1 M; appTime T14 M; appStatus C..3 M; orderType C1 M; orderNo C..60 M;
ebpCode C..18 M; ebpName C..100 M; ebcCode C..18 M; ebcName C..100 M; goodsValue D M; freight D M;
discount D M; taxTotal D M; acturalPaid D M; currency C3 M; buyerRegNo C..60 M; buyerName C..60 M;
buyerTelephone C..30 M; buyerIdType C1 M; buyerIdNumber C..60 M; payCode C..18 O; payName C..100 O;
payTransactionId C..60 O; batchNumbers C..100 O; consignee C..100 M; consigneeTelephone C..50 M;
consigneeAddress C..200 M; consigneeDistrict C6 O; note C..1000 O
"""
_ORDER_LIST_311 = """
gnum N M; itemNo C..30 O; itemName C..250 M; gmodel C..510 M; itemDescribe C..1000 O; barCode C..50 O;
unit C3 M; qty D M; price D M; totalPrice D M; currency C3 M; country C3 M; note C..1000 O
"""
_ORDER_HEAD_303 = """
guid C36 M; appType C1 M; appTime T14 M; appStatus C1 M; orderType C1 M; orderNo C..60 M;
ebpCode C..18 M; ebpName C..100 M; ebcCode C..18 M; ebcName C..100 M; goodsValue D M; freight D M;
currency C3 M; note C..1000 O
"""
_ORDER_LIST_303 = """
gnum N5 M; itemNo C..30 M; itemName C..250 M; itemDescribe C..1000 O; barCode C..50 O; unit C3 M;
currency C3 M; qty D M; price D M; totalPrice D M; note C..1000 O
"""
_INVENTORY_HEAD_621 = """
guid C36 M; appType C1 M; appTime T14 M; appStatus C..3 M; orderNo C..60 M; ebpCode C..18 M;
ebpName C..100 M; ebcCode C..18 M; ebcName C..100 M; logisticsNo C..60 M; logisticsCode C..18 M;
logisticsName C..100 M; copNo C..20 O; preNo C..18 O; assureCode C..30 M; emsNo C..30 O; invtNo C..18 O;
ieFlag C1 M; declTime T8 M; customsCode C4 M; portCode C4 M; ieDate T8 O; buyerIdType C1 M;
buyerIdNumber C..60 M; buyerName C..60 M; buyerTelephone C..30 M; consigneeAddress C..200 M;
agentCode C..18 M; agentName C..100 M; areaCode C..18 O; areaName C..100 O; tradeMode C4 M; trafMode C1 M;
trafNo C..100 O; voyageNo C..32 O; billNo C..37 O; loctNo C..10 O; licenseNo C..19 O; country C3 M;
freight D M; insuredFee D M; currency C3 M; wrapType C1 O; packNo N9 M; grossWeight D M; netWeight D M;
note C..1000 O
"""
_INVENTORY_LIST_621 = """
gnum N M; itemRecordNo C..30 O; itemNo C..20 O; itemName C..250 O; gcode C10 M; gname C..250 M;
gmodel C..510 M; barCode C..50 O; country C3 M; tradeCountry C..3 O; currency C3 M; qty D M; unit C3 M;
qty1 D M; unit1 C3 M; qty2 D O; unit2 C3 O; price D M; totalPrice D M; note C..1000 O
"""
_INVT_CANCEL_623 = """
guid C36 M; appType C1 M; appTime T14 M; appStatus C..3 M; customsCode C4 M; orderNo C..60 M;
ebpCode C..18 M; ebpName C..100 M; ebcCode C..18 M; ebcName C..100 M; logisticsNo C..60 M;
logisticsCode C..18 M; logisticsName C..100 M; copNo C..20 O; preNo C..18 O; invtNo C..18 M;
buyerIdType C1 M; buyerIdNumber C..60 M; buyerName C..60 M; buyerTelephone C..30 M; agentCode C..18 M;
agentName C..100 M; reason C..1000 M; note C..1000 O
"""
_PAYMENT_HEAD_411 = """
guid C36 M; appType C1 M; appTime T14 M; appStatus C..3 M; payCode C..18 M; payName C..100 M;
payTransactionId C..60 M; orderNo C..60 M; ebpCode C..18 M; ebpName C..100 M; payerIdType C1 M;
payerIdNumber C..60 M; payerName C..60 M; telephone C..60 O; amountPaid D M; currency C3 M; payTime T14 M;
note C..1000 O
"""
_LOGISTICS_HEAD_511 = """
guid C36 M; appType C1 M; appTime T14 M; appStatus C..3 M; logisticsCode C..18 M; logisticsName C..100 M;
logisticsNo C..60 M; billNo C..37 O; orderNo C..60 M; freight D O; insuredFee D O; currency C3 M;
weight D M; packNo N9 M; goodsInfo C..200 O; consignee C..100 M; consigneeAddress C..200 M;
consigneeTelephone C..50 M; note C..1000 O
"""
_BASE_TRANSFER = "copCode C..18 M; copName C..100 M; dxpMode C3 M; dxpId C..30 M; note C..1000 O"

DECIMAL_TOTAL_DIGITS = 19
DECIMAL_FRACTION_DIGITS = 5
INT_MAX = 2**31 - 1  # xs:int
# Filled by the platform, never by the client.
GENERATED = ("guid", "appTime")


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "C" text, "D" decimal, "N" integer, "T" time or date
    required: bool
    length: int | None = None  # exact length (Cn, T14, T8)
    max_length: int | None = None  # C..n
    digits: int | None = None  # Nn: at most n digits


def _fields(spec: str) -> tuple[Field, ...]:
    fields = []
    for item in spec.replace("\n", " ").split(";"):
        name, form, presence = item.split()
        kind = form[0]
        length = max_length = digits = None
        if form.startswith("C.."):
            max_length = int(form[3:])
        elif kind in "CT":
            length = int(form[1:])
        elif kind == "N" and len(form) > 1:
            digits = int(form[1:])
        fields.append(Field(name, kind, presence == "M", length, max_length, digits))
    return tuple(fields)


@dataclass(frozen=True)
class Entity:
    """An element with children, e.g. OrderHead; `max_items` > 1 for a repeated one."""

    name: str
    fields: tuple[Field, ...]
    max_items: int = 1

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class MessageSpec:
    """One message type of the standard, as the platform builds it: one business document
    (one order, inventory, cancellation, payment or waybill) per message."""

    message_type: str
    title: str  # lazy: in the language of the page that shows it
    wrapper: str | None  # the element around head and items (Order, Inventory, ...), None for InvtCancel
    head: Entity
    items: Entity | None
    head_defaults: dict[str, Any]
    item_defaults: dict[str, Any] = field(default_factory=dict)
    # The elements a receipt may name the document by (see core/cebexchange.py).
    keys: tuple[str, ...] = ()

    @property
    def entity_names(self) -> tuple[str, ...]:
        return (self.head.name,) + ((self.items.name,) if self.items else ())


_IMPORT = {"appType": "1", "appStatus": "2", "currency": "142"}

MESSAGES: dict[str, MessageSpec] = {
    spec.message_type: spec
    for spec in (
        MessageSpec("CEB311Message", _("import order (电子订单)"), "Order",
                    Entity("OrderHead", _fields(_ORDER_HEAD_311)), Entity("OrderList", _fields(_ORDER_LIST_311), 99),
                    {**_IMPORT, "orderType": "I", "buyerIdType": "1"}, {"currency": "142"},
                    keys=("orderNo", "ebpCode", "ebcCode")),
        MessageSpec("CEB303Message", _("export order (出口电子订单)"), "Order",
                    Entity("OrderHead", _fields(_ORDER_HEAD_303)), Entity("OrderList", _fields(_ORDER_LIST_303), 100),
                    {"appType": "1", "appStatus": "2", "orderType": "E"},
                    keys=("orderNo", "ebpCode", "ebcCode")),
        MessageSpec("CEB621Message", _("import inventory (进口清单)"), "Inventory",
                    Entity("InventoryHead", _fields(_INVENTORY_HEAD_621)),
                    Entity("InventoryList", _fields(_INVENTORY_LIST_621), 99),
                    {**_IMPORT, "ieFlag": "I", "buyerIdType": "1", "packNo": 1}, {"currency": "142"},
                    keys=("copNo", "orderNo", "ebpCode", "ebcCode", "preNo", "invtNo")),
        MessageSpec("CEB623Message", _("import inventory cancellation (撤销申请单)"), None,
                    Entity("InvtCancel", _fields(_INVT_CANCEL_623)), None,
                    {**{k: v for k, v in _IMPORT.items() if k != "currency"}, "buyerIdType": "1"},
                    keys=("copNo", "orderNo", "ebpCode", "ebcCode", "preNo", "invtNo")),
        MessageSpec("CEB411Message", _("import payment (支付凭证)"), "Payment",
                    Entity("PaymentHead", _fields(_PAYMENT_HEAD_411)), None,
                    {**_IMPORT, "payerIdType": "1"},
                    keys=("payTransactionId", "payCode", "orderNo", "ebpCode")),
        MessageSpec("CEB511Message", _("import waybill (物流运单)"), "Logistics",
                    Entity("LogisticsHead", _fields(_LOGISTICS_HEAD_511)), None,
                    {**_IMPORT, "packNo": 1},
                    keys=("logisticsNo", "logisticsCode", "orderNo")),
    )
}
BASE_TRANSFER = Entity("BaseTransfer", _fields(_BASE_TRANSFER))
# Defaults a company registration may give (when the message has the element and the client left it out).
REGISTRATION_DEFAULTS = ("ebpCode", "ebpName", "ebcCode", "ebcName")


# --- reading the client's JSON ------------------------------------------------------------------


def declaration_json_load(raw: bytes | str) -> Any:
    """The request body, read strictly (core.jsontext) with every JSON number that has a
    fraction or exponent as a Decimal: the number text the client sent is what is written."""
    return json_loads_strict(raw, parse_float=decimal.Decimal)


# --- checking values --------------------------------------------------------------------------


class CebDataError(ValueError):
    """Client data that does not make a valid message: `fields` maps each JSON path
    (`data.OrderHead.orderNo`, `data.OrderList[0].qty`) to its problems."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        count = sum(len(v) for v in fields.values())
        first = next(iter(fields))
        super().__init__(f"{count} field{'s' if count != 1 else ''} refused, first {first}: {fields[first][0]}")
        self.fields = fields
        self.message = str(self)


_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_TIME_FORMATS = {14: "%Y%m%d%H%M%S", 8: "%Y%m%d"}


def _decimal_text(value: Any) -> tuple[str | None, str | None]:
    """(XML text, problem) of a decimal field."""
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        return None, f"must be a number, not {json_kind(value)}"
    number = decimal.Decimal(value)
    if not number.is_finite():
        return None, "must be a finite number"
    _, digits, exponent = number.normalize().as_tuple()
    fraction = max(-exponent, 0)
    total = len(digits) + max(exponent, 0)
    if fraction > DECIMAL_FRACTION_DIGITS:
        return None, f"at most {DECIMAL_FRACTION_DIGITS} digits after the decimal point (got {fraction})"
    if total > DECIMAL_TOTAL_DIGITS:
        return None, f"at most {DECIMAL_TOTAL_DIGITS} digits in all (got {total})"
    text = format(number, "f")
    if len(text.partition(".")[2]) > DECIMAL_FRACTION_DIGITS:  # 1.500000: the value fits, the text would not
        text = format(number.normalize(), "f")
    return ("0" if text == "-0" else text), None


def value_text(spec: Field, value: Any) -> tuple[str | None, str | None]:
    """(the element's text, None) or (None, why the value is refused)."""
    if spec.kind == "D":
        return _decimal_text(value)
    if spec.kind == "N":
        if isinstance(value, (decimal.Decimal, float)):
            return None, f"must be a whole number, not {value}"
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be a whole number, not {json_kind(value)}"
        if not -INT_MAX - 1 <= value <= INT_MAX:
            return None, "is out of range for a whole number of the standard (xs:int)"
        if spec.digits and len(str(abs(value))) > spec.digits:
            return None, f"at most {spec.digits} digits"
        return str(value), None
    if not isinstance(value, str):
        return None, f"must be a string, not {json_kind(value)}"
    if _XML_FORBIDDEN.search(value):
        return None, "contains a control character XML cannot carry"
    if spec.required and not value.strip():
        return None, "must not be empty"
    if spec.length is not None and len(value) != spec.length:
        what = {14: "a time YYYYMMDDhhmmss", 8: "a date YYYYMMDD"}.get(spec.length) if spec.kind == "T" else None
        return None, f"must be {what} ({spec.length} digits)" if what else \
            f"must be exactly {spec.length} characters (got {len(value)})"
    if spec.max_length is not None and len(value) > spec.max_length:
        return None, f"too long: at most {spec.max_length} characters (got {len(value)})"
    if spec.kind == "T":
        try:
            if not value.isdigit():
                raise ValueError
            datetime.datetime.strptime(value, _TIME_FORMATS[spec.length])
        except ValueError:
            what = "a time YYYYMMDDhhmmss" if spec.length == 14 else "a date YYYYMMDD"
            return None, f"must be {what}, not {value!r}"
    return value, None


# --- building a message ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """BaseTransfer: who transmits the message (the company registration)."""

    cop_code: str
    cop_name: str
    dxp_id: str
    dxp_mode: str = "DXP"


@dataclass(frozen=True)
class BuiltMessage:
    message_type: str
    xml: str
    guid: str  # the message's (root attribute)
    head_guid: str  # the business document's (its guid element)
    keys: dict[str, str]  # the document's key elements (MessageSpec.keys) that have a value


def _entity_values(entity: Entity, data: Any, path: str, errors: dict[str, list[str]], *,
                   defaults: dict[str, Any], generated: dict[str, str]) -> list[tuple[str, str]]:
    """The (element, text) pairs of one entity in the standard's order; problems go to `errors`."""
    if not isinstance(data, dict):
        errors.setdefault(path, []).append(f"must be an object, not {json_kind(data)}")
        return []
    names = {f.name for f in entity.fields}
    for key in data:
        if key in generated:
            errors.setdefault(f"{path}.{key}", []).append("is generated by the platform: leave it out")
        elif key not in names:
            errors.setdefault(f"{path}.{key}", []).append(f"is not an element of {entity.name}")
    pairs = []
    for spec in entity.fields:
        where = f"{path}.{spec.name}"
        if spec.name in generated:
            pairs.append((spec.name, generated[spec.name]))
            continue
        value = data.get(spec.name)
        if value is None and spec.name in defaults:
            value = defaults[spec.name]
        if value is None or (value == "" and not spec.required):
            if spec.required:
                errors.setdefault(where, []).append("is required")
            continue
        text, problem = value_text(spec, value)
        if problem:
            errors.setdefault(where, []).append(problem)
        else:
            pairs.append((spec.name, text))
    return pairs


def _xml_element(name: str, pairs: list[tuple[str, str]], indent: str) -> str:
    inner = "".join(f"{indent}    <ceb:{tag}>{escape(text)}</ceb:{tag}>\n" for tag, text in pairs)
    return f"{indent}<ceb:{name}>\n{inner}{indent}</ceb:{name}>\n"


def ceb_message_build(message_type: str, data: Any, *, transfer: Transfer, guid: str, head_guid: str,
                      app_time: str, defaults: dict[str, str] | None = None) -> BuiltMessage:
    """The unsigned message for `data` (the client's JSON for one business document), or
    CebDataError naming every problem. `defaults` (e.g. the registration's ebpCode) fill
    elements the client left out; `app_time` is YYYYMMDDhhmmss in China's time zone."""
    spec = MESSAGES.get(message_type)
    if spec is None:
        raise CebDataError({"message_type": [f"must be one of {', '.join(MESSAGES)}"]})
    errors: dict[str, list[str]] = {}
    if not isinstance(data, dict):
        raise CebDataError({"data": [f"must be an object, not {json_kind(data)}"]})
    for key in data:
        if key == BASE_TRANSFER.name:
            errors.setdefault(f"data.{key}", []).append("is filled from the company registration: leave it out")
        elif key not in spec.entity_names:
            errors.setdefault(f"data.{key}", []).append(
                f"is not part of a {message_type} (expected {' and '.join(spec.entity_names)})")
    head_defaults = {**spec.head_defaults,
                     **{k: v for k, v in (defaults or {}).items() if v and spec.head.field(k) is not None}}
    generated = {"guid": head_guid, "appTime": app_time}
    head_pairs = []
    if spec.head.name not in data:
        errors.setdefault(f"data.{spec.head.name}", []).append("is required")
    else:
        head_pairs = _entity_values(spec.head, data[spec.head.name], f"data.{spec.head.name}", errors,
                                    defaults=head_defaults, generated=generated)
    item_blocks = []
    if spec.items is not None:
        items = data.get(spec.items.name)
        where = f"data.{spec.items.name}"
        if items is None:
            errors.setdefault(where, []).append("is required: at least one item")
        elif not isinstance(items, list):
            errors.setdefault(where, []).append(f"must be an array, not {json_kind(items)}")
        elif not 1 <= len(items) <= spec.items.max_items:
            errors.setdefault(where, []).append(f"must have 1 to {spec.items.max_items} items (got {len(items)})")
        else:
            for index, item in enumerate(items):
                item_defaults = {**spec.item_defaults, "gnum": index + 1}
                item_blocks.append(_entity_values(spec.items, item, f"{where}[{index}]", errors,
                                                  defaults=item_defaults, generated={}))
    transfer_pairs = _entity_values(
        BASE_TRANSFER, {"copCode": transfer.cop_code, "copName": transfer.cop_name, "dxpMode": transfer.dxp_mode,
                        "dxpId": transfer.dxp_id}, "registration", errors, defaults={}, generated={})
    if errors:
        raise CebDataError(errors)

    body = ""
    if spec.wrapper:
        inner = _xml_element(spec.head.name, head_pairs, " " * 8)
        inner += "".join(_xml_element(spec.items.name, block, " " * 8) for block in item_blocks) if spec.items else ""
        body += f"    <ceb:{spec.wrapper}>\n{inner}    </ceb:{spec.wrapper}>\n"
    else:
        body += _xml_element(spec.head.name, head_pairs, " " * 4)
    body += _xml_element(BASE_TRANSFER.name, transfer_pairs, " " * 4)
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n'
           f'<ceb:{message_type} guid={quoteattr(guid)} version="1.0" xmlns:ceb="{CEB_NS}">\n'
           f"{body}</ceb:{message_type}>\n")
    head = dict(head_pairs)
    return BuiltMessage(message_type=message_type, xml=xml, guid=guid, head_guid=head_guid,
                        keys={k: head[k] for k in spec.keys if head.get(k)})


# --- a message the client built itself --------------------------------------------------------


@dataclass(frozen=True)
class MessageFacts:
    """What the platform reads from a CEB message it did not build."""

    message_type: str
    guid: str
    head_guid: str
    keys: dict[str, str]
    cop_code: str
    dxp_id: str


def _child_text(element: etree._Element, name: str) -> str:
    child = element.find(f"{{{CEB_NS}}}{name}")
    return (child.text or "").strip() if child is not None else ""


def ceb_message_facts(xml: str) -> MessageFacts:
    """The type, guids, key elements and BaseTransfer of an unsigned message of a supported
    type carrying exactly one business document (parsed defused). Raises XmlInputError
    (the parse codes of core.ceb, `not_supported`, `not_one_document`)."""
    document = ceb_document_check(xml)
    spec = MESSAGES.get(document.message_type)
    if spec is None:
        raise XmlInputError("not_supported", f"{document.message_type} is not a message type the platform declares "
                                             f"(one of {', '.join(MESSAGES)}); sign it with /api/v1/sign/xml")
    root = document.tree.getroot()
    heads = list(root.iter(f"{{{CEB_NS}}}{spec.head.name}"))
    if len(heads) != 1:
        raise XmlInputError("not_one_document", f"the message has {len(heads)} {spec.head.name} elements; a "
                                                "declaration carries exactly one business document")
    head = heads[0]
    transfer = root.find(f"{{{CEB_NS}}}{BASE_TRANSFER.name}")
    keys = {k: v for k in spec.keys if (v := _child_text(head, k))}
    return MessageFacts(
        message_type=document.message_type, guid=(root.get("guid") or "").strip(),
        head_guid=_child_text(head, "guid"), keys=keys,
        cop_code=_child_text(transfer, "copCode") if transfer is not None else "",
        dxp_id=_child_text(transfer, "dxpId") if transfer is not None else "",
    )
