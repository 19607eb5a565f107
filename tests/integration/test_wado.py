"""WADO-RS against real peers: dicomweb-client (unmodified) and httpx against pacsfhir under
a real uvicorn, pydicom's reading of the source files as the oracle for bytes, frames and
metadata, and Orthanc (with its DICOMweb plugin) for byte-for-byte retrieval.

Two archives: the shared sample archive (every sample file, for "every stored instance
comes back byte for byte"), and a curated one whose files have distinct SOP Instance
UIDs, so each source file is the stored one and named expectations hold.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from sqlalchemy import select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.frames import media_type_of
from pacsfhir.dicom.ingest import ingest
from pacsfhir.dicom.prepare import walk
from pacsfhir.dicom.transcode import is_lossy
from pacsfhir.index.schema import instance, patient, series, study
from tests.conftest import (
    LiveServer,
    archive_holding,
    free_port,
    make_settings,
    sample_paths,
    skip_or_fail,
)
from tests.support.dicom_factory import write_variant
from tests.support.orthanc import Orthanc, orthanc_problem
from tests.support.samples import pydicom_sample, read_quietly

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CURATED = [
    "CT_small.dcm",  # native, explicit VR little endian
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_rle_2frame.dcm",  # RLE, 2 frames, RGB
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "color3d_jpeg_baseline.dcm",  # JPEG baseline, 120 frames
    "emri_small.dcm",  # native, 10 frames
    "OBXXXX1A.dcm",  # PALETTE COLOR
    "liver.dcm",  # SEG: 1 bit allocated, frames not byte-aligned
    "rtplan.dcm",  # no pixel data
]
VARIANTS = ["JPEG2000.dcm", "MR_small_bigendian.dcm"]  # same SOP UIDs as above: new UIDs


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_multipart(response: httpx.Response | requests.Response) -> list[email.message.Message]:
    """The body parts, read by the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    assert message.get_content_type() == "multipart/related"
    return list(message.iter_parts())


def payload(part: email.message.Message) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


# -- the curated archive ---------------------------------------------------------------


@dataclass
class Curated:
    archive: Archive
    server: LiveServer
    files: dict[str, Path]  # SOP Instance UID -> source file
    datasets: dict[str, Dataset]

    @property
    def dicomweb(self) -> str:
        return self.server.base_url + "/dicom-web"

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.dicomweb)

    def uids(self, name: str) -> tuple[str, str, str]:
        for sop, path in self.files.items():
            if path.name == name or path.name == f"variant-{name}":
                ds = self.datasets[sop]
                return ds.StudyInstanceUID, ds.SeriesInstanceUID, sop
        raise KeyError(name)

    def url(self, name: str) -> str:
        s, se, i = self.uids(name)
        return f"{self.dicomweb}/studies/{s}/series/{se}/instances/{i}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def curated(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_problem: str | None,
) -> Iterator[Curated]:
    tmp = tmp_path_factory.mktemp(f"wado-{request.param}")
    paths = [pydicom_sample(name) for name in CURATED]
    for name in VARIANTS:
        paths.append(tmp / "src" / f"variant-{name}")
        write_variant(read_quietly(pydicom_sample(name)), paths[-1])
    read = [read_quietly(p) for p in paths]
    datasets = {str(ds.SOPInstanceUID): ds for ds in read}
    files = {str(ds.SOPInstanceUID): p for ds, p in zip(read, paths, strict=True)}
    with (
        archive_holding(str(request.param), tmp, postgres_problem, paths) as archive,
        LiveServer(archive) as server,
    ):
        yield Curated(archive, server, files, datasets)


# -- retrieve: every stored instance, byte for byte ------------------------------------


@pytest.fixture(scope="module")
def source_shas() -> dict[str, str]:
    return {sha256(p): p for p in walk(sample_paths())}


