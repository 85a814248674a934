"""CEB XML signing against docs/ceb-xml-and-179.md section 1: the published digest,
sign + insert + verify round trips with real simulator keys (RSA and SM2), tampering, and
hostile input refused by the defused parser."""

import base64
import re
import socket
import time
from pathlib import Path

import pytest

from core import ceb, certs
from core.ceb import XmlInputError
from ukey.simulator import SimulatedCard

VECTORS = Path(__file__).resolve().parent / "vectors"  # copies of shared/spec/vectors

# vectors/CEB621Message.xml, byte for byte (no trailing newline).
CEB621_XML = (VECTORS / "CEB621Message.xml").read_bytes().decode("utf-8")


PUBLISHED_DIGEST = "b2FtM/jHvW4fnJpMMPWk/177RwA="

# The SignedInfo line exactly as the spec prints it (step 3).
SPEC_SIGNED_INFO = (
    '<ds:SignedInfo xmlns:ceb="http://www.chinaport.gov.cn/ceb" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><ds:CanonicalizationMethod '
    'Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315"></ds:CanonicalizationMethod><ds:SignatureMethod '
    'Algorithm="{SIGNATURE_METHOD}"></ds:SignatureMethod><ds:Reference URI=""><ds:Transforms><ds:Transform '
    'Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"></ds:Transform></ds:Transforms>'
    '<ds:DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"></ds:DigestMethod><ds:DigestValue>'
    "{DIGEST}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
)
RSA_URI = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SM2_URI = "http://www.w3.org/2000/09/xmldsig#sm2-sm3"
SIGNATURE_ELEMENT = re.compile(r"<ds:Signature xmlns:ds=.*?</ds:Signature>", re.S)


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """Two RSA and two SM2 cards with real keys (the second of each for swapped certificates)."""
    return {
        "rsa": SimulatedCard("rsa", tmp_path_factory.mktemp("rsa-a")),
        "sm2": SimulatedCard("sm2", tmp_path_factory.mktemp("sm2-a")),
        "rsa-other": SimulatedCard("rsa", tmp_path_factory.mktemp("rsa-b")),
        "sm2-other": SimulatedCard("sm2", tmp_path_factory.mktemp("sm2-b")),
    }


def sign(text: str, card: SimulatedCard, *, override: str = "") -> str:
    """What the platform does: digest, SignedInfo, the card signs it, insert."""
    signed_info = ceb.ceb_signed_info(
        signature_method_uri=ceb.signature_method_uri(card.algorithm, override), digest=ceb.ceb_digest(text)
    )
    return ceb.ceb_signature_insert(
        text,
        signed_info=signed_info,
        signature_value=card.sign(signed_info.encode("utf-8")),
        cert_no=card.cert_no,
        certificate_b64=card.cert.der_base64,
    )


def unsign(signed: str) -> str:
    matches = SIGNATURE_ELEMENT.findall(signed)
    assert len(matches) == 1
    return signed.replace(matches[0], "")


def element_text(signed: str, name: str) -> str:
    return re.search(rf"<ds:{name}>(.*?)</ds:{name}>", signed, re.S).group(1)


# --- the published vector and the fixed texts -------------------------------------------


def test_published_digest_vector():
    assert ceb.ceb_digest(CEB621_XML) == PUBLISHED_DIGEST


def test_signed_info_is_the_spec_line():
    assert ceb.ceb_signed_info(signature_method_uri=RSA_URI, digest=PUBLISHED_DIGEST) == SPEC_SIGNED_INFO.replace(
        "{SIGNATURE_METHOD}", RSA_URI
    ).replace("{DIGEST}", PUBLISHED_DIGEST)
    with pytest.raises(ValueError):
        ceb.ceb_signed_info(signature_method_uri=RSA_URI, digest="<x>")


def test_signature_method_uri_by_algorithm_and_override():
    assert ceb.signature_method_uri(certs.ALG_RSA) == RSA_URI
    assert ceb.signature_method_uri(certs.ALG_SM2) == SM2_URI
    assert ceb.signature_method_uri(certs.ALG_RSA, "sm2-sm3") == SM2_URI
    assert ceb.signature_method_uri(certs.ALG_SM2, "rsa-sha1") == RSA_URI
    assert ceb.SIGNATURE_METHOD_URIS == {"RSA-SHA1": RSA_URI, "SM2-SM3": SM2_URI}
    with pytest.raises(ValueError):
        ceb.signature_method_uri(certs.ALG_RSA, "rsa-sha256")
    with pytest.raises(ValueError):
        ceb.signature_method_uri("DSA")


