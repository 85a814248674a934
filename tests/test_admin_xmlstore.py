"""The XML store admin: a read-only list (searchable by any text inside the documents,
without loading their texts), a detail page with the XML pretty-printed and highlighted
(original and signed side by side), its signature and earlier versions, downloads of the
exact stored text, view permission required everywhere, stored text never executed; then
the same through headless Chromium against a real server."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accessids.models import AccessId
from accessids.services import access_id_create
from tests.admin_users import admin_login, admin_platform, client_for, fast_hashers, user_make  # noqa: F401  (fixtures)
from xmlstore.models import XmlDocument
from xmlstore.services import XmlSignature, xml_document_delete, xml_document_write

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

CHANGELIST = "/admin/xmlstore/xmldocument/"
DS = "http://www.w3.org/2000/09/xmldsig#"
RSA_SHA1 = DS + "rsa-sha1"
CERT_NO = "01691fe9a7d3"
ORDER_NO = "48037605991776256"  # only inside the signed document
SIGNED_NAME = "订单-621.xml"  # not ASCII: the download needs RFC 6266 filename*
SCRIPT = "<script>alert(1)</script>"
IMG = "req-<img src=x onerror=alert(3)>"  # metadata is escaped too


def ceb621(order_no: str, *, items: int = 1, note: str = "") -> str:
    """A CEB621 inventory message (shortened from shared/spec/vectors/CEB621Message.xml)."""
    item = ("<ceb:InventoryList><ceb:gnum>{n}</ceb:gnum><ceb:itemName>通用铁剂胶囊</ceb:itemName>"
            "<ceb:gcode>2106909090</ceb:gcode><ceb:qty>1</ceb:qty><ceb:price>0.01</ceb:price></ceb:InventoryList>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ceb:CEB621Message xmlns:ceb="http://www.chinaport.gov.cn/ceb" guid="CEB621_HNZB_0034" version="v1.0">\n'
        "    <ceb:Inventory>\n"
        "        <ceb:InventoryHead>\n"
        f"            <ceb:orderNo>{order_no}</ceb:orderNo>\n"
        "            <ceb:ebpName>海南星创互联网医药有限公司</ceb:ebpName>\n"
        f"{note}"
        "        </ceb:InventoryHead>\n"
        + "".join(item.format(n=n) for n in range(1, items + 1))
        + "\n    </ceb:Inventory>\n"
        "</ceb:CEB621Message>"
    )


def signature_insert(original: str, *, digest: str, value: str) -> str:
    """The enveloped ds:Signature immediately before the root's closing tag (the customs layout)."""
    signature = (
        f'<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo>'
        '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315">'
        f'</ds:CanonicalizationMethod><ds:SignatureMethod Algorithm="{RSA_SHA1}"></ds:SignatureMethod>'
        f'<ds:Reference URI=""><ds:Transforms><ds:Transform Algorithm="{DS}enveloped-signature"></ds:Transform>'
        f'</ds:Transforms><ds:DigestMethod Algorithm="{DS}sha1"></ds:DigestMethod>'
        f"<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo>"
        f"<ds:SignatureValue>{value}</ds:SignatureValue><ds:KeyInfo><ds:KeyName>{CERT_NO}</ds:KeyName>"
        "<ds:X509Data><ds:X509Certificate>MIIBszCCAVmgAwIBAgIUXmlzdG9yZQ==</ds:X509Certificate></ds:X509Data>"
        "</ds:KeyInfo></ds:Signature>"
    )
    close = original.rindex("</ceb:CEB621Message>")
    return original[:close] + signature + original[close:]


@dataclass
class Seeded:
    access: AccessId
    other: AccessId
    unsigned: XmlDocument
    signed: XmlDocument
    twice: XmlDocument
    first_content: str
    deleted: XmlDocument
    script: XmlDocument
    digest: str
    signature_value: str


def write(access: AccessId, filename: str, content: str, **kwargs) -> XmlDocument:
    kwargs.setdefault("message_type", "CEB621Message")
    return xml_document_write(access_id=access, directory=kwargs.pop("directory", "inbox/2026"), filename=filename,
                              content=content, request_id=kwargs.pop("request_id", f"req-{filename}"),
                              source="api", checked=True, **kwargs)


