"""Hostile input to the C-STORE listener: garbage and truncated data sets from a
pynetdicom SCU, odd character sets, garbage and cut-short PDUs on a raw socket. Each bad
instance gets a failure status (never Success), nothing is half-stored, and the listener
keeps serving the next association."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from pacsfhir.archive import Archive
from pacsfhir.consistency import check
from pacsfhir.dimse.listener import SUCCESS, StorageListener
from tests.conftest import free_port
from tests.support.dicom_factory import load_template
from tests.support.dimse_peer import associated, send_dataset, send_raw

AE_TITLE = "PACSFHIRFUZZ"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def listener(archive: Archive) -> Iterator[StorageListener]:
    with StorageListener(archive, "127.0.0.1", free_port(), AE_TITLE) as running:
        yield running


def encoded(ds: Dataset) -> bytes:
    """The data set in Explicit VR Little Endian, as an SCU would send it."""
    out = DicomBytesIO()
    write_dataset(out, ds)
    return out.getvalue()


def fresh() -> Dataset:
    ds = load_template()
    ds.SOPInstanceUID = generate_uid()
    return ds


def hostile_data_sets(seed: int = 7) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    whole = encoded(fresh())
    yield "garbage", rng.randbytes(4096)
    for cut in (3, 8, 100, len(whole) // 2, len(whole) - 1):
        yield f"truncated at {cut}", whole[:cut]
    flipped = bytearray(whole)
    for _ in range(40):
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
    yield "bytes flipped", bytes(flipped)
    huge_length = bytearray(whole[:8])  # the first element claims 4 GB
    huge_length[6:8] = b"\xff\xff"
    yield "huge length", bytes(huge_length) + b"\x00" * 64
    yield "sequence never closed", b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff" * 8


def test_hostile_data_sets_get_failure_statuses_and_the_listener_goes_on(
    listener: StorageListener, archive: Archive
) -> None:
    with associated(listener.port, AE_TITLE) as assoc:
        for number, (label, raw) in enumerate(hostile_data_sets(), start=1):
            status = send_raw(assoc, raw, generate_uid(), message_id=number)
            assert status is not None, label  # answered, on the same association
            assert status != SUCCESS, label
            assert status >= 0xA000, (label, hex(status))
    good = fresh()
    with associated(listener.port, AE_TITLE) as assoc:
        assert send_dataset(assoc, good) == SUCCESS
    assert_clean(archive, {good.SOPInstanceUID})


@pytest.mark.parametrize(
    "charset",
    ["ISO 2022 IR 999", "ISO_IR 192", "GB18030", "ISO 2022 IR 87\\ISO 2022 IR 159", "\\\\\\"],
)
def test_odd_character_sets_are_stored_or_refused_never_fatal(
    listener: StorageListener, archive: Archive, charset: str
) -> None:
    ds = fresh()
    ds.SpecificCharacterSet = charset
    raw = bytearray(encoded(ds))
    name = b"\x1b$B\xff\xfe\x1b(B^\xc3\x28\xa0\xa1"  # bad escapes and invalid UTF-8
    element = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", len(name)) + name
    at = raw.find(b"\x10\x00\x10\x00PN")
    end = at + 8 + struct.unpack("<H", raw[at + 6 : at + 8])[0]
    raw[at:end] = element
    with associated(listener.port, AE_TITLE) as assoc:
        status = send_raw(assoc, bytes(raw), ds.SOPInstanceUID)
    assert status is not None
    assert status == SUCCESS or status >= 0xA000
    assert_clean(archive, {ds.SOPInstanceUID} if status == SUCCESS else set())
    if status == SUCCESS:  # what was stored is what was sent
        blob = next(iter(_blobs(archive)))
        assert blob.endswith(bytes(raw))


def test_garbage_and_cut_short_pdus_do_not_stop_the_listener(
    listener: StorageListener, archive: Archive
) -> None:
    rng = random.Random(11)
    for payload in (
        rng.randbytes(2048),
        b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 32,  # P-DATA, huge length
        b"\x01\x00" + struct.pack(">I", 68) + b"\x00\x01" + b"\x00" * 10,  # cut short
        b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # an A-ABORT out of the blue
    ):
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw:
            raw.sendall(payload)
            raw.shutdown(socket.SHUT_WR)
            try:
                while raw.recv(4096):
                    pass
            except OSError:
                pass
    good = fresh()
    with associated(listener.port, AE_TITLE) as assoc:
        assert send_dataset(assoc, good) == SUCCESS
    assert_clean(archive, {good.SOPInstanceUID})


def _blobs(archive: Archive) -> list[bytes]:
    return [
        archive.blobs.absolute(relative).read_bytes()
        for relative, _ in archive.blobs.files()
        if relative.endswith(".dcm")
    ]


def assert_clean(archive: Archive, expected: set[str]) -> None:
    stored = {
        pydicom.dcmread(DicomBytesIO(blob), stop_before_pixels=True).SOPInstanceUID
        for blob in _blobs(archive)
    }
    assert stored == expected
    assert list(archive.blobs.staged_files()) == []
    report = check(archive.engine, archive.blobs, verify_hash=True, grace=0, staging_grace=0)
    assert report.clean, report
