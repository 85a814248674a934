"""The client profile examples (docs/client-profiles.md), run for real against a running
platform: examples/GysSignExample.java (gys), examples/xsignature_client.py (x-signature) and
examples/cp_md5_client.js (cp-md5). Each signature is verified with the card's certificate
from GET /api/v1/certificate; a wrong secret must get the profile's own error shape.

One platform on its embedded defaults (its own SQLite in a temporary var dir) with an RSA card,
and one access ID with the three profiles turned on by `manage.py accessid profile`."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.schemes import gys_string_to_sign
from core.certs import CertificateInfo, certificate_load, signature_verify
from signclient import SignClient
from tests.conftest import RPC_CREATE_ARGS, SimulatorProcess
from tests.live import Platform, embedded_env

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parent.parent
GYS_JAVA = ROOT / "examples" / "GysSignExample.java"
XSIGNATURE_PY = ROOT / "examples" / "xsignature_client.py"
CP_MD5_JS = ROOT / "examples" / "cp_md5_client.js"
# Quotes, a backslash, a newline and Chinese text: the body must be escaped and sent as UTF-8.
TEXT = '报关单 "No. 42" \\ 海关总署\nline 2'
STRING_TO_SIGN_RE = re.compile(r"--- string to sign ---\n(.*?)\n--- end of string to sign ---\n", re.S)
ERROR_RE = re.compile(r"HTTP (\d{3}): (.*)", re.S)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: the test setup (scripts/ensure-test-services.sh) must install it"
    return path


@dataclass
class Live:
    platform: Platform
    access_id: str
    secret: str
    certificate: dict
    cert: CertificateInfo

    def client_env(self, **extra) -> dict:
        # A UTF-8 locale, so that the JVM decodes the non-ASCII argument correctly.
        env = dict(os.environ, SIGNPLATFORM_URL=self.platform.base, SIGNPLATFORM_ACCESS_ID=self.access_id,
                   SIGNPLATFORM_SECRET=self.secret, LC_ALL="C.UTF-8")
        env.pop("DEBUG", None)
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def check_signature(self, signature: str, text: str = TEXT) -> None:
        assert signature_verify(self.cert, text.encode("utf-8"), signature)
        assert not signature_verify(self.cert, (text + ".").encode("utf-8"), signature)

    def check_native_answer(self, answer: dict) -> None:
        assert answer["algorithm"] == "RSA-SHA1"
        assert answer["cert_no"] == self.certificate["cert_no"]
        assert answer["device"] == "default"
        self.check_signature(answer["signature"])


def manage(platform: Platform, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "manage.py", "accessid", *args], cwd=ROOT, env=platform.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One platform (RSA card) and one access ID with gys, x-signature (default) and cp-md5 (default)."""
    tmp = tmp_path_factory.mktemp("profile-examples")
    sim = SimulatorProcess(algorithm="rsa").start()
    platform = Platform(embedded_env(tmp / "var", UKEY_URL=sim.url, UKEY_PIN=sim.pin), tmp)
    try:
        platform.start()
        platform.wait_card()
        credentials = json.loads(manage(platform, "create", "--name", "profile-examples", *RPC_CREATE_ARGS,
                                        "--json").stdout)
        access_id = credentials["access_id"]
        manage(platform, "profile", access_id, "--enable", "gys")
        manage(platform, "profile", access_id, "--enable", "x-signature", "--default")
        shown = json.loads(manage(platform, "profile", access_id, "--enable", "cp-md5", "--default", "--json").stdout)
        assert shown["access_id"] == access_id
        enabled = {row["profile"] for row in shown["profiles"] if row["enabled"]}
        assert {"gys", "x-signature", "cp-md5"} <= enabled, shown
        certificate = SignClient(platform.base, access_id, credentials["secret"]).certificate()
        yield Live(platform, access_id, credentials["secret"], certificate,
                   certificate_load(certificate["certificate_pem"]))
    finally:
        platform.stop()
        sim.stop()