def seed() -> Seeded:
    access, _ = access_id_create(name="ERP Ningbo")
    other, _ = access_id_create(name="WMS Haikou")
    unsigned = write(access, "unsigned.xml", ceb621("100000000000000001"))
    original = ceb621(ORDER_NO)
    digest = base64.b64encode(hashlib.sha1(original.encode()).digest()).decode()
    value = base64.b64encode(hashlib.sha512(b"signature").digest() * 4).decode()  # 344 characters, like RSA-2048
    signed = write(access, SIGNED_NAME, signature_insert(original, digest=digest, value=value),
                   signature=XmlSignature(original_content=original, cert_no=CERT_NO, signature_method=RSA_SHA1,
                                          digest_value=digest, signature_value=value, device="default"))
    first = ceb621("200000000000000001")
    write(other, "twice.xml", first, directory="")
    twice = write(other, "twice.xml", ceb621("200000000000000002"), directory="", request_id="req-twice-2")
    deleted = write(access, "gone.xml", ceb621("300000000000000001"), message_type="CEB311Message")
    deleted = xml_document_delete(document=deleted, request_id="req-delete-1")
    note = f"            <ceb:note>{SCRIPT.replace('<', '&lt;').replace('>', '&gt;')}</ceb:note><!-- {SCRIPT} -->\n"
    script = write(access, "script.xml", ceb621("400000000000000001", note=note), request_id=IMG)
    return Seeded(access, other, unsigned, signed, twice, first, deleted, script, digest, value)


def unspanned(html: str) -> str:
    """The page without Pygments' token spans (it wraps tags, entity references, whitespace)."""
    return re.sub(r"</?span[^>]*>", "", html)


def detail(document: XmlDocument) -> str:
    return reverse("admin:xmlstore_xmldocument_change", args=[document.pk])


def download(document: XmlDocument, which: str) -> str:
    return reverse("admin:xmlstore_xmldocument_download", args=[document.pk, which])


def version_download(document: XmlDocument, version: int) -> str:
    return reverse("admin:xmlstore_xmldocument_version_download", args=[document.pk, version])


@pytest.fixture
def chief():
    return user_make("chief", superuser=True)