def stored_rows(archive: Archive) -> list[tuple[str, str, str, str, str, str]]:
    query = (
        select(
            study.c.StudyInstanceUID,
            series.c.SeriesInstanceUID,
            instance.c.SOPInstanceUID,
            instance.c.TransferSyntaxUID,
            instance.c.sha256,
            patient.c.resource_id,
        )
        .select_from(patient.join(study).join(series).join(instance))
        .order_by(instance.c.SOPInstanceUID)
    )
    with archive.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


def test_every_stored_instance_comes_back_byte_for_byte(
    live_server: LiveServer, sample_archive: Archive, source_shas: dict[str, str]
) -> None:
    rows = stored_rows(sample_archive)
    assert len(rows) > 100
    with httpx.Client(base_url=live_server.base_url + "/dicom-web", timeout=30) as client:
        for s, se, i, ts, sha, _patient in rows:
            response = client.get(
                f"/studies/{s}/series/{se}/instances/{i}", headers={"Accept": DICOM_ANY}
            )
            assert response.status_code == 200, response.text
            assert int(response.headers["content-length"]) == len(response.content)
            (part,) = parse_multipart(response)
            assert part.get_content_type() == "application/dicom"
            assert part.get_param("transfer-syntax") == ts
            data = payload(part)
            assert hashlib.sha256(data).hexdigest() == sha
            assert sha in source_shas


# the attributes a decoded instance changes: YBR comes out RGB, offsets go
_DECODED_CHANGES = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration"}
_DECODED_CHANGES |= {"ExtendedOffsetTable", "ExtendedOffsetTableLengths", "DataSetTrailingPadding"}


def assert_same_instance(got: Dataset, source: Dataset) -> None:
    """``got`` is ``source`` in the syntax PS3.18 8.7.3.4 makes the default: as stored
    when lossy (or already Explicit VR Little Endian), else Explicit VR Little Endian
    with pydicom's own decode of the source as its pixels."""
    stored = str(source.file_meta.TransferSyntaxUID)
    served = str(got.file_meta.TransferSyntaxUID)
    if served == stored:
        assert got == source
        return
    assert served == "1.2.840.10008.1.2.1"
    assert not is_lossy(stored)
    kept = [e.keyword for e in source if e.keyword not in _DECODED_CHANGES]
    assert [got.get(k) for k in kept] == [source.get(k) for k in kept]
    if "PixelData" in source:
        assert np.array_equal(got.pixel_array, source.pixel_array)


def test_dicomweb_client_retrieves_study_series_and_instance(curated: Curated) -> None:
    client = curated.client()
    for s in sorted({ds.StudyInstanceUID for ds in curated.datasets.values()}):
        expected = {sop: ds for sop, ds in curated.datasets.items() if ds.StudyInstanceUID == s}
        got = client.retrieve_study(s)
        assert sorted(ds.SOPInstanceUID for ds in got) == sorted(expected)
        for ds in got:
            assert_same_instance(ds, expected[ds.SOPInstanceUID])
        for se in {ds.SeriesInstanceUID for ds in expected.values()}:
            in_series = client.retrieve_series(s, se)
            assert {ds.SOPInstanceUID for ds in in_series} == {
                sop for sop, ds in expected.items() if ds.SeriesInstanceUID == se
            }
    for sop in curated.files:
        source = curated.datasets[sop]
        ds = client.retrieve_instance(source.StudyInstanceUID, source.SeriesInstanceUID, sop)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        assert_same_instance(ds, source)


