#!/usr/bin/env python3
"""Build the card agent for the card's PC: `dist/signagent.pyz` (one file: `python
signagent.pyz --platform ... --token-env ...`, websockets bundled) and
`dist/signagent-<version>-py3-none-any.whl` (`pip install` it; pip brings websockets).

The bundled websockets is 13.1, the newest release that runs on CPython 3.8 (the Windows 7
machines some customs offices still run), pure Python (its optional C speed-ups are left
out). It is downloaded once from PyPI into the build cache (or give --websockets-wheel).

Usage: python scripts/build_agent.py [--out DIR] [--websockets-wheel PATH]"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEBSOCKETS = "websockets==13.1"
# What the agent imports, and nothing else of the platform.
MODULES = ["signagent/__init__.py", "signagent/__main__.py", "signagent/agent.py", "signagent/cli.py",
           "signagent/system.py", "ukey/__init__.py", "ukey/protocol.py", "ukey/connection.py",
           "ukey/agentproto.py"]


def version() -> str:
    text = (ROOT / "signagent" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def websockets_wheel(cache: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    found = sorted(cache.glob("websockets-13.1-py3-none-any.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading {WEBSOCKETS} (pure Python, for CPython 3.8+) into {cache}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                    "--only-binary=:all:", "--platform", "any", "--python-version", "3.8", "-d", str(cache),
                    WEBSOCKETS], check=True)
    return sorted(cache.glob("websockets-13.1-py3-none-any.whl"))[0]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out: Path) -> Path:
    ver = version()
    info = f"signagent-{ver}.dist-info"
    files = {name: (ROOT / name).read_bytes() for name in MODULES}
    files[f"{info}/METADATA"] = (
        "Metadata-Version: 2.1\nName: signagent\nVersion: " + ver + "\n"
        "Summary: The signing platform's card agent: connects a PC's operator card to the platform\n"
        "Requires-Python: >=3.8\nRequires-Dist: websockets>=13.1,<18\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: signplatform build_agent\nRoot-Is-Purelib: true\n" \
                             b"Tag: py3-none-any\n"
    files[f"{info}/entry_points.txt"] = b"[console_scripts]\nsignagent = signagent.cli:main\n"
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / f"signagent-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return path


def build_zipapp(out: Path, websockets: Path) -> Path:
    staging = io.BytesIO()
    with zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in MODULES:
            bundle.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), (ROOT / name).read_bytes())
        with zipfile.ZipFile(websockets) as wheel:
            for item in wheel.infolist():
                if item.filename.startswith("websockets/") and not item.filename.endswith((".so", ".pyd", ".c")):
                    bundle.writestr(zipfile.ZipInfo(item.filename, date_time=(2026, 1, 1, 0, 0, 0)),
                                    wheel.read(item))
        main = b"import sys\nfrom signagent.cli import main\nsys.exit(main())\n"
        bundle.writestr(zipfile.ZipInfo("__main__.py", date_time=(2026, 1, 1, 0, 0, 0)), main)
    path = out / "signagent.pyz"
    path.write_bytes(b"#!/usr/bin/env python3\n" + staging.getvalue())
    path.chmod(0o755)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "dist"))
    parser.add_argument("--websockets-wheel", help="a websockets 13.1 py3-none-any wheel (else downloaded)")
    options = parser.parse_args(argv)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(out)
    pyz = build_zipapp(out, websockets_wheel(ROOT / ".venv" / "agent-build", options.websockets_wheel))
    print(f"built {pyz} ({pyz.stat().st_size // 1024} KiB) and {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
