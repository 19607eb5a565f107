"""WADO-RS (PS3.18 10.4) of a study, series or instance: the DICOM instances
(10.4.1.1.1), their metadata (10.4.1.1.2), bulk data, pixel data and frames. Rendered
images and thumbnails are ``api.rendered``; what both share is ``api.wado_common``.
Handlers take their scope from the request context (``api.context``): under a patient's
``$wado-rs`` base anything of another patient is 404.

DICOM instances, frames and bulk data stream from disk as ``multipart/related``; no
transcoding: a stored transfer syntax is served as is when the Accept allows it (no
``transfer-syntax`` parameter, ``*``, or the stored one), else 406.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

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
    ranges = accept_ranges(request)
    if single_ok and ranges and ranges[0].media_type == DICOM:
        only = instances[0]
        if _transfer_syntax_ok(ranges[0].transfer_syntax, only.transfer_syntax_uid):
            path = path_of(request, only)
            return StreamingResponse(
                in_batches(_file_chunks(path)),
                media_type=f"{DICOM}; transfer-syntax={only.transfer_syntax_uid}",
                headers={"Content-Length": str(os.path.getsize(path))},
            )
    wanted = _dicom_ranges(ranges)
    if not wanted:
        raise NotAcceptable(
            f"Accept: {accept_text(request)} cannot be served; instances are served as "
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
        path = path_of(request, stored)
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
        f"Accept: {accept_text(request)} cannot be served: this pixel data is stored in "
        f"{transfer_syntax} and is served only as {own} (pacsfhir does not transcode)"
    )


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
                yield Part(choice.content_type, _closing(source, source.all_fragments()))
                continue
            count = source.frame_count()
            yield from _frame_parts(source, range(count), choice.content_type)

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
        index = indexes[0]
        return StreamingResponse(
            in_batches(_closing(source, source.frame_chunks(index))),
            media_type=choice.content_type,
            headers={"Content-Length": str(source.frame_length(index))},
        )
    parts = list(_frame_parts_eager(source, indexes, choice.content_type))
    return multipart_response(parts, choice.content_type.split(";")[0])


def _frame_parts_eager(
    source: PixelDataFile, indexes: Sequence[int], content_type: str
) -> Iterator[Part]:
    """Parts whose sizes are known up front; the file closes after the last one."""
    last = len(indexes) - 1
    for n, index in enumerate(indexes):
        chunks = source.frame_chunks(index)
        body = _closing(source, chunks) if n == last else chunks
        yield Part(content_type, body, source.frame_length(index))


route_each_level(router, "/pixeldata", "pixeldata", _pixel_parts)


@router.get(INSTANCE + "/bulkdata/{tag}")
def retrieve_bulkdata(
    request: Request, study: str, series: str, instance: str, tag: str
) -> Response:
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise NotFound(f"no bulk data {tag[:20]!r}")
    number = int(tag, 16)
    stored = find_instances(request, study, series, instance)[0]
    if number in PIXEL_DATA_TAGS:
        return _pixel_value(request, stored, number)
    choice = _pixel_choice(accept_ranges(request), EXPLICIT_VR_LITTLE_ENDIAN, single_ok=True)
    if choice is None:
        raise NotAcceptable(
            f"Accept: {accept_text(request)} cannot be served; bulk data is {OCTET_STREAM}"
        )
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
    return multipart_response([Part(OCTET_STREAM, body, size)], OCTET_STREAM)


def _pixel_value(request: Request, stored: StoredInstance, tag: int) -> Response:
    """Pixel Data as bulk data: a native value whole, in one part; encapsulated pixel
    data one part a frame (a video: one part)."""
    if is_native(stored.transfer_syntax_uid):
        choice = _pixel_choice(accept_ranges(request), stored.transfer_syntax_uid, single_ok=True)
        if choice is None:
            raise _refuse_pixels(request, stored.transfer_syntax_uid)
        source = open_pixels(request, stored)
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
        return multipart_response([Part(choice.content_type, body, source.length)], OCTET_STREAM)
    return _pixel_parts(request, [stored])
