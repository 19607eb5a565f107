"""WADO-URI (PS3.18 chapter 9): one instance named by ``studyUID``, ``seriesUID`` and
``objectUID`` in the query, as the stored DICOM file (Retrieve DICOM Instance, 9.4) or
rendered as image/jpeg (the default), image/png or image/gif (Retrieve Rendered Instance,
9.5), mounted at ``/wado`` and under a patient's ``$wado-rs`` base (``api.dicomweb``).

``parse_query`` is pure: the query's pairs to a ``UriRequest`` or ValueError (400).
The media type comes from ``contentType`` (the URI service's name for the accept query
parameter, PS3.18 8.3.3.1), else the Accept header, else image/jpeg when the Accept
allows it (9.3), else 406. The instance is looked up within the request's scope, as
WADO-RS does: another patient's instance under a patient's base is 404.

Not done, and said so: no transcoding yet (the stored transfer syntax is served when
``transferSyntax`` is absent or names it, else 406; PS3.18 9.4.2.4 would default to
Explicit VR Little Endian); ``anonymize=yes`` is refused (400) rather than answered with
identifiable data; ``annotation`` and presentation states are ignored with a Warning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from pydicom.uid import UID
from starlette.responses import Response, StreamingResponse

from pacsfhir.api.context import context_of
from pacsfhir.api.responses import header_text
from pacsfhir.api.streaming import in_batches
from pacsfhir.api.wado_common import find_instances, open_pixels, path_of
from pacsfhir.auth.policy import WADO_URI
from pacsfhir.dicom.frames import Missing, PixelDataFile, is_video
from pacsfhir.dicom.multipart import MediaRange, media_matches, parse_accept
from pacsfhir.dicom.render import (
    MAX_VIEWPORT,
    RENDERED_TYPES,
    RenderError,
    RenderOptions,
    Viewport,
    ViewportError,
    Window,
    checked_window,
    parse_decimal,
    parse_integer,
    parse_quality,
    render,
)
from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.errors import BadRequest, NotAcceptable, PacsFhirError
from pacsfhir.store.base import StoredInstance

router = APIRouter()

WADO_URI_PATH = WADO_URI
DICOM = "application/dicom"
URI_TYPES = (DICOM, *RENDERED_TYPES)
FILE_CHUNK = 2 << 20
PARAMETERS = (  # PS3.18 9.1.2, 9.4.1.2, 9.5.1.2: each at most once
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "transferSyntax",
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "anonymize",
)
IGNORED = ("annotation", "presentationUID", "presentationSeriesUID")


@dataclass(frozen=True)
class UriRequest:
    """A WADO-URI request's parameters, checked (PS3.18 9.1.2, 9.4.1.2, 9.5.1.2)."""

    study: str
    series: str
    instance: str
    content_types: tuple[MediaRange, ...] = ()  # contentType, best first; () when absent
    transfer_syntax: str | None = None
    frame: int = 1
    rows: int | None = None
    columns: int | None = None
    region: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax
    window: Window | None = None
    quality: int = 90
    ignored: tuple[str, ...] = ()  # parameters given that pacsfhir does not apply


def _uid(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"{name} is required (PS3.18 9.1.2.1)")
    if not is_valid_uid(value):
        raise ValueError(f"{name} is not a valid UID: {value[:80]!a}")
    return value


def parse_region(text: str) -> tuple[float, float, float, float]:
    """``xmin,ymin,xmax,ymax``, fractions of the image from its top left corner
    (PS3.18 9.5.1.2.3); raises ValueError for an ill-defined region."""
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError("region is xmin,ymin,xmax,ymax")
    names = ("xmin", "ymin", "xmax", "ymax")
    values = [parse_decimal(p, f"region {n}") for p, n in zip(parts, names, strict=True)]
    xmin, ymin, xmax, ymax = values
    if not (0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1):
        raise ValueError("region must satisfy 0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1")
    return xmin, ymin, xmax, ymax


def _window(center: str | None, width: str | None) -> Window | None:
    if center is None and width is None:
        return None
    if center is None or width is None:
        raise ValueError("windowCenter and windowWidth go together (PS3.18 9.5.1.2.4)")
    return checked_window(
        parse_decimal(center, "windowCenter"), parse_decimal(width, "windowWidth")
    )


def _content_types(text: str | None) -> tuple[MediaRange, ...]:
    if text is None:
        return ()
    ranges = tuple(r for r in parse_accept(text) if r.media_type != "*/*")
    dicom = [r for r in ranges if r.media_type == DICOM]
    if dicom and len(dicom) < len(ranges):
        raise ValueError("contentType mixes application/dicom with other media types")
    return ranges


def parse_query(pairs: Sequence[tuple[str, str]]) -> UriRequest:
    """The request a WADO-URI query string makes (its pairs, decoded); raises ValueError
    for what PS3.18 answers with 400: a requestType other than WADO, a missing or bad
    UID, a parameter given twice, a malformed value."""
    given: dict[str, str] = {}
    for name, value in pairs:
        if name in PARAMETERS:
            if name in given:
                raise ValueError(f"{name} is given more than once")
            given[name] = value
    if given.get("requestType") != "WADO":
        raise ValueError("requestType=WADO is required (PS3.18 9.1.2.1.1)")
    if given.get("anonymize") is not None:
        raise ValueError("anonymize is not supported: refusing rather than sending identities")
    transfer_syntax = given.get("transferSyntax")
    if transfer_syntax is not None and not is_valid_uid(transfer_syntax):
        raise ValueError(f"transferSyntax is not a UID: {transfer_syntax[:80]!a}")
    number = given.get("frameNumber")
    rows, columns = given.get("rows"), given.get("columns")
    region, quality = given.get("region"), given.get("imageQuality")
    return UriRequest(
        study=_uid(given.get("studyUID"), "studyUID"),
        series=_uid(given.get("seriesUID"), "seriesUID"),
        instance=_uid(given.get("objectUID"), "objectUID"),
        content_types=_content_types(given.get("contentType")),
        transfer_syntax=transfer_syntax,
        frame=1 if number is None else parse_integer(number, "frameNumber", 1, 2**31 - 1),
        rows=None if rows is None else parse_integer(rows, "rows", 1, MAX_VIEWPORT),
        columns=None if columns is None else parse_integer(columns, "columns", 1, MAX_VIEWPORT),
        region=None if region is None else parse_region(region),
        window=_window(given.get("windowCenter"), given.get("windowWidth")),
        quality=90 if quality is None else parse_quality(quality),
        ignored=tuple(dict.fromkeys(name for name, _ in pairs if name in IGNORED)),
    )