def test_list_columns_search_filters_without_loading_the_texts(chief):
    s = seed()
    big = write(s.access, "big.xml", ceb621("500000000000000001", items=4000))
    assert big.size > 512 * 1024
    client = client_for(chief)

    with CaptureQueriesContext(connection) as queries:
        page = client.get(CHANGELIST).content.decode()
    selects = [q["sql"] for q in queries if 'FROM "xmlstore_xmldocument"' in q["sql"]]
    assert selects
    for sql in selects:  # neither text is fetched, not even for the 600 KB document
        columns = sql.split(" FROM ", 1)[0]
        assert '"xmlstore_xmldocument"."content"' not in columns
        assert '"xmlstore_xmldocument"."original_content"' not in columns

    rows = {d.pk: re.search(rf'<tr>(?:(?!</tr>).)*?/{d.pk}/change/.*?</tr>', page, re.S).group(0)
            for d in (s.unsigned, s.signed, s.twice, s.deleted, big)}
    signed_row = rows[s.signed.pk]
    assert f">{SIGNED_NAME}</a>" in signed_row and '<td class="field-directory">inbox/2026</td>' in signed_row
    assert re.search(r'<td class="field-signed"><img [^>]*alt="True"', signed_row)
    assert f'<td class="field-cert_no">{CERT_NO}</td>' in signed_row
    assert f'ERP Ningbo <code class="xml-access-key">{s.access.key}</code>' in signed_row
    assert re.search(r'<td class="field-size_display">\d(\.\d)? KB</td>', signed_row)
    assert '<td class="field-version">1</td>' in signed_row
    assert re.search(r'<td class="field-updated_display"><span class="xml-when">\d{4}-\d\d-\d\d</span>\d\d:\d\d</td>',
                     signed_row)
    assert ">live</span>" in signed_row
    assert re.search(r'<td class="field-signed"><img [^>]*alt="False"', rows[s.unsigned.pk])
    assert f'<td class="field-size_display">{s.unsigned.size} B</td>' in rows[s.unsigned.pk]
    assert '<td class="field-version">2</td>' in rows[s.twice.pk] and "WMS Haikou" in rows[s.twice.pk]
    assert re.search(r'xml-state-deleted" title="deleted \d{4}-\d\d-\d\d \d\d:\d\d:\d\d">deleted '
                     r'<span class="xml-when">\d{4}-\d\d-\d\d</span>', rows[s.deleted.pk])
    assert re.search(r'<td class="field-size_display">\d+(\.\d)? KB</td>', rows[big.pk])
    # Read-only: nothing to add, no delete action (nor checkboxes for it).
    assert f'href="{CHANGELIST}add/"' not in page
    assert 'value="delete_selected"' not in page and "action-checkbox" not in page

    def names(query: str) -> set[str]:
        return {d.filename for d in client.get(CHANGELIST + query).context["cl"].result_list}

    everything = {"unsigned.xml", SIGNED_NAME, "twice.xml", "gone.xml", "script.xml", "big.xml"}
    assert names("") == everything  # live and deleted
    assert names(f"?q={ORDER_NO}") == {SIGNED_NAME}  # only inside that document's text
    assert names("?q=200000000000000001") == set()  # the first content of twice.xml is a version now
    assert names(f"?q={CERT_NO}") == {SIGNED_NAME} and names("?q=req-twice-2") == {"twice.xml"}
    assert names("?q=script") == {"script.xml"}
    assert names("?state=deleted") == {"gone.xml"} and names("?state=live") == everything - {"gone.xml"}
    assert names("?signed__exact=1") == {SIGNED_NAME}
    assert names(f"?access_id__id__exact={s.other.pk}") == {"twice.xml"}
    assert names("?message_type=CEB311Message") == {"gone.xml"}
    assert names(f"?updated_at__year={timezone.localtime().year}") == everything
    filters = client.get(CHANGELIST).content.decode()
    for title in ("By signed", "By state", "By access ID", "By message type"):
        assert title in filters

    with CaptureQueriesContext(connection) as queries:
        assert names(f"?q={ORDER_NO}") == {SIGNED_NAME}
    searched = [q["sql"] for q in queries if 'FROM "xmlstore_xmldocument"' in q["sql"] and "LIKE" in q["sql"]]
    assert searched and all('"xmlstore_xmldocument"."content"' not in q.split(" FROM ", 1)[0] for q in searched)

    for refused in (CHANGELIST + "add/", detail(s.signed).replace("change", "delete")):
        assert client.get(refused).status_code == 403
    assert client.post(detail(s.signed).replace("change", "delete"), {"post": "yes"}).status_code == 403
    assert XmlDocument.objects.count() == 6


