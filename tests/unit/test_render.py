"""Rendering (dicom.render) without a server: the query parameter parsers, the viewport's
geometry and the rendering limit, as tables; and the memory a large frame costs, against
frames generated with pydicom."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pixel_array

from pacsfhir.dicom import render as render_module
from pacsfhir.dicom.frames import PixelDataFile, is_video
from pacsfhir.dicom.prepare import walk
from pacsfhir.dicom.render import (
    Region,
    RenderOptions,
    Viewport,
    ViewportError,
    Window,
    output_size,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
    source_region,
)
from pacsfhir.errors import PayloadTooLarge
from tests.conftest import sample_paths
from tests.support.dicom_factory import write_variant
from tests.support.generated_frames import rle_bomb, write_frame

# -- parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("40,400", Window(40.0, 400.0)),
        ("-1000.5, 1e3", Window(-1000.5, 1000.0)),
        (".5,1.,SIGMOID", Window(0.5, 1.0, "sigmoid")),
        ("0,0.5,linear-exact", Window(0.0, 0.5, "linear-exact")),
        ("1e300,1e300", Window(1e300, 1e300)),
    ],
)
def test_window_parses(text: str, window: Window) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize(
    "text",
    [
        "1",
        "1,2,linear,4",
        "nan,100",
        "100,nan",
        "inf,100",
        "100,-inf",
        "100,Infinity",
        "1e999,100",  # float() says inf
        "\u0663,\u0663\u0660",  # Arabic-Indic digits: float() takes them
        "\u00b2,\u00b2",
        "\uff14\uff10,\uff14\uff10\uff10",  # fullwidth digits
        "1_0,100",
        "0x10,100",
        "40,0",
        "40,0.5",  # linear needs a width of at least 1
        "40,400,cubic",
        "1" * 30 + ",1",
    ],
)
def test_window_refused(text: str) -> None:
    with pytest.raises(ValueError) as raised:  # noqa: PT011 (each has its own reason)
        parse_window(text)
    assert str(raised.value).isascii()


@pytest.mark.parametrize(
    ("text", "viewport"),
    [
        ("64,32", Viewport(64, 32)),
        ("8192,1", Viewport(8192, 1)),
        ("64,64,0,0,64,32", Viewport(64, 64, (0, 0, 64, 32))),
        ("64,64,,,,", Viewport(64, 64, (0, 0, 0, 0))),
        ("64,64,128,0,-128,128", Viewport(64, 64, (128, 0, -128, 128))),
        (" 64 , 64 ", Viewport(64, 64)),
    ],
)
def test_viewport_parses(text: str, viewport: Viewport) -> None:
    assert parse_viewport(text) == viewport


@pytest.mark.parametrize(
    "text",
    [
        "64",
        "64,64,1",
        "0,10",
        "10,-1",
        "8193,10",
        "99999999999999999999,10",
        "10" + "0" * 4000 + ",10",
        "\u00b2,\u00b2",
        "\u0663\u0662,\u0663\u0662",
        "64.0,64",
        "1e3,1e3",
        "nan,nan",
        "64,64,0,0,99999999999999999999,10",
        "64,64,0,0,65537,10",
        "64,64,\u0661,0,10,10",
    ],
)
def test_viewport_refused(text: str) -> None:
    with pytest.raises(ValueError) as raised:  # noqa: PT011
        parse_viewport(text)
    assert str(raised.value).isascii()


@pytest.mark.parametrize(("text", "quality"), [("1", 1), ("100", 100), (" 75 ", 75), ("+50", 50)])
def test_quality_parses(text: str, quality: int) -> None:
    assert parse_quality(text) == quality


@pytest.mark.parametrize(
    "text", ["0", "101", "-5", "\u0669\u0660", "\u00b9", "90.0", "nan", "1" * 40, ""]
)
def test_quality_refused(text: str) -> None:
    with pytest.raises(ValueError, match="quality"):
        parse_quality(text)


# -- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "rows", "viewport", "region", "size"),
    [
        (512, 512, None, Region(0, 0, 512, 512), (512, 512)),
        (512, 256, Viewport(128, 128), Region(0, 0, 512, 256), (128, 64)),
        (100, 100, Viewport(8192, 8192), Region(0, 0, 100, 100), (8192, 8192)),  # up
        (128, 128, Viewport(64, 64, (0, 0, 64, 32)), Region(0, 0, 64, 32), (64, 32)),
        (128, 128, Viewport(64, 64, (10, 20, 0, 0)), Region(10, 20, 128, 128), (64, 59)),
        (
            128,
            128,
            Viewport(128, 128, (128, 0, -128, 128)),
            Region(0, 0, 128, 128, flip_x=True),
            (128, 128),
        ),
        (100, 100, Viewport(50, 50, (-50, -50, 100, 100)), Region(0, 0, 50, 50), (50, 50)),
        (4700, 5900, Viewport(1, 1), Region(0, 0, 4700, 5900), (1, 1)),
    ],
)
def test_source_region_and_output_size(
    columns: int,
    rows: int,
    viewport: Viewport | None,
    region: Region,
    size: tuple[int, int],
) -> None:
    assert source_region(columns, rows, viewport) == region
    assert output_size(region, viewport) == size


@pytest.mark.parametrize(
    "region", [(200, 0, 10, 10), (0, 0, -10, 10), (-20, -20, 10, 10), (0, 100, 10, 0)]
)
def test_a_source_region_outside_the_frame_is_refused(
    region: tuple[int, int, int, int],
) -> None:
    with pytest.raises(ViewportError):
        source_region(100, 100, Viewport(10, 10, region))


# -- rendering limits and memory, on generated frames ----------------------------------------


def test_an_rle_bomb_over_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    """Issue 12 item 5: a small RLE file declaring 6000 x 6000 (36 MB of samples)."""
    path = tmp_path / "bomb.dcm"
    rle_bomb(path)
    assert path.stat().st_size < 2_000_000
    options = RenderOptions(max_pixels=10_000_000)
    tracemalloc.start()
    try:
        with PixelDataFile(path) as source, pytest.raises(PayloadTooLarge) as raised:
            render(source, 0, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # the header only: nothing decoded (36 M samples would be 72 MB)
    assert "6000 x 6000 x 1 = 36,000,000 samples" in raised.value.message
    assert "10,000,000 (PACSFHIR_MAX_RENDER_PIXELS)" in raised.value.message
    with PixelDataFile(path) as source:  # within a limit it renders
        image = Image.open(io.BytesIO(render(source, 0, RenderOptions(max_pixels=36_000_000))))
    assert image.size == (6000, 6000)


def test_the_limit_counts_the_image_the_viewport_draws(tmp_path: Path) -> None:
    path = tmp_path / "small.dcm"
    write_frame(path, np.arange(100 * 50, dtype=np.uint16).reshape(100, 50))
    with PixelDataFile(path) as source:
        for viewport, allowed in [
            (Viewport(1000, 1000), True),  # draws 500 x 1000
            (Viewport(1000, 2000), False),  # draws 1000 x 2000
            (Viewport(8192, 8192), False),
            (Viewport(4096, 4096, (0, 0, 50, 1)), True),  # a strip: 4096 x 82
        ]:
            options = RenderOptions("image/png", viewport=viewport, max_pixels=1_000_000)
            if allowed:
                assert Image.open(io.BytesIO(render(source, 0, options))).size[0] > 0
            else:
                with pytest.raises(PayloadTooLarge, match="over the rendering limit of 1,000,000"):
                    render(source, 0, options)


def test_a_large_frame_renders_without_float_copies_of_the_whole(tmp_path: Path) -> None:
    """The frame is read into one buffer and decoded as a view of it, and the LUTs run
    over bands of rows into an 8-bit image: Python-side peak memory was 5x the frame's
    bytes (2x with a thumbnail viewport), now under 2x (1.5x)."""
    pixels = (np.arange(3000 * 3000, dtype=np.uint32) % 4096).astype(np.uint16)
    path = tmp_path / "large.dcm"
    write_frame(path, pixels.reshape(3000, 3000))
    del pixels
    frame_bytes = 3000 * 3000 * 2
    for viewport, size, bound in (
        (None, (3000, 3000), 2.0),
        (Viewport(256, 256), (256, 256), 1.25),
    ):
        tracemalloc.start()
        try:
            with PixelDataFile(path) as source:
                data = render(source, 0, RenderOptions(viewport=viewport))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert Image.open(io.BytesIO(data)).size == size
        assert peak < bound * frame_bytes, (viewport, peak / frame_bytes)


@pytest.mark.parametrize(("limit", "most"), [(512 * 512, 1), (4 * 512 * 512, 4)])
def test_frames_decoding_at_once_hold_at_most_the_limit_between_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, most: int
) -> None:
    """Concurrent render bombs would each hold a frame's worth of memory: past the limit
    between them, they queue; small frames still render side by side."""
    path = tmp_path / "frame.dcm"
    write_frame(path, np.arange(512 * 512, dtype=np.uint16).reshape(512, 512))
    decoding = 0
    seen = 0
    lock = threading.Lock()
    real = render_module.decode_with_header

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal decoding, seen
        with lock:
            decoding += 1
            seen = max(seen, decoding)
        try:
            time.sleep(0.05)  # long enough for every thread to be waiting
            return real(*args, **kwargs)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(render_module, "decode_with_header", counted)

    def one(_: int) -> bytes:
        with PixelDataFile(path) as source:
            return render(source, 0, RenderOptions(viewport=Viewport(64, 64), max_pixels=limit))

    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(one, range(16)))
    assert len(images) == 16
    assert seen == most
    assert render_module.RENDERING.held == 0


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "100 x 100 x 3"),  # JPEG baseline
        ("JPEG-LL.dcm", "1024 x 256 x 1"),  # JPEG lossless
        ("MR_small_jp2klossless.dcm", "64 x 64 x 1"),  # JPEG 2000
    ],
)
def test_a_codestream_larger_than_its_header_says_is_refused_before_decoding(
    tmp_path: Path, name: str, shape: str
) -> None:
    """The decoder allocates what the codestream declares, whatever Rows and Columns say."""
    template = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    path = tmp_path / name
    write_variant(template, path, Rows=2, Columns=2)
    with PixelDataFile(path) as source, pytest.raises(PayloadTooLarge) as raised:
        render(source, 0, RenderOptions(max_pixels=1000))
    assert f"frame 1's codestream is {shape} = " in raised.value.message


def _samples_with_pixels() -> list[Path]:
    found = []
    for name in walk(sample_paths()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with PixelDataFile(name) as source:
                    if source.has_pixel_data:
                        found.append(Path(name))
            except Exception:
                continue
    return found


@pytest.mark.parametrize("path", _samples_with_pixels(), ids=lambda p: p.name)
def test_frames_decode_as_pydicom_decodes_them(path: Path) -> None:
    """``decode_frame`` reads one frame (native: decoded as a view of the bytes read;
    compressed: re-encapsulated alone): its values are pydicom's own ``pixel_array``'s
    for that frame, read from the whole file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = pixel_array(str(path), index=0)
        except Exception:
            pytest.skip("pydicom cannot decode it")
        with PixelDataFile(path) as source:
            if is_video(source.transfer_syntax):
                pytest.skip("video")
            array, _ = render_module.decode_frame(source, 0)
    assert (array.dtype.kind, array.dtype.itemsize) == (
        expected.dtype.kind,
        expected.dtype.itemsize,
    )
    assert np.array_equal(array, expected)  # big endian files come out little endian
