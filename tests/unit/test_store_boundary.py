"""The handlers that serve studies reach them only through the store (``store.base``):
no connection, SQL, blob path or archive of their own, so that an upstream PACS can take
the local archive's place without a handler forked per mode."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "src" / "pacsfhir" / "api"
STUDY_HANDLERS = ("fhir.py", "qido.py", "wado.py", "wado_common.py", "rendered.py", "stow.py")
FORBIDDEN_MODULES = (
    "sqlalchemy",
    "pacsfhir.archive",
    "pacsfhir.index.engine",
    "pacsfhir.index.queries",
    "pacsfhir.index.search",
    "pacsfhir.index.dicomweb",
    "pacsfhir.index.links",
    "pacsfhir.dicom.storage",
    "pacsfhir.dicom.ingest",
)


def _imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


@pytest.mark.parametrize("name", STUDY_HANDLERS)
def test_study_handlers_use_only_the_store(name: str) -> None:
    tree = ast.parse((API / name).read_text(), name)
    wrong = [
        module
        for module in _imports(tree)
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN_MODULES)
    ]
    assert not wrong, f"api/{name} imports {wrong}: go through context.store"
    archive_uses = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("archive", "engine", "blobs")
    ]
    assert not archive_uses, f"api/{name} reaches the archive directly at lines {archive_uses}"
