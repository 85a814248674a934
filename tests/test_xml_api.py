"""The customs endpoints of the native API through a real ASGI server
(docs/ceb-xml-and-179.md, docs/signing-api.md §5):

- `POST /api/v1/sign/xml` with the published CEB621Message vector on an RSA and an SM2 card,
  every part of the result checked independently (lxml C14N digest, the spec's SignedInfo line
  verified with the card certificate and the embedded one, byte-for-byte enveloped transform),
  the stored document and its audit event;
- `POST /api/v1/verify/xml` on good, tampered, unsigned and foreign documents;
- hostile input (entities, XXE, DOCTYPE, path traversal in names, oversized bodies) refused
  before the card is used and before anything is stored; a ~5 MB message signs and verifies;
- `/api/v1/xml-documents`: create, list with filters and pages, read, versions, soft delete,
  isolation between access IDs, scopes, one audit event per request;
- `POST /api/v1/sign/179`: the published vector, textual numbers, missing fields, and the
  upload to a fake customs server (accepted, 20004, HTTP 500, not JSON, timeout, refused).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from lxml import etree

from accessids.services import access_id_create
from audit.models import AuditEvent
from core.certs import certificate_load, signature_verify
from tests.conftest import SimulatorProcess, database_text, test_database_url
from tests.live import CardPlatforms, Platform, only_card_row, services_env
from tests.receivers import QuietServer
from tests.services import free_port
from tests.test_api import assert_error, call, certificate, events
from xmlstore.models import XmlDocument, XmlDocumentVersion

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

# Copies of shared/spec/vectors, plus the one-line SignedInfo of the spec's step 3.
VECTORS = Path(__file__).resolve().parent / "vectors"
CEB621 = (VECTORS / "CEB621Message.xml").read_bytes().decode("utf-8")  # bytes: no newline translation
CEB621_DIGEST = "b2FtM/jHvW4fnJpMMPWk/177RwA="
PAY179_RAW = (VECTORS / "179-payload.json").read_bytes()
PAY179_SIGN_STRING = (VECTORS / "179-sign-string.txt").read_bytes().decode("utf-8")
if PAY179_SIGN_STRING.endswith("\n"):  # a file's final newline is not part of the string
    PAY179_SIGN_STRING = PAY179_SIGN_STRING[:-1]

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"ds": DS_NS, "ceb": "http://www.chinaport.gov.cn/ceb"}
METHOD_URIS = {"rsa": DS_NS + "rsa-sha1", "sm2": DS_NS + "sm2-sm3"}
ALGORITHMS = {"rsa": "RSA-SHA1", "sm2": "SM2-SM3"}
SIGNATURE_RE = re.compile(r'<ds:Signature xmlns:ds="http://www\.w3\.org/2000/09/xmldsig#">.*?</ds:Signature>', re.S)
ORDER_NO = "48037605991776256"  # ceb:orderNo of the vector
UPLOAD_TIMEOUT = 2.0


def spec_signed_info_template() -> str:
    """The one line of spec step 3, copied from the spec (not from the code under test)."""
    line = (VECTORS / "SignedInfo-template.txt").read_text(encoding="utf-8")
    assert "{SIGNATURE_METHOD}" in line and "{DIGEST}" in line
    return line


def spec_signed_info(method_uri: str, digest: str) -> str:
    return spec_signed_info_template().replace("{SIGNATURE_METHOD}", method_uri).replace("{DIGEST}", digest)


def lxml_digest(text: str) -> str:
    """DigestValue per the spec, computed here: C14N 1.0 with comments, SHA-1, base64."""
    canonical = etree.tostring(etree.fromstring(text.encode("utf-8")).getroottree(), method="c14n",
                               with_comments=True)
    return base64.b64encode(hashlib.sha1(canonical).digest()).decode()


# --- a fake customs 179 upload endpoint ----------------------------------------------------


class FakeCustoms:
    """`realTimeDataUpload` on 127.0.0.1: records every POST; `behaviour` says how it answers."""

    PATH = "/ceb2grab/grab/realTimeDataUpload"

    def __init__(self) -> None:
        self.behaviour = "10000"
        self.sleep_seconds = UPLOAD_TIMEOUT + 2
        self.received: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.lock:
                    fake.received.append({"path": self.path, "content_type": self.headers.get("Content-Type", ""),
                                          "body": body})
                behaviour = fake.behaviour
                if behaviour == "timeout":
                    time.sleep(fake.sleep_seconds)
                status, content_type, payload = {
                    "10000": (200, "application/json", {"code": "10000", "message": "", "total": 0,
                                                        "serviceTime": 1544519952469}),
                    "20004": (200, "application/json", {"code": "20004", "message": "", "total": 0,
                                                        "serviceTime": 1544519952469}),
                    "http500": (500, "text/html", "<html><body>Internal Server Error</body></html>"),
                    "nonjson": (200, "text/html", "<html><body>系统维护中</body></html>"),
                    "timeout": (200, "application/json", {"code": "10000", "message": ""}),
                }[behaviour]
                raw = (json.dumps(payload) if isinstance(payload, dict) else payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type + "; charset=utf-8")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:  # the platform gave up waiting (timeout case)
                    pass

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-customs", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.PATH}"

    def start(self) -> FakeCustoms:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, behaviour: str) -> None:
        with self.lock:
            self.behaviour = behaviour
            self.received.clear()


@pytest.fixture(scope="module")
def customs():
    fake = FakeCustoms().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def xml_platforms(django_db_setup, django_db_blocker, tmp_path_factory, customs):
    """One platform per card algorithm (started on first use) on the default body limit,
    uploading 179 data to the fake customs server."""

    def start(algorithm: str) -> tuple[SimulatorProcess, Platform]:
        tmp = tmp_path_factory.mktemp(f"xml-{algorithm}")
        slug = f"xml-{algorithm}"
        sim = SimulatorProcess(algorithm=algorithm, key_dir=str(tmp / "keys")).start()
        with django_db_blocker.unblock():
            only_card_row(slug)
            env = services_env(
                test_database_url(), tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin, UKEY_DEFAULT_DEVICE=slug,
                # No periodic probes: the simulator's operation count shows every card call.
                UKEY_PROBE_INTERVAL="3600",
                CUSTOMS_179_UPLOAD_URL=customs.url, CUSTOMS_179_UPLOAD_TIMEOUT=str(UPLOAD_TIMEOUT),
            )
            env.pop("API_MAX_BODY_BYTES", None)  # the default limit (10 MiB)
            return sim, Platform(env, tmp).start()

    platforms = CardPlatforms(start, db_blocker=django_db_blocker)
    yield platforms
    platforms.stop()


@pytest.fixture
def rsa(xml_platforms):
    return xml_platforms("rsa")


def card_operations(sim: SimulatorProcess) -> int:
    return asyncio.run(sim.control("sim_stats")).data[0]["operations"]


def sign_xml(platform, access, secret, xml: str, **fields):
    body = json.dumps({"xml": xml, **fields}).encode("ascii")  # \uXXXX escapes: lone surrogates travel too
    return call(platform, "POST", "/api/v1/sign/xml", raw_body=body, access=access, secret=secret)


def verify_xml(platform, access, secret, xml: str):
    status, headers, body = call(platform, "POST", "/api/v1/verify/xml",
                                 raw_body=json.dumps({"xml": xml}, ensure_ascii=False).encode("utf-8"),
                                 access=access, secret=secret)
    assert status == 200, body
    return body


# --- POST /api/v1/sign/xml: the published vector on both card kinds --------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "sm2"])
def test_sign_xml_vector_verifies_independently(xml_platforms, algorithm):
    sim, platform = xml_platforms(algorithm)
    access, secret = access_id_create(name=f"ERP {algorithm}")
    card = certificate(platform, access, secret)
    card_cert = certificate_load(card["certificate_pem"])

    status, headers, body = sign_xml(platform, access, secret, CEB621, filename="CEB621-vector", directory="out")
    assert status == 200, body
    assert set(body) == {"signed_xml", "digest_value", "signature_value", "signature_method", "cert_no", "algorithm",
                         "device", "document_id", "filename", "directory", "version", "request_id"}
    assert body["request_id"] == headers["X-Request-ID"]
    assert (body["filename"], body["directory"], body["version"]) == ("CEB621-vector.xml", "out", 1)
    assert body["algorithm"] == ALGORITHMS[algorithm] and body["device"] == f"xml-{algorithm}"
    assert body["cert_no"] == card["cert_no"]
    signed = body["signed_xml"]

    # The published digest, and the same digest computed here with lxml.
    assert body["digest_value"] == CEB621_DIGEST
    assert lxml_digest(CEB621) == CEB621_DIGEST

    # Enveloped: exactly one Signature, right before the root's closing tag; removing it gives
    # back the original byte for byte.
    (found,) = SIGNATURE_RE.findall(signed)
    assert signed.endswith(found + "</ceb:CEB621Message>")
    assert SIGNATURE_RE.sub("", signed) == CEB621
    assert SIGNATURE_RE.sub("", signed).encode("utf-8") == CEB621.encode("utf-8")

    # The XML structure: method URI by card kind, KeyName = certNo, DigestValue, SignatureValue.
    root = etree.fromstring(signed.encode("utf-8"))
    signature = root[-1]
    assert signature.tag == f"{{{DS_NS}}}Signature"
    assert root.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm") == METHOD_URIS[algorithm]
    assert body["signature_method"] == METHOD_URIS[algorithm]
    assert root.findtext("ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestValue", namespaces=NS) == CEB621_DIGEST
    assert root.findtext("ds:Signature/ds:SignatureValue", namespaces=NS) == body["signature_value"]
    assert root.findtext("ds:Signature/ds:KeyInfo/ds:KeyName", namespaces=NS) == body["cert_no"]

    # SignatureValue over the spec's fixed SignedInfo line, with the card's certificate ...
    line = spec_signed_info(METHOD_URIS[algorithm], CEB621_DIGEST).encode("utf-8")
    assert signature_verify(card_cert, line, body["signature_value"])
    assert not signature_verify(card_cert, line.replace(b"b2FtM", b"b2FtN"), body["signature_value"])
    # ... and with the certificate embedded in the document (the card's own).
    embedded = certificate_load(root.findtext("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate",
                                              namespaces=NS))
    assert embedded.der == card_cert.der
    assert signature_verify(embedded, line, body["signature_value"])
    # The text of SignedInfo inside the document is the line that was signed.
    assert spec_signed_info(METHOD_URIS[algorithm], CEB621_DIGEST) in signed

    # Stored: signed text, original, signing facts.
    document = XmlDocument.objects.get(pk=body["document_id"])
    assert document.content == signed and document.original_content == CEB621
    assert document.signed is True and document.cert_no == body["cert_no"]
    assert document.digest_value == CEB621_DIGEST and document.signature_value == body["signature_value"]
    assert document.signature_method == METHOD_URIS[algorithm] and document.message_type == "CEB621Message"
    assert document.access_id_id == access.pk and document.deleted_at is None
    assert document.sha256 == hashlib.sha256(signed.encode()).hexdigest()

    (event,) = events(request_id=body["request_id"])
    assert (event.outcome, event.http_status, event.endpoint) == ("OK", 200, "POST /api/v1/sign/xml")
    assert event.access_id_id == access.pk and event.cert_no == body["cert_no"]
    assert event.data_sha256 == hashlib.sha256(CEB621.encode("utf-8")).hexdigest()
    assert event.device == f"xml-{algorithm}"


def test_sign_xml_without_a_filename_names_the_document(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    status, _, body = sign_xml(platform, access, secret, CEB621)
    assert status == 200, body
    assert re.fullmatch(r"CEB621Message-\d{14}-[0-9a-f]{8}\.xml", body["filename"]), body["filename"]
    assert body["filename"].endswith(body["request_id"][:8] + ".xml") and body["directory"] == ""


def test_sign_xml_keeps_any_document_text_byte_for_byte(rsa):
    """Declarations, CRLF, comments and PIs around the root (one quoting the closing tag), a
    closing tag with whitespace, CDATA and character references, a default namespace."""
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    tail = "\r\n<!-- </ceb:CEB621Message> -->\r\n<?pi x?>\n"
    variants = {
        "declaration, CRLF, comments around": ('<?xml version="1.0" encoding="UTF-8"?>\r\n<!-- 报关 -->\r\n'
                                               + CEB621.replace("\n", "\r\n") + tail, "</ceb:CEB621Message>"),
        "whitespace in the closing tag": (CEB621.replace("</ceb:CEB621Message>", "</ceb:CEB621Message\n  >") + "\n",
                                          "</ceb:CEB621Message\n  >"),
        "CDATA and references": (CEB621.replace("<ceb:ieFlag>I</ceb:ieFlag>",
                                                '<ceb:ieFlag>I</ceb:ieFlag><ceb:note><![CDATA[a < b & "c"]]> &amp; '
                                                "&#x4E2D;&#20013;</ceb:note>"), "</ceb:CEB621Message>"),
        "default namespace": (CEB621.replace("xmlns:ceb=", "xmlns=").replace("<ceb:", "<").replace("</ceb:", "</"),
                              "</CEB621Message>"),
    }
    for name, (original, closing) in variants.items():
        status, _, body = sign_xml(platform, access, secret, original, filename=f"variant-{len(name)}")
        assert status == 200, (name, body)
        signed = body["signed_xml"]
        (found,) = SIGNATURE_RE.findall(signed)
        assert SIGNATURE_RE.sub("", signed) == original, name
        assert signed[signed.index(found) + len(found):].startswith(closing), name
        assert body["digest_value"] == lxml_digest(original), name
        result = verify_xml(platform, access, secret, signed)
        assert result["valid"] is True, (name, result)
        assert XmlDocument.objects.get(pk=body["document_id"]).original_content == original
    assert SIGNATURE_RE.sub("", signed).endswith("</CEB621Message>")


def test_sign_xml_twice_under_one_name_keeps_the_first_signed_version(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    first = sign_xml(platform, access, secret, CEB621, filename="same", directory="out")[2]
    changed = CEB621.replace(ORDER_NO, "48037605991776999")
    second = sign_xml(platform, access, secret, changed, filename="same.xml", directory="out")[2]
    assert (first["version"], second["version"]) == (1, 2) and first["document_id"] == second["document_id"]
    document = XmlDocument.objects.get(pk=second["document_id"])
    assert document.original_content == changed and document.digest_value == lxml_digest(changed)
    (kept,) = XmlDocumentVersion.objects.filter(document=document)
    assert kept.version == 1 and kept.signed and kept.content == first["signed_xml"]
    assert kept.original_content == CEB621 and kept.digest_value == CEB621_DIGEST


# --- POST /api/v1/verify/xml -------------------------------------------------------------------


def test_verify_xml_good_tampered_unsigned_and_foreign(xml_platforms):
    _, sm2_platform = xml_platforms("sm2")
    _, rsa_platform = xml_platforms("rsa")
    access, secret = access_id_create(name="ERP")
    signed = {}
    for name, platform in (("rsa", rsa_platform), ("sm2", sm2_platform)):
        status, _, body = sign_xml(platform, access, secret, CEB621)
        assert status == 200, body
        signed[name] = body

    good = verify_xml(rsa_platform, access, secret, signed["rsa"]["signed_xml"])
    assert (good["valid"], good["digest_ok"], good["signature_ok"], good["reason"]) == (True, True, True, "")
    assert good["cert_no"] == signed["rsa"]["cert_no"] and good["digest_value"] == CEB621_DIGEST
    assert good["signature_method"] == METHOD_URIS["rsa"] and good["algorithm"] == "RSA-SHA1"
    assert good["certificate_subject"] and good["certificate_not_after"]

    # One digit of the order number changed after signing.
    text = signed["rsa"]["signed_xml"]
    assert text.count(ORDER_NO) == 1
    tampered = verify_xml(rsa_platform, access, secret, text.replace(ORDER_NO, ORDER_NO[:-1] + "7"))
    assert (tampered["valid"], tampered["digest_ok"]) == (False, False), tampered
    assert tampered["signature_ok"] is True, tampered
    assert "digest" in tampered["reason"].lower() and CEB621_DIGEST in tampered["reason"], tampered["reason"]

    # A changed SignatureValue.
    value = signed["rsa"]["signature_value"]
    forged = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
    bad_sig = verify_xml(rsa_platform, access, secret, text.replace(value, forged))
    assert (bad_sig["valid"], bad_sig["digest_ok"], bad_sig["signature_ok"]) == (False, True, False), bad_sig
    assert "SignatureValue" in bad_sig["reason"], bad_sig["reason"]

    # Not signed at all.
    unsigned = verify_xml(rsa_platform, access, secret, CEB621)
    assert (unsigned["valid"], unsigned["digest_ok"], unsigned["signature_ok"]) == (False, False, False)
    assert "no ds:Signature" in unsigned["reason"], unsigned["reason"]

    # The SM2 platform's output, verified by the RSA platform (no card involved).
    foreign = verify_xml(rsa_platform, access, secret, signed["sm2"]["signed_xml"])
    assert (foreign["valid"], foreign["digest_ok"], foreign["signature_ok"]) == (True, True, True), foreign
    assert foreign["algorithm"] == "SM2-SM3" and foreign["signature_method"] == METHOD_URIS["sm2"]
    assert foreign["cert_no"] == signed["sm2"]["cert_no"]

    outcomes = [(e.endpoint, e.outcome) for e in events(access_id=access, event_type=AuditEvent.API_REQUEST)]
    assert outcomes == [("POST /api/v1/sign/xml", "OK")] * 2 + [("POST /api/v1/verify/xml", "OK")] * 5


# --- hostile and unsuitable input ------------------------------------------------------------

CEB_OPEN = '<ceb:CEB621Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="x" version="v1.0">'
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
              for i in range(1, 10))
    + "]>\n" + CEB_OPEN + "<ceb:note>&lol9;</ceb:note></ceb:CEB621Message>"
)
XXE = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE ceb:CEB621Message [\n'
       '<!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>\n' + CEB_OPEN + "<ceb:note>&xxe;</ceb:note></ceb:CEB621Message>")
XXE_AFTER_COMMENT = ('<!-- harmless --><!doctype ceb:CEB621Message [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                     + CEB_OPEN + "</ceb:CEB621Message>")
HOSTILE = {
    "billion laughs": (BILLION_LAUGHS, "DOCTYPE"),
    "XXE file:///etc/passwd": (XXE, "DOCTYPE"),
    "parameter-entity XXE after a comment": (XXE_AFTER_COMMENT, "DOCTYPE"),
    "plain DOCTYPE": ("<!DOCTYPE ceb:CEB621Message>\n" + CEB621, "DOCTYPE"),
    "not well-formed": (CEB621[:-5], "not well-formed"),
    "undeclared entity": (CEB_OPEN + "<ceb:note>&xxe;</ceb:note></ceb:CEB621Message>", "not well-formed"),
    "non-CEB root": ('<Order xmlns="urn:x"><orderNo>1</orderNo></Order>', "root element"),
    "CEB root in no namespace": ("<CEB621Message><x/></CEB621Message>", "root element"),
    "empty": ("   ", None),
    "GBK declaration": ('<?xml version="1.0" encoding="GBK"?>' + CEB621, "encoding"),
    # A lone surrogate (sent as the JSON escape \ud800) is not UTF-8 text.
    "lone surrogate": (CEB621.replace("<ceb:orderNo>", "<ceb:orderNo>\ud800", 1), "UTF-8"),
}


def test_hostile_or_unsuitable_xml_is_refused_before_the_card_and_stores_nothing(rsa):
    sim, platform = rsa
    access, secret = access_id_create(name="ERP")
    status, _, first = sign_xml(platform, access, secret, CEB621)
    assert status == 200, first
    cases = dict(HOSTILE, **{"already signed": (first["signed_xml"], "already has a ds:Signature")})
    stored, versions = XmlDocument.objects.count(), XmlDocumentVersion.objects.count()
    operations = card_operations(sim)

    for name, (xml, expected) in cases.items():
        body = assert_error(sign_xml(platform, access, secret, xml, filename=f"hostile-{len(name)}"),
                            400, "INVALID_REQUEST")
        if expected:
            assert expected.lower() in body["message"].lower(), (name, body["message"])
        assert "root:x:0:0" not in json.dumps(body, ensure_ascii=False), name
        # The same documents, offered to the verifier and to the plain store.
        if name != "already signed":
            if name not in ("non-CEB root", "CEB root in no namespace"):  # the verifier reports those in `reason`
                assert_error(call(platform, "POST", "/api/v1/verify/xml", {"xml": xml}, access=access, secret=secret),
                             400, "INVALID_REQUEST")
            if expected in ("DOCTYPE", "not well-formed", None, "encoding", "UTF-8"):
                store = assert_error(call(platform, "POST", "/api/v1/xml-documents",
                                          {"filename": "h.xml", "xml": xml}, access=access, secret=secret),
                                     400, "INVALID_REQUEST")
                assert "root:x:0:0" not in json.dumps(store)

    assert (XmlDocument.objects.count(), XmlDocumentVersion.objects.count()) == (stored, versions)
    assert card_operations(sim) == operations, "a refused document must not cost a card call"
    assert "root:x:0:0" not in database_text()
    assert "root:x:0:0" not in platform.log
    refused = events(access_id=access, outcome="INVALID_REQUEST")
    assert refused and all(e.http_status == 400 for e in refused)


@pytest.mark.parametrize("field", ["filename", "directory", "both"])
def test_path_traversal_names_are_refused_everywhere(rsa, field):
    sim, platform = rsa
    access, secret = access_id_create(name="ERP")
    certificate(platform, access, secret)  # any first-use card calls happen before counting
    stored = XmlDocument.objects.count()
    operations = card_operations(sim)
    for bad in ["../x", "/etc/passwd", "a/../../b", "C:\\x", "..", "a/./b", "../../../../etc/cron.d/x"]:
        names = {"filename": "ok.xml", "directory": "in"}
        if field in ("filename", "both"):
            names["filename"] = bad
        if field in ("directory", "both"):
            names["directory"] = bad
        body = assert_error(sign_xml(platform, access, secret, CEB621, **names), 400, "INVALID_REQUEST")
        named = {"filename": ["filename"], "directory": ["directory"], "both": ["filename", "directory"]}[field]
        assert any(n in body["message"] and n in body["details"]["fields"] for n in named), (bad, body)
        assert_error(call(platform, "POST", "/api/v1/xml-documents", dict(names, xml="<a>1</a>"),
                          access=access, secret=secret), 400, "INVALID_REQUEST")
        # As list filters they are refused too (not silently matching nothing).
        query = urllib.parse.urlencode({"directory" if field == "directory" else "filename": bad})
        assert_error(call(platform, "GET", "/api/v1/xml-documents?" + query, access=access, secret=secret),
                     400, "INVALID_REQUEST")
    assert XmlDocument.objects.count() == stored
    assert card_operations(sim) == operations, "names are checked before the card is used"


def test_a_20_mb_body_is_refused_and_nothing_is_stored(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    stored = XmlDocument.objects.count()
    big = CEB621.replace("</ceb:CEB621Message>", "<!--" + "x" * (20 * 1024 * 1024) + "--></ceb:CEB621Message>")
    body = assert_error(sign_xml(platform, access, secret, big), 413, "PAYLOAD_TOO_LARGE")
    assert body["details"]["limit"] == 10 * 1024 * 1024
    assert_error(call(platform, "POST", "/api/v1/xml-documents", raw_body=json.dumps({"filename": "big",
                 "xml": big}).encode(), access=access, secret=secret), 413, "PAYLOAD_TOO_LARGE")
    assert XmlDocument.objects.count() == stored
    refused = events(access_key=access.key, event_type=AuditEvent.API_REQUEST)
    assert [(e.outcome, e.http_status) for e in refused] == [("PAYLOAD_TOO_LARGE", 413)] * 2


def test_a_5_mb_message_signs_and_verifies(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    start = CEB621.index("<ceb:InventoryList>")
    end = CEB621.index("</ceb:InventoryList>") + len("</ceb:InventoryList>")
    item = CEB621[start:end]
    copies = (5 * 1024 * 1024) // len((item + "\n        ").encode("utf-8")) + 1
    items = "\n        ".join(item.replace("<ceb:gnum>1</ceb:gnum>", f"<ceb:gnum>{i + 1}</ceb:gnum>")
                              for i in range(copies))
    big = CEB621[:start] + items + CEB621[end:]
    assert 5 * 1024 * 1024 <= len(big.encode("utf-8")) < 6 * 1024 * 1024

    started = time.monotonic()
    status, _, body = sign_xml(platform, access, secret, big, filename="big-621")
    signed_in = time.monotonic() - started
    assert status == 200, body
    assert body["digest_value"] == lxml_digest(big)
    assert SIGNATURE_RE.sub("", body["signed_xml"]) == big
    started = time.monotonic()
    result = verify_xml(platform, access, secret, body["signed_xml"])
    verified_in = time.monotonic() - started
    assert result["valid"] is True, result
    print(f"\n~{len(big.encode()) / 1048576:.1f} MB CEB621Message ({copies} items): "
          f"signed in {signed_in:.2f} s, verified in {verified_in:.2f} s")
    assert XmlDocument.objects.get(pk=body["document_id"]).original_content == big


# --- /api/v1/xml-documents ----------------------------------------------------------------------


class Recorder:
    """Calls the API and remembers each answer, to check one audit event per request."""

    def __init__(self, platform):
        self.platform = platform
        self.seen: list[tuple[str, int, str]] = []

    def __call__(self, method, path, payload=None, *, access, secret):
        raw = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        status, headers, body = call(self.platform, method, path, raw_body=raw, access=access, secret=secret)
        code = body.get("code", "ERROR") if status >= 400 else "OK"
        self.seen.append((headers["X-Request-ID"], status, code))
        return status, headers, body

    def assert_audited(self):
        for request_id, status, code in self.seen:
            found = events(request_id=request_id)
            assert len(found) == 1, (request_id, status, code, found)
            assert (found[0].http_status, found[0].outcome) == (status, code), (request_id, found[0].outcome)


def doc(order: str, extra: str = "") -> str:
    return f'<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb"><ceb:orderNo>{order}</ceb:orderNo>{extra}</ceb:CEB311Message>'


def test_xml_documents_lifecycle_filters_versions_and_soft_delete(rsa):
    _, platform = rsa
    api = Recorder(platform)
    owner, secret = access_id_create(name="ERP")

    status, _, created = api("POST", "/api/v1/xml-documents",
                             {"filename": "order-1", "directory": "in/2024", "xml": doc("SO-1001", "订单")},
                             access=owner, secret=secret)
    assert status == 201, created
    assert (created["filename"], created["directory"], created["path"]) == ("order-1.xml", "in/2024",
                                                                             "in/2024/order-1.xml")
    assert created["version"] == 1 and created["signed"] is False and created["access_id"] == owner.key
    for name, directory, order in [("order-2.xml", "in/2024", "SO-1002"), ("order-3.xml", "in/2024", "SO-1003"),
                                   ("order-1.xml", "out", "SO-2001"), ("top.xml", "", "SO-3001")]:
        status, _, body = api("POST", "/api/v1/xml-documents", {"filename": name, "directory": directory,
                                                                "xml": doc(order)}, access=owner, secret=secret)
        assert status == 201, body
    status, _, signed = api("POST", "/api/v1/sign/xml", {"xml": CEB621, "filename": "declared", "directory": "in/2024"},
                            access=owner, secret=secret)
    assert status == 200, signed

    def listing(query=""):
        status, _, body = api("GET", "/api/v1/xml-documents" + query, access=owner, secret=secret)
        assert status == 200, body
        return body

    everything = listing()
    assert (everything["count"], everything["page"], everything["pages"]) == (6, 1, 1)
    assert everything["page_size"] == 50
    assert "xml" not in everything["results"][0] and "content" not in everything["results"][0]
    assert [r["path"] for r in listing("?directory=in/2024")["results"]] == [
        "in/2024/declared.xml", "in/2024/order-1.xml", "in/2024/order-2.xml", "in/2024/order-3.xml"]
    assert [r["path"] for r in listing("?directory=")["results"]] == ["top.xml"]
    assert sorted(r["path"] for r in listing("?filename=order-1")["results"]) == ["in/2024/order-1.xml",
                                                                                "out/order-1.xml"]
    signed_only = listing("?signed=true")
    assert [r["id"] for r in signed_only["results"]] == [signed["document_id"]]
    assert signed_only["results"][0]["cert_no"] == signed["cert_no"]
    assert signed_only["results"][0]["digest_value"] == CEB621_DIGEST
    assert listing("?signed=false")["count"] == 5
    assert [r["path"] for r in listing("?q=SO-1002")["results"]] == ["in/2024/order-2.xml"]
    assert [r["id"] for r in listing("?q=" + ORDER_NO)["results"]] == [signed["document_id"]]
    assert listing("?q=" + urllib.parse.quote("订单"))["count"] == 1
    assert listing("?directory=in/2024&signed=false&q=SO-100")["count"] == 3
    page2 = listing("?page=2&page_size=4")
    assert (page2["count"], page2["page"], page2["page_size"], page2["pages"], len(page2["results"])) == (6, 2, 4, 2, 2)
    page1 = listing("?page=1&page_size=4")
    assert not {r["id"] for r in page1["results"]} & {r["id"] for r in page2["results"]}
    assert listing("?page=3&page_size=4")["results"] == []

    # Read: the content and the signed document's original.
    status, _, one = api("GET", f"/api/v1/xml-documents/{created['id']}", access=owner, secret=secret)
    assert status == 200, one
    assert one["xml"] == doc("SO-1001", "订单") and one["versions"] == [] and one["version"] == 1
    status, _, sdoc = api("GET", f"/api/v1/xml-documents/{signed['document_id']}", access=owner, secret=secret)
    assert sdoc["xml"] == signed["signed_xml"] and sdoc["original_xml"] == CEB621 and sdoc["signed"] is True
    assert sdoc["signature_value"] == signed["signature_value"]

    # The same name again: version 2, version 1 kept.
    status, _, again = api("POST", "/api/v1/xml-documents",
                           {"filename": "order-1.xml", "directory": "in/2024", "xml": doc("SO-1001-B")},
                           access=owner, secret=secret)
    assert status == 201 and again["id"] == created["id"] and again["version"] == 2, again
    status, _, one = api("GET", f"/api/v1/xml-documents/{created['id']}", access=owner, secret=secret)
    assert one["xml"] == doc("SO-1001-B") and one["version"] == 2
    assert [v["version"] for v in one["versions"]] == [1]
    assert one["versions"][0]["sha256"] == hashlib.sha256(doc("SO-1001", "订单").encode()).hexdigest()
    (kept,) = XmlDocumentVersion.objects.filter(document_id=created["id"])
    assert kept.version == 1 and kept.content == doc("SO-1001", "订单")

    # Soft delete.
    status, _, deleted = api("DELETE", f"/api/v1/xml-documents/{created['id']}", access=owner, secret=secret)
    assert status == 200 and deleted["id"] == created["id"] and deleted["deleted"] is True, deleted
    row = XmlDocument.objects.get(pk=created["id"])
    assert row.deleted_at is not None and row.content == doc("SO-1001-B")
    assert row.deleted_request_id == deleted["request_id"]
    assert created["id"] not in [r["id"] for r in listing("?page_size=200")["results"]]
    assert listing("?q=SO-1001-B")["count"] == 0
    assert_error(api("GET", f"/api/v1/xml-documents/{created['id']}", access=owner, secret=secret), 404, "NOT_FOUND")
    assert_error(api("DELETE", f"/api/v1/xml-documents/{created['id']}", access=owner, secret=secret),
                 404, "NOT_FOUND")
    status, _, reborn = api("POST", "/api/v1/xml-documents",
                            {"filename": "order-1", "directory": "in/2024", "xml": doc("SO-1001-C")},
                            access=owner, secret=secret)
    assert status == 201 and reborn["id"] != created["id"] and reborn["version"] == 1, reborn
    assert XmlDocument.objects.filter(access_id=owner, directory="in/2024", filename="order-1.xml").count() == 2

    api.assert_audited()
    assert len(api.seen) == len(events(access_id=owner, event_type=AuditEvent.API_REQUEST))


def test_xml_documents_isolation_read_all_and_scopes(rsa):
    _, platform = rsa
    api = Recorder(platform)
    owner, owner_secret = access_id_create(name="owner")
    other, other_secret = access_id_create(name="other")
    auditor, auditor_secret = access_id_create(name="auditor", scopes=["xml_read_all", "xml_write"])
    signer, signer_secret = access_id_create(name="signer only", scopes=["sign"])
    reader, reader_secret = access_id_create(name="reader", scopes=["xml_read"])
    writer, writer_secret = access_id_create(name="writer", scopes=["xml_write"])

    status, _, mine = api("POST", "/api/v1/xml-documents", {"filename": "a", "xml": doc("SO-1")},
                          access=owner, secret=owner_secret)
    assert status == 201, mine
    path = f"/api/v1/xml-documents/{mine['id']}"

    # Another access ID: neither sees nor deletes it (404, not 403: ids reveal nothing).
    assert_error(api("GET", path, access=other, secret=other_secret), 404, "NOT_FOUND")
    assert_error(api("DELETE", path, access=other, secret=other_secret), 404, "NOT_FOUND")
    status, _, listed = api("GET", "/api/v1/xml-documents", access=other, secret=other_secret)
    assert status == 200 and listed["count"] == 0, listed
    # Its own document of the same name is a different document.
    status, _, theirs = api("POST", "/api/v1/xml-documents", {"filename": "a", "xml": doc("SO-2")},
                            access=other, secret=other_secret)
    assert status == 201 and theirs["id"] != mine["id"] and theirs["version"] == 1

    # xml_read_all: reads everyone's, deletes only its own.
    status, _, seen = api("GET", path, access=auditor, secret=auditor_secret)
    assert status == 200 and seen["xml"] == doc("SO-1") and seen["access_id"] == owner.key, seen
    status, _, listed = api("GET", "/api/v1/xml-documents?filename=a", access=auditor, secret=auditor_secret)
    assert sorted(r["access_id"] for r in listed["results"]) == sorted([owner.key, other.key])
    assert_error(api("DELETE", path, access=auditor, secret=auditor_secret), 404, "NOT_FOUND")
    assert XmlDocument.objects.get(pk=mine["id"]).deleted_at is None

    # Scopes.
    for method, target, payload in [("GET", "/api/v1/xml-documents", None), ("GET", path, None),
                                    ("POST", "/api/v1/xml-documents", {"filename": "b", "xml": doc("SO-3")}),
                                    ("DELETE", path, None)]:
        body = assert_error(api(method, target, payload, access=signer, secret=signer_secret), 403,
                            "PERMISSION_DENIED")
        assert "xml_" in body["message"]
    assert_error(api("POST", "/api/v1/xml-documents", {"filename": "b", "xml": doc("SO-3")}, access=reader,
                     secret=reader_secret), 403, "PERMISSION_DENIED")
    assert_error(api("DELETE", path, access=reader, secret=reader_secret), 403, "PERMISSION_DENIED")
    assert_error(api("GET", "/api/v1/xml-documents", access=writer, secret=writer_secret), 403, "PERMISSION_DENIED")
    assert_error(api("POST", "/api/v1/sign/xml", {"xml": CEB621}, access=reader, secret=reader_secret),
                 403, "PERMISSION_DENIED")
    assert_error(api("POST", "/api/v1/sign/179", {"sessionID": "x"}, access=reader, secret=reader_secret),
                 403, "PERMISSION_DENIED")
    # The owner deletes it.
    status, _, body = api("DELETE", path, access=owner, secret=owner_secret)
    assert status == 200, body
    assert XmlDocument.objects.filter(pk__in=[mine["id"], theirs["id"]], deleted_at__isnull=True).count() == 1
    api.assert_audited()


def test_concurrent_writes_of_one_new_name_become_versions(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    barrier = threading.Barrier(8)

    def write(i):
        barrier.wait()
        return call(platform, "POST", "/api/v1/xml-documents", {"filename": "race", "xml": doc(f"SO-{i}")},
                    access=access, secret=secret)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(8)))
    assert [r[0] for r in results] == [201] * 8, [r[2] for r in results]
    assert sorted(r[2]["version"] for r in results) == list(range(1, 9))
    assert len({r[2]["id"] for r in results}) == 1
    (document,) = XmlDocument.objects.filter(access_id=access, filename="race.xml")
    assert document.version == 8
    assert sorted(XmlDocumentVersion.objects.filter(document=document).values_list("version", flat=True)) == list(
        range(1, 8))
    assert [e.outcome for e in events(access_id=access, event_type=AuditEvent.API_REQUEST)] == ["OK"] * 8


@pytest.mark.parametrize("query", ["page=0", "page=-1", "page=abc", "page=1.5", "page_size=0", "page_size=201",
                                   "page_size=x", "signed=maybe", "signed=2", "page=%C2%B2",
                                   "page_size=%D9%A3"])
def test_xml_documents_invalid_list_parameters(rsa, query):
    _, platform = rsa
    access, secret = access_id_create(name="ERP")
    result = call(platform, "GET", "/api/v1/xml-documents?" + query, access=access, secret=secret)
    assert (result[0], result[2].get("code")) == (400, "INVALID_REQUEST"), (
        f"GET /api/v1/xml-documents?{query} must be a 400 INVALID_REQUEST, got HTTP {result[0]}: {result[2]} "
        "(Unicode digits such as ² or ٣ must not pass as page numbers)")
    body = assert_error(result, 400, "INVALID_REQUEST")
    name = query.split("=")[0]
    assert name in body["message"] and name in body["details"]["fields"]
    (event,) = events(request_id=body["request_id"])
    assert event.outcome == "INVALID_REQUEST"


# --- POST /api/v1/sign/179 ------------------------------------------------------------------------


def with_upload(raw: bytes, upload: bool) -> bytes:
    """The payload bytes with `"upload": ...` added as text (numbers stay as written)."""
    text = raw.rstrip()
    assert text.endswith(b"}")
    return text[:-1].rstrip() + b',\n  "upload": ' + (b"true" if upload else b"false") + b"\n}"


def sign_179(platform, access, secret, raw: bytes):
    return call(platform, "POST", "/api/v1/sign/179", raw_body=raw, access=access, secret=secret)


@pytest.mark.parametrize("algorithm", ["rsa", "sm2"])
def test_179_vector_sign_string_and_signature(xml_platforms, algorithm, customs):
    customs.reset("10000")
    _, platform = xml_platforms(algorithm)
    access, secret = access_id_create(name="payments")
    cert = certificate_load(certificate(platform, access, secret)["certificate_pem"])

    status, headers, body = sign_179(platform, access, secret, with_upload(PAY179_RAW, False))
    assert status == 200, body
    assert set(body) == {"sign_string", "signature", "cert_no", "device", "request_id"}
    assert body["sign_string"] == PAY179_SIGN_STRING
    assert signature_verify(cert, PAY179_SIGN_STRING.encode("utf-8"), body["signature"])
    assert not signature_verify(cert, PAY179_SIGN_STRING.encode("utf-8") + b" ", body["signature"])
    assert body["device"] == f"xml-{algorithm}" and body["request_id"] == headers["X-Request-ID"]
    assert customs.received == []  # upload false: nothing sent

    # The raw file without "upload" (default false) gives the same string.
    status, _, plain = sign_179(platform, access, secret, PAY179_RAW)
    assert status == 200 and plain["sign_string"] == PAY179_SIGN_STRING and "upload" not in plain
    (event, _second) = events(access_id=access, endpoint="POST /api/v1/sign/179")
    assert event.outcome == "OK" and event.cert_no == body["cert_no"]
    assert event.data_sha256 == hashlib.sha256(PAY179_SIGN_STRING.encode()).hexdigest()


def test_179_numbers_keep_their_text_and_fields_are_checked(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="payments")
    raw = PAY179_RAW.replace(b'"totalAmount": 100,', b'"totalAmount": 143.60,')
    assert raw != PAY179_RAW
    status, _, body = sign_179(platform, access, secret, with_upload(raw, False))
    assert status == 200, body
    assert '"totalAmount":143.60,' in body["sign_string"]
    assert body["sign_string"] == PAY179_SIGN_STRING.replace('"totalAmount":100,', '"totalAmount":143.60,')

    payload = json.loads(PAY179_RAW)
    del payload["sessionID"]
    body = assert_error(sign_179(platform, access, secret, json.dumps(payload).encode()), 400, "INVALID_REQUEST")
    assert "sessionID" in json.dumps(body["details"]), body
    payload = json.loads(PAY179_RAW)
    payload["payExchangeInfoLists"] = []
    payload["serviceTime"] = "soon"
    body = assert_error(sign_179(platform, access, secret, json.dumps(payload).encode()), 400, "INVALID_REQUEST")
    assert {"payExchangeInfoLists", "serviceTime"} <= set(json.dumps(body["details"]).replace('"', " ").split())
    assert_error(sign_179(platform, access, secret, with_upload(PAY179_RAW, False).replace(b"false", b'"no"')),
                 400, "INVALID_REQUEST")


def test_179_key_order_unknown_keys_and_number_text(rsa):
    _, platform = rsa
    access, secret = access_id_create(name="payments")
    raw = ('{"serviceTime": "1544519952469", "upload": false, "payExchangeInfoLists": [{"recpName": "N", '
           '"goodsInfo": [{"itemLink": "http://x/?a=1&b=2", "gname": "商品"}], "orderNo": "SO1", "extra": 1.50}], '
           '"payExchangeInfoHead": {"note": "备注", "zzz": 1e3, "totalAmount": 1.50, "guid": "G"}, "sessionID": "S1"}')
    status, _, body = sign_179(platform, access, secret, raw.encode("utf-8"))
    assert status == 200, body
    assert body["sign_string"] == (
        '"sessionID":"S1"||"payExchangeInfoHead":"{"guid":"G","totalAmount":1.50,"note":"备注","zzz":1e3}"'
        '||"payExchangeInfoLists":"[{"orderNo":"SO1","goodsInfo":[{"gname":"商品","itemLink":"http://x/?a=1&b=2"}],'
        '"recpName":"N","extra":1.50}]"||"serviceTime":"1544519952469"')
    duplicate = raw.replace('"sessionID": "S1"', '"sessionID": "S1", "sessionID": "S2"')
    body = assert_error(sign_179(platform, access, secret, duplicate.encode()), 400, "INVALID_REQUEST")
    assert "sessionID" in body["message"]


def upload_checks(body: dict, customs: FakeCustoms) -> dict:
    """The fake customs server got one form POST whose payExInfoStr is the spec's JSON."""
    assert len(customs.received) == 1, customs.received
    (got,) = customs.received
    assert got["path"] == FakeCustoms.PATH
    assert got["content_type"].startswith("application/x-www-form-urlencoded"), got["content_type"]
    form = urllib.parse.parse_qs(got["body"].decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert list(form) == ["payExInfoStr"] and len(form["payExInfoStr"]) == 1
    text = form["payExInfoStr"][0]
    sent = json.loads(text)
    assert list(sent) == ["sessionID", "payExchangeInfoHead", "payExchangeInfoLists", "serviceTime", "certNo",
                          "signValue"]
    assert sent["certNo"] == body["cert_no"] and sent["signValue"] == body["signature"]
    # The head and lists are the very text that was signed.
    match = re.fullmatch(r'"sessionID":"(.*?)"\|\|"payExchangeInfoHead":"(\{.*\})"\|\|'
                         r'"payExchangeInfoLists":"(\[.*\])"\|\|"serviceTime":"(\d+)"', body["sign_string"], re.S)
    assert match, body["sign_string"]
    session_id, head, lists, service_time = match.groups()
    assert sent["sessionID"] == session_id and str(sent["serviceTime"]) == service_time
    assert f'"payExchangeInfoHead":{head},"payExchangeInfoLists":{lists},' in text
    original = json.loads(PAY179_RAW)
    assert sent["payExchangeInfoHead"] == original["payExchangeInfoHead"]
    assert sent["payExchangeInfoLists"] == original["payExchangeInfoLists"]
    return sent


@pytest.mark.parametrize("behaviour", ["10000", "20004", "http500", "nonjson", "timeout"])
def test_179_upload_to_customs(rsa, customs, behaviour):
    _, platform = rsa
    access, secret = access_id_create(name="payments")
    cert = certificate_load(certificate(platform, access, secret)["certificate_pem"])
    customs.reset(behaviour)
    started = time.monotonic()
    status, _, body = sign_179(platform, access, secret, with_upload(PAY179_RAW, True))
    elapsed = time.monotonic() - started
    assert status == 200, body  # whatever customs does, the client gets its signature
    assert body["sign_string"] == PAY179_SIGN_STRING
    assert signature_verify(cert, PAY179_SIGN_STRING.encode("utf-8"), body["signature"])
    upload = body["upload"]
    assert set(upload) == {"ok", "url", "http_status", "code", "message", "reply", "error", "duration_ms"}
    assert upload["url"] == customs.url
    upload_checks(body, customs)
    (event,) = events(request_id=body["request_id"])
    assert event.outcome == "OK" and event.details["upload"]["ok"] is upload["ok"]

    if behaviour == "10000":
        assert (upload["ok"], upload["code"], upload["http_status"], upload["error"]) == (True, "10000", 200, "")
        assert upload["reply"]["code"] == "10000"
    elif behaviour == "20004":
        assert (upload["ok"], upload["code"], upload["http_status"]) == (False, "20004", 200)
        assert "not registered" in upload["message"] and "certificate" in upload["message"], upload
        assert "20004" in event.message or "upload" in event.message
    elif behaviour == "http500":
        assert (upload["ok"], upload["http_status"]) == (False, 500)
        assert "500" in upload["error"], upload
    elif behaviour == "nonjson":
        assert (upload["ok"], upload["http_status"], upload["code"]) == (False, 200, "")
        assert "not JSON" in upload["error"] and "系统维护中" in upload["reply"], upload
    else:
        assert (upload["ok"], upload["http_status"], upload["code"]) == (False, None, "")
        assert "timed out" in upload["error"], upload
        assert UPLOAD_TIMEOUT - 0.2 <= upload["duration_ms"] / 1000 < UPLOAD_TIMEOUT + 1.5, upload
        assert UPLOAD_TIMEOUT - 0.2 <= elapsed < UPLOAD_TIMEOUT + 5, elapsed


def test_179_upload_connection_refused(rsa, tmp_path):
    """A web process of the same deployment whose customs URL has nothing listening."""
    _, platform = rsa
    refused_url = f"http://127.0.0.1:{free_port()}/ceb2grab/grab/realTimeDataUpload"
    web = Platform(dict(platform.env, CUSTOMS_179_UPLOAD_URL=refused_url), tmp_path, args=("--web-only",),
                   name="refused").start(migrate=False)
    try:
        access, secret = access_id_create(name="payments")
        cert = certificate_load(certificate(web, access, secret)["certificate_pem"])
        status, _, body = sign_179(web, access, secret, with_upload(PAY179_RAW, True))
    finally:
        web.stop()
    assert status == 200, body
    assert signature_verify(cert, PAY179_SIGN_STRING.encode("utf-8"), body["signature"])
    upload = body["upload"]
    assert (upload["ok"], upload["http_status"], upload["url"]) == (False, None, refused_url), upload
    assert "refused" in upload["error"], upload
