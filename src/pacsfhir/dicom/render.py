"""Rendered frames (PS3.18 8.3.5, 10.4.1.1.3-4): decode one frame with pydicom (pylibjpeg
plugins for JPEG, JPEG-LS, JPEG 2000 and RLE), apply the Modality LUT, a window (the
``window`` query parameter, else the instance's own window or VOI LUT, else the frame's
range), MONOCHROME1 inversion or the palette, the viewport, and encode with Pillow.

Only the asked-for frame is read and decoded (see ``dicom.frames``), so rendering the
last frame of a large multi-frame file costs one frame of memory. Memory is bounded by
``RenderOptions.max_pixels`` (``PACSFHIR_MAX_RENDER_PIXELS``): the frame's samples (rows x
columns x samples per pixel, from the header and, for JPEG-family frames, from the
codestream's own header) and the image the viewport asks for are checked before anything
is decoded or scaled, and over the limit is ``PayloadTooLarge`` (413). Past the decoder,
the frame is cropped and thinned to what the viewport shows, and the LUTs run over bands
of rows into one 8-bit image, so no float copy of the whole frame is ever made. The frames
decoded at once in this process hold at most ``max_pixels`` samples between them
(``dicom.budget``), so concurrent requests cannot multiply that memory.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from libjpeg.utils import get_parameters as jpeg_parameters
from openjpeg.utils import get_parameters as j2k_parameters
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import as_pixel_options

from pacsfhir.dicom.budget import SampleBudget
from pacsfhir.dicom.frames import EXPLICIT_VR_LITTLE_ENDIAN, PixelDataFile, media_type_of
from pacsfhir.dicom.jpeg_scan import repair_sequential_scan
from pacsfhir.dicom.pixel_defaults import FrameFacts, completed
from pacsfhir.errors import PayloadTooLarge

RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 8192
MAX_REGION = 65536  # Rows and Columns are US: a source region lies within +-2^16
_PIXEL_KEYWORDS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
LIMIT_SETTING = "PACSFHIR_MAX_RENDER_PIXELS"
BAND_SAMPLES = 1 << 18  # the LUTs run over bands of rows of about this many samples
RENDERING = SampleBudget()  # what the frames being decoded in this process hold


RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# segments of an RLE frame -> (samples per pixel, bits): a segment is one byte of a sample
_RLE_SEGMENTS = {1: (1, 8), 2: (1, 16), 3: (3, 8), 4: (1, 32), 6: (3, 16)}


class RenderError(Exception):
    """The frame cannot be rendered (no pixel data, no decoder for its transfer syntax,
    data or attributes the decoder or the LUTs cannot take)."""


_BAD_DATA = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError)


class ViewportError(ValueError):
    """The viewport's source region lies outside the image."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh (negative: flip)


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90
    max_pixels: int | None = None  # samples of a frame or of the image drawn; None: no limit


# -- query parameters (ASCII digits only, finite, within range) --------------------------

_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
_MANTISSA = r"(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})"
_DECIMAL = re.compile(rf"[+-]?{_MANTISSA}(?:[eE][+-]?[0-9]{{1,3}})?")


def parse_integer(text: str, name: str, low: int, high: int) -> int:
    """A whole number of at most 9 ASCII digits within [low, high]; raises ValueError."""
    text = text.strip()
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{name} must be a whole number, not {text[:24]!a}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


def parse_decimal(text: str, name: str) -> float:
    """A finite decimal number (no inf, nan or hex); raises ValueError."""
    text = text.strip()
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite decimal number, not {text[:24]!a}")
    return value