def test_instances_stream_in_series_then_instance_number_order(tmp_path: Path) -> None:
    template = read_quietly(pydicom_sample("CT_small.dcm"))
    study_uid = pydicom.uid.generate_uid()
    series_uids = [pydicom.uid.generate_uid() for _ in range(2)]
    paths = []
    # written in scrambled order; series 2 and 10 compare wrongly as text
    for series_number, series_uid in zip((10, 2), series_uids, strict=True):
        for number in (11, 1, 2):
            path = tmp_path / f"{series_number}-{number}.dcm"
            write_variant(
                template,
                path,
                study_uid=study_uid,
                series_uid=series_uid,
                SeriesNumber=series_number,
                InstanceNumber=number,
            )
            paths.append(path)
    archive = Archive.open(make_settings(tmp_path, f"sqlite:///{tmp_path / 'index.db'}"))
    try:
        ingest([str(p) for p in paths], archive.engine, archive.blobs, workers=1)
        with TestClient(create_app(archive.settings, archive)) as client:
            response = client.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ANY})
            order = [(int(d.SeriesNumber), int(d.InstanceNumber)) for d in _datasets(response)]
            assert order == [(2, 1), (2, 2), (2, 11), (10, 1), (10, 2), (10, 11)]
            metadata = client.get(f"/dicom-web/studies/{study_uid}/metadata").json()
            assert [m["00200013"]["Value"][0] for m in metadata] == [1, 2, 11, 1, 2, 11]
    finally:
        archive.close()


def _open_blobs(root: Path) -> list[str]:
    """The files under ``root`` this process holds open (the in-thread server is us)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(root)):
            held.append(target)
    return held


def test_a_client_that_drops_mid_retrieve_leaves_no_file_open(tmp_path: Path) -> None:
    """A study of several read-ahead batches (about 40 MB): the client reads its first
    megabyte and hangs up; every blob the server opened is closed and it keeps serving."""
    template = read_quietly(pydicom_sample("CT_small.dcm"))
    study_uid = pydicom.uid.generate_uid()
    series_uid = pydicom.uid.generate_uid()
    big = np.zeros((1024, 1024), dtype=np.uint16)
    paths = []
    for number in range(1, 21):
        path = tmp_path / "src" / f"{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        write_variant(
            template,
            path,
            study_uid=study_uid,
            series_uid=series_uid,
            InstanceNumber=number,
            Rows=1024,
            Columns=1024,
            PixelData=big.tobytes(),
        )
        paths.append(path)
    archive = Archive.open(make_settings(tmp_path, f"sqlite:///{tmp_path / 'index.db'}"))
    try:
        ingest([str(p) for p in paths], archive.engine, archive.blobs, workers=1)
        blobs_root = archive.blobs.root.resolve()
        url = f"/dicom-web/studies/{study_uid}"
        with LiveServer(archive) as server:
            with (
                httpx.Client(base_url=server.base_url, timeout=30) as client,
                client.stream("GET", url, headers={"Accept": DICOM_ANY}) as response,
            ):
                assert response.status_code == 200
                total = int(response.headers["content-length"])
                assert total > 40_000_000
                received = 0
                for chunk in response.iter_raw(65536):
                    received += len(chunk)
                    if received > 1_000_000:
                        break
            deadline = time.monotonic() + 10
            while _open_blobs(blobs_root) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _open_blobs(blobs_root) == []
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                again = client.get(url, headers={"Accept": DICOM_ANY})
            assert len(again.content) == total
            assert len(_datasets(again)) == 20
    finally:
        archive.close()


def _datasets(response: httpx.Response) -> list[Dataset]:
    assert response.status_code == 200, response.text
    return [read_quietly(io.BytesIO(payload(part))) for part in parse_multipart(response)]


def test_single_part_application_dicom_for_one_instance(curated: Curated) -> None:
    url = curated.url("CT_small.dcm")
    response = httpx.get(url, headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert response.content == pydicom_sample("CT_small.dcm").read_bytes()


# -- metadata and bulk data ------------------------------------------------------------


def decoded_frames(source: Dataset) -> list[bytes]:
    """pydicom's decode of each frame of ``source``, as bytes."""
    pixels = source.pixel_array
    if int(source.get("NumberOfFrames", 1) or 1) == 1:
        return [pixels.tobytes()]
    return [frame.tobytes() for frame in pixels]


