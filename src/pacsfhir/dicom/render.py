"""Rendered frames (PS3.18 8.3.5, 10.4.1.1.3-4): decode one frame with pydicom (pylibjpeg
plugins for JPEG, JPEG-LS, JPEG 2000 and RLE), apply the Modality LUT, a window (the
``window`` query parameter, else the instance's own window or VOI LUT, else the frame's
range), MONOCHROME1 inversion or the palette, the viewport, and encode with Pillow.

Only the asked-for frame is read and decoded (see ``dicom.frames``), so rendering the
last frame of a large multi-frame file costs one frame of memory.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import as_pixel_options

from pacsfhir.dicom.frames import EXPLICIT_VR_LITTLE_ENDIAN, PixelDataFile

RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
THUMBNAIL_SIZE = 128
_PIXEL_KEYWORDS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


class RenderError(Exception):
    """The frame cannot be rendered (no pixel data, no decoder for its transfer syntax)."""


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


def parse_window(text: str) -> Window:
    """``center,width[,function]``; raises ValueError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window is center,width[,function]")
    center, width = float(parts[0]), float(parts[1])
    function = parts[2].lower() if len(parts) == 3 else "linear"
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
    width, height = int(parts[0]), int(parts[1])
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise ValueError("viewport width and height must be between 1 and 8192")
    if len(parts) == 2:
        return Viewport(width, height)
    sx, sy = (int(p) if p else 0 for p in parts[2:4])
    sw, sh = (int(p) if p else 0 for p in parts[4:6])
    return Viewport(width, height, (sx, sy, sw, sh))


def parse_quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise ValueError("quality is 1 to 100")
    return value


# -- decoding ----------------------------------------------------------------------------


def decode_frame(source: PixelDataFile, index: int) -> tuple[np.ndarray, str]:
    """Frame ``index`` as an array (rows, columns[, samples]) and its photometric
    interpretation after decoding (YBR comes out as RGB)."""
    if not source.has_pixel_data:
        raise RenderError("the instance has no pixel data")
    options: dict[str, Any] = as_pixel_options(source.header)
    options["number_of_frames"] = 1
    options["pixel_keyword"] = _PIXEL_KEYWORDS.get(source.pixel_tag or 0, "PixelData")
    options.pop("extended_offsets", None)
    data = source.frame(index)
    if source.encapsulated:
        transfer_syntax = source.transfer_syntax
        src: bytes = encapsulate([data], has_bot=False)
    else:  # frames.py hands native frames over little endian and byte-aligned
        transfer_syntax = EXPLICIT_VR_LITTLE_ENDIAN
        options["pixel_vr"] = "OB" if int(options.get("bits_allocated", 8)) <= 8 else "OW"
        src = data
    options["transfer_syntax_uid"] = pydicom.uid.UID(transfer_syntax)
    try:
        decoder = get_decoder(options["transfer_syntax_uid"])
        array, meta = decoder.as_array(src, **options)
    except NotImplementedError as exc:
        raise RenderError(f"no decoder for transfer syntax {transfer_syntax}") from exc
    except (RuntimeError, ValueError, AttributeError, KeyError) as exc:
        raise RenderError(f"cannot decode the frame: {exc}") from exc
    interpretation = str(meta.get("photometric_interpretation", "MONOCHROME2"))
    return array, interpretation


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


# -- to 8 bits ---------------------------------------------------------------------------


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3, onto 0..1, in place on a float32 array."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        values -= c
        values *= -4.0 / w
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


def _float32(array: np.ndarray) -> np.ndarray:
    return np.array(array, dtype=np.float32)  # a fresh copy, safe to change in place


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    unit *= 255.0
    unit += 0.5
    return unit.astype(np.uint8)


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
    if function not in _FUNCTIONS or width <= 0 or (function == "linear" and width < 1):
        return None
    return Window(center, width, function)


def _grey(
    array: np.ndarray, attributes: Dataset, interpretation: str, window: Window | None
) -> np.ndarray:
    """A single-sample frame onto 0..1 (float)."""
    values = _float32(apply_modality_lut(array, attributes))
    chosen = window or _own_window(attributes)
    if chosen is not None:
        scaled = _apply_window(values, chosen)
    elif "VOILUTSequence" in attributes:
        lut = attributes.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2]) if "LUTDescriptor" in lut else 16
        scaled = _float32(apply_voi_lut(values, attributes))
        scaled /= float(2**bits - 1)
        np.clip(scaled, 0.0, 1.0, out=scaled)
    else:
        low, high = float(values.min()), float(values.max())
        values -= low
        scaled = values / (high - low) if high > low else np.zeros_like(values)
    if interpretation == "MONOCHROME1":
        scaled *= -1.0
        scaled += 1.0
    return scaled


def to_image(
    array: np.ndarray, attributes: Dataset, interpretation: str, options: RenderOptions
) -> Image.Image:
    """A Pillow image (L or RGB, 8 bits) of a decoded frame."""
    samples = array.shape[2] if array.ndim == 3 else 1
    if samples == 1 and interpretation == "PALETTE COLOR":
        rgb = apply_color_lut(array, attributes)
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8 if int(rgb.max()) > 255 else rgb).astype(np.uint8)
        return Image.fromarray(rgb, "RGB")
    if samples == 1:
        return Image.fromarray(_to_uint8(_grey(array, attributes, interpretation, options.window)))
    rgb = array[..., :3]
    if options.window is None and rgb.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    unit = _float32(rgb)
    if options.window is not None:
        unit = _apply_window(unit, options.window)
    else:
        unit /= float(2 ** int(attributes.get("BitsStored", 8) or 8) - 1)
        np.clip(unit, 0.0, 1.0, out=unit)
    return Image.fromarray(_to_uint8(unit), "RGB")


# -- viewport and encoding ---------------------------------------------------------------


def apply_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop to the source region (flipping for negative sizes), then scale to fit in the
    viewport keeping the aspect ratio (PS3.18 8.3.5.1.3)."""
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        sw = sw or image.width - sx
        sh = sh or image.height - sy
        left, right = sorted((sx, sx + sw))
        top, bottom = sorted((sy, sy + sh))
        box = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ViewportError("the viewport's source region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image


def _subsample(array: np.ndarray, viewport: Viewport | None) -> np.ndarray:
    """Skip rows and columns of a frame much larger than the whole-image viewport (a
    thumbnail), so the LUTs run on what will be shown; the final resize stays a
    proper filter."""
    if viewport is None or viewport.region is not None:
        return array
    step = min(array.shape[0] // viewport.height, array.shape[1] // viewport.width) // 2
    return array[::step, ::step] if step > 1 else array


def encode(image: Image.Image, options: RenderOptions) -> bytes:
    out = io.BytesIO()
    kind = _FORMATS[options.media_type]
    if kind == "JPEG":
        image.save(out, kind, quality=options.quality)
    else:
        image.save(out, kind)
    return out.getvalue()


def render(source: PixelDataFile, index: int, options: RenderOptions) -> bytes:
    """Frame ``index`` (0-based) of an open instance, rendered."""
    with warnings.catch_warnings():  # pydicom warns about odd but decodable data
        warnings.simplefilter("ignore")
        array, interpretation = decode_frame(source, index)
        array = _subsample(array, options.viewport)
        attributes = frame_attributes(source.header, index)
        image = to_image(array, attributes, interpretation, options)
    return encode(apply_viewport(image, options.viewport), options)
