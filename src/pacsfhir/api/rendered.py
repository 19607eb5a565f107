"""Rendered resources (PS3.18 10.4.1.1.3) and thumbnails (PS3.18 10.4.1.1.4) of a study,
series, instance or frames, as image/jpeg (the default), image/png or image/gif; rendered
ones also as ``multipart/related``, one part a frame. The query parameters ``window``,
``viewport`` and ``quality`` (PS3.18 8.3.5) shape the image; ``dicom.render`` draws it.
Handlers take their scope from the request context (``api.context``): under a patient's
``$wado-rs`` base anything of another patient is 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from pacsfhir.api.context import context_of
from pacsfhir.api.wado_common import (
    INSTANCE,
    accept_ranges,
    accept_text,
    find_instances,
    frame_numbers,
    multipart_response,
    open_frames,
    open_pixels,
    route_each_level,
)
from pacsfhir.dicom.frames import Missing, PixelDataFile, is_video
from pacsfhir.dicom.multipart import Part, media_matches
from pacsfhir.dicom.render import (
    RENDERED_TYPES,
    THUMBNAIL_SIZE,
    RenderError,
    RenderOptions,
    Viewport,
    ViewportError,
    layout,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)
from pacsfhir.errors import BadRequest, NotAcceptable
from pacsfhir.store.base import StoredInstance

router = APIRouter()


def _rendered_choice(request: Request, multipart_ok: bool) -> tuple[str, bool]:
    """(image media type, multipart?) from the Accept: JPEG unless PNG or GIF is asked."""
    for r in accept_ranges(request):
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
        f"Accept: {accept_text(request)} cannot be served; rendered images are "
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
    limit = context_of(request).settings.max_render_pixels
    return RenderOptions(media, window, viewport, quality, limit)


def _render_one(source: PixelDataFile, index: int, options: RenderOptions) -> bytes:
    try:
        return render(source, index, options)
    except ViewportError as exc:
        raise BadRequest(str(exc)) from exc
    except (RenderError, Missing) as exc:
        raise _cannot_render(exc) from exc


def _cannot_render(exc: Exception) -> NotAcceptable:
    """A stored frame that cannot be decoded or rendered has no rendered representation
    to offer (PS3.18 8.7.4: 406), whatever the Accept."""
    return NotAcceptable(f"cannot render this frame: {exc}")


def _check_sizes(
    request: Request, instances: Iterable[StoredInstance], options: RenderOptions
) -> None:
    """Every instance a multipart answer will render within the limits (``layout``),
    checked from the headers before the first part is sent: a 413 or 400 cannot be
    sent once the parts have begun."""
    for stored in instances:
        if is_video(stored.transfer_syntax_uid):
            continue
        with open_pixels(request, stored) as source:
            if not source.has_pixel_data:
                continue
            try:
                layout(source, 0, options)
            except ViewportError as exc:
                raise BadRequest(str(exc)) from exc
            except Missing as exc:
                raise _cannot_render(exc) from exc


def _image_sources(request: Request, instances: list[StoredInstance]) -> Iterator[PixelDataFile]:
    """Open instances that have pixel data, middle one first (for a representative)."""
    middle = len(instances) // 2
    order = sorted(range(len(instances)), key=lambda i: (abs(i - middle), i))
    for i in order:
        if is_video(instances[i].transfer_syntax_uid):
            continue
        source = open_pixels(request, instances[i])
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
            try:
                count = source.frame_count()
            except Missing:  # unreadable frames: another instance represents them
                count = 0
            if count:
                return source, count // 2 if middle_frame else 0
            source.close()
    raise NotAcceptable("nothing here has pixel data to render")


def _single_image(source: PixelDataFile, index: int, options: RenderOptions) -> Response:
    with source:
        return Response(_render_one(source, index, options), media_type=options.media_type)


def _rendered(
    request: Request, instances: list[StoredInstance], frames: Sequence[int] | None = None
) -> Response:
    media, multi = _rendered_choice(request, multipart_ok=True)
    options = _render_options(request, media, thumbnail=False)
    if not multi:
        if frames is None:
            source, index = _representative(request, instances, middle_frame=False)
        else:
            source, index = open_frames(request, instances[0], frames), frames[0] - 1
        return _single_image(source, index, options)
    if frames is not None:
        open_frames(request, instances[0], frames).close()
        plan: list[tuple[StoredInstance, Sequence[int] | None]] = [(instances[0], frames)]
    else:
        plan = [(stored, None) for stored in instances]
    _check_sizes(request, (stored for stored, _ in plan), options)

    def parts() -> Iterator[Part]:
        for stored, wanted in plan:
            if is_video(stored.transfer_syntax_uid):
                continue
            with open_pixels(request, stored) as source:
                if not source.has_pixel_data:
                    continue
                indexes = [n - 1 for n in wanted] if wanted else range(source.frame_count())
                for index in indexes:
                    image = _render_one(source, index, options)
                    yield Part(media, [image], len(image))

    return multipart_response(parts(), media)


def _thumbnail(
    request: Request, instances: list[StoredInstance], frames: Sequence[int] | None = None
) -> Response:
    media, _ = _rendered_choice(request, multipart_ok=False)
    options = _render_options(request, media, thumbnail=True)
    if frames is None:
        source, index = _representative(request, instances, middle_frame=True)
    else:
        source, index = open_frames(request, instances[0], frames), frames[0] - 1
    return _single_image(source, index, options)


def _route(suffix: str, label: str, handle: Callable[..., Response]) -> None:
    """``suffix`` at the study, series and instance levels, and after an instance's
    frames (``.../frames/{frames}{suffix}``, named ``frames_{label}``)."""
    route_each_level(router, suffix, label, handle)

    @router.get(INSTANCE + "/frames/{frames}" + suffix, name=f"frames_{label}")
    def frames_level(
        request: Request, study: str, series: str, instance: str, frames: str
    ) -> Response:
        numbers = frame_numbers(frames)
        return handle(request, find_instances(request, study, series, instance), numbers)


_route("/rendered", "rendered", _rendered)
_route("/thumbnail", "thumbnail", _thumbnail)
