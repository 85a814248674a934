"""The import layers (scripts/check_layers.py, [tool.layers] in pyproject.toml): the repository
passes, the checker catches an upward import, a sideways one, a circle closed inside a
function and a Django import reached from the card package; and the card package imports
in a virtual environment that has websockets but not Django."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "scripts" / "check_layers.py"

def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", CHECKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_checker(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(root)], capture_output=True, text=True, timeout=60)


def repo_copy(tmp_path: Path) -> Path:
    """The layered packages and pyproject.toml of this repository, Python files only."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for entry in _checker().config_load(ROOT).layers:
        for package in entry:
            shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                                          "static", "templates"))
    return copy


def test_the_repository_has_no_upward_import_and_no_circle():
    result = run_checker(ROOT)
    assert result.returncode == 0, result.stdout
    assert "every import points down" in result.stdout


def test_an_upward_import_hidden_in_a_function_fails_naming_file_and_line(tmp_path):
    copy = repo_copy(tmp_path)
    errors = copy / "core" / "errors.py"
    lines = errors.read_text().splitlines()
    lines += ["", "", "def _handler():", "    from api.errors import as_api_error", ""]
    errors.write_text("\n".join(lines))
    result = run_checker(copy)
    assert result.returncode == 1
    line = len(lines) - 1
    assert (f"core/errors.py:{line}: core.errors imports api.errors, which is a layer above"
            in result.stdout), result.stdout
    # api.errors imports core.errors, so this also closes a circle, reported on both ends.
    assert "closing a circle of 2 modules: api.errors, core.errors" in result.stdout
    assert "3 problem(s)" in result.stdout


def write_tree(root: Path, files: dict[str, str], order: list[str], pure: list[str] | None = None,
               outside: list[str] | None = None) -> Path:
    def toml_list(items):
        return "[" + ", ".join(f'"{item}"' for item in items or []) + "]"

    (root / "pyproject.toml").write_text(
        f"[tool.layers]\norder = {toml_list(order)}\npure = {toml_list(pure)}\npure_allow = [\"websockets\"]\n"
        f"outside = {toml_list(outside)}\n")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_siblings_on_one_layer_may_not_import_each_other(tmp_path):
    root = write_tree(tmp_path, {"base/__init__.py": "", "left/__init__.py": "", "left/a.py": "import right.b\n",
                                 "right/__init__.py": "", "right/b.py": "from base import x\n", "base/x.py": ""},
                      ["base", "left right"])
    problems = _checker().check(root)
    assert problems == ["left/a.py:1: left.a imports right.b: left and right are siblings on one layer "
                        "and must not import each other"]


def test_a_circle_inside_one_package_fails_even_through_relative_and_inner_imports(tmp_path):
    root = write_tree(tmp_path, {
        "app/__init__.py": "",
        "app/models.py": "from .services import create\n",
        "app/services.py": "def create():\n    from app import models\n    return models\n",
        "app/views.py": "from . import services\n",
    }, ["app"])
    problems = _checker().check(root)
    assert len(problems) == 2 and all("closing a circle of 2 modules: app.models, app.services" in p
                                      for p in problems), problems
    assert problems[0].startswith("app/models.py:1:") and problems[1].startswith("app/services.py:2:")


def test_a_pure_package_may_not_reach_django_through_a_lower_module(tmp_path):
    root = write_tree(tmp_path, {
        "core/__init__.py": "", "core/settings_reader.py": "from django.conf import settings\n",
        "core/plain.py": "import json\nimport websockets\n",
        "card/__init__.py": "", "card/protocol.py": "from core import plain\n",
        "card/gateway.py": "from . import protocol\nfrom core.settings_reader import settings\n",
        "card/relay.py": "def go():\n    import channels_redis\n",
    }, ["core", "card"], pure=["card"])
    problems = _checker().check(root)
    assert problems == [
        "card/relay.py:2: card.relay imports channels_redis, which card/ must run without (reached by card.relay; "
        "allowed: the standard library and pure_allow)",
        "core/settings_reader.py:1: core.settings_reader imports django, which card/ must run without (reached by "
        "card.gateway -> core.settings_reader; allowed: the standard library and pure_allow)",
    ]


def test_a_package_on_no_layer_and_imports_of_the_tests_fail(tmp_path):
    root = write_tree(tmp_path, {
        "core/__init__.py": "", "core/a.py": "from tests import helpers\n",
        "newapp/__init__.py": "", "tests/__init__.py": "", "tests/helpers.py": "import core.a\n",
    }, ["core"], outside=["tests"])
    assert _checker().check(root) == [
        "core/a.py:1: core.a imports tests, which is outside the layers (only tests and tools may import it)",
        "newapp/__init__.py:1: package newapp is on no layer: add it to [tool.layers] order (or outside) in "
        "pyproject.toml",
    ]


def test_the_card_package_imports_without_django(tmp_path):
    """A fresh virtual environment with websockets only, and a copy of ukey/ alone on its path."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    shutil.copytree(Path(websockets.__file__).parent, site / "websockets")
    code_dir = tmp_path / "agent"
    shutil.copytree(ROOT / "ukey", code_dir / "ukey", ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        try:
            import django  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("django is importable here; the test proves nothing")
        import ukey.protocol, ukey.gateway, ukey.client, ukey.connection, ukey.messages, ukey.status
        assert not [m for m in sys.modules if m.split(".")[0] in ("django", "channels", "core")], sorted(sys.modules)
        frame = ukey.protocol.build_request("cus-sec_SpcGetCertNo", 1)
        print("ok", ukey.protocol.parse_frame(frame).kind, ukey.messages.device_channel("a"))
    """)
    result = subprocess.run([str(python), "-I", "-c", script, str(code_dir)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok request ukey.a"
