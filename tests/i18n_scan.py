"""Finds text shown to people that is not marked for translation: in the project's templates
(text and the attributes people read) and in its Python code (labels, help texts, admin
display names and returns, messages, form and command errors, command output, choices).

Used by tests/test_translations.py; run it alone to list findings:
`.venv/bin/python tests/i18n_scan.py [paths...]`."""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the strings shown to people live. ukey/, signagent/ and signclient/ are Django-free
# programs (English logs and errors); api/ answers machines: its `message` and its OpenAPI
# descriptions stay English on purpose (a client that prefers Chinese gets the code's Chinese message).
PYTHON_DIRS = ("accessids", "audit", "console", "core", "declarations", "signing", "signplatform", "webhooks",
               "xmlstore")
TEMPLATE_DIRS = ("templates", "accessids/templates", "audit/templates", "console/templates", "signing/templates",
                 "webhooks/templates", "xmlstore/templates", "api/templates", "declarations/templates",
                 "signplatform/templates")

# Words that are the same in both languages (names, acronyms, formats, code).
TECHNICAL = {
    "acs", "aes", "des", "rsa", "rsa2", "md5", "sm2", "sm3", "sha", "sha1", "hmac", "json", "xml", "pem", "der", "ceb",
    "api", "http", "https", "url", "uri", "id", "ids", "ukey", "pin", "gys", "e-port", "eport", "webhook", "webhooks",
    "sign-server", "cp-md5", "x-signature", "native", "redis", "postgresql", "sqlite", "uvicorn", "django", "csv",
    "utf-8", "ip", "cidr", "tls", "wss", "ws", "nginx", "openapi", "swagger", "ok", "x509", "ccode", "certno",
    "pdf", "png", "svg", "yaml", "www", "com", "example", "admin", "v1", "dxp", "copcode", "dxpid", "guid", "ebp",
    "ebc", "uuid", "rpc", "todo",
}
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’-]+")
TEMPLATE_MARKED_RE = re.compile(
    r"\{%\s*(?:blocktranslate|blocktrans)\b.*?%\}.*?\{%\s*(?:endblocktranslate|endblocktrans)\s*%\}"
    r"|\{%\s*(?:translate|trans)\s+(?:\"[^\"]*\"|'[^']*').*?%\}", re.S)
TEMPLATE_DROP_RE = re.compile(
    r"\{%\s*comment\s*%\}.*?\{%\s*endcomment\s*%\}|\{#.*?#\}|<script\b.*?</script>|<style\b.*?</style>"
    r"|<(code|pre|kbd|samp)\b[^>]*>.*?</\1>|<!--.*?-->"
    r"|\{%\s*block\s+(?:bodyclass|extrastyle|extrahead)\s*%\}.*?\{%\s*endblock\b.*?%\}", re.S | re.I)
TEMPLATE_TAG_RE = re.compile(r"\{%.*?%\}|\{\{.*?\}\}", re.S)
ATTRIBUTE_RE = re.compile(r"""\b(title|placeholder|aria-label|alt|value)\s*=\s*("[^"]*"|'[^']*')""", re.I)
HTML_TAG_RE = re.compile(r"<[^>]*>", re.S)
ENTITY_RE = re.compile(r"&[a-zA-Z#0-9]+;")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text!r}"


def is_prose(text: str) -> bool:
    """Does `text` contain a word a person reads that is not a technical term?"""
    text = ENTITY_RE.sub(" ", text)
    for word in WORD_RE.findall(text):
        lower = word.lower().strip("'’-")
        if len(lower) < 2 or lower in TECHNICAL:
            continue
        if word.isupper() and len(word) <= 12:  # an acronym or a code (UKEY_TIMEOUT)
            continue
        if "_" in word or any(c.isdigit() for c in word):
            continue
        return True
    return False


def _line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def template_findings(path: Path) -> list[Finding]:
    source = path.read_text("utf-8")
    blanked = source
    for pattern in (TEMPLATE_DROP_RE, TEMPLATE_MARKED_RE):  # keep offsets: blank out, do not cut
        blanked = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), blanked)
    findings = []
    for tag in HTML_TAG_RE.finditer(blanked):
        button = re.search(r"""\btype\s*=\s*["']?(submit|button|reset)\b""", tag.group(0), re.I)
        for match in ATTRIBUTE_RE.finditer(tag.group(0)):
            name, value = match.group(1).lower(), TEMPLATE_TAG_RE.sub(" ", match.group(2)[1:-1])
            if name == "value" and not button:
                continue
            if is_prose(value):
                findings.append(Finding(str(path.relative_to(ROOT)), _line_of(source, tag.start() + match.start()),
                                        value.strip()))
    text = TEMPLATE_TAG_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), blanked)
    text = HTML_TAG_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    for match in re.finditer(r"[^\n]+", text):
        chunk = match.group(0).strip()
        if chunk and is_prose(chunk):
            findings.append(Finding(str(path.relative_to(ROOT)), _line_of(source, match.start()), chunk))
    return findings