def parse_window(text: str) -> Window:
    """``center,width[,function]``; raises ValueError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window is center,width[,function]")
    center = parse_decimal(parts[0], "window center")
    width = parse_decimal(parts[1], "window width")
    return checked_window(center, width, parts[2].lower() if len(parts) == 3 else "linear")


def checked_window(center: float, width: float, function: str = "linear") -> Window:
    """A window PS3.3 C.11.2.1.2 allows (a known function, a width the function can
    divide by); raises ValueError."""
    if function not in _FUNCTIONS:
        raise ValueError(f"window function must be one of {', '.join(_FUNCTIONS)}")
    if width <= 0 or (function == "linear" and width < 1):
        raise ValueError("window width must be positive (at least 1 for linear)")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (empty sx.. take their defaults); raises ValueError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise ValueError("viewport is vw,vh[,sx,sy,sw,sh]")
    width = parse_integer(parts[0], "viewport width", 1, MAX_VIEWPORT)
    height = parse_integer(parts[1], "viewport height", 1, MAX_VIEWPORT)
    if len(parts) == 2:
        return Viewport(width, height)
    names = ("sx", "sy", "sw", "sh")
    sx, sy, sw, sh = (
        parse_integer(p, f"viewport {n}", -MAX_REGION, MAX_REGION) if p else 0
        for p, n in zip(parts[2:], names, strict=True)
    )
    return Viewport(width, height, (sx, sy, sw, sh))


def parse_quality(text: str) -> int:
    return parse_integer(text, "quality", 1, 100)


# -- geometry: what the viewport shows, and how large it draws it ------------------------


@dataclass(frozen=True)
class Region:
    left: int
    top: int
    right: int
    bottom: int
    flip_x: bool = False
    flip_y: bool = False

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def source_region(columns: int, rows: int, viewport: Viewport | None) -> Region:
    """The part of a ``columns`` x ``rows`` frame the viewport shows (PS3.18 8.3.5.1.3):
    its source region clipped to the frame, flipped where sw or sh is negative; raises
    ViewportError when nothing of the frame is left."""
    if viewport is None or viewport.region is None:
        return Region(0, 0, columns, rows)
    sx, sy, sw, sh = viewport.region
    sw = sw or columns - sx
    sh = sh or rows - sy
    left, right = sorted((sx, sx + sw))
    top, bottom = sorted((sy, sy + sh))
    box = Region(max(0, left), max(0, top), min(columns, right), min(rows, bottom), sw < 0, sh < 0)
    if box.width <= 0 or box.height <= 0:
        raise ViewportError("the viewport's source region lies outside the image")
    return box


def output_size(region: Region, viewport: Viewport | None) -> tuple[int, int]:
    """(width, height) of the image drawn: the region fitted in the viewport, keeping its
    aspect ratio (up or down); the region's own size without a viewport."""
    if viewport is None:
        return region.width, region.height
    scale = min(viewport.width / region.width, viewport.height / region.height)
    return max(1, round(region.width * scale)), max(1, round(region.height * scale))


def _over(samples: int, limit: int | None) -> bool:
    return limit is not None and samples > limit


def check_frame_size(rows: int, columns: int, samples: int, limit: int | None, what: str) -> None:
    """PayloadTooLarge when a frame of this size is past the limit, before decoding it."""
    total = rows * columns * samples
    if _over(total, limit):
        raise PayloadTooLarge(
            f"{what} is {rows} x {columns} x {samples} = {total:,} samples, over the "
            f"rendering limit of {limit:,} ({LIMIT_SETTING})"
        )


def check_output_size(size: tuple[int, int], channels: int, options: RenderOptions) -> None:
    total = size[0] * size[1] * channels
    if _over(total, options.max_pixels):
        asked = options.viewport
        source = f"viewport {asked.width},{asked.height}" if asked else "the frame"
        raise PayloadTooLarge(
            f"{source} draws a {size[0]} x {size[1]} x {channels} image = {total:,} samples, "
            f"over the rendering limit of {options.max_pixels:,} ({LIMIT_SETTING})"
        )


# -- decoding ----------------------------------------------------------------------------


def _codestream(data: bytes, transfer_syntax: str) -> dict[str, Any]:
    """What a JPEG-family codestream says it holds, read from its own header (rows,
    columns, components, precision, signedness): what its decoder will allocate,
    whatever the DICOM header says; {} when it cannot be read (the decoder will say)."""
    media = media_type_of(transfer_syntax)
    try:
        if media in ("image/jpeg", "image/jls"):
            jpeg = jpeg_parameters(data)
            shape = (int(jpeg["rows"]), int(jpeg["columns"]), int(jpeg["nr_components"]))
            return {"shape": shape, "precision": int(jpeg["precision"])}
        if media in ("image/jp2", "image/jpx", "image/jphc"):
            j2k = j2k_parameters(data)
            shape = (int(j2k["rows"]), int(j2k["columns"]), int(j2k["samples_per_pixel"]))
            return {"shape": shape, "precision": int(j2k["precision"]), "signed": j2k["is_signed"]}
    except (RuntimeError, ValueError, KeyError, TypeError):
        return {}
    if transfer_syntax == RLE_LOSSLESS and len(data) >= 4:  # PS3.5 G.5: segments per frame
        layout = _RLE_SEGMENTS.get(int.from_bytes(data[:4], "little"))
        if layout is not None:
            return {"shape": (0, 0, layout[0]), "precision": layout[1]}
    return {}


