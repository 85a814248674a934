"""The client examples of the README, run for real against a running platform: the
curl + openssl script (examples/sign.sh), the Python client's CLI (`python -m signclient`)
and the single-file Java program (examples/SignExample.java). Each one's signature is
verified with the card's certificate from GET /api/v1/certificate, for an RSA and an SM2 card.

The platform runs on its embedded defaults (its own SQLite in a temporary var dir), so this
module works with either SIGNPLATFORM_TEST_BACKENDS."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.certs import CertificateInfo, certificate_load, signature_verify
from signclient import SignClient, canonical_query
from tests.conftest import SimulatorProcess
from tests.live import Platform, embedded_env

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parent.parent
SIGN_SH = ROOT / "examples" / "sign.sh"
JAVA_EXAMPLE = ROOT / "examples" / "SignExample.java"
# Quotes, a backslash, a newline and non-ASCII text: the body bytes must be signed as sent.
TEXT = 'Zollanmeldung 报关单 "No. 42" \\ ünïcödé\nline 2'
ALGORITHMS = {"rsa": "RSA-SHA1", "sm2": "SM2-SM3"}
STRING_TO_SIGN_RE = re.compile(r"--- string to sign ---\n(.*?)\n--- end of string to sign ---\n", re.S)
# What sign.sh may use: bash, curl, openssl and a few coreutils (no Python, no jq).
SCRIPT_TOOLS = ("bash", "curl", "openssl", "date", "mktemp", "cut", "sort", "paste", "tr", "tail", "cat", "rm")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: the test setup (scripts/ensure-test-services.sh) must install it"
    return path


@dataclass
class Live:
    algorithm: str
    platform: Platform
    access_id: str
    secret: str
    certificate: dict
    cert: CertificateInfo

    def client_env(self, **extra) -> dict:
        env = dict(os.environ, SIGNPLATFORM_URL=self.platform.base, SIGNPLATFORM_ACCESS_ID=self.access_id,
                   SIGNPLATFORM_SECRET=self.secret)
        env.pop("DEBUG", None)
        env.update(extra)
        return env

    def check_signature(self, answer: dict, text: str = TEXT) -> None:
        assert answer["algorithm"] == ALGORITHMS[self.algorithm]
        assert answer["cert_no"] == self.certificate["cert_no"]
        assert answer["device"] == "default"
        assert signature_verify(self.cert, text.encode("utf-8"), answer["signature"])
        assert not signature_verify(self.cert, (text + ".").encode("utf-8"), answer["signature"])


@pytest.fixture(scope="module", params=sorted(ALGORITHMS))
def live(request, tmp_path_factory):
    """One platform per card algorithm, with an access ID created by `manage.py accessid create`."""
    tmp = tmp_path_factory.mktemp(f"examples-{request.param}")
    sim = SimulatorProcess(algorithm=request.param).start()
    platform = Platform(embedded_env(tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin), tmp)
    try:
        platform.start()
        platform.wait_card()
        created = subprocess.run(
            [sys.executable, "manage.py", "accessid", "create", "--name", f"examples-{request.param}", "--json"],
            cwd=ROOT, env=platform.env, capture_output=True, text=True, timeout=60,
        )
        assert created.returncode == 0, created.stderr
        credentials = json.loads(created.stdout)
        certificate = SignClient(platform.base, credentials["access_id"], credentials["secret"]).certificate()
        yield Live(request.param, platform, credentials["access_id"], credentials["secret"], certificate,
                   certificate_load(certificate["certificate_pem"]))
    finally:
        platform.stop()
        sim.stop()


def run(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def script_path(tmp_path: Path) -> str:
    """A PATH holding only what sign.sh may use."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in SCRIPT_TOOLS:
        (bin_dir / name).symlink_to(tool(name))
    return str(bin_dir)


def debug_string_to_sign(stderr: str) -> str:
    found = STRING_TO_SIGN_RE.search(stderr)
    assert found, stderr
    return found.group(1)


def test_sign_sh(live, tmp_path):
    body = json.dumps({"data": TEXT, "no_hash": False}, ensure_ascii=False)
    result = run([tool("bash"), str(SIGN_SH), body], live.client_env(DEBUG="1", PATH=script_path(tmp_path)))
    assert result.returncode == 0, result.stderr
    live.check_signature(json.loads(result.stdout))

    lines = debug_string_to_sign(result.stderr).split("\n")
    assert len(lines) == 8
    assert lines[:5] == ["HMAC-SHA256", "POST", "/api/v1/sign", "", live.access_id]
    assert re.fullmatch(r"1[0-9]{12}", lines[5])  # milliseconds
    assert re.fullmatch(r"[0-9a-f]{32}", lines[6])
    assert lines[7] == hashlib.sha256(body.encode("utf-8")).hexdigest()
    assert "HTTP/1.1 200" in result.stderr  # the response headers, with DEBUG=1


def test_python_cli(live):
    result = run([sys.executable, "-m", "signclient", "sign", TEXT], live.client_env())
    assert result.returncode == 0, result.stderr
    live.check_signature(json.loads(result.stdout))


VECTORS = ROOT / "tests" / "vectors"  # copies of shared/spec/vectors


