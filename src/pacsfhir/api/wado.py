"""WADO-RS (PS3.18). Handlers take their scope from `api.dicomweb_context.scope_of`."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