def _native_frame(source: PixelDataFile, index: int, header: Dataset) -> bytes | bytearray:
    """Frame ``index`` of a native value, sized by ``header`` (completed: ``frames``
    sizes it by the stored header, whose gaps it fills with other guesses)."""
    if header is source.header:
        return source.frame(index)
    rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
    size = rows * columns * int(header.SamplesPerPixel) * int(header.BitsAllocated) // 8
    start, taken, parts = index * size, 0, []
    for chunk in source.value_chunks():
        low, high = max(start - taken, 0), min(start + size - taken, len(chunk))
        if low < high:
            parts.append(chunk[low:high])
        taken += len(chunk)
        if taken >= start + size:
            break
    return b"".join(parts)


def pixel_header(source: PixelDataFile, codestream: dict[str, Any] | None = None) -> Dataset:
    """The header with the Image Pixel attributes it lacks filled in (``pixel_defaults``)."""
    facts = FrameFacts(
        source.transfer_syntax,
        components=(codestream or {}).get("shape", (0, 0, None))[2],
        precision=(codestream or {}).get("precision"),
        signed=(codestream or {}).get("signed"),
        native_bytes=None if source.encapsulated else source.length,
    )
    return completed(source.header, facts)


def decode_frame(
    source: PixelDataFile, index: int, max_pixels: int | None = None
) -> tuple[np.ndarray, str]:
    """Frame ``index`` as an array (rows, columns[, samples]) and its photometric
    interpretation after decoding (YBR comes out as RGB). Native frames are decoded as
    a read-only view of the bytes read."""
    array, interpretation, _ = decode_with_header(source, index, max_pixels)
    return array, interpretation


def decode_with_header(
    source: PixelDataFile, index: int, max_pixels: int | None = None
) -> tuple[np.ndarray, str, Dataset]:
    """``decode_frame``, and the header it decoded by (``pixel_header``)."""
    if not source.has_pixel_data:
        raise RenderError("the instance has no pixel data")
    src: bytes | bytearray
    if source.encapsulated:
        transfer_syntax = source.transfer_syntax
        data = bytes(source.frame(index))
        if media_type_of(transfer_syntax) == "image/jpeg":
            data = repair_sequential_scan(data)
        codestream = _codestream(data, transfer_syntax)
        if "shape" in codestream and transfer_syntax != RLE_LOSSLESS:
            rows, columns, components = codestream["shape"]
            check_frame_size(
                rows, columns, components, max_pixels, f"frame {index + 1}'s codestream"
            )
        header = pixel_header(source, codestream)
        src = encapsulate([data], has_bot=False)
        del data
    else:  # frames.py hands native frames over little endian and byte-aligned
        transfer_syntax = EXPLICIT_VR_LITTLE_ENDIAN
        header = pixel_header(source)
        src = _native_frame(source, index, header)
    options: dict[str, Any] = as_pixel_options(header)
    options["number_of_frames"] = 1
    options["pixel_keyword"] = _PIXEL_KEYWORDS.get(source.pixel_tag or 0, "PixelData")
    options.pop("extended_offsets", None)
    if not source.encapsulated:
        options["pixel_vr"] = "OB" if int(options.get("bits_allocated", 8)) <= 8 else "OW"
        options["view_only"] = True
    options["transfer_syntax_uid"] = pydicom.uid.UID(transfer_syntax)
    try:
        decoder = get_decoder(options["transfer_syntax_uid"])
        array, meta = decoder.as_array(src, **options)
    except NotImplementedError as exc:
        raise RenderError(f"no decoder for transfer syntax {transfer_syntax}") from exc
    except (RuntimeError, ValueError, AttributeError, KeyError) as exc:
        raise RenderError(f"cannot decode the frame: {exc}") from exc
    interpretation = str(meta.get("photometric_interpretation", "MONOCHROME2"))
    return array, interpretation, header


