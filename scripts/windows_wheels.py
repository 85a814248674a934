"""Can requirements.txt be installed on Windows without a compiler? Writes (or, with --check,
compares) deploy/windows-wheels.txt: every wheel pip picks for 64-bit Windows and CPython 3.11,
dependencies included, for the requirement lines whose markers keep them on Windows.

    python scripts/windows_wheels.py            # needs PyPI; rewrites deploy/windows-wheels.txt
    python scripts/windows_wheels.py --check    # the same, and fails if the list changed

pip evaluates environment markers against the machine it runs on, not against --platform, so
the lines a marker leaves out on Windows (`sys_platform != "win32"`) are dropped here first.
tests/test_deployment.py reads the committed list without the network."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "deploy" / "windows-wheels.txt"
PYTHON_VERSION = "3.11"
WINDOWS = {
    "sys_platform": "win32", "platform_system": "Windows", "os_name": "nt", "platform_machine": "AMD64",
    "python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".9",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
}
HEADER = f"""\
# The wheels pip installs from requirements.txt on 64-bit Windows with CPython {PYTHON_VERSION}
# (dependencies included): each is pure Python (py3-none-any) or built for win_amd64, so no
# compiler is needed. Written by `python scripts/windows_wheels.py` (pip download --platform
# win_amd64 --only-binary=:all: --python-version {PYTHON_VERSION}, after dropping the lines whose
# environment markers leave them out on Windows); tests/test_deployment.py checks every
# requirement against it.
"""


def requirement_lines(path: Path = ROOT / "requirements.txt") -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def for_windows(lines: list[str]) -> list[str]:
    """The requirements (markers removed) that Windows installs."""
    kept = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(WINDOWS):
            kept.append(line.split(";", 1)[0].strip())
    return kept


def wheels() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp) / "requirements-windows.txt"
        wanted.write_text("\n".join(for_windows(requirement_lines())) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                        "--platform", "win_amd64", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                        "-r", str(wanted), "-d", str(Path(tmp) / "wheels")], check=True)
        return sorted(p.name for p in (Path(tmp) / "wheels").iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed list differs")
    text = HEADER + "\n".join(wheels()) + "\n"
    if parser.parse_args().check:
        if LIST.read_text() != text:
            print(f"{LIST} is out of date: run python scripts/windows_wheels.py", file=sys.stderr)
            return 1
        print(f"{LIST}: up to date")
        return 0
    LIST.parent.mkdir(exist_ok=True)
    LIST.write_text(text)
    print(f"wrote {LIST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