def test_document_check_names_the_message_type():
    document = ceb.ceb_document_check(CEB621_XML)
    assert document.message_type == "CEB621Message"
    assert document.root_qname == "ceb:CEB621Message"
    assert document.tree.getroot().tag == "{http://www.chinaport.gov.cn/ceb}CEB621Message"


# --- round trips with real keys ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "sm2"])
def test_sign_insert_verify_round_trip(cards, kind):
    card = cards[kind]
    signed = sign(CEB621_XML, card)

    # The Signature sits right before the root's closing tag, and removing it gives the original.
    assert signed.endswith("</ds:Signature></ceb:CEB621Message>")
    assert unsign(signed) == CEB621_XML
    assert unsign(signed).encode("utf-8") == CEB621_XML.encode("utf-8")

    result = ceb.ceb_verify(signed)
    assert result.valid and result.digest_ok and result.signature_ok, result.reason
    assert result.reason == ""
    assert result.digest_value == PUBLISHED_DIGEST == result.computed_digest
    assert result.cert_no == card.cert_no
    assert result.algorithm == card.algorithm
    assert result.signature_method == (RSA_URI if kind == "rsa" else SM2_URI)
    assert result.certificate.der == card.cert.der

    # Independently of ceb_verify: the certificate in the document verifies the fixed SignedInfo.
    certificate = certs.certificate_load(element_text(signed, "X509Certificate"))
    fixed = SPEC_SIGNED_INFO.replace("{SIGNATURE_METHOD}", result.signature_method).replace(
        "{DIGEST}", PUBLISHED_DIGEST
    )
    assert certs.signature_verify(certificate, fixed.encode("utf-8"), element_text(signed, "SignatureValue"))
    assert element_text(signed, "KeyName") == card.cert_no


@pytest.mark.parametrize(
    "prefix",
    [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        "<?xml version='1.0' encoding='utf-8' standalone='yes'?>",
        "\ufeff",
        "",
    ],
    ids=["declaration", "declaration-single-quotes", "bom", "none"],
)
def test_xml_declaration_present_or_absent(cards, prefix):
    text = prefix + CEB621_XML
    assert ceb.ceb_digest(text) == PUBLISHED_DIGEST  # C14N drops the declaration
    signed = sign(text, cards["rsa"])
    assert signed.startswith(prefix) and unsign(signed) == text
    assert ceb.ceb_verify(signed).valid


def test_comments_inside_and_after_the_root(cards):
    closing = "</ceb:CEB621Message>"
    text = (
        "<!-- before the root -->\r\n"
        + CEB621_XML.replace("<ceb:Inventory>", "<ceb:Inventory><!-- 清单 -->").replace(
            closing, "<!-- last -->" + closing
        )
        + "\r\n<!-- a quoted closing tag: </ceb:CEB621Message> -->\r\n"
        + "<?pi   </ceb:CEB621Message>\r\n  ?>\n"
        + "<!-- multi\r\nline </ceb:CEB621Message> -->  \n"
    )
    document = ceb.ceb_document_check(text)
    assert document.message_type == "CEB621Message"
    # With comments: the digest covers them.
    assert ceb.ceb_digest(text) != ceb.ceb_digest(text.replace("清单", "清单!"))
    for kind in ("rsa", "sm2"):
        signed = sign(text, cards[kind])
        assert "<!-- last --><ds:Signature" in signed
        assert "</ds:Signature></ceb:CEB621Message>\r\n<!-- a quoted" in signed
        assert unsign(signed) == text
        result = ceb.ceb_verify(signed)
        assert result.valid, result.reason


def test_default_namespace_root(cards):
    text = (
        '<CEB311Message xmlns="http://www.chinaport.gov.cn/ceb" guid="x"><Order><orderNo>A1</orderNo>'
        "</Order></CEB311Message>"
    )
    document = ceb.ceb_document_check(text)
    assert (document.message_type, document.root_qname) == ("CEB311Message", "CEB311Message")
    signed = sign(text, cards["sm2"])
    assert signed.endswith("</ds:Signature></CEB311Message>") and unsign(signed) == text
    assert ceb.ceb_verify(signed).valid


def test_root_with_more_namespaces_verifies_through_the_fixed_signed_info(cards):
    # In place, SignedInfo's C14N now also carries xmlns:foo, so only the fixed line matches.
    text = CEB621_XML.replace(
        'xmlns:ceb="http://www.chinaport.gov.cn/ceb"',
        'xmlns:ceb="http://www.chinaport.gov.cn/ceb" xmlns:foo="urn:foo" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"',
    )
    signed = sign(text, cards["rsa"])
    assert ceb.ceb_verify(signed).valid