def test_metadata_with_bulk_data_uris_that_resolve(curated: Curated) -> None:
    client = curated.client()
    for sop, source in curated.datasets.items():
        s, se = source.StudyInstanceUID, source.SeriesInstanceUID
        metadata = client.retrieve_instance_metadata(s, se, sop)
        with warnings.catch_warnings():  # no handler for the BulkDataURIs: fetched below
            warnings.simplefilter("ignore")
            ds = Dataset.from_json(metadata)
        assert ds.SOPInstanceUID == sop
        assert ds.get("Rows") == source.get("Rows")
        assert str(ds.get("PatientName", "")) == str(source.get("PatientName", ""))
        uris = {tag: v["BulkDataURI"] for tag, v in metadata.items() if "BulkDataURI" in v}
        instance_url = f"{curated.dicomweb}/studies/{s}/series/{se}/instances/{sop}"
        for tag, uri in uris.items():
            assert uri == f"{instance_url}/bulkdata/{tag}"
        if "PixelData" not in source:
            assert "7FE00010" not in uris
            continue
        parts = client.retrieve_bulkdata(uris["7FE00010"])
        ts = source.file_meta.TransferSyntaxUID
        if ts.is_encapsulated:  # octet-stream with no syntax: decoded, a part a frame
            assert parts == decoded_frames(source)
        elif ts.is_little_endian:
            assert parts == [source.PixelData]
        for tag, uri in uris.items():
            if tag != "7FE00010":
                (value,) = client.retrieve_bulkdata(uri)
                assert value == source[int(tag, 16)].value


def test_study_and_series_metadata(curated: Curated) -> None:
    client = curated.client()
    s, se, _ = curated.uids("SC_rgb_rle_2frame.dcm")
    in_study = {sop for sop, ds in curated.datasets.items() if ds.StudyInstanceUID == s}
    study_metadata = client.retrieve_study_metadata(s)
    assert {m["00080018"]["Value"][0] for m in study_metadata} == in_study
    series_metadata = client.retrieve_series_metadata(s, se)
    assert {m["0020000E"]["Value"][0] for m in series_metadata} == {se}


# -- frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("CT_small.dcm", [1]),
        ("emri_small.dcm", [1, 3, 10]),
        ("MR_small_bigendian.dcm", [1]),
        ("liver.dcm", [2, 1]),
    ],
)
def test_native_frames_are_pydicoms_pixels(curated: Curated, name: str, numbers: list[int]) -> None:
    s, se, i = curated.uids(name)
    source = curated.datasets[i]
    frames = curated.client().retrieve_instance_frames(
        s, se, i, frame_numbers=numbers, media_types=("application/octet-stream",)
    )
    pixels = source.pixel_array
    if int(source.get("NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]
    for number, frame in zip(numbers, frames, strict=True):
        if source.BitsAllocated == 1:
            expected = np.packbits(pixels[number - 1].ravel(), bitorder="little").tobytes()
        else:
            array = pixels[number - 1]
            expected = array.astype(array.dtype.newbyteorder("<")).tobytes()
        assert frame == expected


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("MR_small_jp2klossless.dcm", [1]),
        ("JPEG2000.dcm", [1]),
        ("SC_rgb_rle_2frame.dcm", [2, 1]),
        ("SC_rgb_jpeg_dcmtk.dcm", [1]),
        ("color3d_jpeg_baseline.dcm", [1, 60, 120]),
    ],
)
def test_compressed_frames_are_the_stored_fragments(
    curated: Curated, name: str, numbers: list[int]
) -> None:
    s, se, i = curated.uids(name)
    source = curated.datasets[i]
    count = int(source.get("NumberOfFrames", 1) or 1)
    stored = list(generate_frames(source.PixelData, number_of_frames=count))
    expected = [stored[n - 1] for n in numbers]
    client = curated.client()
    # dicomweb-client's default (octet-stream, no syntax): pydicom's decode
    decoded = decoded_frames(source)
    got = client.retrieve_instance_frames(s, se, i, frame_numbers=numbers)
    assert got == [decoded[n - 1] for n in numbers]
    ts = str(source.file_meta.TransferSyntaxUID)
    media = media_type_of(ts)
    if media.startswith("image/") and media != "image/dicom-rle":
        got = client.retrieve_instance_frames(
            s, se, i, frame_numbers=numbers, media_types=((media, ts),)
        )
        assert got == expected
    # OHIF's request: octet-stream, any transfer syntax
    response = httpx.get(
        f"{curated.url(name)}/frames/{','.join(map(str, numbers))}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    parts = parse_multipart(response)
    assert [payload(p) for p in parts] == expected
    assert {p.get_param("transfer-syntax") for p in parts} == {ts}


def test_frames_errors(curated: Curated) -> None:
    url = curated.url("SC_rgb_rle_2frame.dcm")
    # no JPEG baseline encoder: that syntax cannot be had from RLE
    jpeg = (
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50'
    )
    assert httpx.get(f"{url}/frames/1", headers={"Accept": jpeg}).status_code == 406
    assert httpx.get(f"{url}/frames/3").status_code == 404
    assert httpx.get(f"{url}/frames/0").status_code == 400
    assert httpx.get(f"{url}/frames/a").status_code == 400
    assert httpx.get(f"{curated.url('rtplan.dcm')}/frames/1").status_code == 404
    s, se, i = curated.uids("SC_rgb_rle_2frame.dcm")
    with pytest.raises(requests.HTTPError) as raised:
        curated.client().retrieve_instance_frames(
            s, se, i, frame_numbers=[1], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),)
        )
    assert raised.value.response.status_code == 406


