"""The fuzzed route table, derived from the app itself: every path template and method
FastAPI knows (``app.openapi()``, which lists every route included with
``include_in_schema``; pacsfhir leaves only the ``/`` redirect out). A route added to the
app joins the fuzz suite without an edit here."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.settings import Settings

PARAM = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # template, e.g. /dicom-web/studies/{study}/series/{series}
    query_names: tuple[str, ...] = ()  # declared query parameters, if any

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.path)

    @property
    def dicomweb(self) -> bool:
        return (
            self.path.startswith("/dicom-web/") or "/$wado-rs" in self.path or self.path == "/wado"
        )

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def routes_of(app: FastAPI) -> list[Route]:
    """Every (method, path template) of the app, in the app's order."""
    schema: dict[str, Any] = app.openapi()
    app.openapi_schema = None  # leave the app as it was
    out: list[Route] = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = tuple(
                p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
            )
            out.append(Route(method.upper(), path, names))
    return out


@cache
def app_routes() -> tuple[Route, ...]:
    """The routes of an app built over a throwaway empty archive (for collection)."""
    with tempfile.TemporaryDirectory(prefix="pacsfhir-routes-") as tmp:
        settings = Settings(data=tmp, database_url=f"sqlite:///{Path(tmp) / 'index.db'}")
        archive = Archive.open(settings)
        try:
            return tuple(routes_of(create_app(settings, archive)))
        finally:
            archive.close()