def test_detail_signature_side_by_side_versions_and_escaping(chief):
    s = seed()
    client = client_for(chief)

    html = client.get(detail(s.signed)).content.decode()
    assert 'class="xml-panes xml-side-by-side"' in html
    original_pane = html.split('id="original-pane"', 1)[1].split('id="signed-pane"', 1)[0]
    signed_pane = html.split('id="signed-pane"', 1)[1].split('id="xml-versions"', 1)[0]
    for pane in (original_pane, signed_pane):
        assert '<span class="nt">&lt;ceb:CEB621Message</span>' in pane  # Pygments' classes
        assert f">{ORDER_NO}<" in pane and 'class="xml-highlight"' in pane
    assert "ds:Signature" not in original_pane
    # Pretty-printed: the Signature (written on the closing line) is on lines of its own, last.
    assert '\n<span class="w">  </span><span class="nt">&lt;ds:Signature</span>' in signed_pane
    assert signed_pane.index("ds:Signature") > signed_pane.index("ceb:Inventory")
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    assert ".xml-highlight { background" in style and ".xml-highlight .nt {" in style
    assert not re.search(r'(href|src)="(https?:)?//', html)  # nothing from another site
    assert f'<code id="sig-cert-no">{CERT_NO}</code>' in html and f'<code id="sig-method">{RSA_SHA1}</code>' in html
    assert f'<code id="sig-digest" class="xml-wrap">{s.digest}</code>' in html
    assert f'<code id="sig-value" class="xml-wrap">{s.signature_value}</code>' in html
    assert '<dd id="sig-device">default</dd>' in html
    owner = reverse("admin:accessids_accessid_change", args=[s.access.pk])
    assert f'<a href="{owner}">ERP Ningbo</a> <code>{s.access.key}</code>' in html
    assert s.signed.sha256 in html and "req-订单-621.xml" in html and '<dd id="xml-source">api</dd>' in html
    assert 'id="download-signed"' in html and 'id="download-original"' in html and 'id="download-current"' not in html
    assert '<a href="/admin/">Home</a>' in html and f"&rsaquo; inbox/2026/{SIGNED_NAME}" in html
    assert "xml-deleted-banner" not in html and "None: this is the first content" in html

    unsigned = client.get(detail(s.unsigned)).content.decode()
    assert "xml-side-by-side" not in unsigned and 'id="xml-signature"' not in unsigned
    assert ">Download XML</a>" in unsigned and 'id="download-signed"' not in unsigned

    twice = client.get(detail(s.twice)).content.decode()
    (row,) = re.findall(r'<tr class="xml-version" data-version="(\d+)">', twice)
    assert row == "1" and version_download(s.twice, 1) in twice and "req-twice.xml</code> / <code>req-twice-2" in twice

    deleted = client.get(detail(s.deleted)).content.decode()
    banner = re.search(r'id="xml-deleted-banner">(.*?)</p>', deleted, re.S).group(1)
    assert timezone.localtime(s.deleted.deleted_at).strftime("%Y-%m-%d %H:%M") in banner
    assert "<code>req-delete-1</code>" in banner

    # Stored text is shown, never interpreted: escaped text and a comment holding <script>.
    script = client.get(detail(s.script)).content.decode()
    assert SCRIPT not in script and "<script>alert" not in script and "<img src=x" not in script
    assert '<code id="xml-request-id">req-&lt;img src=x onerror=alert(3)&gt;</code>' in script
    assert re.search(r'<span class="cm?">&lt;!-- &lt;script&gt;alert\(1\)&lt;/script&gt; --&gt;</span>', script)
    assert "&lt;ceb:note&gt;&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;&lt;/ceb:note&gt;" in unspanned(script)

    # Not well-formed (stored unchecked): the raw text, escaped. An entity is never expanded.
    raw = write(s.access, "raw.xml", "not xml <b onmouseover=alert(2)>", message_type="")
    raw_html = client.get(detail(raw)).content.decode()
    assert "<b onmouseover" not in raw_html and "not xml &lt;b onmouseover=alert(2)&gt;" in unspanned(raw_html)
    xxe = write(s.access, "xxe.xml", '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>')
    xxe_html = client.get(detail(xxe)).content.decode()
    assert "root:" not in xxe_html and "&lt;a&gt;&amp;x;&lt;/a&gt;" in unspanned(xxe_html)

    # Over 512 KB: only the head is highlighted, and the page says so.
    big = write(s.access, "big.xml", ceb621("500000000000000001", items=6000))
    big_html = client.get(detail(big)).content.decode()
    size = f"{big.size / 2**20:.1f} MB"
    assert big.size > 2**20 and size != "1.0 MB"
    assert f"Showing the first 512 KB of {size} — download for the full document." in big_html
    shown = unspanned(big_html)
    assert "&lt;ceb:gnum&gt;1&lt;/ceb:gnum&gt;" in shown and "&lt;ceb:gnum&gt;6000&lt;/ceb:gnum&gt;" not in shown

    # Nothing can be posted to the change page.
    assert client.post(detail(s.signed), {"content": "x"}).status_code == 403
    assert XmlDocument.objects.get(pk=s.signed.pk).content == s.signed.content