# --- Python ---------------------------------------------------------------------------------------

TRANSLATORS = {"_", "gettext", "gettext_lazy", "ngettext", "ngettext_lazy", "pgettext", "pgettext_lazy",
               "npgettext", "format_lazy"}
# Keyword arguments whose value is shown to people.
SHOWN_KEYWORDS = {"verbose_name", "verbose_name_plural", "help_text", "label", "description", "empty_label",
                  "short_description", "empty_value_display"}
# Calls whose (first text) argument is shown to people: name -> index of that argument.
SHOWN_CALLS = {"success": 1, "error": 1, "warning": 1, "info": 1, "message_user": 1, "ValidationError": 0,
               "add_error": 1, "CommandError": 0, "AccessIdError": 0, "CardDeviceError": 0, "WebhookError": 0,
               "XmlStoreError": 0, "PoolError": 0, "RegistrationError": 0, "DeclarationError": 0}
# Class attributes shown to people.
SHOWN_ATTRIBUTES = {"title", "verbose_name", "verbose_name_plural", "help", "empty_value_display"}


def _is_text(node: ast.AST) -> bool:
    """A plain or formatted string literal with prose in it (not wrapped in a translator)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return is_prose(node.value)
    if isinstance(node, ast.JoinedStr):
        return is_prose("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    if isinstance(node, ast.BinOp):  # "a" + "b", "x %s" % y
        return _is_text(node.left) or (isinstance(node.op, ast.Add) and _is_text(node.right))
    return False


def _text_of(node: ast.AST) -> str:
    try:
        return ast.unparse(node)[:120]
    except Exception:  # pragma: no cover
        return "?"


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


class _Visitor(ast.NodeVisitor):
    def __init__(self, path: str):
        self.path = path
        self.findings: list[Finding] = []
        self.display_depth = 0

    def flag(self, node: ast.AST) -> None:
        self.findings.append(Finding(self.path, node.lineno, _text_of(node)))

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if name in TRANSLATORS:
            return  # marked: nothing inside is shown untranslated
        for keyword in node.keywords:
            if keyword.arg in SHOWN_KEYWORDS and _is_text(keyword.value):
                self.flag(keyword.value)
            if keyword.arg == "choices":
                self._choices(keyword.value)
        index = SHOWN_CALLS.get(name)
        if index is not None and len(node.args) > index and _is_text(node.args[index]):
            self.flag(node.args[index])
        if name == "write" and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Attribute) \
                and node.func.value.attr in ("stdout", "stderr") and node.args and _is_text(node.args[0]):
            self.flag(node.args[0])
        self.generic_visit(node)

    def _choices(self, value: ast.AST) -> None:
        if isinstance(value, (ast.List, ast.Tuple)):
            for item in value.elts:
                if isinstance(item, ast.Tuple) and len(item.elts) == 2 and _is_text(item.elts[1]):
                    self.flag(item.elts[1])

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Name) and (target.id.endswith("CHOICES") or target.id.endswith("LABELS")):
                self._choices(node.value)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for statement in node.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                    and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id in SHOWN_ATTRIBUTES \
                    and _is_text(statement.value):
                self.flag(statement.value)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        display = any(isinstance(d, ast.Call) and _call_name(d) in ("display", "action") for d in node.decorator_list)
        self.display_depth += display
        self.generic_visit(node)
        self.display_depth -= display

    def visit_Return(self, node: ast.Return) -> None:
        if self.display_depth and node.value is not None and _is_text(node.value):
            self.flag(node.value)
        self.generic_visit(node)


def python_findings(path: Path) -> list[Finding]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    visitor = _Visitor(str(path.relative_to(ROOT)))
    visitor.visit(tree)
    return visitor.findings


def project_findings() -> list[Finding]:
    findings: list[Finding] = []
    for folder in PYTHON_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" not in path.parts:
                findings += python_findings(path)
    for folder in TEMPLATE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.html")):
            findings += template_findings(path)
    return findings


if __name__ == "__main__":
    found = project_findings()
    wanted = sys.argv[1:]
    for finding in found:
        if not wanted or any(finding.path.startswith(w) for w in wanted):
            print(finding)
    print(f"{len(found)} findings", file=sys.stderr)
