"""CEB customs messages: defused parsing, the enveloped XML-DSig the customs system expects,
and a verifier whose reasons explain a "签名错误" receipt.

Contract: docs/ceb-xml-and-179.md, section 1. Pure functions: no models, no I/O.
The digest is SHA-1 over C14N 1.0 *with comments* of the whole unsigned document; the card
signs one fixed line of canonical SignedInfo text; the Signature element goes immediately
before the root's closing tag so that removing it gives back the original text byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape

from asn1crypto import algos as asn1_algos
from lxml import etree

from core.certs import (
    ALG_RSA,
    ALG_SM2,
    CertificateError,
    CertificateInfo,
    CertificateRefused,
    certificate_load,
    signature_verify,
)

CEB_NS = "http://www.chinaport.gov.cn/ceb"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
C14N_URI = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
ENVELOPED_URI = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SHA1_URI = "http://www.w3.org/2000/09/xmldsig#sha1"

SIGNATURE_METHOD_URIS = {
    ALG_RSA: "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    ALG_SM2: "http://www.w3.org/2000/09/xmldsig#sm2-sm3",
}
# CardDevice.signature_method values.
_METHOD_OVERRIDES = {"rsa-sha1": ALG_RSA, "sm2-sm3": ALG_SM2}
_METHOD_ALGORITHMS = {uri: algorithm for algorithm, uri in SIGNATURE_METHOD_URIS.items()}

# The exact line the card signs (spec step 3); it is the C14N form of SignedInfo in a CEB
# document whose root declares xmlns:ceb (and xmlns:xsi), which is why the Java tool hardcodes it.
_SIGNED_INFO_TEMPLATE = (
    '<ds:SignedInfo xmlns:ceb="http://www.chinaport.gov.cn/ceb" xmlns:ds="http://www.w3.org/2000/09/xmldsig#"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315">'
    "</ds:CanonicalizationMethod>"
    '<ds:SignatureMethod Algorithm="{signature_method}"></ds:SignatureMethod>'
    '<ds:Reference URI=""><ds:Transforms>'
    '<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"></ds:Transform>'
    "</ds:Transforms>"
    '<ds:DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"></ds:DigestMethod>'
    "<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
)

_CEB_ROOT_NAME = re.compile(r"CEB\d+Message")
_XML_WS = "[ \t\r\n]"
_PROLOG_ITEM = re.compile(rf"{_XML_WS}+|<!--.*?-->|<\?.*?\?>", re.S)
_XML_DECL = re.compile(rf"<\?xml{_XML_WS}[^>]*?\?>")
_DECL_ENCODING = re.compile(rf"encoding{_XML_WS}*={_XML_WS}*([\"'])(.*?)\1")
_LIBXML_POSITION = re.compile(r", line \d+, column \d+$")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_XML_FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _ds(local: str) -> str:
    return f"{{{DS_NS}}}{local}"


class XmlInputError(ValueError):
    """A document the platform refuses to handle; `code` is for machines, `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CebDocument:
    tree: etree._ElementTree
    message_type: str  # e.g. "CEB621Message"
    root_qname: str  # as written in the text, e.g. "ceb:CEB621Message"


@dataclass(frozen=True)
class VerifyResult:
    valid: bool
    digest_ok: bool
    signature_ok: bool
    cert_no: str
    reason: str  # empty when valid; otherwise every problem found, separated by "; "
    digest_value: str  # as written in ds:DigestValue
    signature_method: str  # the ds:SignatureMethod Algorithm URI
    algorithm: str  # ALG_RSA / ALG_SM2: the certificate's, else the one SignatureMethod names
    certificate: CertificateInfo | None
    computed_digest: str = ""  # what the digest of the document without its Signature is


# --- parsing ---------------------------------------------------------------------------


def _prolog_has_doctype(text: str) -> bool:
    # A DOCTYPE can only sit in the prolog: skip the declaration, comments, PIs and
    # whitespace and look at what comes next, before libxml2 sees any entity declaration.
    pos = 1 if text.startswith("\ufeff") else 0
    while match := _PROLOG_ITEM.match(text, pos):
        pos = match.end()
    return text[pos : pos + 9].upper() == "<!DOCTYPE"


def _declared_encoding_check(text: str) -> None:
    match = _XML_DECL.match(text, 1 if text.startswith("\ufeff") else 0)
    if not match:
        return
    encoding = _DECL_ENCODING.search(match.group(0))
    if encoding and encoding.group(2).strip().lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise XmlInputError(
            "bad_encoding",
            f"the XML declaration names encoding {encoding.group(2)!r}; send the document as UTF-8 "
            'with encoding="UTF-8" in the declaration (or no encoding attribute)',
        )


def xml_parse_safe(text: str) -> etree._ElementTree:
    """Parse XML text with no DTD, no entity expansion and no network; refuse any DOCTYPE.

    Raises XmlInputError (not_well_formed, doctype_forbidden, bad_encoding)."""
    if not text.strip():
        raise XmlInputError("not_well_formed", "the XML is not well-formed: the document is empty")
    _declared_encoding_check(text)
    if _prolog_has_doctype(text):
        raise XmlInputError(
            "doctype_forbidden",
            "the document has a DOCTYPE declaration; DTDs and entities are not allowed in customs messages, "
            "remove the <!DOCTYPE ...> line",
        )
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise XmlInputError(
            "bad_encoding", f"the text cannot be encoded as UTF-8 (character {exc.start}: {exc.reason})"
        ) from None
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        remove_comments=False,
        remove_pis=False,
        remove_blank_text=False,
        collect_ids=False,
        huge_tree=False,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        detail = _LIBXML_POSITION.sub("", exc.msg or str(exc))
        raise XmlInputError(
            "not_well_formed", f"the XML is not well-formed: line {line}, column {column}: {detail}"
        ) from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None or tree.docinfo.externalDTD is not None:
        raise XmlInputError("doctype_forbidden", "the document has a DOCTYPE declaration; DTDs are not allowed")
    return tree


def _qname(element: etree._Element) -> str:
    local = etree.QName(element).localname
    return f"{element.prefix}:{local}" if element.prefix else local


def ceb_document_check(text: str) -> CebDocument:
    """Parse an unsigned CEB message: root `CEB<nnn>Message` in the CEB namespace, no ds:Signature.

    Raises XmlInputError (the parse codes, not_ceb, already_signed, empty_root)."""
    tree = xml_parse_safe(text)
    root = tree.getroot()
    name = etree.QName(root)
    if name.namespace != CEB_NS or not _CEB_ROOT_NAME.fullmatch(name.localname):
        found = f"<{_qname(root)}>" + (f" in namespace {name.namespace}" if name.namespace else " in no namespace")
        raise XmlInputError(
            "not_ceb",
            f"the root element is {found}; a customs message has root ceb:CEB<nnn>Message "
            f"in namespace {CEB_NS} (e.g. ceb:CEB621Message)",
        )
    signature = next(root.iter(_ds("Signature")), None)
    if signature is not None:
        raise XmlInputError(
            "already_signed",
            f"the document already has a ds:Signature (line {signature.sourceline}); "
            "send the unsigned message, it is signed once",
        )
    document = CebDocument(tree=tree, message_type=name.localname, root_qname=_qname(root))
    _root_close_start(text, document)  # where the signature would go: refused now, not after the card signed
    return document


# --- digest and signature text ---------------------------------------------------------


def _c14n_sha1_b64(tree: etree._ElementTree, *, with_comments: bool) -> str:
    canonical = etree.tostring(tree, method="c14n", exclusive=False, with_comments=with_comments)
    return base64.b64encode(hashlib.sha1(canonical).digest()).decode("ascii")


def ceb_digest(text: str) -> str:
    """DigestValue of an unsigned document: base64(SHA-1(C14N 1.0 with comments))."""
    return _c14n_sha1_b64(xml_parse_safe(text), with_comments=True)


def ceb_document_digest(document: CebDocument) -> str:
    """`ceb_digest` of a document already parsed by `ceb_document_check` (no second parse)."""
    return _c14n_sha1_b64(document.tree, with_comments=True)


def signature_method_uri(algorithm: str, override: str = "") -> str:
    """The SignatureMethod URI for a card: by its certificate's algorithm (ALG_RSA / ALG_SM2)
    unless the card device overrides it with "rsa-sha1" or "sm2-sm3"."""
    if override:
        if override not in _METHOD_OVERRIDES:
            raise ValueError(f"signature method override must be rsa-sha1 or sm2-sm3, not {override!r}")
        return SIGNATURE_METHOD_URIS[_METHOD_OVERRIDES[override]]
    if algorithm not in SIGNATURE_METHOD_URIS:
        raise ValueError(f"unknown certificate algorithm {algorithm!r}")
    return SIGNATURE_METHOD_URIS[algorithm]


def ceb_signed_info(*, signature_method_uri: str, digest: str) -> str:
    """The one-line canonical SignedInfo the card signs (spec step 3)."""
    if not _BASE64_TEXT.fullmatch(digest):
        raise ValueError("digest must be base64 text")
    if not signature_method_uri or re.search(r"[\"<>&\s]", signature_method_uri):
        raise ValueError("signature method URI is empty or has characters that need escaping")
    return _SIGNED_INFO_TEMPLATE.format(signature_method=signature_method_uri, digest=digest)


def _xml_text(value: str, *, what: str) -> str:
    if _XML_FORBIDDEN_CHARS.search(value):
        raise ValueError(f"{what} contains characters XML cannot carry")
    return escape(value)


def _nl_flexible(text: str) -> str:
    # The parser turns \r\n and \r into \n; the original text may have either.
    return r"(?:\r\n|\r|\n)".join(re.escape(part) for part in text.split("\n"))


def _epilogue_item_start(text: str, end: int, node: etree._Element) -> int:
    """Where `node` (a comment or PI after the root) begins, given that it ends at `end`."""
    if isinstance(node, etree._Comment):
        opener = "<!--"
        pattern = re.compile("<!--" + _nl_flexible(node.text or "") + "-->", re.S)
    elif isinstance(node, etree._ProcessingInstruction):
        data = node.text or ""
        middle = f"{_XML_WS}+{_nl_flexible(data)}" if data else f"{_XML_WS}*"
        opener = "<?" + node.target
        pattern = re.compile(re.escape(opener) + middle + r"\?>", re.S)
    else:
        raise XmlInputError("not_well_formed", "unexpected content after the root element")
    # The rightmost opener whose whole item matches what the parser saw ends exactly at `end`.
    start = text.rfind(opener, 0, end)
    while start >= 0:
        if pattern.fullmatch(text, start, end):
            return start
        start = text.rfind(opener, 0, start)
    raise XmlInputError("not_well_formed", "could not locate the content after the root element")


def _whitespace_rstrip(text: str, end: int) -> int:
    while end > 0 and text[end - 1] in " \t\r\n":
        end -= 1
    return end


def _root_close_start(text: str, document: CebDocument) -> int:
    """Offset of the root's closing tag: walk back over the comments and PIs that follow the
    root (known from the parse), so a comment quoting the closing tag cannot fool us."""
    root = document.tree.getroot()
    end = _whitespace_rstrip(text, len(text))
    for node in reversed(list(root.itersiblings())):
        end = _whitespace_rstrip(text, _epilogue_item_start(text, end, node))
    if text.endswith("/>", 0, end):
        raise XmlInputError(
            "empty_root",
            f"the root element <{document.root_qname}/> is empty (self-closing); a customs message has content "
            "and the signature goes before its closing tag",
        )
    if not text.endswith(">", 0, end):
        raise XmlInputError("not_well_formed", f"could not locate the closing tag </{document.root_qname}>")
    start = text.rfind("</" + document.root_qname, 0, end)
    between = text[start + 2 + len(document.root_qname) : end - 1] if start >= 0 else "x"
    if start < 0 or between.strip(" \t\r\n"):
        raise XmlInputError("not_well_formed", f"could not locate the closing tag </{document.root_qname}>")
    return start


def ceb_signature_insert(
    text: str, *, signed_info: str, signature_value: str, cert_no: str, certificate_b64: str,
    document: CebDocument | None = None,
) -> str:
    """The signed document (spec step 6): `text` with one ds:Signature element inserted
    immediately before the root's closing tag and nothing else changed. `document`: the
    result of `ceb_document_check(text)` when the caller has it (saves a parse)."""
    if not signed_info.startswith("<ds:SignedInfo ") or not signed_info.endswith("</ds:SignedInfo>"):
        raise ValueError("signed_info must be the ds:SignedInfo text from ceb_signed_info")
    document = document or ceb_document_check(text)
    position = _root_close_start(text, document)
    signature = (
        f'<ds:Signature xmlns:ds="{DS_NS}">'
        f"{signed_info}"
        f"<ds:SignatureValue>{_xml_text(signature_value, what='signature value')}</ds:SignatureValue>"
        "<ds:KeyInfo>"
        f"<ds:KeyName>{_xml_text(cert_no, what='certNo')}</ds:KeyName>"
        f"<ds:X509Data><ds:X509Certificate>{_xml_text(certificate_b64, what='certificate')}</ds:X509Certificate>"
        "</ds:X509Data>"
        "</ds:KeyInfo>"
        "</ds:Signature>"
    )
    return text[:position] + signature + text[position:]


# --- verification ----------------------------------------------------------------------


def _element_remove_keep_tail(element: etree._Element) -> None:
    # lxml's remove() takes the element's tail text with it; the transform must keep it.
    parent = element.getparent()
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _method_name(uri: str) -> str:
    return uri.rsplit("#", 1)[-1] if uri else "(missing)"


def _algorithm_name(algorithm: str) -> str:
    return "SM2" if algorithm == ALG_SM2 else "RSA"


def _reference_problems(signed_info: etree._Element) -> list[str]:
    """What in ds:Reference differs from the customs profile (URI="", enveloped, SHA-1)."""
    references = signed_info.findall(_ds("Reference"))
    if len(references) != 1:
        return [f"ds:SignedInfo has {len(references)} ds:Reference elements; customs expects exactly one"]
    reference = references[0]
    problems = []
    if reference.get("URI") != "":
        problems.append(f'ds:Reference URI is {reference.get("URI")!r}; customs expects URI="" (the whole document)')
    transforms = [t.get("Algorithm", "") for t in reference.iterfind(f"{_ds('Transforms')}/{_ds('Transform')}")]
    if transforms != [ENVELOPED_URI]:
        problems.append(f"ds:Transforms are {transforms or 'missing'}; customs expects only {ENVELOPED_URI}")
    digest_method = reference.find(_ds("DigestMethod"))
    digest_uri = digest_method.get("Algorithm", "") if digest_method is not None else ""
    if digest_uri != SHA1_URI:
        problems.append(f"DigestMethod is {digest_uri or '(missing)'}; customs expects {SHA1_URI}")
    return problems


def _signature_bytes_problem(certificate: CertificateInfo, signature_b64: str, candidates: list[bytes]) -> str:
    """Why a SignatureValue does not verify, as precisely as the bytes allow."""
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return "SignatureValue is not valid base64"
    if certificate.algorithm == ALG_SM2 and len(raw) != 64:
        hint = ""
        try:
            der = asn1_algos.DSASignature.load(raw, strict=True)
            r_s = der["r"].native.to_bytes(32, "big") + der["s"].native.to_bytes(32, "big")
            if any(signature_verify(certificate, c, base64.b64encode(r_s).decode()) for c in candidates):
                hint = " (it is a valid ASN.1 DER-encoded SM2 signature: convert it to raw r||s)"
        except (ValueError, OverflowError, TypeError):
            pass
        return f"SignatureValue is {len(raw)} bytes; customs expects a raw SM2 r||s signature of 64 bytes{hint}"
    if certificate.algorithm == ALG_RSA:
        size = (certificate.public_key.n.bit_length() + 7) // 8
        if len(raw) != size:
            return f"SignatureValue is {len(raw)} bytes; the certificate's RSA key makes {size}-byte signatures"
    return (
        "SignatureValue does not verify with the certificate in X509Certificate: the SignedInfo was changed "
        "after signing, or it was signed with another card's key"
    )


def ceb_verify(text: str) -> VerifyResult:
    """Verify an enveloped CEB signature made by any tool: the digest over the document without
    its Signature (C14N with comments, SHA-1) and the SignatureValue over the canonical
    SignedInfo with the key of ds:X509Certificate.

    Raises XmlInputError when the text is not well-formed or has a DOCTYPE; every other
    problem is reported in the result's `reason`."""
    tree = xml_parse_safe(text)
    root = tree.getroot()
    signatures = list(root.iter(_ds("Signature")))

    def unsigned(reason: str, **found) -> VerifyResult:
        fields = dict(cert_no="", digest_value="", signature_method="", algorithm="", certificate=None)
        fields.update(found)
        return VerifyResult(valid=False, digest_ok=False, signature_ok=False, reason=reason, **fields)

    if not signatures:
        return unsigned("no ds:Signature element: the document is not signed")
    if len(signatures) > 1:
        return unsigned(f"the document has {len(signatures)} ds:Signature elements; a CEB message carries exactly one")
    signature = signatures[0]
    if signature.getparent() is not root:
        parent = signature.getparent()
        return unsigned(
            f"ds:Signature is inside <{_qname(parent)}> (line {signature.sourceline}); "
            f"it must be a direct child of the root element <{_qname(root)}>"
        )
    signed_info = signature.find(_ds("SignedInfo"))
    cert_no = _text(signature.find(f"{_ds('KeyInfo')}/{_ds('KeyName')}"))
    if signed_info is None:
        return unsigned("ds:Signature has no ds:SignedInfo child", cert_no=cert_no)

    method_element = signed_info.find(_ds("SignatureMethod"))
    method_uri = method_element.get("Algorithm", "") if method_element is not None else ""
    digest_value = _text(signed_info.find(f"{_ds('Reference')}/{_ds('DigestValue')}"))
    signature_value = "".join((signature.findtext(_ds("SignatureValue")) or "").split())
    certificate_text = "".join(
        (signature.findtext(f"{_ds('KeyInfo')}/{_ds('X509Data')}/{_ds('X509Certificate')}") or "").split()
    )
    c14n_element = signed_info.find(_ds("CanonicalizationMethod"))
    c14n_uri = c14n_element.get("Algorithm", "") if c14n_element is not None else ""

    # Candidate (a): SignedInfo canonicalised where it stands (inclusive C14N renders the
    # ancestors' namespaces); computed before the enveloped transform detaches it.
    candidates = [etree.tostring(signed_info, method="c14n", exclusive=False, with_comments=False)]
    if method_uri and digest_value:
        try:
            fixed = ceb_signed_info(signature_method_uri=method_uri, digest=digest_value).encode("utf-8")
        except ValueError:
            fixed = None
        if fixed is not None and fixed not in candidates:
            candidates.append(fixed)  # (b) the spec's fixed line, what the Java tool signs

    # Digest: the enveloped-signature transform, then C14N with comments and SHA-1.
    _element_remove_keep_tail(signature)
    computed = _c14n_sha1_b64(tree, with_comments=True)
    digest_problems = _reference_problems(signed_info)
    if not digest_value:
        digest_problems.append("ds:DigestValue is missing or empty")
    elif computed != digest_value:
        if _c14n_sha1_b64(tree, with_comments=False) == digest_value:
            digest_problems.append(
                f"digest mismatch: DigestValue {digest_value} was computed without the document's comments; "
                f"customs computes it over C14N with comments ({computed}): sign the document again"
            )
        else:
            digest_problems.append(
                f"digest mismatch: the document was changed after signing "
                f"(computed {computed}, DigestValue says {digest_value})"
            )
    digest_ok = not digest_problems

    # Signature: the certificate's key over the canonical SignedInfo.
    certificate = None
    signature_problems: list[str] = []
    method_algorithm = _METHOD_ALGORITHMS.get(method_uri, "")
    if not certificate_text:
        signature_problems.append("no ds:X509Certificate in ds:KeyInfo/ds:X509Data: the signing certificate is missing")
    else:
        try:
            certificate = certificate_load(certificate_text)
        except CertificateRefused as exc:
            raise XmlInputError("CERTIFICATE_REFUSED", f"the X509Certificate's key is refused: {exc}") from None
        except CertificateError as exc:
            signature_problems.append(f"X509Certificate is not a readable certificate: {exc}")
    if c14n_uri != C14N_URI:
        signature_problems.append(f"CanonicalizationMethod is {c14n_uri or '(missing)'}; customs expects {C14N_URI}")
    if not method_algorithm:
        signature_problems.append(
            f"SignatureMethod {method_uri or '(missing)'} is not supported; customs expects "
            f"{SIGNATURE_METHOD_URIS[ALG_RSA]} or {SIGNATURE_METHOD_URIS[ALG_SM2]}"
        )
    if not signature_value:
        signature_problems.append("ds:SignatureValue is missing or empty")
    if certificate is not None and signature_value:
        verifies = any(signature_verify(certificate, candidate, signature_value) for candidate in candidates)
        if method_algorithm and method_algorithm != certificate.algorithm:
            note = " (the SignatureValue itself verifies: only the SignatureMethod is wrong)" if verifies else ""
            signature_problems.append(
                f"SignatureMethod {_method_name(method_uri)} does not match the certificate's "
                f"{_algorithm_name(certificate.algorithm)} key{note}"
            )
        elif not verifies:
            signature_problems.append(_signature_bytes_problem(certificate, signature_value, candidates))
    signature_ok = not signature_problems

    return VerifyResult(
        valid=digest_ok and signature_ok,
        digest_ok=digest_ok,
        signature_ok=signature_ok,
        cert_no=cert_no,
        reason="; ".join(digest_problems + signature_problems),
        digest_value=digest_value,
        signature_method=method_uri,
        algorithm=certificate.algorithm if certificate is not None else method_algorithm,
        certificate=certificate,
        computed_digest=computed,
    )