def test_downloads_return_the_stored_bytes(chief):
    s = seed()
    client = client_for(chief)

    def fetch(target: str):
        response = client.get(target)
        assert response.status_code == 200, target
        assert response["Content-Type"] == "application/xml; charset=utf-8"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "no-store" in response["Cache-Control"]
        return response

    signed = fetch(download(s.signed, "signed"))
    assert signed.content == s.signed.content.encode("utf-8")
    assert signed["Content-Disposition"] == (
        "attachment; filename=\"__-621.xml\"; filename*=utf-8''%E8%AE%A2%E5%8D%95-621.xml")
    original = fetch(download(s.signed, "original"))
    assert original.content == s.signed.original_content.encode("utf-8") != signed.content
    assert "filename*=utf-8''%E8%AE%A2%E5%8D%95-621.original.xml" in original["Content-Disposition"]
    assert fetch(download(s.signed, "current")).content == signed.content

    current = fetch(download(s.unsigned, "current"))
    assert current.content == s.unsigned.content.encode("utf-8")
    assert current["Content-Disposition"] == 'attachment; filename="unsigned.xml"'
    assert fetch(download(s.unsigned, "original")).content == current.content  # nothing was signed
    assert fetch(download(s.deleted, "current")).content == s.deleted.content.encode("utf-8")  # kept

    first = fetch(version_download(s.twice, 1))
    assert first.content == s.first_content.encode("utf-8")
    assert first["Content-Disposition"] == 'attachment; filename="twice.v1.xml"'

    for missing in (download(s.unsigned, "signed"), download(s.signed, "other"),
                    reverse("admin:xmlstore_xmldocument_download", args=[999999, "current"]),
                    reverse("admin:xmlstore_xmldocument_download", args=["nope", "current"]),
                    version_download(s.twice, 2), version_download(s.signed, 1),
                    reverse("admin:xmlstore_xmldocument_change", args=[999999])):
        assert client.get(missing).status_code == 404, missing


def test_view_permission_is_needed_everywhere():
    s = seed()
    targets = [CHANGELIST, detail(s.signed), download(s.signed, "signed"), download(s.signed, "original"),
               version_download(s.twice, 1)]
    nosy = client_for(user_make("nosy", "view_accessid"))
    for target in targets:
        assert nosy.get(target).status_code == 403, target

    clerk = client_for(user_make("clerk", "view_xmldocument"))
    for target in targets:
        assert clerk.get(target).status_code == 200, target
    html = clerk.get(detail(s.signed)).content.decode()
    # May not look at access IDs: the owner is named, not linked.
    assert f"ERP Ningbo <code>{s.access.key}</code>" in html and "/admin/accessids/" not in html
    assert clerk.post(detail(s.signed), {"x": "y"}).status_code == 403
    assert clerk.get(detail(s.signed).replace("change", "delete")).status_code == 403

    anonymous = Client().get(detail(s.signed))
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


# --- Headless Chromium against the real server -------------------------------------------


