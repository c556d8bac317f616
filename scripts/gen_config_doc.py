"""Write the configuration reference in docs/operations.md from ``Settings``
(service/teller/config.py): each field's name, environment variable, type,
default and docstring. ``--check`` fails when the committed doc is stale.

    python scripts/gen_config_doc.py          # rewrite the generated section
    python scripts/gen_config_doc.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "service" / "teller" / "config.py"
DOC = ROOT / "docs" / "operations.md"
BEGIN = "<!-- BEGIN GENERATED: configuration (scripts/gen_config_doc.py) -->"
END = "<!-- END GENERATED: configuration -->"


def _fields(source: str) -> list[tuple[str, str, str, str]]:
    """(name, type, default, docstring) of each Settings field, in order."""
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: list[tuple[str, str, str, str]] = []
    body = cls.body
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        doc = ""
        if i + 1 < len(body) and isinstance(body[i + 1], ast.Expr):
            value = body[i + 1].value  # type: ignore[attr-defined]
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                doc = " ".join(value.value.split())
        default = ast.unparse(node.value) if node.value is not None else ""
        if default.startswith("field(default_factory="):
            default = {"dict": "{}", "list": "[]", "tuple": "()"}.get(default[len("field(default_factory="):-1],
                                                                        default)
        out.append((node.target.id, ast.unparse(node.annotation), default, doc))
    return out


def _env_names(source: str) -> dict[str, str]:
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "_ENV_FIELDS" for t in targets):
                mapping = ast.literal_eval(node.value)  # type: ignore[arg-type]
                return {field: var for var, field in mapping.items()}
    return {}


def render(source: str) -> str:
    env = _env_names(source)
    lines = [BEGIN, "",
             "Every setting comes from, later ones winning: its default, the TOML file (`--config` or",
             "`TELLER_CONFIG`; keys are the field names), the environment variable, a command-line flag.",
             "", "| setting | environment | type | default | meaning |", "|---|---|---|---|---|"]
    for name, kind, default, doc in _fields(source):
        cell = doc.replace("|", "\\|") or "(undocumented)"
        var = f"`{env[name]}`" if name in env else "(file only)"
        shown = default.replace("|", "\\|")
        lines.append(f"| `{name}` | {var} | `{kind}` | `{shown}` | {cell} |")
    lines += ["", END]
    return "\n".join(lines)


def updated(doc: str, source: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no generated section ({BEGIN} ... {END})")
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + render(source) + tail


def main(argv: list[str]) -> int:
    source = CONFIG.read_text()
    current = DOC.read_text()
    want = updated(current, source)
    if "--check" in argv:
        if want != current:
            print(f"{DOC.relative_to(ROOT)} is stale: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