FRAME_ROUTES = ["", "/rendered", "/thumbnail"]  # .../frames/{frames}{route}


@pytest.mark.parametrize(
    ("frames", "status"),
    [
        ("2,1", 200),
        ("1,1", 400),  # PS3.18: "non duplicate frame numbers"
        ("2,1,2", 400),
        (",".join(["1"] * 10), 400),
        ("%C2%B2", 400),  # superscript two: str.isdigit() says yes
        ("%D9%A1", 400),  # Arabic-Indic one: int() takes it
        ("0", 400),
        ("-1", 400),
        ("1" + "0" * 30, 400),
        ("1,,2", 400),
        ("3", 404),  # past the last of its 2 frames
        ("1,2,3", 404),  # longer than the frame count: past the last
    ],
)
def test_frame_lists_on_every_frames_route_and_base(
    curated: Curated, frames: str, status: int
) -> None:
    """Issue 12 items 6 and 7: one parser for every {frames}; a repeated frame is 400."""
    s, se, i = curated.uids("SC_rgb_rle_2frame.dcm")
    owner = next(r[5] for r in stored_rows(curated.archive) if r[2] == i)
    tail = f"/studies/{s}/series/{se}/instances/{i}/frames/{frames}"
    accepts = {"": DICOM_ANY.replace("application/dicom", "application/octet-stream")}
    with httpx.Client(base_url=curated.server.base_url, timeout=30) as client:
        for base in ("/dicom-web", f"/fhir/Patient/{owner}/$wado-rs"):
            for route in FRAME_ROUTES:
                accept = accepts.get(route, "image/png")
                response = client.get(base + tail + route, headers={"Accept": accept})
                assert response.status_code == status, (base, route, response.text)
                if status != 200:
                    assert response.headers["Warning"].isascii()


def test_repeated_frames_with_a_huge_viewport_cost_no_rendering(curated: Curated) -> None:
    """Issue 12 item 6: frames/1,1,...(x10)/rendered?viewport=8192,8192 took 5.4 s of CPU."""
    url = curated.url("CT_small.dcm") + "/frames/" + ",".join(["1"] * 10) + "/rendered"
    started = time.process_time()
    response = httpx.get(url, params={"viewport": "8192,8192"}, headers={"Accept": "image/png"})
    assert response.status_code == 400
    assert "frame 1 is listed twice" in response.text
    assert time.process_time() - started < 0.5  # the server shares this process