def test_browser_list_search_detail_downloads_and_permissions(platform, chromium):
    user_make("chief", superuser=True)
    user_make("nosy", "view_accessid")
    s = seed()
    page = chromium.page
    base = platform.base
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    def listed() -> list[str]:
        return page.locator("#result_list tbody th.field-filename").all_inner_texts()

    admin_login(chromium, base, "chief")
    page.goto(base + CHANGELIST)
    assert sorted(listed()) == sorted(["unsigned.xml", SIGNED_NAME, "twice.xml", "gone.xml", "script.xml"])
    headers = page.locator("#result_list thead th").all_text_contents()  # inner text is upper-cased by CSS
    assert [h.strip() for h in headers] == ["Filename", "Directory", "Signed", "CertNo", "Access ID", "Size",
                                            "Version", "Updated", "State"]
    signed_row = page.locator(f"#result_list tr:has-text('{SIGNED_NAME}')")
    assert signed_row.locator("td.field-cert_no").inner_text() == CERT_NO
    assert signed_row.locator("td.field-signed img").get_attribute("alt") == "True"
    assert s.access.key in signed_row.locator("td.field-access_display").inner_text()
    gone = page.locator("#result_list tr:has-text('gone.xml')")
    assert re.fullmatch(r"deleted\s+\d{4}-\d\d-\d\d", gone.locator("td.field-state_display").inner_text())
    # Greyed: the deleted row's text is quieter than a live row's.
    grey = gone.locator("td.field-directory").evaluate("e => getComputedStyle(e).color")
    assert grey != signed_row.locator("td.field-directory").evaluate("e => getComputedStyle(e).color")
    chromium.screenshot("xml-changelist")

    page.fill("#searchbar", ORDER_NO)
    page.press("#searchbar", "Enter")
    page.wait_for_url(f"**?q={ORDER_NO}")
    assert listed() == [SIGNED_NAME]

    page.goto(base + CHANGELIST)
    page.click("#changelist-filter a:text-is('Deleted')")
    page.wait_for_url("**state=deleted**")
    assert listed() == ["gone.xml"]

    # The signed document: original and signed side by side, highlighted, with its signature.
    page.goto(base + CHANGELIST)
    page.click(f"#result_list a:text-is('{SIGNED_NAME}')")
    page.wait_for_url(f"**{CHANGELIST}{s.signed.pk}/change/")
    original, signed = page.locator("#original-pane"), page.locator("#signed-pane")
    left, right = original.bounding_box(), signed.bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 2
    for pane in (original, signed):
        assert pane.locator(".xml-highlight span.nt").count() > 10
        assert ORDER_NO in pane.inner_text()
        # Each column scrolls on its own rather than stretching the page.
        assert pane.locator(".xml-scroll").evaluate("e => getComputedStyle(e).overflow") == "auto"
    assert "ds:Signature" in signed.inner_text() and "ds:Signature" not in original.inner_text()
    assert page.inner_text("#sig-cert-no") == CERT_NO and page.inner_text("#sig-digest") == s.digest
    assert page.inner_text("#sig-value") == s.signature_value
    chromium.screenshot("xml-signed-detail")

    request = chromium.context.request
    for button, content in (("#download-signed", s.signed.content), ("#download-original",
                                                                      s.signed.original_content)):
        fetched = request.get(base + page.get_attribute(button, "href"))
        assert fetched.status == 200 and fetched.body() == content.encode("utf-8")
        assert fetched.headers["content-type"] == "application/xml; charset=utf-8"
        assert fetched.headers["x-content-type-options"] == "nosniff"
    with page.expect_download() as started:
        page.click("#download-signed")
    downloaded = started.value
    assert downloaded.suggested_filename == SIGNED_NAME
    with open(downloaded.path(), "rb") as fh:
        assert fh.read() == XmlDocument.objects.get(pk=s.signed.pk).content.encode("utf-8")

    page.goto(base + detail(s.twice))
    assert page.locator("#xml-versions tr.xml-version").count() == 1
    assert page.locator("#xml-versions tr.xml-version td").first.inner_text() == "1"
    fetched = request.get(base + page.locator("#xml-versions tr.xml-version a").get_attribute("href"))
    assert fetched.body() == s.first_content.encode("utf-8")

    page.goto(base + detail(s.deleted))
    banner = page.inner_text("#xml-deleted-banner")
    assert "req-delete-1" in banner and timezone.localtime(s.deleted.deleted_at).strftime("%Y-%m-%d") in banner
    chromium.screenshot("xml-deleted-detail")

    # Stored <script> text is shown as text: no script element, no dialog.
    page.goto(base + detail(s.script))
    text = page.inner_text("#current-pane")
    assert f"<!-- {SCRIPT} -->" in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert page.evaluate("() => [...document.scripts].filter(e => e.textContent.includes('alert')).length") == 0
    page.wait_for_timeout(300)
    assert dialogs == []

    # Staff without the view permission: 403 for the page and the files.
    admin_login(chromium, base, "nosy")
    assert page.goto(base + detail(s.signed)).status == 403
    for target in (download(s.signed, "signed"), version_download(s.twice, 1)):
        assert request.get(base + target).status == 403
    assert dialogs == []
