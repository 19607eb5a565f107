"""WADO-RS transcoding (PS3.18 8.7.3) against real files and real peers: every
compressed file of pydicom's and pydicom-data's test sets, served by pacsfhir under
uvicorn, decoded by pydicom as the oracle (the served pixels equal pydicom's decode of
the stored file); dicomweb-client unmodified; Orthanc's own transcoding as a second,
independent oracle.

Each source is stored under new UIDs (``write_variant``: the pixel data bytes as they
are), so that files of the test sets sharing a SOP Instance UID are all served.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID

from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.dicom.prepare import walk
from pacsfhir.dicom.transcode import ENCODED_TARGETS, is_lossy
from tests.conftest import LiveServer, _database_url, free_port, make_settings, sample_paths
from tests.integration.test_wado import decoded_frames, parse_multipart, payload
from tests.support.dicom_factory import write_variant
from tests.support.orthanc import Orthanc, orthanc_problem
from tests.support.samples import pydicom_sample, read_quietly

EXPLICIT = "1.2.840.10008.1.2.1"
OCTET = 'multipart/related; type="application/octet-stream"'


def _compressed_sources() -> list[Path]:
    """Every file of the test sets whose pixel data is encapsulated."""
    found = []
    for name in walk(sample_paths()):
        try:
            ds = read_quietly(name, force=True, stop_before_pixels=True)
        except Exception:
            continue
        syntax = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
        if syntax and UID(syntax).is_encapsulated:
            found.append(Path(name))
    return sorted(found)


COMPRESSED = _compressed_sources()


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@dataclass
class Stored:
    path: Path  # the stored file (the source under new UIDs)
    dataset: Dataset  # that file, read by pydicom
    url: str  # its WADO-RS instance URL


@dataclass
class Transcoding:
    server: LiveServer
    stored: dict[str, Stored]  # _label(source) -> what is stored
    problems: dict[str, str]  # _label(source) -> why pydicom cannot decode it


def _decode_problem(ds: Dataset) -> str | None:
    try:
        ds.pixel_array  # noqa: B018
    except Exception as exc:
        return f"pydicom cannot decode it: {type(exc).__name__}: {str(exc)[:120]}"
    return None


@pytest.fixture(scope="module")
def transcoding(
    tmp_path_factory: pytest.TempPathFactory, postgres_problem: str | None
) -> Iterator[Transcoding]:
    tmp = tmp_path_factory.mktemp("transcode")
    variants: dict[str, Path] = {}
    problems: dict[str, str] = {}
    for n, source in enumerate(COMPRESSED):
        ds = read_quietly(source, force=True)
        problem = _decode_problem(ds)
        if problem is not None:
            problems[_label(source)] = problem
            continue
        target = tmp / "src" / f"{n}.dcm"
        try:
            write_variant(ds, target)
        except (TypeError, ValueError) as exc:
            problems[_label(source)] = f"pydicom cannot write it under new UIDs: {exc}"
            continue
        variants[_label(source)] = target
    for url in _database_url("sqlite", tmp, postgres_problem):
        archive = Archive.open(make_settings(tmp, url))
        summary = ingest([str(p) for p in variants.values()], archive.engine, archive.blobs)
        assert summary.counts == {"stored": len(variants)}, summary
        try:
            with LiveServer(archive) as server:
                stored = {}
                for label, path in variants.items():
                    ds = read_quietly(path, force=True)
                    url = (
                        f"{server.base_url}/dicom-web/studies/{ds.StudyInstanceUID}"
                        f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
                    )
                    stored[label] = Stored(path, ds, url)
                yield Transcoding(server, stored, problems)
        finally:
            archive.close()


def _stored(transcoding: Transcoding, source: Path) -> Stored:
    label = _label(source)
    if label in transcoding.problems:
        pytest.skip(transcoding.problems[label])
    return transcoding.stored[label]


def _dataset(body: bytes) -> Dataset:
    return read_quietly(io.BytesIO(body), force=True)


@pytest.mark.parametrize("source", COMPRESSED, ids=_label)
def test_frames_with_no_syntax_are_pydicoms_decode(transcoding: Transcoding, source: Path) -> None:
    stored = _stored(transcoding, source)
    expected = decoded_frames(stored.dataset)
    response = httpx.get(f"{stored.url}/pixeldata", headers={"Accept": OCTET}, timeout=120)
    assert response.status_code == 200, response.text
    parts = parse_multipart(response)
    assert [payload(p) for p in parts] == expected
    assert {p.get_param("transfer-syntax") for p in parts} == {EXPLICIT}
    locations = [p["Content-Location"] for p in parts]
    assert locations == [f"{stored.url}/frames/{n}" for n in range(1, len(parts) + 1)]


@pytest.mark.parametrize("source", COMPRESSED, ids=_label)
def test_instance_in_explicit_vr_little_endian(transcoding: Transcoding, source: Path) -> None:
    """PS3.18 8.7.3.4: every source pydicom can decode converts; with no syntax asked,
    a lossless one is converted and a lossy one comes as stored."""
    stored = _stored(transcoding, source)
    syntax = str(stored.dataset.file_meta.TransferSyntaxUID)
    asked = httpx.get(
        stored.url,
        headers={"Accept": f"application/dicom; transfer-syntax={EXPLICIT}"},
        timeout=120,
    )
    assert asked.status_code == 200, asked.text
    assert asked.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    served = _dataset(asked.content)
    assert served.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(served.pixel_array, stored.dataset.pixel_array)
    assert served.SOPInstanceUID == stored.dataset.SOPInstanceUID
    default = httpx.get(stored.url, headers={"Accept": "application/dicom"}, timeout=120)
    assert default.status_code == 200
    expected = syntax if is_lossy(syntax) else EXPLICIT
    assert default.headers["content-type"] == f"application/dicom; transfer-syntax={expected}"
    if expected == EXPLICIT:
        assert default.content == asked.content


@pytest.mark.parametrize("target", ENCODED_TARGETS)
@pytest.mark.parametrize("source", COMPRESSED, ids=_label)
def test_instance_encoded_on_request(transcoding: Transcoding, source: Path, target: str) -> None:
    """A lossless target holds pydicom's decode of the source exactly; what an encoder
    cannot take (1-bit, some signed or odd depths) is 406 before any byte is sent."""
    stored = _stored(transcoding, source)
    response = httpx.get(
        stored.url, headers={"Accept": f"application/dicom; transfer-syntax={target}"}, timeout=120
    )
    if response.status_code == 406:
        pytest.xfail(f"no encoding of this file in {target}: {response.json()}")
    assert response.status_code == 200, response.text
    served = _dataset(response.content)
    assert served.file_meta.TransferSyntaxUID == target
    assert np.array_equal(served.pixel_array, stored.dataset.pixel_array)


def test_dicomweb_client_asks_each_syntax_it_can(transcoding: Transcoding) -> None:
    """dicomweb-client's frames: without options uncompressed (pydicom's decode);
    with each media type and syntax it offers, decodable to the same pixels."""
    stored = transcoding.stored[
        _label(next(p for p in COMPRESSED if p.name == "SC_rgb_rle_2frame.dcm"))
    ]
    ds = stored.dataset
    client = DICOMwebClient(f"{transcoding.server.base_url}/dicom-web")
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    expected = decoded_frames(ds)
    assert client.retrieve_instance_frames(*uids, frame_numbers=[2, 1]) == [
        expected[1],
        expected[0],
    ]
    for media, syntax in [
        ("image/dicom-rle", "1.2.840.10008.1.2.5"),
        ("image/jls", "1.2.840.10008.1.2.4.80"),
        ("image/jp2", "1.2.840.10008.1.2.4.90"),
    ]:
        frames = client.retrieve_instance_frames(
            *uids, frame_numbers=[1, 2], media_types=((media, syntax),)
        )
        decoded = [_decode_frame(frame, syntax, ds) for frame in frames]
        assert [d.tobytes() for d in decoded] == expected, media
    for syntax in (EXPLICIT, *ENCODED_TARGETS):
        got = client.retrieve_instance(*uids, media_types=(("application/dicom", syntax),))
        assert got.file_meta.TransferSyntaxUID == syntax
        assert np.array_equal(got.pixel_array, ds.pixel_array)


def _decode_frame(frame: bytes, syntax: str, header: Dataset) -> np.ndarray:
    """pydicom's decode of one served frame, under the header's pixel description."""
    ds = Dataset()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored"):
        setattr(ds, keyword, header[keyword].value)
    ds.HighBit = header.BitsStored - 1
    ds.PixelRepresentation = header.PixelRepresentation
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds.pixel_array


# -- Orthanc as the oracle -------------------------------------------------------------


@pytest.fixture(scope="module")
def own_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    problem = orthanc_problem()
    if problem:
        pytest.skip(problem)
    with Orthanc(tmp_path_factory.mktemp("orthanc-transcode"), free_port(), free_port()) as server:
        yield server


@pytest.mark.orthanc
def test_explicit_vr_pixels_equal_orthancs(transcoding: Transcoding, own_orthanc: Orthanc) -> None:
    """For each file Orthanc transcodes (its /instances/{id}/file?transcode=), pacsfhir's
    Explicit VR Little Endian pixels equal Orthanc's: lossless sources exactly, lossy
    ones within 2 per sample (JPEG decoders may round differently)."""
    compared = 0
    with httpx.Client(base_url=own_orthanc.base_url, timeout=120) as orthanc:
        for label, stored in sorted(transcoding.stored.items()):
            posted = orthanc.post(
                "/instances",
                content=stored.path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            if posted.status_code != 200:
                continue
            oid = posted.json()["ID"]
            theirs = orthanc.get(f"/instances/{oid}/file", params={"transcode": EXPLICIT})
            if theirs.status_code != 200:
                continue  # Orthanc cannot transcode it: no oracle for this file
            oracle = _dataset(theirs.content)
            mine = _dataset(
                httpx.get(
                    stored.url,
                    headers={"Accept": f"application/dicom; transfer-syntax={EXPLICIT}"},
                    timeout=120,
                ).content
            )
            try:
                expected = oracle.pixel_array
            except Exception:
                continue
            got = mine.pixel_array
            syntax = str(stored.dataset.file_meta.TransferSyntaxUID)
            if str(oracle.PhotometricInterpretation) != str(mine.PhotometricInterpretation):
                continue  # Orthanc kept YBR where pydicom gives RGB: not comparable
            assert got.shape == expected.shape, label
            difference = np.abs(got.astype(np.int64) - expected.astype(np.int64)).max()
            assert difference <= (2 if is_lossy(syntax) else 0), (label, difference)
            compared += 1
    assert compared >= 20, compared


def test_a_study_of_mixed_syntaxes_in_explicit_vr_little_endian(
    archive: Archive, tmp_path: Path
) -> None:
    """One study (on SQLite and PostgreSQL) whose instances are stored JPEG baseline, RLE,
    JPEG 2000 lossless and implicit VR: asked in Explicit VR Little Endian, every part is,
    one instance after another, each with pydicom's decode of its source as pixels."""
    names = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jp2klossless.dcm"]
    names.append("MR_small_implicit.dcm")
    study = pydicom.uid.generate_uid()
    sources = {}
    for n, name in enumerate(names):
        source = read_quietly(pydicom_sample(name), force=True)
        ds = write_variant(source, tmp_path / "in" / f"{n}.dcm", study_uid=study)
        sources[ds.SOPInstanceUID] = ds
    summary = ingest([str(tmp_path / "in")], archive.engine, archive.blobs, workers=1)
    assert summary.counts == {"stored": len(names)}, summary
    with LiveServer(archive) as server:
        client = DICOMwebClient(f"{server.base_url}/dicom-web")
        got = client.retrieve_study(study, media_types=(("application/dicom", EXPLICIT),))
        assert sorted(ds.SOPInstanceUID for ds in got) == sorted(sources)
        for ds in got:
            source = sources[ds.SOPInstanceUID]
            assert ds.file_meta.TransferSyntaxUID == EXPLICIT
            assert np.array_equal(ds.pixel_array, source.pixel_array)
        default = httpx.get(
            f"{server.base_url}/dicom-web/studies/{study}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            timeout=60,
        )
        served = {p.get_param("transfer-syntax") for p in parse_multipart(default)}
        assert served == {EXPLICIT, "1.2.840.10008.1.2.4.50"}  # the lossy one as stored