def test_single_frame_as_a_single_part(curated: Curated) -> None:
    url = curated.url("MR_small_jp2klossless.dcm")
    response = httpx.get(f"{url}/frames/1", headers={"Accept": "image/jp2"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/jp2")
    source = curated.datasets[curated.uids("MR_small_jp2klossless.dcm")[2]]
    assert response.content == next(generate_frames(source.PixelData, number_of_frames=1))


def test_instance_pixeldata_is_every_frame(curated: Curated) -> None:
    i = curated.uids("emri_small.dcm")[2]
    response = httpx.get(f"{curated.url('emri_small.dcm')}/pixeldata")
    frames = [payload(p) for p in parse_multipart(response)]
    assert b"".join(frames) == curated.datasets[i].PixelData
    assert len(frames) == 10


# -- rendered and thumbnails -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("CT_small.dcm", "L"),
        ("MR_small_jp2klossless.dcm", "L"),
        ("SC_rgb_rle_2frame.dcm", "RGB"),
        ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),
        ("OBXXXX1A.dcm", "RGB"),
        ("MR_small_bigendian.dcm", "L"),
        ("liver.dcm", "L"),
    ],
)
def test_rendered_instance_opens_with_pillow(curated: Curated, name: str, mode: str) -> None:
    s, se, i = curated.uids(name)
    source = curated.datasets[i]
    client = curated.client()
    for media, kind in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        data = client.retrieve_instance_rendered(s, se, i, media_types=(media,))
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode) == (kind, mode)
        assert image.size == (source.Columns, source.Rows)
    gif = client.retrieve_instance_rendered(s, se, i, media_types=("image/gif",))
    assert Image.open(io.BytesIO(gif)).size == (source.Columns, source.Rows)
    small = client.retrieve_instance_rendered(
        s, se, i, media_types=("image/png",), params={"viewport": "32,32"}
    )
    assert max(Image.open(io.BytesIO(small)).size) == 32


def test_window_and_viewport_parameters(curated: Curated) -> None:
    s, se, i = curated.uids("CT_small.dcm")
    client = curated.client()

    def pixels(params: dict[str, str]) -> np.ndarray:
        data = client.retrieve_instance_rendered(
            s, se, i, media_types=("image/png",), params=params
        )
        return np.asarray(Image.open(io.BytesIO(data)))

    narrow, wide = pixels({"window": "40,80"}), pixels({"window": "40,4000"})
    assert not np.array_equal(narrow, wide)
    assert set(np.unique(pixels({"window": "-100000,1"}))) == {255}  # all above the window
    assert pixels({"window": "40,400,sigmoid"}).shape == (128, 128)
    cropped = pixels({"viewport": "64,64,0,0,64,32"})
    assert cropped.shape == (32, 64)
    full = pixels({})
    flipped = pixels({"viewport": "128,128,128,0,-128,128"})
    assert np.array_equal(flipped, full[:, ::-1])
    for bad in ({"window": "1"}, {"window": "1,0"}, {"viewport": "0,10"}, {"quality": "0"}):
        response = httpx.get(f"{curated.url('CT_small.dcm')}/rendered", params=bad)
        assert response.status_code == 400, bad


def test_rendered_frames_series_and_multipart(curated: Curated) -> None:
    s, se, i = curated.uids("SC_rgb_rle_2frame.dcm")
    client = curated.client()
    second = client.retrieve_instance_frames_rendered(
        s, se, i, frame_numbers=[2], media_types=("image/png",)
    )
    assert Image.open(io.BytesIO(second)).size == (100, 100)
    series = client.retrieve_series_rendered(s, se, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(series)).format == "JPEG"
    response = httpx.get(
        f"{curated.url('SC_rgb_rle_2frame.dcm')}/rendered",
        headers={"Accept": 'multipart/related; type="image/png"'},
    )
    images = [Image.open(io.BytesIO(payload(p))) for p in parse_multipart(response)]
    assert [image.format for image in images] == ["PNG", "PNG"]


