"""What the WADO-RS routes (PS3.18 10.4) share, ``api.wado`` (DICOM, metadata, bulk and
pixel data, frames) and ``api.rendered`` (rendered images and thumbnails) alike: their
resource paths, the stored instances a request names (within its scope, from
the request context (``api.context``): another patient's is 404), the Accept it sends and
``multipart/related`` responses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from pacsfhir.api.context import context_of
from pacsfhir.api.streaming import in_batches
from pacsfhir.dicom import multipart
from pacsfhir.dicom.frames import Missing, PixelDataFile, parse_frame_list
from pacsfhir.dicom.multipart import MediaRange, Part, parse_accept
from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.errors import BadRequest, NotFound, PacsFhirError
from pacsfhir.store.base import StoredInstance

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


Handler = Callable[[Request, list[StoredInstance]], Response]


def route_each_level(router: APIRouter, suffix: str, label: str, handle: Handler) -> None:
    """``GET`` routes for a resource PS3.18 names at the study, series and instance
    levels alike (``{level}{suffix}``), each handing the instances it names to
    ``handle``; the routes are named ``study_{label}``, ``series_{label}`` and so on."""

    @router.get(STUDY + suffix, name=f"study_{label}")
    def study_level(request: Request, study: str) -> Response:
        return handle(request, find_instances(request, study))

    @router.get(SERIES + suffix, name=f"series_{label}")
    def series_level(request: Request, study: str, series: str) -> Response:
        return handle(request, find_instances(request, study, series))

    @router.get(INSTANCE + suffix, name=f"instance_{label}")
    def instance_level(request: Request, study: str, series: str, instance: str) -> Response:
        return handle(request, find_instances(request, study, series, instance))


# -- look-ups ----------------------------------------------------------------------------


def check_uids(*uids: str | None) -> None:
    """400 unless every UID given is one (PS3.5 9.1)."""
    for uid in uids:
        if uid is not None and not is_valid_uid(uid):
            raise BadRequest(f"not a valid UID: {uid[:80]!r}")


def find_instances(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    check_uids(study, series, instance)
    context = context_of(request)
    found = context.store.instances(context.scope, study, series, instance)
    if not found:
        level = "instance" if instance else "series" if series else "study"
        raise NotFound(f"no such {level}")
    return found


def path_of(request: Request, stored: StoredInstance) -> str:
    return context_of(request).store.instance_path(stored)


def open_pixels(request: Request, stored: StoredInstance) -> PixelDataFile:
    try:
        return PixelDataFile(path_of(request, stored))
    except OSError as exc:
        raise PacsFhirError(f"stored file of {stored.sop_uid} is unreadable") from exc


def frame_numbers(text: str) -> tuple[int, ...]:
    """The ``{frames}`` of a frames, rendered or thumbnail path: 400 unless a list of
    distinct frame numbers (``dicom.frames.parse_frame_list``)."""
    try:
        return parse_frame_list(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def open_frames(request: Request, stored: StoredInstance, numbers: Sequence[int]) -> PixelDataFile:
    """The open instance, once every frame in ``numbers`` is known to be in it: 404 when
    it has no pixel data or fewer frames (so a list longer than its frame count, being
    free of repeats, is always 404)."""
    source = open_pixels(request, stored)
    try:
        if not source.has_pixel_data:
            raise NotFound("the instance has no pixel data")
        count = source.frame_count()
        missing = [n for n in numbers if n > count]
        if missing:
            raise NotFound(f"no frame {missing[0]}: the instance has {count}")
    except Missing as exc:
        source.close()
        raise NotFound(f"the instance's frames cannot be read: {exc}") from exc
    except BaseException:
        source.close()
        raise
    return source


# -- Accept and multipart responses ------------------------------------------------------


def accept_ranges(request: Request) -> list[MediaRange]:
    """The ``accept`` query parameter (PS3.18 8.3.3.1) wins over the Accept header."""
    value = request.query_params.get("accept")
    return parse_accept(value if value is not None else request.headers.get("accept", ""))


def accept_text(request: Request) -> str:
    return request.query_params.get("accept") or request.headers.get("accept", "")


def multipart_response(
    parts: Sequence[Part] | Iterator[Part], root_type: str, known_length: bool = True
) -> StreamingResponse:
    boundary = multipart.new_boundary()
    headers = {}
    if known_length and isinstance(parts, Sequence):
        size = multipart.length(parts, boundary)
        if size is not None:
            headers["Content-Length"] = str(size)
    return StreamingResponse(
        in_batches(multipart.stream(parts, boundary)),
        media_type=multipart.content_type(root_type, boundary),
        headers=headers,
    )