def test_signature_over_the_in_place_c14n_also_verifies(cards):
    # Another tool may sign the SignedInfo as canonicalised inside the document.
    from lxml import etree

    card = cards["rsa"]
    text = CEB621_XML.replace('version="v1.0"', 'version="v1.0" xmlns:foo="urn:foo"')
    placeholder = sign(text, card)
    tree = etree.fromstring(placeholder.encode()).getroottree()
    signed_info = tree.find(".//{http://www.w3.org/2000/09/xmldsig#}SignedInfo")
    in_place = etree.tostring(signed_info, method="c14n", exclusive=False, with_comments=False)
    assert b'xmlns:foo="urn:foo"' in in_place
    signed = placeholder.replace(element_text(placeholder, "SignatureValue"), card.sign(in_place))
    assert ceb.ceb_verify(signed).valid


def test_signature_in_the_middle_keeps_the_following_text(cards):
    # A tool that puts the Signature earlier: the enveloped transform must keep its tail text.
    card = cards["sm2"]
    digest = ceb.ceb_digest(CEB621_XML)
    signed_info = ceb.ceb_signed_info(signature_method_uri=SM2_URI, digest=digest)
    at_end = ceb.ceb_signature_insert(
        CEB621_XML,
        signed_info=signed_info,
        signature_value=card.sign(signed_info.encode()),
        cert_no=card.cert_no,
        certificate_b64=card.cert.der_base64,
    )
    signature = SIGNATURE_ELEMENT.search(at_end).group(0)
    anchor = "</ceb:Inventory>"
    moved = CEB621_XML.replace(anchor, anchor + signature)
    result = ceb.ceb_verify(moved)
    assert result.valid, result.reason


def test_digest_over_c14n_without_comments_is_named(cards):
    card = cards["rsa"]
    text = CEB621_XML.replace("<ceb:Inventory>", "<ceb:Inventory><!-- c -->")
    without = ceb.ceb_digest(text.replace("<!-- c -->", ""))
    signed_info = ceb.ceb_signed_info(signature_method_uri=RSA_URI, digest=without)
    signed = ceb.ceb_signature_insert(
        text,
        signed_info=signed_info,
        signature_value=card.sign(signed_info.encode()),
        cert_no=card.cert_no,
        certificate_b64=card.cert.der_base64,
    )
    result = ceb.ceb_verify(signed)
    assert not result.digest_ok and result.signature_ok and not result.valid
    assert "without the document's comments" in result.reason


def test_generated_5mb_document_signs_and_verifies(cards):
    item = re.search(r"\n        <ceb:InventoryList>.*?</ceb:InventoryList>", CEB621_XML, re.S).group(0)
    count = 5 * 1024 * 1024 // len(item.encode()) + 1
    items = "".join(item.replace("<ceb:gnum>1</ceb:gnum>", f"<ceb:gnum>{n}</ceb:gnum>") for n in range(1, count + 1))
    text = CEB621_XML.replace(item, items)
    assert len(text.encode()) > 5 * 1024 * 1024
    for kind in ("rsa", "sm2"):
        started = time.perf_counter()
        signed = sign(text, cards[kind])
        signed_at = time.perf_counter()
        result = ceb.ceb_verify(signed)
        verified_at = time.perf_counter()
        print(
            f"\n{kind}: {len(text.encode()) / 1e6:.1f} MB, {count} items: "
            f"sign {signed_at - started:.2f} s, verify {verified_at - signed_at:.2f} s"
        )
        assert result.valid, result.reason
        assert unsign(signed) == text


# --- tampering --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "sm2"])
def test_changed_order_number_is_a_digest_mismatch(cards, kind):
    signed = sign(CEB621_XML, cards[kind])
    tampered = signed.replace("<ceb:orderNo>48037605991776256<", "<ceb:orderNo>48037605991776257<")
    assert tampered != signed
    result = ceb.ceb_verify(tampered)
    assert not result.valid and not result.digest_ok and result.signature_ok
    assert "digest mismatch" in result.reason and "changed after signing" in result.reason
    assert PUBLISHED_DIGEST in result.reason and result.computed_digest in result.reason