def test_thumbnails(curated: Curated) -> None:
    s, se, i = curated.uids("color3d_jpeg_baseline.dcm")
    base = f"{curated.dicomweb}/studies/{s}"
    for url in (
        base + "/thumbnail",
        f"{base}/series/{se}/thumbnail",
        f"{base}/series/{se}/instances/{i}/thumbnail",
        f"{base}/series/{se}/instances/{i}/frames/5/thumbnail",
    ):
        response = httpx.get(url)
        assert response.status_code == 200, url
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "JPEG"
        assert max(image.size) == 128
    response = httpx.get(
        base + "/thumbnail", params={"viewport": "64,64"}, headers={"Accept": "image/png"}
    )
    assert max(Image.open(io.BytesIO(response.content)).size) == 64


def test_rendering_what_has_no_pixels_is_not_acceptable(curated: Curated) -> None:
    url = curated.url("rtplan.dcm")
    assert httpx.get(f"{url}/rendered").status_code == 406
    assert httpx.get(f"{url}/thumbnail").status_code == 406


# -- negotiation and errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'),
        ("", "application/zip"),
        ("", 'multipart/related; type="application/dicom+xml"'),
        ("/metadata", 'multipart/related; type="application/dicom"'),
        ("/metadata", "application/xml"),
        ("/rendered", "video/mp4"),
        ("/rendered", "application/pdf"),
        ("/thumbnail", 'multipart/related; type="image/jpeg"'),
        ("/bulkdata/7FE00010", "text/plain"),
    ],
)
def test_not_acceptable(curated: Curated, suffix: str, accept: str) -> None:
    response = httpx.get(curated.url("CT_small.dcm") + suffix, headers={"Accept": accept})
    assert response.status_code == 406, response.text
    assert response.headers["content-type"] == "application/json"


def test_transfer_syntax_negotiation(curated: Curated) -> None:
    s, se, i = curated.uids("SC_rgb_jpeg_dcmtk.dcm")
    study_url = f"{curated.dicomweb}/studies/{s}"
    jpeg = "1.2.840.10008.1.2.4.50"
    explicit = "1.2.840.10008.1.2.1"
    # the study holds JPEG and RLE instances: no single stored syntax serves all of it
    assert httpx.get(study_url, headers={"Accept": DICOM_ANY}).status_code == 200
    dicom = 'multipart/related; type="application/dicom"'
    only_jpeg = {"Accept": f"{dicom}; transfer-syntax={jpeg}"}
    assert httpx.get(study_url, headers=only_jpeg).status_code == 406
    instance_url = f"{study_url}/series/{se}/instances/{i}"
    assert httpx.get(instance_url, headers=only_jpeg).status_code == 200
    explicit_accept = {"Accept": f"{dicom}; transfer-syntax={explicit}"}
    decoded = httpx.get(instance_url, headers=explicit_accept)
    assert decoded.status_code == 200
    assert {p.get_param("transfer-syntax") for p in parse_multipart(decoded)} == {explicit}
    # several ranges: each instance served by whichever accepts its stored syntax
    either = {
        "Accept": f"{dicom}; transfer-syntax={jpeg}, {dicom}; transfer-syntax=1.2.840.10008.1.2.5"
    }
    assert httpx.get(study_url, headers=either).status_code == 200
    # the accept query parameter wins over the header
    response = httpx.get(
        instance_url, params={"accept": only_jpeg["Accept"]}, headers=explicit_accept
    )
    assert response.status_code == 200


def test_not_found_and_bad_requests(curated: Curated) -> None:
    s, se, i = curated.uids("CT_small.dcm")
    base = curated.dicomweb
    unknown = "1.2.3.4.5.6.7.8.9"
    for url in (
        f"{base}/studies/{unknown}",
        f"{base}/studies/{unknown}/metadata",
        f"{base}/studies/{s}/series/{unknown}",
        f"{base}/studies/{s}/series/{se}/instances/{unknown}",
        f"{base}/studies/{s}/series/{se}/instances/{unknown}/frames/1",
        f"{base}/studies/{s}/series/{se}/instances/{i}/bulkdata/00091001",
        f"{base}/studies/{s}/series/{se}/instances/{i}/bulkdata/nothex!!",
        f"{base}/studies/{s}/series/{se}/instances/{i}/bulkdata/00100010",
        f"{base}/studies/{unknown}/rendered",
        f"{base}/studies/{unknown}/thumbnail",
    ):
        response = httpx.get(url)
        assert response.status_code == 404, url
    assert httpx.get(f"{base}/studies/not..a..uid").status_code == 400