def choose_media_type(content_types: Sequence[MediaRange], accept: Sequence[MediaRange]) -> str:
    """PS3.18 8.7.8.1 for the URI service: the first supported type of ``contentType``,
    else of the Accept header, else image/jpeg when the Accept's wildcards allow it
    (9.3: the default); raises NotAcceptable."""
    for wanted in (content_types, [r for r in accept if "*" not in r.media_type]):
        for media_range in wanted:
            if media_range.media_type in URI_TYPES:
                return media_range.media_type
    if any(media_matches(r.media_type, "image/jpeg") for r in accept):
        return "image/jpeg"
    offered = ", ".join(r.media_type for r in (*content_types, *accept))
    raise NotAcceptable(f"{offered} cannot be served; WADO-URI serves {', '.join(URI_TYPES)}")


def pixel_region(
    region: tuple[float, float, float, float], columns: int, rows: int
) -> tuple[int, int, int, int]:
    """(sx, sy, sw, sh) in pixels of a fractional region, at least one pixel wide and high,
    covering every pixel the fractions touch."""
    xmin, ymin, xmax, ymax = region
    left, top = math.floor(xmin * columns), math.floor(ymin * rows)
    right = max(left + 1, math.ceil(xmax * columns))
    bottom = max(top + 1, math.ceil(ymax * rows))
    return left, top, min(right, columns) - left, min(bottom, rows) - top


def viewport_of(query: UriRequest, columns: int, rows: int) -> Viewport | None:
    """``rows``/``columns`` as the viewport (one alone: the other left free, the aspect
    kept), showing ``region``; None: the frame at its own size."""
    box = pixel_region(query.region, columns, rows) if query.region else None
    if query.rows is None and query.columns is None:
        return None if box is None else Viewport(box[2], box[3], box)
    return Viewport(query.columns or MAX_VIEWPORT, query.rows or MAX_VIEWPORT, box)


# -- the route ---------------------------------------------------------------------------


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(FILE_CHUNK):
            yield chunk


def _dicom(request: Request, stored: StoredInstance, query: UriRequest) -> Response:
    stored_syntax = stored.transfer_syntax_uid
    if query.transfer_syntax not in (None, stored_syntax):
        if not UID(query.transfer_syntax).is_transfer_syntax:  # PS3.18 9.4.2.4
            raise BadRequest(f"transferSyntax {query.transfer_syntax} is not a transfer syntax")
        raise NotAcceptable(
            f"stored in transfer syntax {stored_syntax}; pacsfhir does not transcode yet: "
            "leave transferSyntax out or ask for the stored one"
        )
    path = path_of(request, stored)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise PacsFhirError(f"stored file of {stored.sop_uid} is missing") from exc
    return StreamingResponse(
        in_batches(_file_chunks(path)),
        media_type=DICOM,
        headers={"Content-Length": str(size)},
    )


def _frame_index(source: PixelDataFile, frame: int) -> int:
    try:
        count = source.frame_count()
    except Missing as exc:
        raise NotAcceptable(f"the instance's frames cannot be read: {exc}") from exc
    if frame > count:
        raise BadRequest(f"frameNumber {frame}: the instance has {count} frame(s)")
    return frame - 1


def _rendered(request: Request, stored: StoredInstance, query: UriRequest, media: str) -> Response:
    if is_video(stored.transfer_syntax_uid):
        raise NotAcceptable("a video is not rendered as an image; ask for application/dicom")
    with open_pixels(request, stored) as source:
        if not source.has_pixel_data:
            raise NotAcceptable("the instance has no pixel data; ask for application/dicom")
        index = _frame_index(source, query.frame)
        rows, columns, _ = source.frame_shape()
        viewport = viewport_of(query, max(columns, 1), max(rows, 1))
        limit = context_of(request).settings.max_render_pixels
        options = RenderOptions(media, query.window, viewport, query.quality, limit)
        try:
            image = render(source, index, options)
        except ViewportError as exc:
            raise BadRequest(str(exc)) from exc
        except (RenderError, Missing) as exc:
            raise NotAcceptable(f"cannot render this frame: {exc}") from exc
    headers = {}
    if query.ignored:
        note = f"not supported, ignored: {', '.join(query.ignored)}"
        headers["Warning"] = f'299 pacsfhir "{header_text(note)}"'
    return Response(image, media_type=media, headers=headers)


@router.get(WADO_URI_PATH)
def retrieve(request: Request) -> Response:
    """Retrieve DICOM Instance or Retrieve Rendered Instance, by the selected media type."""
    try:
        query = parse_query(request.query_params.multi_items())
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    media = choose_media_type(query.content_types, parse_accept(request.headers.get("accept", "")))
    stored = find_instances(request, query.study, query.series, query.instance)[0]
    if media == DICOM:
        return _dicom(request, stored, query)
    return _rendered(request, stored, query, media)