@pytest.mark.parametrize("kind", ["rsa", "sm2"])
def test_changed_signature_value_fails_the_signature(cards, kind):
    signed = sign(CEB621_XML, cards[kind])
    value = element_text(signed, "SignatureValue")
    raw = bytearray(base64.b64decode(value))
    raw[10] ^= 0x01
    tampered = signed.replace(value, base64.b64encode(bytes(raw)).decode())
    result = ceb.ceb_verify(tampered)
    assert result.digest_ok and not result.signature_ok and not result.valid
    assert "SignatureValue does not verify with the certificate" in result.reason


@pytest.mark.parametrize("kind", ["rsa", "sm2"])
def test_certificate_of_another_card_fails_the_signature(cards, kind):
    signed = sign(CEB621_XML, cards[kind])
    swapped = signed.replace(cards[kind].cert.der_base64, cards[f"{kind}-other"].cert.der_base64)
    result = ceb.ceb_verify(swapped)
    assert result.digest_ok and not result.signature_ok
    assert "does not verify with the certificate" in result.reason


def test_certificate_of_the_other_algorithm_is_named(cards):
    signed = sign(CEB621_XML, cards["rsa"])
    swapped = signed.replace(cards["rsa"].cert.der_base64, cards["sm2"].cert.der_base64)
    result = ceb.ceb_verify(swapped)
    assert not result.signature_ok
    assert "SignatureMethod rsa-sha1 does not match the certificate's SM2 key" in result.reason


def test_signature_method_override_that_does_not_match_the_key(cards):
    signed = sign(CEB621_XML, cards["rsa"], override="sm2-sm3")
    result = ceb.ceb_verify(signed)
    assert result.digest_ok and not result.signature_ok
    assert "SignatureMethod sm2-sm3 does not match the certificate's RSA key" in result.reason
    assert "only the SignatureMethod is wrong" in result.reason


def test_unreadable_certificate_and_bad_signature_encoding(cards):
    signed = sign(CEB621_XML, cards["sm2"])
    broken = signed.replace(cards["sm2"].cert.der_base64, "bm90IGEgY2VydGlmaWNhdGU=")
    assert "X509Certificate is not a readable certificate" in ceb.ceb_verify(broken).reason
    value = element_text(signed, "SignatureValue")
    assert "not valid base64" in ceb.ceb_verify(signed.replace(value, "%%%")).reason
    short = base64.b64encode(base64.b64decode(value)[:40]).decode()
    assert "raw SM2 r||s signature of 64 bytes" in ceb.ceb_verify(signed.replace(value, short)).reason


def test_der_encoded_sm2_signature_is_recognised(cards):
    from asn1crypto import algos

    signed = sign(CEB621_XML, cards["sm2"])
    value = element_text(signed, "SignatureValue")
    raw = base64.b64decode(value)
    der = algos.DSASignature({"r": int.from_bytes(raw[:32], "big"), "s": int.from_bytes(raw[32:], "big")}).dump()
    result = ceb.ceb_verify(signed.replace(value, base64.b64encode(der).decode()))
    assert not result.signature_ok and "DER-encoded SM2 signature" in result.reason


def test_unsigned_and_misplaced_signatures_are_reported(cards):
    result = ceb.ceb_verify(CEB621_XML)
    assert not result.valid and result.reason == "no ds:Signature element: the document is not signed"

    signed = sign(CEB621_XML, cards["rsa"])
    signature = SIGNATURE_ELEMENT.search(signed).group(0)
    nested = CEB621_XML.replace("</ceb:BaseTransfer>", signature + "</ceb:BaseTransfer>")
    reason = ceb.ceb_verify(nested).reason
    assert "inside <ceb:BaseTransfer>" in reason and "direct child of the root" in reason

    twice = signed.replace("</ceb:CEB621Message>", signature + "</ceb:CEB621Message>")
    assert "2 ds:Signature elements" in ceb.ceb_verify(twice).reason


# --- hostile and wrong input ------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ceb:CEB621Message xmlns:ceb="http://www.chinaport.gov.cn/ceb"><ceb:note>&lol9;</ceb:note></ceb:CEB621Message>"""


def xxe(url: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE ceb:CEB621Message [<!ENTITY xxe SYSTEM "{url}">]>\n'
        '<ceb:CEB621Message xmlns:ceb="http://www.chinaport.gov.cn/ceb"><ceb:note>&xxe;</ceb:note>'
        "</ceb:CEB621Message>"
    )