# -- patient scope ---------------------------------------------------------------------


def test_patient_scoped_base_sees_only_that_patient(curated: Curated) -> None:
    rows = stored_rows(curated.archive)
    s, se, i = curated.uids("CT_small.dcm")
    owner = next(r[5] for r in rows if r[2] == i)
    other = next(r[5] for r in rows if r[5] != owner)
    tails = [
        "",
        "/metadata",
        "/rendered",
        "/thumbnail",
        f"/series/{se}",
        f"/series/{se}/metadata",
        f"/series/{se}/instances/{i}",
        f"/series/{se}/instances/{i}/metadata",
        f"/series/{se}/instances/{i}/frames/1",
        f"/series/{se}/instances/{i}/bulkdata/7FE00010",
        f"/series/{se}/instances/{i}/rendered",
        f"/series/{se}/instances/{i}/thumbnail",
        f"/series/{se}/instances/{i}/pixeldata",
    ]
    with httpx.Client(base_url=curated.server.base_url, timeout=30) as client:
        for tail in tails:
            mine = client.get(f"/fhir/Patient/{owner}/$wado-rs/studies/{s}{tail}")
            assert mine.status_code == 200, (tail, mine.text)
            theirs = client.get(f"/fhir/Patient/{other}/$wado-rs/studies/{s}{tail}")
            assert theirs.status_code == 404, tail
            nobody = client.get(f"/fhir/Patient/no-such-patient/$wado-rs/studies/{s}{tail}")
            assert nobody.status_code == 404, tail
    scoped = DICOMwebClient(f"{curated.server.base_url}/fhir/Patient/{owner}/$wado-rs")
    metadata = scoped.retrieve_instance_metadata(s, se, i)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{curated.server.base_url}/fhir/Patient/{owner}/$wado-rs/studies/")
    assert scoped.retrieve_bulkdata(uri) == [curated.datasets[i].PixelData]
    assert len(scoped.retrieve_study(s)) == 1


# -- Orthanc as the oracle -------------------------------------------------------------


@pytest.fixture(scope="module")
def own_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """An Orthanc of this module's own: the session's is shared with tests that store
    other files under the same UIDs (Orthanc keeps the first)."""
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    with Orthanc(tmp_path_factory.mktemp("orthanc-wado"), free_port(), free_port()) as server:
        yield server


@pytest.mark.orthanc
def test_instances_are_the_same_bytes_as_orthancs(curated: Curated, own_orthanc: Orthanc) -> None:
    orthanc = own_orthanc
    paths = list(curated.files.values())
    assert orthanc.store(paths) == len(paths)
    with (
        httpx.Client(base_url=orthanc.dicomweb_url, timeout=60) as theirs,
        httpx.Client(base_url=curated.dicomweb, timeout=60) as ours,
    ):
        for sop, path in curated.files.items():
            ds = curated.datasets[sop]
            url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}"
            mine = [
                payload(p) for p in parse_multipart(ours.get(url, headers={"Accept": DICOM_ANY}))
            ]
            oracle = theirs.get(url, headers={"Accept": DICOM_ANY})
            assert oracle.status_code == 200, oracle.text
            assert mine == [payload(p) for p in parse_multipart(oracle)], path.name
            assert mine == [path.read_bytes()]
        for s in {ds.StudyInstanceUID for ds in curated.datasets.values()}:
            mine = ours.get(f"/studies/{s}", headers={"Accept": DICOM_ANY})
            oracle = theirs.get(f"/studies/{s}", headers={"Accept": DICOM_ANY})
            assert sorted(payload(p) for p in parse_multipart(mine)) == sorted(
                payload(p) for p in parse_multipart(oracle)
            )