def frame_attributes(header: Dataset, index: int) -> Dataset:
    """The header with frame ``index``'s functional groups (pixel value transformation,
    VOI) laid over the top level, for LUT functions that only look there."""
    merged = Dataset()
    merged.file_meta = header.file_meta
    merged.set_original_encoding(*header.original_encoding)
    for element in header:
        if element.tag.group == 0x0028 or element.tag == 0x00080060:
            merged.add(element)
    groups: list[Dataset] = []
    for keyword, position in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", index),
    ):
        sequence = header.get(keyword)
        if sequence and len(sequence) > position:
            groups.append(sequence[position])
    for group in groups:
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(macro)
            if items:
                for element in items[0]:
                    merged.add(element)
    return merged


def source_view(array: np.ndarray, region: Region, size: tuple[int, int]) -> np.ndarray:
    """The region of a decoded frame (flipped as asked), as a view, with rows and columns
    skipped when it is far larger than the image drawn (a thumbnail), so the LUTs run on
    what will be shown; the final resize stays a proper filter."""
    view = array[region.top : region.bottom, region.left : region.right]
    if region.flip_x:
        view = view[:, ::-1]
    if region.flip_y:
        view = view[::-1]
    step = min(region.height // size[1], region.width // size[0]) // 2
    return view[::step, ::step] if step > 1 else view


# -- to 8 bits, a band of rows at a time -------------------------------------------------


def _bands(array: np.ndarray) -> Iterator[slice]:
    per_row = max(1, array[:1].size)
    step = max(1, BAND_SAMPLES // per_row)
    for start in range(0, array.shape[0], step):
        yield slice(start, start + step)


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3, onto 0..1, in place on a float array."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        values -= c
        values *= -4.0 / w
        np.clip(values, -700.0, 700.0, out=values)  # exp stays finite
        np.exp(values, out=values)
        values += 1.0
        np.reciprocal(values, out=values)
        return values
    if window.function == "linear-exact":
        values -= c
        values /= w
    else:
        values -= c - 0.5
        values /= w - 1
    values += 0.5
    return np.clip(values, 0.0, 1.0, out=values)


def _to_uint8(unit: np.ndarray, out: np.ndarray) -> None:
    unit *= 255.0
    unit += 0.5
    out[...] = unit  # truncates, as astype(uint8) would


def _modality(band: np.ndarray, attributes: Dataset) -> np.ndarray:
    """The band through the Modality LUT, as a float64 array of its own."""
    return np.array(apply_modality_lut(band, attributes), dtype=np.float64)


def _first(value: Any) -> float:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _own_window(attributes: Dataset) -> Window | None:
    if "WindowCenter" not in attributes or "WindowWidth" not in attributes:
        return None
    try:
        center, width = _first(attributes.WindowCenter), _first(attributes.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(attributes.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
    if not (math.isfinite(center) and math.isfinite(width)):
        return None
    if function not in _FUNCTIONS or width <= 0 or (function == "linear" and width < 1):
        return None
    return Window(center, width, function)


def _range(frame: np.ndarray, attributes: Dataset) -> tuple[float, float]:
    """The lowest and highest values of the frame past the Modality LUT (a rescale is
    linear: its ends are those of the stored values)."""
    if "ModalityLUTSequence" not in attributes:
        ends = np.array([frame.min(), frame.max()], dtype=frame.dtype)
        values = _modality(ends, attributes)
        return float(values.min()), float(values.max())
    bands = (_modality(frame[band], attributes) for band in _bands(frame))
    ranges = [(float(v.min()), float(v.max())) for v in bands]
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _grey(
    frame: np.ndarray,
    array: np.ndarray,
    attributes: Dataset,
    interpretation: str,
    window: Window | None,
) -> np.ndarray:
    """A single-sample frame's view ``array`` onto 8 bits."""
    out = np.empty(array.shape[:2], dtype=np.uint8)
    chosen = window or _own_window(attributes)
    lut = "VOILUTSequence" in attributes if chosen is None else False
    low = high = 0.0
    if chosen is None and not lut:  # the whole frame's range, whatever the view
        low, high = _range(frame, attributes)
    bits = 16
    if lut and "LUTDescriptor" in attributes.VOILUTSequence[0]:
        bits = int(attributes.VOILUTSequence[0].LUTDescriptor[2])
    for band in _bands(array):
        values = _modality(array[band], attributes)
        if chosen is not None:
            values = _apply_window(values, chosen)
        elif lut:
            values = np.array(apply_voi_lut(values, attributes), dtype=np.float64)
            values /= float(2**bits - 1)
            np.clip(values, 0.0, 1.0, out=values)
        elif high > low:
            values -= low
            values /= high - low
        else:
            values[...] = 0.0
        if interpretation == "MONOCHROME1":
            values *= -1.0
            values += 1.0
        _to_uint8(values, out[band])
    return out


def _palette(frame: np.ndarray, array: np.ndarray, attributes: Dataset) -> np.ndarray:
    """PALETTE COLOR through its palette onto 8-bit RGB (shifted down when the frame
    meets 16-bit entries)."""
    out = np.empty((*array.shape[:2], 3), dtype=np.uint8)
    wide = any(int(apply_color_lut(frame[b], attributes).max()) > 255 for b in _bands(frame))
    for band in _bands(array):
        rgb = apply_color_lut(array[band], attributes)
        out[band] = rgb >> 8 if wide else rgb
    return out


def _colour(array: np.ndarray, attributes: Dataset, window: Window | None) -> np.ndarray:
    rgb = array[..., :3]
    if window is None and rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    out = np.empty(rgb.shape, dtype=np.uint8)
    top = float(2 ** int(attributes.get("BitsStored", 8) or 8) - 1)
    for band in _bands(rgb):
        unit = np.array(rgb[band], dtype=np.float64)
        if window is not None:
            unit = _apply_window(unit, window)
        else:
            unit /= top
            np.clip(unit, 0.0, 1.0, out=unit)
        _to_uint8(unit, out[band])
    return out


def to_image(
    frame: np.ndarray,
    view: np.ndarray,
    attributes: Dataset,
    interpretation: str,
    options: RenderOptions,
) -> Image.Image:
    """A Pillow image (L or RGB, 8 bits) of ``view``, a view of a decoded ``frame``."""
    samples = view.shape[2] if view.ndim == 3 else 1
    if samples == 1 and interpretation == "PALETTE COLOR":
        return Image.fromarray(_palette(frame, view, attributes), "RGB")
    if samples == 1:
        grey = _grey(frame, view, attributes, interpretation, options.window)
        return Image.fromarray(grey)
    return Image.fromarray(_colour(view, attributes, options.window), "RGB")


# -- the whole ---------------------------------------------------------------------------


def encode(image: Image.Image, options: RenderOptions) -> bytes:
    out = io.BytesIO()
    kind = _FORMATS[options.media_type]
    if kind == "JPEG":
        image.save(out, kind, quality=options.quality)
    else:
        image.save(out, kind)
    return out.getvalue()


def layout(
    source: PixelDataFile, index: int, options: RenderOptions
) -> tuple[Region, tuple[int, int]]:
    """What frame ``index`` of this instance would show and how large it would draw it,
    from its header alone; PayloadTooLarge when the frame (rows x columns x samples) or
    the image drawn is past ``options.max_pixels``, ViewportError when the viewport's
    source region misses the frame."""
    rows, columns, samples = source.frame_shape()
    if min(rows, columns, samples) < 1:
        raise RenderError(f"the header gives no frame size ({rows} x {columns} x {samples})")
    check_frame_size(rows, columns, samples, options.max_pixels, f"frame {index + 1}")
    region = source_region(columns, rows, options.viewport)
    size = output_size(region, options.viewport)
    palette = str(source.header.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
    check_output_size(size, 3 if samples > 1 or palette else 1, options)
    return region, size


def render(source: PixelDataFile, index: int, options: RenderOptions) -> bytes:
    """Frame ``index`` (0-based) of an open instance, rendered, once ``layout`` finds it
    within the limits."""
    region, size = layout(source, index, options)
    rows, columns, samples = source.frame_shape()
    held = RENDERING.hold(rows * columns * samples, options.max_pixels)
    with held, warnings.catch_warnings():  # pydicom warns about odd but decodable data
        warnings.simplefilter("ignore")
        try:
            array, interpretation, header = decode_with_header(source, index, options.max_pixels)
            view = source_view(array, region, size)
            attributes = frame_attributes(header, index)
            image = to_image(array, view, attributes, interpretation, options)
        except _BAD_DATA as exc:  # what pydicom and numpy raise on odd attributes
            raise RenderError(f"cannot render the frame: {exc}") from exc
        del array, view
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return encode(image, options)