def test_python_cli_signs_verifies_xml_and_179(live, tmp_path):
    """The CLI's customs commands: a CEB file signed to a file that verifies on its own
    (digest vector, certificate of the card), a tampered copy diagnosed, the 179 vector."""
    from core.ceb import ceb_verify

    signed_path = tmp_path / "signed.xml"
    original = (VECTORS / "CEB621Message.xml").read_text(encoding="utf-8")
    result = run([sys.executable, "-m", "signclient", "sign-xml", str(VECTORS / "CEB621Message.xml"),
                  "--filename", "cli-order", "--out", str(signed_path)], live.client_env())
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["digest_value"] == "b2FtM/jHvW4fnJpMMPWk/177RwA=" and answer["filename"] == "cli-order.xml"
    signed = signed_path.read_text(encoding="utf-8")
    start, end = signed.index("<ds:Signature"), signed.index("</ds:Signature>") + len("</ds:Signature>")
    assert signed[:start] + signed[end:] == original
    check = ceb_verify(signed)
    assert check.valid and check.cert_no == live.certificate["cert_no"]
    assert check.certificate.der == live.cert.der

    verified = run([sys.executable, "-m", "signclient", "verify-xml", str(signed_path)], live.client_env())
    assert verified.returncode == 0 and json.loads(verified.stdout)["valid"] is True
    tampered = tmp_path / "tampered.xml"
    tampered.write_text(signed.replace("48037605991776256", "48037605991776259"), encoding="utf-8")
    refused = run([sys.executable, "-m", "signclient", "verify-xml", str(tampered)], live.client_env())
    report = json.loads(refused.stdout)
    assert refused.returncode == 3 and report["digest_ok"] is False and "digest" in report["reason"]

    result = run([sys.executable, "-m", "signclient", "sign-179", str(VECTORS / "179-payload.json")],
                 live.client_env())
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    expected = (VECTORS / "179-sign-string.txt").read_text(encoding="utf-8").rstrip("\n")
    assert answer["sign_string"] == expected
    assert signature_verify(live.cert, expected.encode("utf-8"), answer["signature"])


def test_java_single_file_program(live):
    # A UTF-8 locale, so that the JVM decodes the non-ASCII argument correctly.
    result = run([tool("java"), str(JAVA_EXAMPLE.relative_to(ROOT)), TEXT], live.client_env(LC_ALL="C.UTF-8"),
                 timeout=120)
    assert result.returncode == 0, result.stderr
    live.check_signature(json.loads(result.stdout))


def test_java_compiles_for_java_11(tmp_path):
    # Standard library only, Java 11 API; the classes go to a scratch dir, not into the tree.
    out = subprocess.run([tool("javac"), "--release", "11", "-Xlint:all", "-Werror", "-d", str(tmp_path),
                          str(JAVA_EXAMPLE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "query",
    [
        "device=default",
        # unsorted, a blank value, a name without '=', '+' and %20, lower-case hex, UTF-8,
        # and names whose order changes if '=' were sorted with them ("a" before "a-b")
        "zeta=%7e%2f&device=default&a-b=2&a=x+y%20z&flag&%C3%A9t%C3%A9=%e2%82%ac&a=",
    ],
)
def test_sign_sh_get_with_query(live, query, tmp_path):
    result = run([tool("bash"), str(SIGN_SH), "get", f"/api/v1/certificate?{query}"],
                 live.client_env(DEBUG="1", PATH=script_path(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == live.certificate
    lines = debug_string_to_sign(result.stderr).split("\n")
    assert lines[1:4] == ["GET", "/api/v1/certificate", canonical_query(query)]
    assert lines[7] == hashlib.sha256(b"").hexdigest()
    if query != "device=default":
        assert lines[3] == "%C3%A9t%C3%A9=%E2%82%AC&a=&a=x%20y%20z&a-b=2&device=default&flag=&zeta=~%2F"


def test_wrong_secret_is_rejected_with_the_hash_of_the_string_to_sign(live, tmp_path):
    body = json.dumps({"data": TEXT})
    result = run([tool("bash"), str(SIGN_SH), body],
                 live.client_env(DEBUG="1", SIGNPLATFORM_SECRET="not-the-secret", PATH=script_path(tmp_path)))
    assert result.returncode == 1
    assert "sign.sh: HTTP 401" in result.stderr
    error = json.loads(result.stdout)
    assert error["success"] is False
    assert error["code"] == "SIGNATURE_VALIDATION_FAILED"
    printed = debug_string_to_sign(result.stderr)
    assert error["details"]["string_to_sign_sha256"] == hashlib.sha256(printed.encode("utf-8")).hexdigest()
    headers = result.stderr.lower()
    assert "www-authenticate: hmac-sha256" in headers
    assert f"x-request-id: {error['request_id']}" in headers


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Calling the API\n")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_worked_example_is_right():
    from signclient import string_to_sign

    section = readme_section()
    body = b'{"data": "hello"}'
    lines = string_to_sign("POST", "/api/v1/sign", "", "AK3F9C2B7D41E0A5C68D12", "1767225600000",
                           "9f86d081884c7d659a2feaa0c55ad015", body)
    assert f"```\n{lines}\n```" in section
    signature = hmac.new(b"example-secret-do-not-use", lines.encode(), hashlib.sha256).hexdigest()
    assert f"`X-Signature: {signature}`" in section
    assert f"the {len(body)} body bytes" in section
    assert "is signed as `directory=in&q=%E6%8A%A5%E5%85%B3%20x&signed=`" in section
    assert canonical_query("signed=&q=%e6%8a%a5%e5%85%b3%20x&directory=in") == "directory=in&q=%E6%8A%A5%E5%85%B3%20x&signed="


def test_readme_curl_openssl_snippet(live, tmp_path):
    section = readme_section()
    snippet = section[section.index("The core of `examples/sign.sh`"):]
    snippet = snippet[snippet.index("```bash\n") + len("```bash\n"):]
    snippet = snippet[:snippet.index("\n```")]
    assert "openssl dgst -sha256 -hmac" in snippet
    result = run([tool("bash"), "-euo", "pipefail", "-c", snippet], live.client_env(PATH=script_path(tmp_path)))
    assert result.returncode == 0, result.stderr
    live.check_signature(json.loads(result.stdout), "hello")
