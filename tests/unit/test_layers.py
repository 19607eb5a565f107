"""The layers import only downwards: the index never imports the mapping or the API; the
pure layers (mapping, search, vocabulary) import no index, API, database or HTTP
package; the vocabulary imports nothing else of pacsfhir. Read from the source (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pacsfhir"
PURE_FORBIDDEN = (
    "pacsfhir.index",
    "pacsfhir.api",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "httpx",
)
RULES: dict[str, tuple[str, ...]] = {
    "index": ("pacsfhir.mapping", "pacsfhir.api"),
    "mapping": PURE_FORBIDDEN,
    "search": PURE_FORBIDDEN,
    "vocabulary": PURE_FORBIDDEN,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, relative imports made absolute; ``from pacsfhir
    import x`` counts as ``pacsfhir.x``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "pacsfhir":
                found.extend(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.append(base)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_modules_are_found() -> None:
    layers = {_module_name(p).split(".")[1] for p in MODULES if "." in _module_name(p)}
    assert set(RULES) <= layers


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports(layer: str) -> None:
    wrong = [
        f"{_module_name(path)} imports {name}"
        for path in MODULES
        if _within(_module_name(path), f"pacsfhir.{layer}")
        for name in _imports(path)
        if any(_within(name, forbidden) for forbidden in RULES[layer])
    ]
    assert not wrong, "\n".join(wrong)


def test_vocabulary_imports_only_itself() -> None:
    wrong = [
        f"{_module_name(path)} imports {name}"
        for path in MODULES
        if _within(_module_name(path), "pacsfhir.vocabulary")
        for name in _imports(path)
        if _within(name, "pacsfhir") and not _within(name, "pacsfhir.vocabulary")
    ]
    assert not wrong, "\n".join(wrong)
