"""WADO-RS (PS3.18 10.4) of a study, series or instance: the DICOM instances
(10.4.1.1.1), their metadata (10.4.1.1.2), bulk data, pixel data and frames. Rendered
images and thumbnails are ``api.rendered``; what both share is ``api.wado_common``.
Handlers take their scope from the request context (``api.context``): under a patient's
``$wado-rs`` base anything of another patient is 404.

DICOM instances, frames and bulk data stream from disk as ``multipart/related``, each
part with its Content-Location (PS3.18 10.4.3.3.5). ``transfer-syntax=*`` (or the
stored syntax) is the stored bytes, read straight from the file; another syntax, or
none where PS3.18 sets Explicit VR Little Endian as the default, is
``dicom.transcode``'s, one frame at a time; what cannot be had is 406.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from pacsfhir.api.bulk_nested import nested_bulkdata
from pacsfhir.api.context import context_of
from pacsfhir.api.dicom_xml import Answer, choose, xml_parts
from pacsfhir.api.offload import offloaded, offloads
from pacsfhir.api.streaming import in_batches
from pacsfhir.api.wado_common import (
    INSTANCE,
    SERIES,
    STUDY,
    accept_ranges,
    accept_text,
    check_uids,
    find_instances,
    frame_numbers,
    multipart_response,
    open_frames,
    open_pixels,
    path_of,
    route_each_level,
)
from pacsfhir.dicom import transcode
from pacsfhir.dicom.bulk_path import parse_bulk_path
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
from pacsfhir.dicom.metadata import BULK_PLACEHOLDER
from pacsfhir.dicom.multipart import MediaRange, Part, media_matches
from pacsfhir.dicom.native_xml import DICOM_XML, native_xml
from pacsfhir.dicom.transcode import TranscodeError
from pacsfhir.errors import NotAcceptable, NotFound, PacsFhirError
from pacsfhir.store.base import StoredInstance

router = APIRouter()

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"


# -- locations and files -----------------------------------------------------------------


def _location(request: Request, stored: StoredInstance) -> str:
    return (
        f"{context_of(request).dicomweb_base}/studies/{stored.study_uid}/series/{stored.series_uid}"
        f"/instances/{stored.sop_uid}"
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


def _dicom_ranges(ranges: list[MediaRange]) -> list[MediaRange]:
    """The ranges asking for multipart application/dicom (``*/*`` meaning the default)."""
    chosen = []
    for r in ranges:
        if r.is_multipart and media_matches(r.part_type or DICOM, DICOM):
            chosen.append(r)
        elif r.media_type == "*/*":
            chosen.append(MediaRange("multipart/related", {"type": DICOM}, r.q))
    return chosen


def _instance_syntax(ranges: list[MediaRange], stored: str) -> str | None:
    """The syntax the first range that can have the instance gets it in."""
    for r in ranges:
        served = transcode.instance_syntax(r.transfer_syntax, stored)
        if served is not None:
            return served
    return None


def primed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` with its first chunk made now, so that a source that cannot be
    transcoded is a 406 before the response starts, not a broken body."""
    try:
        first = next(chunks, b"")
    except TranscodeError as exc:
        raise NotAcceptable(f"cannot be served in the syntax asked: {exc}") from exc
    except Missing as exc:
        raise NotFound(str(exc)) from exc

    def rest() -> Iterator[bytes]:
        try:
            yield first
            yield from chunks
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    return rest()


def _transcoded(request: Request, stored: StoredInstance, syntax: str) -> Iterator[bytes]:
    """The instance in ``syntax``, its file opened only when the part is reached."""
    yield from transcode.instance_chunks(open_pixels(request, stored), syntax)


def _stored_size(request: Request, stored: StoredInstance) -> int:
    try:
        return os.path.getsize(path_of(request, stored))
    except OSError as exc:
        raise PacsFhirError(f"stored file of {stored.sop_uid} is missing") from exc


def _retrieve(request: Request, instances: list[StoredInstance], single_ok: bool) -> Response:
    ranges = accept_ranges(request)
    if single_ok and ranges and ranges[0].media_type == DICOM:
        only = instances[0]
        served = _instance_syntax(ranges[:1], only.transfer_syntax_uid)
        media_type = f"{DICOM}; transfer-syntax={served}"
        if served == only.transfer_syntax_uid:
            return StreamingResponse(
                in_batches(_file_chunks(path_of(request, only))),
                media_type=media_type,
                headers={"Content-Length": str(_stored_size(request, only))},
            )
        if served is not None:
            body = primed(_transcoded(request, only, served))
            return StreamingResponse(in_batches(body), media_type=media_type)
    wanted = _dicom_ranges(ranges)
    if not wanted:
        raise NotAcceptable(
            f"Accept: {accept_text(request)} cannot be served; instances are served as "
            f'multipart/related; type="{DICOM}"'
        )
    plans = [(i, _instance_syntax(wanted, i.transfer_syntax_uid)) for i in instances]
    refused = sorted({i.transfer_syntax_uid for i, served in plans if served is None})
    if refused:
        raise NotAcceptable(
            f"Accept: {accept_text(request)} cannot be served: stored in transfer syntax "
            f"{', '.join(refused)}, which cannot be converted to the syntax asked"
        )
    parts = []
    for stored, served in plans:
        assert served is not None
        content_type = f"{DICOM}; transfer-syntax={served}"
        location = _location(request, stored)
        if served == stored.transfer_syntax_uid:
            path = path_of(request, stored)
            size = _stored_size(request, stored)
            parts.append(Part(content_type, _file_chunks(path), size, location))
        else:
            parts.append(Part(content_type, _transcoded(request, stored, served), None, location))
    return multipart_response(parts, DICOM)


def _retrieve_uids(
    request: Request, single_ok: bool, study: str, series: str | None = None, sop: str | None = None
) -> Response:
    """A DICOM retrieve: streamed through from an upstream that holds all of it (the
    gateway; or left to the proxy in front, ``api.offload``), else from the store's
    files."""
    check_uids(study, series, sop)
    context = context_of(request)
    relay = context.store.pass_through(context.scope, study, series, sop)
    if relay is not None:
        if offloads(request, context.settings):
            return offloaded(relay, context.settings)
        passed = relay.open(accept_text(request))
        return StreamingResponse(
            in_batches(passed.body), status_code=passed.status, media_type=passed.content_type
        )
    return _retrieve(request, find_instances(request, study, series, sop), single_ok)


@router.get(STUDY)
def retrieve_study(request: Request, study: str) -> Response:
    return _retrieve_uids(request, False, study)


@router.get(SERIES)
def retrieve_series(request: Request, study: str, series: str) -> Response:
    return _retrieve_uids(request, False, study, series)


@router.get(INSTANCE)
def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _retrieve_uids(request, True, study, series, instance)


# -- metadata (application/dicom+json, multipart/related of application/dicom+xml) --------


def _instance_json(request: Request, stored: StoredInstance) -> bytes:
    data = context_of(request).store.metadata(stored)
    prefix = b'"BulkDataURI":"'
    target = (_location(request, stored) + "/").encode()
    return data.replace(prefix + BULK_PLACEHOLDER.encode(), prefix + target)


def _metadata(request: Request, instances: list[StoredInstance]) -> Response:
    answer = choose(accept_ranges(request), single_ok="instance" in request.path_params)
    if answer is None:
        raise NotAcceptable(
            f"Accept: {accept_text(request)} cannot be served; metadata is served as "
            f'{DICOM_JSON} or multipart/related; type="{DICOM_XML}"'
        )
    if answer in (Answer.MULTIPART_XML, Answer.SINGLE_XML):
        datasets = (json.loads(_instance_json(request, stored)) for stored in instances)
        if answer is Answer.SINGLE_XML:
            return Response(native_xml(next(datasets)), media_type=DICOM_XML)
        return multipart_response(xml_parts(datasets), DICOM_XML, known_length=False)

    def body() -> Iterator[bytes]:
        yield b"["
        for n, stored in enumerate(instances):
            if n:
                yield b","
            yield _instance_json(request, stored)
        yield b"]"

    return StreamingResponse(in_batches(body()), media_type=DICOM_JSON)


route_each_level(router, "/metadata", "metadata", _metadata)


# -- pixel data, frames, bulk data -------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    content_type: str  # of each part (or of the whole body when not multipart)
    multipart: bool
    transfer_syntax: str  # of what is served (dicom.transcode.pixel_syntax)


def _pixel_choice(ranges: list[MediaRange], transfer_syntax: str, single_ok: bool) -> Choice | None:
    """How pixel data stored in ``transfer_syntax`` is served under these ranges (the
    first that can have it): ``dicom.transcode.pixel_syntax`` chooses the syntax."""
    for r in ranges:
        if r.media_type == "*/*":
            multi, wanted = True, "*/*"
        elif r.is_multipart:
            multi, wanted = True, r.part_type or "*/*"
        elif single_ok:
            multi, wanted = False, r.media_type
        else:
            continue
        served = transcode.pixel_syntax(wanted, r.transfer_syntax, transfer_syntax)
        if served is not None:
            syntax, media = served
            return Choice(f"{media}; transfer-syntax={syntax}", multi, syntax)
    return None


def _refuse_pixels(request: Request, transfer_syntax: str) -> NotAcceptable:
    own = OCTET_STREAM if is_native(transfer_syntax) else media_type_of(transfer_syntax)
    return NotAcceptable(
        f"Accept: {accept_text(request)} cannot be served: this pixel data is stored in "
        f"{transfer_syntax} ({own}) and cannot be converted to what is asked"
    )


def _frame_location(request: Request, stored: StoredInstance, index: int) -> str:
    return f"{_location(request, stored)}/frames/{index + 1}"


def _bulk_location(request: Request, stored: StoredInstance, tag: int) -> str:
    return f"{_location(request, stored)}/bulkdata/{tag:08X}"


def _frame_part(
    request: Request, stored: StoredInstance, source: PixelDataFile, index: int, choice: Choice
) -> Part:
    """Frame ``index``: the stored bytes (whose size is known) or transcoded ones."""
    location = _frame_location(request, stored, index)
    if choice.transfer_syntax == _read_syntax(source.transfer_syntax):
        return Part(
            choice.content_type, source.frame_chunks(index), source.frame_length(index), location
        )
    body = transcode.frame_chunks(source, index, choice.transfer_syntax)
    return Part(choice.content_type, body, None, location)


def _read_syntax(stored: str) -> str:
    """The syntax a stored frame is read in (native ones little endian)."""
    return EXPLICIT_VR_LITTLE_ENDIAN if is_native(stored) else stored


def _frame_parts(
    request: Request,
    stored: StoredInstance,
    source: PixelDataFile,
    indexes: Sequence[int],
    choice: Choice,
) -> Iterator[Part]:
    try:
        for index in indexes:
            yield _frame_part(request, stored, source, index, choice)
    finally:
        source.close()


def _pixel_parts(request: Request, instances: list[StoredInstance]) -> Response:
    """All frames of every instance with pixel data (the Pixel Data resources)."""
    ranges = accept_ranges(request)
    plans = []
    for stored in instances:
        choice = _pixel_choice(ranges, stored.transfer_syntax_uid, single_ok=False)
        if choice is None:
            raise _refuse_pixels(request, stored.transfer_syntax_uid)
        plans.append((stored, choice))

    def parts() -> Iterator[Part]:
        for stored, choice in plans:
            source = open_pixels(request, stored)
            if not source.has_pixel_data:
                source.close()
                continue
            if is_video(source.transfer_syntax):
                location = _bulk_location(request, stored, source.pixel_tag or 0x7FE00010)
                body = _closing(source, source.all_fragments())
                yield Part(choice.content_type, body, location=location)
                continue
            count = source.frame_count()
            yield from _frame_parts(request, stored, source, range(count), choice)

    return multipart_response(parts(), plans[0][1].content_type.split(";")[0])


def _closing(source: PixelDataFile, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        source.close()


@router.get(INSTANCE + "/frames/{frames}")
def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = frame_numbers(frames)
    stored = find_instances(request, study, series, instance)[0]
    if is_video(stored.transfer_syntax_uid):
        raise NotAcceptable("video pixel data has no frames; retrieve bulkdata/7FE00010")
    choice = _pixel_choice(accept_ranges(request), stored.transfer_syntax_uid, len(numbers) == 1)
    if choice is None:
        raise _refuse_pixels(request, stored.transfer_syntax_uid)
    source = open_frames(request, stored, numbers)
    indexes = [n - 1 for n in numbers]
    if not choice.multipart:
        part = _frame_part(request, stored, source, indexes[0], choice)
        headers = {"Content-Location": str(part.location)}
        if part.length is not None:
            headers["Content-Length"] = str(part.length)
        body = _closing(source, iter(part.body))
        if part.length is None:
            body = primed(body)
        return StreamingResponse(in_batches(body), media_type=choice.content_type, headers=headers)
    parts = list(_frame_parts_eager(request, stored, source, indexes, choice))
    return multipart_response(parts, choice.content_type.split(";")[0])


def _frame_parts_eager(
    request: Request,
    stored: StoredInstance,
    source: PixelDataFile,
    indexes: Sequence[int],
    choice: Choice,
) -> Iterator[Part]:
    """Parts made up front (their sizes known when stored bytes are served); the file
    closes after the last one."""
    last = len(indexes) - 1
    for n, index in enumerate(indexes):
        part = _frame_part(request, stored, source, index, choice)
        if n == last:
            part = Part(
                part.content_type, _closing(source, iter(part.body)), part.length, part.location
            )
        yield part


route_each_level(router, "/pixeldata", "pixeldata", _pixel_parts)


@router.get(INSTANCE + "/bulkdata/{tag:path}")
def retrieve_bulkdata(
    request: Request, study: str, series: str, instance: str, tag: str
) -> Response:
    path = parse_bulk_path(tag)
    number = path.tag
    stored = find_instances(request, study, series, instance)[0]
    if not path.steps and number in PIXEL_DATA_TAGS:
        return _pixel_value(request, stored, number)
    choice = _pixel_choice(accept_ranges(request), EXPLICIT_VR_LITTLE_ENDIAN, single_ok=True)
    if choice is None:
        raise NotAcceptable(
            f"Accept: {accept_text(request)} cannot be served; bulk data is {OCTET_STREAM}"
        )
    if path.steps:
        return nested_bulkdata(request, stored, path, choice.multipart, _location(request, stored))
    source = open_pixels(request, stored)
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
    location = _bulk_location(request, stored, number)
    return multipart_response([Part(OCTET_STREAM, body, size, location)], OCTET_STREAM)


def _pixel_value(request: Request, stored: StoredInstance, tag: int) -> Response:
    """Pixel Data as bulk data: a native value whole, in one part; encapsulated pixel
    data, or native asked in a compressed syntax, one part a frame (a video: one part)."""
    if is_native(stored.transfer_syntax_uid):
        choice = _pixel_choice(accept_ranges(request), stored.transfer_syntax_uid, single_ok=True)
        if choice is None:
            raise _refuse_pixels(request, stored.transfer_syntax_uid)
        if choice.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
            return _pixel_parts(request, [stored])
        source = open_pixels(request, stored)
        if source.pixel_tag != tag or source.length is None:
            source.close()
            raise NotFound(f"no bulk data {tag:08X}")
        body = _closing(source, source.value_chunks())
        location = _bulk_location(request, stored, tag)
        if not choice.multipart:
            return StreamingResponse(
                in_batches(body),
                media_type=choice.content_type,
                headers={"Content-Length": str(source.length), "Content-Location": location},
            )
        part = Part(choice.content_type, body, source.length, location)
        return multipart_response([part], OCTET_STREAM)
    return _pixel_parts(request, [stored])