def run(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def error_answer(result: subprocess.CompletedProcess) -> tuple[int, dict]:
    """The `HTTP <status>: <body>` an example prints on stderr for an error answer."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    found = ERROR_RE.search(result.stderr)
    assert found, result.stderr
    return int(found.group(1)), json.loads(found.group(2))


# --- gys: examples/GysSignExample.java ------------------------------------------------------------

def gys_run(live: Live, *args: str, **env) -> subprocess.CompletedProcess:
    return run([tool("java"), str(GYS_JAVA.relative_to(ROOT)), *args], live.client_env(**env), timeout=120)


def test_gys_java(live):
    result = gys_run(live, "--print-string-to-sign", TEXT)
    assert result.returncode == 0, result.stderr
    live.check_native_answer(json.loads(result.stdout))

    printed = STRING_TO_SIGN_RE.search(result.stderr)
    assert printed, result.stderr
    string_to_sign = printed.group(1)
    headers = re.search(r"&gys_access_id=(AK\w+)&gys_nonce=([^&]+)&gys_timestamp=([0-9]+)&no_hash=false\Z",
                        string_to_sign)
    assert headers, string_to_sign
    access_id, nonce, timestamp = headers.groups()
    assert access_id == live.access_id
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", nonce)
    assert abs(int(timestamp) - time.time() * 1000) < 300_000  # milliseconds
    expected = gys_string_to_sign({"data": TEXT, "no_hash": False}, access_id=live.access_id, timestamp=timestamp,
                                  nonce=nonce)
    assert string_to_sign == expected
    assert string_to_sign.startswith(f"data={TEXT}&gys_access_id=")


def test_gys_java_debug_env(live):
    result = gys_run(live, "DEBUG=1 signs too", DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert STRING_TO_SIGN_RE.search(result.stderr).group(1).startswith("data=DEBUG=1 signs too&gys_access_id=")
    live.check_signature(json.loads(result.stdout)["signature"], "DEBUG=1 signs too")


def test_gys_java_wrong_secret(live):
    status, error = error_answer(gys_run(live, TEXT, SIGNPLATFORM_SECRET="not-the-secret"))
    assert status == 400
    assert error["success"] is False
    assert error["code"] == "SIGNATURE_VALIDATION_FAILED"
    assert error["message"]


def test_gys_java_compiles_for_java_11(tmp_path):
    # Standard library only, Java 11 API; the classes go to a scratch dir, not into the tree.
    out = subprocess.run([tool("javac"), "--release", "11", "-Xlint:all", "-Werror", "-d", str(tmp_path),
                          str(GYS_JAVA)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# --- x-signature: examples/xsignature_client.py ----------------------------------------------------

@pytest.mark.parametrize("with_access_id", [True, False], ids=["X-Access-Id", "profile-default"])
def test_xsignature_python(live, with_access_id):
    env = {} if with_access_id else {"SIGNPLATFORM_ACCESS_ID": None}
    result = run([sys.executable, str(XSIGNATURE_PY), TEXT], live.client_env(**env))
    assert result.returncode == 0, result.stderr
    live.check_native_answer(json.loads(result.stdout))


def test_xsignature_python_wrong_secret(live):
    result = run([sys.executable, str(XSIGNATURE_PY), TEXT], live.client_env(SIGNPLATFORM_SECRET="not-the-secret"))
    assert error_answer(result) == (401, {"code": 401, "msg": "signature_auth failed"})


def test_xsignature_python_is_python_3_8():
    # The example is for old client machines: no syntax newer than Python 3.8.
    ast.parse(XSIGNATURE_PY.read_text(encoding="utf-8"), feature_version=(3, 8))


# --- cp-md5: examples/cp_md5_client.js -------------------------------------------------------------

def test_cp_md5_node(live):
    # SIGNPLATFORM_ACCESS_ID is not used: the profile's default access ID.
    result = run([tool("node"), str(CP_MD5_JS), TEXT], live.client_env(SIGNPLATFORM_ACCESS_ID=None))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["_method"] == "cus-sec_SpcSignDataAsPEM"
    assert answer["_status"] == "00"
    assert answer["_args"]["Result"] is True
    assert answer["_args"]["Error"] == []
    signature, cert_no = answer["_args"]["Data"][:2]
    assert cert_no == live.certificate["cert_no"]
    live.check_signature(signature)


def test_cp_md5_node_wrong_secret(live):
    result = run([tool("node"), str(CP_MD5_JS), TEXT], live.client_env(SIGNPLATFORM_SECRET="not-the-secret"))
    status, error = error_answer(result)
    assert status == 401
    assert set(error) == {"error"} and error["error"]
