"""A pynetdicom SCU for the listener's tests: datasets and raw (possibly hostile) data
set bytes sent as C-STORE requests, each status returned."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@contextmanager
def associated(
    port: int,
    called: str,
    contexts: list[tuple[str, str]] | None = None,
    calling: str = "PYSCU",
) -> Iterator[Association]:
    """An association to 127.0.0.1:``port``, proposing (SOP class, transfer syntax) pairs
    (CT Image Storage in Explicit and Implicit VR Little Endian by default)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in contexts or [
        (CT_IMAGE_STORAGE, ExplicitVRLittleEndian),
        (CT_IMAGE_STORAGE, ImplicitVRLittleEndian),
    ]:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def send_dataset(assoc: Association, dataset: Dataset | str) -> int:
    status = assoc.send_c_store(dataset)
    assert "Status" in status, "no response"
    return int(status.Status)


def send_raw(
    assoc: Association,
    raw: bytes,
    sop_uid: str,
    sop_class: str = CT_IMAGE_STORAGE,
    syntax: str = ExplicitVRLittleEndian,
    message_id: int = 1,
) -> int | None:
    """Send ``raw`` as the data set of a C-STORE, unparsed; the status, or None when the
    association ended without one."""
    context = next(
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
    )
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 2
    request.DataSet = BytesIO(raw)
    assert context.context_id is not None
    # as pynetdicom's own send_c_store: the reactor paused, so the answer is ours
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None or getattr(response, "Status", None) is None:
        return None
    return int(response.Status)
