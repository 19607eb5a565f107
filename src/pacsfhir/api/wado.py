"""WADO-RS (PS3.18 10.4): instances, metadata, bulk data, pixel data and frames, rendered
images and thumbnails of a study, series or instance. Handlers take their scope from
``api.dicomweb_context.scope_of``: under a patient's ``$wado-rs`` base anything of
another patient is 404.

DICOM instances, frames and bulk data stream from disk as ``multipart/related``; no
transcoding: a stored transfer syntax is served as is when the Accept allows it (no
``transfer-syntax`` parameter, ``*``, or the stored one), else 406.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from pacsfhir.api.dicomweb_context import archive_of, base_url_of, scope_of
from pacsfhir.api.streaming import in_batches
from pacsfhir.dicom import multipart
from pacsfhir.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    PIXEL_DATA_TAGS,
    Missing,
    PixelDataFile,
    is_native,
    is_video,
    media_type_of,
)
from pacsfhir.dicom.metadata import BULK_PLACEHOLDER, metadata_of
from pacsfhir.dicom.multipart import MediaRange, Part, media_matches, parse_accept
from pacsfhir.dicom.render import (
    RENDERED_TYPES,
    THUMBNAIL_SIZE,
    RenderError,
    RenderOptions,
    Viewport,
    ViewportError,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)
from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.errors import BadRequest, NotAcceptable, NotFound, PacsFhirError
from pacsfhir.index.dicomweb import StoredInstance, stored_instances

router = APIRouter()

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
_JSON_TYPES = (DICOM_JSON, "application/json")


# -- look-ups ----------------------------------------------------------------------------


def _instances(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    for uid in (study, series, instance):
        if uid is not None and not is_valid_uid(uid):
            raise BadRequest(f"not a valid UID: {uid[:80]!r}")
    archive = archive_of(request)
    with archive.engine.connect() as conn:
        found = stored_instances(conn, scope_of(request), study, series, instance)
    if not found:
        level = "instance" if instance else "series" if series else "study"
        raise NotFound(f"no such {level}")
    return found


def _path(request: Request, stored: StoredInstance) -> str:
    return str(archive_of(request).blobs.absolute(stored.blob))


def _location(request: Request, stored: StoredInstance) -> str:
    return (
        f"{base_url_of(request)}/studies/{stored.study_uid}/series/{stored.series_uid}"
        f"/instances/{stored.sop_uid}"
    )


def _accept(request: Request) -> list[MediaRange]:
    """The ``accept`` query parameter (PS3.18 8.3.3.1) wins over the Accept header."""
    value = request.query_params.get("accept")
    return parse_accept(value if value is not None else request.headers.get("accept", ""))


def _accept_text(request: Request) -> str:
    return request.query_params.get("accept") or request.headers.get("accept", "")


def _multipart_response(
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


# Whole files are read in larger chunks than frames: fewer reads and sends per study
# (measured: 2 MiB reads retrieve a 300 MB study ~40% faster than 256 KiB ones); the
# chunks reach the socket through ``api.streaming.in_batches``.
RETRIEVE_CHUNK = 2 << 20


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(RETRIEVE_CHUNK):
            yield chunk


# -- instances (application/dicom) -------------------------------------------------------


def _transfer_syntax_ok(wanted: str | None, stored: str) -> bool:
    return wanted in (None, "*", stored)


def _dicom_ranges(ranges: list[MediaRange]) -> list[MediaRange]:
    """The ranges asking for multipart application/dicom (``*/*`` meaning the default)."""
    chosen = []
    for r in ranges:
        if r.is_multipart and media_matches(r.part_type or DICOM, DICOM):
            chosen.append(r)
        elif r.media_type == "*/*":
            chosen.append(MediaRange("multipart/related", {"type": DICOM}, r.q))
    return chosen


def _retrieve(request: Request, instances: list[StoredInstance], single_ok: bool) -> Response:
    ranges = _accept(request)
    if single_ok and ranges and ranges[0].media_type == DICOM:
        only = instances[0]
        if _transfer_syntax_ok(ranges[0].transfer_syntax, only.transfer_syntax_uid):
            path = _path(request, only)
            return StreamingResponse(
                in_batches(_file_chunks(path)),
                media_type=f"{DICOM}; transfer-syntax={only.transfer_syntax_uid}",
                headers={"Content-Length": str(os.path.getsize(path))},
            )
    wanted = _dicom_ranges(ranges)
    if not wanted:
        raise NotAcceptable(
            f"Accept: {_accept_text(request)} cannot be served; instances are served as "
            f'multipart/related; type="{DICOM}"'
        )
    refused = sorted(
        {
            i.transfer_syntax_uid
            for i in instances
            if not any(
                _transfer_syntax_ok(r.transfer_syntax, i.transfer_syntax_uid) for r in wanted
            )
        }
    )
    if refused:
        raise NotAcceptable(
            f"stored in transfer syntax {', '.join(refused)}; pacsfhir does not transcode: "
            "ask for transfer-syntax=* or the stored one"
        )
    parts = []
    for stored in instances:
        path = _path(request, stored)
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise PacsFhirError(f"stored file of {stored.sop_uid} is missing") from exc
        parts.append(
            Part(
                f"{DICOM}; transfer-syntax={stored.transfer_syntax_uid}",
                _file_chunks(path),
                size,
                _location(request, stored),
            )
        )
    return _multipart_response(parts, DICOM)


@router.get(STUDY)
def retrieve_study(request: Request, study: str) -> Response:
    return _retrieve(request, _instances(request, study), single_ok=False)


@router.get(SERIES)
def retrieve_series(request: Request, study: str, series: str) -> Response:
    return _retrieve(request, _instances(request, study, series), single_ok=False)


@router.get(INSTANCE)
def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _retrieve(request, _instances(request, study, series, instance), single_ok=True)


# -- metadata (application/dicom+json) ---------------------------------------------------


def _instance_json(request: Request, stored: StoredInstance) -> bytes:
    data = metadata_of(archive_of(request).blobs, stored.blob)
    prefix = b'"BulkDataURI":"'
    target = (_location(request, stored) + "/").encode()
    return data.replace(prefix + BULK_PLACEHOLDER.encode(), prefix + target)


def _metadata(request: Request, instances: list[StoredInstance]) -> Response:
    if not any(media_matches(r.media_type, t) for r in _accept(request) for t in _JSON_TYPES):
        raise NotAcceptable(
            f"Accept: {_accept_text(request)} cannot be served; metadata is served as "
            f"{DICOM_JSON} (no XML)"
        )

    def body() -> Iterator[bytes]:
        yield b"["
        for n, stored in enumerate(instances):
            if n:
                yield b","
            yield _instance_json(request, stored)
        yield b"]"

    return StreamingResponse(in_batches(body()), media_type=DICOM_JSON)


@router.get(STUDY + "/metadata")
def study_metadata(request: Request, study: str) -> Response:
    return _metadata(request, _instances(request, study))


@router.get(SERIES + "/metadata")
def series_metadata(request: Request, study: str, series: str) -> Response:
    return _metadata(request, _instances(request, study, series))


@router.get(INSTANCE + "/metadata")
def instance_metadata_route(request: Request, study: str, series: str, instance: str) -> Response:
    return _metadata(request, _instances(request, study, series, instance))


# -- pixel data, frames, bulk data -------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    content_type: str  # of each part (or of the whole body when not multipart)
    multipart: bool


def _pixel_choice(ranges: list[MediaRange], transfer_syntax: str, single_ok: bool) -> Choice | None:
    """How pixel data stored in ``transfer_syntax`` may be served under these ranges:
    native as little-endian application/octet-stream; encapsulated as stored, in its own
    media type (or application/octet-stream when transfer-syntax=* or the stored one)."""
    native = is_native(transfer_syntax)
    own = OCTET_STREAM if native else media_type_of(transfer_syntax)
    served_syntax = EXPLICIT_VR_LITTLE_ENDIAN if native else transfer_syntax
    for r in ranges:
        if r.media_type == "*/*":
            multi, wanted = True, "*/*"
        elif r.is_multipart:
            multi, wanted = True, r.part_type or "*/*"
        elif single_ok:
            multi, wanted = False, r.media_type
        else:
            continue
        ts = r.transfer_syntax
        if media_matches(wanted, own) and ts in (None, "*", served_syntax):
            return Choice(f"{own}; transfer-syntax={served_syntax}", multi)
        if wanted == OCTET_STREAM and ts in ("*", served_syntax):
            return Choice(f"{OCTET_STREAM}; transfer-syntax={served_syntax}", multi)
    return None


def _refuse_pixels(request: Request, transfer_syntax: str) -> NotAcceptable:
    own = OCTET_STREAM if is_native(transfer_syntax) else media_type_of(transfer_syntax)
    return NotAcceptable(
        f"Accept: {_accept_text(request)} cannot be served: this pixel data is stored in "
        f"{transfer_syntax} and is served only as {own} (pacsfhir does not transcode)"
    )


def _open(request: Request, stored: StoredInstance) -> PixelDataFile:
    try:
        return PixelDataFile(_path(request, stored))
    except OSError as exc:
        raise PacsFhirError(f"stored file of {stored.sop_uid} is unreadable") from exc


def _frame_parts(
    source: PixelDataFile, indexes: Sequence[int], content_type: str
) -> Iterator[Part]:
    try:
        for index in indexes:
            yield Part(content_type, source.frame_chunks(index), source.frame_length(index))
    finally:
        source.close()


def _pixel_parts(request: Request, instances: list[StoredInstance]) -> Response:
    """All frames of every instance with pixel data (the Pixel Data resources)."""
    ranges = _accept(request)
    plans = []
    for stored in instances:
        choice = _pixel_choice(ranges, stored.transfer_syntax_uid, single_ok=False)
        if choice is None:
            raise _refuse_pixels(request, stored.transfer_syntax_uid)
        plans.append((stored, choice))

    def parts() -> Iterator[Part]:
        for stored, choice in plans:
            source = _open(request, stored)
            if not source.has_pixel_data:
                source.close()
                continue
            if is_video(source.transfer_syntax):
                yield Part(choice.content_type, _closing(source, source.all_fragments()))
                continue
            count = source.frame_count()
            yield from _frame_parts(source, range(count), choice.content_type)

    return _multipart_response(parts(), plans[0][1].content_type.split(";")[0])


def _closing(source: PixelDataFile, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        source.close()


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise BadRequest(f"frame list must be comma-separated numbers: {text[:80]!r}") from exc
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 10000:
        raise BadRequest("frame numbers start at 1")
    return numbers


@router.get(INSTANCE + "/frames/{frames}")
def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = _frame_numbers(frames)
    stored = _instances(request, study, series, instance)[0]
    if is_video(stored.transfer_syntax_uid):
        raise NotAcceptable("video pixel data has no frames; retrieve bulkdata/7FE00010")
    choice = _pixel_choice(_accept(request), stored.transfer_syntax_uid, len(numbers) == 1)
    if choice is None:
        raise _refuse_pixels(request, stored.transfer_syntax_uid)
    source = _open(request, stored)
    try:
        count = source.frame_count()
        if not source.has_pixel_data:
            raise NotFound("the instance has no pixel data")
        missing = [n for n in numbers if n > count]
        if missing:
            raise NotFound(f"no frame {missing[0]}: the instance has {count}")
    except BaseException:
        source.close()
        raise
    indexes = [n - 1 for n in numbers]
    if not choice.multipart:
        index = indexes[0]
        return StreamingResponse(
            in_batches(_closing(source, source.frame_chunks(index))),
            media_type=choice.content_type,
            headers={"Content-Length": str(source.frame_length(index))},
        )
    parts = list(_frame_parts_eager(source, indexes, choice.content_type))
    return _multipart_response(parts, choice.content_type.split(";")[0])


def _frame_parts_eager(
    source: PixelDataFile, indexes: Sequence[int], content_type: str
) -> Iterator[Part]:
    """Parts whose sizes are known up front; the file closes after the last one."""
    last = len(indexes) - 1
    for n, index in enumerate(indexes):
        chunks = source.frame_chunks(index)
        body = _closing(source, chunks) if n == last else chunks
        yield Part(content_type, body, source.frame_length(index))


@router.get(STUDY + "/pixeldata")
def study_pixeldata(request: Request, study: str) -> Response:
    return _pixel_parts(request, _instances(request, study))


@router.get(SERIES + "/pixeldata")
def series_pixeldata(request: Request, study: str, series: str) -> Response:
    return _pixel_parts(request, _instances(request, study, series))


@router.get(INSTANCE + "/pixeldata")
def instance_pixeldata(request: Request, study: str, series: str, instance: str) -> Response:
    return _pixel_parts(request, _instances(request, study, series, instance))


@router.get(INSTANCE + "/bulkdata/{tag}")
def retrieve_bulkdata(
    request: Request, study: str, series: str, instance: str, tag: str
) -> Response:
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise NotFound(f"no bulk data {tag[:20]!r}")
    number = int(tag, 16)
    stored = _instances(request, study, series, instance)[0]
    if number in PIXEL_DATA_TAGS:
        return _pixel_value(request, stored, number)
    choice = _pixel_choice(_accept(request), EXPLICIT_VR_LITTLE_ENDIAN, single_ok=True)
    if choice is None:
        raise NotAcceptable(
            f"Accept: {_accept_text(request)} cannot be served; bulk data is {OCTET_STREAM}"
        )
    source = _open(request, stored)
    try:
        _vr, chunks, size = source.bulk_element(number)
    except Missing as exc:
        source.close()
        raise NotFound(str(exc)) from exc
    body = _closing(source, chunks)
    if not choice.multipart:
        return StreamingResponse(
            in_batches(body), media_type=OCTET_STREAM, headers={"Content-Length": str(size)}
        )
    return _multipart_response([Part(OCTET_STREAM, body, size)], OCTET_STREAM)


def _pixel_value(request: Request, stored: StoredInstance, tag: int) -> Response:
    """Pixel Data as bulk data: a native value whole, in one part; encapsulated pixel
    data one part a frame (a video: one part)."""
    if is_native(stored.transfer_syntax_uid):
        choice = _pixel_choice(_accept(request), stored.transfer_syntax_uid, single_ok=True)
        if choice is None:
            raise _refuse_pixels(request, stored.transfer_syntax_uid)
        source = _open(request, stored)
        if source.pixel_tag != tag or source.length is None:
            source.close()
            raise NotFound(f"no bulk data {tag:08X}")
        body = _closing(source, source.value_chunks())
        if not choice.multipart:
            return StreamingResponse(
                in_batches(body),
                media_type=choice.content_type,
                headers={"Content-Length": str(source.length)},
            )
        return _multipart_response([Part(choice.content_type, body, source.length)], OCTET_STREAM)
    return _pixel_parts(request, [stored])


# -- rendered and thumbnails -------------------------------------------------------------


def _rendered_choice(request: Request, multipart_ok: bool) -> tuple[str, bool]:
    """(image media type, multipart?) from the Accept: JPEG unless PNG or GIF is asked."""
    for r in _accept(request):
        if r.is_multipart:
            if not multipart_ok:
                continue
            wanted = r.part_type or "image/jpeg"
            multi = True
        else:
            wanted, multi = r.media_type, False
        for media in RENDERED_TYPES:
            if media_matches(wanted, media):
                return media, multi
    raise NotAcceptable(
        f"Accept: {_accept_text(request)} cannot be served; rendered images are "
        f"{', '.join(RENDERED_TYPES)}"
    )


def _render_options(request: Request, media: str, thumbnail: bool) -> RenderOptions:
    params = request.query_params
    try:
        window = parse_window(params["window"]) if "window" in params and not thumbnail else None
        if "viewport" in params:
            viewport: Viewport | None = parse_viewport(params["viewport"])
        else:
            viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None
        quality = parse_quality(params["quality"]) if "quality" in params else 90
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return RenderOptions(media, window, viewport, quality)


def _render_one(source: PixelDataFile, index: int, options: RenderOptions) -> bytes:
    try:
        return render(source, index, options)
    except ViewportError as exc:
        raise BadRequest(str(exc)) from exc
    except (RenderError, Missing) as exc:
        raise PacsFhirError(f"cannot render this frame: {exc}") from exc


def _image_sources(request: Request, instances: list[StoredInstance]) -> Iterator[PixelDataFile]:
    """Open instances that have pixel data, middle one first (for a representative)."""
    middle = len(instances) // 2
    order = sorted(range(len(instances)), key=lambda i: (abs(i - middle), i))
    for i in order:
        if is_video(instances[i].transfer_syntax_uid):
            continue
        source = _open(request, instances[i])
        if source.has_pixel_data:
            yield source
        else:
            source.close()


def _representative(
    request: Request, instances: list[StoredInstance], middle_frame: bool
) -> tuple[PixelDataFile, int]:
    by_series: dict[str, list[StoredInstance]] = {}
    for stored in instances:
        by_series.setdefault(stored.series_uid, []).append(stored)
    for members in by_series.values():
        for source in _image_sources(request, members):
            count = source.frame_count()
            if count:
                return source, count // 2 if middle_frame else 0
            source.close()
    raise NotAcceptable("nothing here has pixel data to render")


def _single_image(source: PixelDataFile, index: int, options: RenderOptions) -> Response:
    with source:
        return Response(_render_one(source, index, options), media_type=options.media_type)


def _rendered(
    request: Request, instances: list[StoredInstance], frames: list[int] | None = None
) -> Response:
    media, multi = _rendered_choice(request, multipart_ok=True)
    options = _render_options(request, media, thumbnail=False)
    if not multi:
        if frames is None:
            source, index = _representative(request, instances, middle_frame=False)
        else:
            source, index = _checked_frames(request, instances[0], frames), frames[0] - 1
        return _single_image(source, index, options)
    if frames is not None:
        _checked_frames(request, instances[0], frames).close()
        plan: list[tuple[StoredInstance, list[int] | None]] = [(instances[0], frames)]
    else:
        plan = [(stored, None) for stored in instances]

    def parts() -> Iterator[Part]:
        for stored, wanted in plan:
            if is_video(stored.transfer_syntax_uid):
                continue
            with _open(request, stored) as source:
                if not source.has_pixel_data:
                    continue
                indexes = [n - 1 for n in wanted] if wanted else range(source.frame_count())
                for index in indexes:
                    image = _render_one(source, index, options)
                    yield Part(media, [image], len(image))

    return _multipart_response(parts(), media)


def _checked_frames(request: Request, stored: StoredInstance, frames: list[int]) -> PixelDataFile:
    """The open instance, once every frame asked for is known to exist."""
    source = _open(request, stored)
    count = source.frame_count()
    if not count or max(frames) > count:
        source.close()
        raise NotFound(f"no frame {max(frames)}: the instance has {count}")
    return source


def _thumbnail(
    request: Request, instances: list[StoredInstance], frames: list[int] | None = None
) -> Response:
    media, _ = _rendered_choice(request, multipart_ok=False)
    options = _render_options(request, media, thumbnail=True)
    if frames is None:
        source, index = _representative(request, instances, middle_frame=True)
    else:
        source, index = _checked_frames(request, instances[0], frames), frames[0] - 1
    return _single_image(source, index, options)


@router.get(STUDY + "/rendered")
def study_rendered(request: Request, study: str) -> Response:
    return _rendered(request, _instances(request, study))


@router.get(SERIES + "/rendered")
def series_rendered(request: Request, study: str, series: str) -> Response:
    return _rendered(request, _instances(request, study, series))


@router.get(INSTANCE + "/rendered")
def instance_rendered(request: Request, study: str, series: str, instance: str) -> Response:
    return _rendered(request, _instances(request, study, series, instance))


@router.get(INSTANCE + "/frames/{frames}/rendered")
def frames_rendered(
    request: Request, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = _frame_numbers(frames)
    return _rendered(request, _instances(request, study, series, instance), numbers)


@router.get(STUDY + "/thumbnail")
def study_thumbnail(request: Request, study: str) -> Response:
    return _thumbnail(request, _instances(request, study))


@router.get(SERIES + "/thumbnail")
def series_thumbnail(request: Request, study: str, series: str) -> Response:
    return _thumbnail(request, _instances(request, study, series))


@router.get(INSTANCE + "/thumbnail")
def instance_thumbnail(request: Request, study: str, series: str, instance: str) -> Response:
    return _thumbnail(request, _instances(request, study, series, instance))


@router.get(INSTANCE + "/frames/{frames}/thumbnail")
def frames_thumbnail(
    request: Request, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = _frame_numbers(frames)
    return _thumbnail(request, _instances(request, study, series, instance), numbers)
