"""The cheap not-DICOM check (dicom.sniff) on real heads: it refuses garbage from its first
bytes, never refuses a file that the ingest would store, and makes a part of zeros cost
milliseconds instead of pydicom's forced parse."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import pytest

from pacsfhir.dicom.prepare import Prepared, Rejected, prepare_staged, walk
from pacsfhir.dicom.reader import read_instance
from pacsfhir.dicom.sniff import HEAD_BYTES, not_dicom
from pacsfhir.dicom.storage import BlobStore
from pacsfhir.errors import RejectedInstance
from tests.conftest import sample_paths

SAMPLES = sorted(walk(sample_paths()))
MB = 1 << 20


def sample(name: str) -> bytes:
    """A file of pydicom's test sets (pydicom's own, or pydicom-data's)."""
    (path,) = [p for p in SAMPLES if p.endswith(f"/{name}") and "dicomdirtests" not in p]
    return Path(path).read_bytes()


def ct_file_meta() -> bytes:
    """CT_small.dcm up to the end of its file meta group (preamble, DICM, group 0002)."""
    data = sample("CT_small.dcm")
    (meta_length,) = struct.unpack_from("<I", data, 132 + 8)
    return data[: 132 + 12 + meta_length]


COMMAND_GROUP_LENGTH = struct.pack("<HHII", 0x0000, 0x0000, 4, 0)  # implicit VR, UL 0

# name -> (file content, None when plausibly DICOM or a fragment of the reason)
CASES: dict[str, tuple[bytes, str | None]] = {
    "Part 10, explicit VR little endian": (sample("CT_small.dcm"), None),
    "Part 10, deflated data set": (sample("image_dfl.dcm"), None),
    "no preamble, explicit VR little endian": (sample("ExplVR_LitEndNoMeta.dcm"), None),
    "no preamble, explicit VR big endian": (sample("ExplVR_BigEndNoMeta.dcm"), None),
    "no preamble, implicit VR": (sample("rtstruct.dcm"), None),
    "no preamble, a group length first": (sample("OT-PAL-8-face.dcm"), None),
    "Part 10 cut inside its data set": (sample("CT_small.dcm")[:700], None),
    "empty": (b"", "empty file"),
    "one byte": (b"x", "only 1 bytes"),
    "zeros": (bytes(MB), "group length (0000,0000) of 0 bytes"),
    "0xFF": (b"\xff" * 4096, "(FFFF,FFFF) is not in group"),
    "text": (sample("README.txt"), "not in group"),
    "ICC profile": (sample("crayons.icc"), "(0000,3822) of 1936548716 bytes runs past"),
    "gzip": (sample("zipMR.gz"), "not in group"),
    "DICOM JSON": (sample("test1.json"), "not in group"),
    "preamble and DICM, then zeros": (bytes(128) + b"DICM" + bytes(MB), "group length"),
    "file meta intact, then zeros": (ct_file_meta() + bytes(MB), "group length (0000,0000)"),
    "file meta intact, a command group length, then zeros": (
        ct_file_meta() + COMMAND_GROUP_LENGTH + bytes(MB),
        "group length (0000,0000) of 0 bytes",
    ),
    "command elements out of order": (
        COMMAND_GROUP_LENGTH * 2 + bytes(MB),
        "element (0000,0000) after (0000,0000): tags out of order",
    ),
    "file meta elements out of order": (
        ct_file_meta()[:144] + ct_file_meta()[132:144] + bytes(MB),
        "element (0002,0000) after (0002,0000): tags out of order",
    ),
    "a command group, then the data set": (
        COMMAND_GROUP_LENGTH + sample("rtstruct.dcm"),
        None,
    ),
    "file meta cut inside an element": (
        ct_file_meta()[:170],
        "file meta element (0002,0002) of 26 bytes runs past",
    ),
    "first element longer than the file": (
        b"\x08\x00\x05\x00CS\x40\x00ISO_IR 100",
        "(0008,0005) of 64 bytes runs past the end",
    ),
    "undefined length on a CS": (
        b"\x08\x00\x05\x00CS\x00\x00" + b"\x08\x00\x05\x00UT\x00\x00\xff\xff\xff\xff",
        None,  # the first element (CS, length 0) is fine; what follows is pydicom's
    ),
    "undefined length where PS3.5 allows none": (
        b"\x08\x00\x05\x00UT\x00\x00\xff\xff\xff\xff" + bytes(8),
        "VR UT with undefined length",
    ),
    "sequence of undefined length first": (
        b"\x08\x00\x06\x11SQ\x00\x00\xff\xff\xff\xff" + bytes(8),
        None,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_not_dicom(name: str) -> None:
    content, expected = CASES[name]
    problem = not_dicom(content[:HEAD_BYTES], len(content))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert expected in problem


def test_the_head_alone_decides() -> None:
    data = sample("CT_small.dcm")
    assert not_dicom(data[:HEAD_BYTES], len(data)) == not_dicom(data, len(data)) is None
    zeros = bytes(4 * HEAD_BYTES)
    assert not_dicom(zeros[:HEAD_BYTES], len(zeros)) == not_dicom(zeros, len(zeros))


@pytest.mark.parametrize("path", SAMPLES, ids=[Path(p).name for p in SAMPLES])
def test_never_refuses_what_the_ingest_would_store(path: str) -> None:
    data = Path(path).read_bytes()
    if not_dicom(data[:HEAD_BYTES], len(data)) is None:
        return
    with pytest.raises(RejectedInstance):
        read_instance(io.BytesIO(data), len(data))


def test_sample_files_the_ingest_reads_pass() -> None:
    """The other direction, over the whole set: what pydicom reads into an instance passes."""
    passed = 0
    for path in SAMPLES:
        data = Path(path).read_bytes()
        try:
            read_instance(io.BytesIO(data), len(data))
        except RejectedInstance:
            continue
        assert not_dicom(data[:HEAD_BYTES], len(data)) is None, path
        passed += 1
    assert passed > 200


def test_a_part_of_zeros_is_refused_in_milliseconds(tmp_path: Path) -> None:
    """The issue saw 128 s of CPU for 200 MB of zeros (pydicom's forced parse); 8 MB took
    about 2.8 s here before the check."""
    blobs = BlobStore(tmp_path)
    blobs.ensure()
    staged = blobs.stage_stream(io.BytesIO(bytes(8 * MB)))
    started = time.process_time()
    result = prepare_staged("zeros", staged, blobs)
    cpu = time.process_time() - started
    assert isinstance(result, Rejected)
    assert result.reason == "not-dicom"
    assert cpu < 0.1
    assert list(blobs.incoming.iterdir()) == []


def test_prepare_still_reads_a_real_instance(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    blobs.ensure()
    data = sample("ExplVR_BigEndNoMeta.dcm")
    staged = blobs.stage_stream(io.BytesIO(data))
    for content in (None, data):  # from the staged file, and from memory
        result = prepare_staged("big endian", staged, blobs, content)
        assert isinstance(result, Prepared), result
