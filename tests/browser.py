"""Headless Chromium for tests that use the platform the way a person does: Debian's
`chromium` package driven by the `playwright` Python package (never `playwright install`:
the browser is the Debian one, passed as executable_path).

    def test_x(chromium):
        chromium.page.goto(url)
        chromium.screenshot("x")     # test-artifacts/screenshots/x.png, path printed

`make test` installs Chromium (scripts/ensure-test-services.sh); run alone, the fixture
runs that script itself when the browser is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT_DIR = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_executable() -> Path:
    """Debian's Chromium (CHROMIUM_BINARY overrides), installed by the ensure script when missing."""
    configured = os.environ.get("CHROMIUM_BINARY")
    candidate = Path(configured) if configured else Path("/usr/bin/chromium")
    if not candidate.exists() and not configured:
        subprocess.run([str(ROOT / "scripts" / "ensure-test-services.sh")], check=False)
    if not candidate.exists():
        found = shutil.which("chromium")
        if found:
            return Path(found)
        pytest.fail(f"Chromium is not installed at {candidate}: run `make test` or `apt-get install chromium`")
    return candidate


class Browser:
    """One Chromium with a fresh profile, one page; screenshots are saved and their paths printed."""

    def __init__(self, context, printer):
        self.context = context
        self.page = context.pages[0] if context.pages else context.new_page()
        self.page.set_default_timeout(15_000)
        self._print = printer
        self.screenshots: list[Path] = []

    def screenshot(self, name: str) -> Path:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.screenshots.append(path)
        self._print(f"screenshot: {path}")
        return path

    def new_session(self) -> None:
        """Forget every cookie: the next page starts logged out."""
        self.context.clear_cookies()


@pytest.fixture
def chromium(tmp_path, monkeypatch, capsys):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - requirements-test.txt pins it
        pytest.fail("the playwright package is missing: pip install -r requirements-test.txt")
    executable = chromium_executable()
    # Playwright's synchronous API keeps an asyncio loop running in this thread; Django
    # would take the test's plain ORM calls for calls from async code. The test is
    # synchronous, so let them through (server processes do not inherit this: see the
    # tests, which build their environment without it).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    def printer(line: str) -> None:
        with capsys.disabled():
            print(f"\n{line}", end="")

    profile = tmp_path / "chromium-profile"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(executable),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900},
            locale="en-US",
        )
        try:
            yield Browser(context, printer)
        finally:
            context.close()
            # Playwright runs this code in a greenlet with its own context variables, so
            # the test's queries used a database connection of their own: close it here,
            # or it outlives the test and blocks dropping the test database.
            connections.close_all()