HOSTILE = [
    ("billion-laughs", BILLION_LAUGHS, "doctype_forbidden"),
    ("xxe-file", xxe("file:///etc/passwd"), "doctype_forbidden"),
    ("xxe-http", xxe("http://127.0.0.1:9/x"), "doctype_forbidden"),
    (
        "external-dtd",
        '<!DOCTYPE ceb:CEB621Message SYSTEM "http://127.0.0.1:9/ceb.dtd">' + CEB621_XML,
        "doctype_forbidden",
    ),
    ("plain-doctype", "<!DOCTYPE ceb:CEB621Message>\n" + CEB621_XML, "doctype_forbidden"),
    ("doctype-after-comment", '<?xml version="1.0"?><!-- x --><!DOCTYPE a>' + CEB621_XML, "doctype_forbidden"),
    ("tag-mismatch", CEB621_XML.replace("</ceb:guid>", "</ceb:gid>", 1), "not_well_formed"),
    ("truncated", CEB621_XML[:-5], "not_well_formed"),
    ("undeclared-entity", CEB621_XML.replace("圆通", "&xxe;"), "not_well_formed"),
    ("empty", "  \n", "not_well_formed"),
    ("two-roots", CEB621_XML + "<ceb:CEB621Message/>", "not_well_formed"),
    ("other-root", "<foo/>", "not_ceb"),
    ("ceb-name-wrong-namespace", '<ceb:CEB621Message xmlns:ceb="http://example.com/ceb"><a/></ceb:CEB621Message>',
     "not_ceb"),
    ("ceb-name-no-namespace", "<CEB621Message><a/></CEB621Message>", "not_ceb"),
    ("ceb-namespace-other-name", '<ceb:Inventory xmlns:ceb="http://www.chinaport.gov.cn/ceb"/>', "not_ceb"),
    ("gbk", '<?xml version="1.0" encoding="GBK"?>\n' + CEB621_XML, "bad_encoding"),
    ("gb2312-single-quotes", "<?xml version='1.0' encoding='gb2312'?>" + CEB621_XML, "bad_encoding"),
    ("lone-surrogate", CEB621_XML.replace("圆通", "\ud800"), "bad_encoding"),
]


@pytest.mark.parametrize("text,code", [(t, c) for _, t, c in HOSTILE], ids=[name for name, _, _ in HOSTILE])
def test_hostile_or_wrong_input_is_refused_with_a_code(text, code):
    started = time.perf_counter()
    with pytest.raises(XmlInputError) as caught:
        ceb.ceb_document_check(text)
    assert caught.value.code == code
    assert caught.value.message and str(caught.value) == caught.value.message
    assert "root:" not in caught.value.message  # nothing of /etc/passwd
    assert time.perf_counter() - started < 5  # not a timing benchmark: a runaway expansion would hang
    if code in ("doctype_forbidden", "not_well_formed", "bad_encoding"):
        with pytest.raises(XmlInputError):
            ceb.ceb_verify(text)
        with pytest.raises(XmlInputError):
            ceb.ceb_digest(text)


def test_not_well_formed_message_names_line_and_column():
    with pytest.raises(XmlInputError) as caught:
        ceb.xml_parse_safe("<a>\n<b>\n</a>")
    assert caught.value.message.startswith("the XML is not well-formed: line 3, column ")
    assert "mismatch" in caught.value.message


def test_external_entity_is_never_fetched():
    # A listening socket the XXE points at: nothing may connect to it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        external_dtd = f'<!DOCTYPE a SYSTEM "http://127.0.0.1:{port}/d">' + CEB621_XML
        for text in (xxe(f"http://127.0.0.1:{port}/x"), external_dtd):
            with pytest.raises(XmlInputError):
                ceb.xml_parse_safe(text)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_already_signed_document_is_refused(cards):
    signed = sign(CEB621_XML, cards["rsa"])
    with pytest.raises(XmlInputError) as caught:
        sign(signed, cards["rsa"])
    assert caught.value.code == "already_signed"


def test_self_closing_root_cannot_be_signed(cards):
    text = '<ceb:CEB621Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="x"/>\n<!-- end -->'
    with pytest.raises(XmlInputError) as caught:
        sign(text, cards["rsa"])
    assert caught.value.code == "empty_root"


def test_key_name_is_escaped(cards):
    card = cards["rsa"]
    signed_info = ceb.ceb_signed_info(signature_method_uri=RSA_URI, digest=ceb.ceb_digest(CEB621_XML))
    signed = ceb.ceb_signature_insert(
        CEB621_XML,
        signed_info=signed_info,
        signature_value=card.sign(signed_info.encode()),
        cert_no="a<b&c",
        certificate_b64=card.cert.der_base64,
    )
    assert "<ds:KeyName>a&lt;b&amp;c</ds:KeyName>" in signed
    result = ceb.ceb_verify(signed)
    assert result.valid and result.cert_no == "a<b&c"
