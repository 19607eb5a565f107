"""An upstream's answers land in the index as remote placeholders (``instance.upstream``
named, no blob), through the writer every stored instance goes through, so that search,
FHIR and QIDO-RS then serve them as they serve stored ones.

Rules: an instance stored here is never replaced by a placeholder (the local copy is
served first); a placeholder is refreshed by each landing of its study and removed when
the upstream no longer lists it; a stored copy arriving later (STOW-RS, C-STORE, a
retrieve) replaces its placeholder. Study and series attributes take the newest values,
whichever source gave them (the writer's rule). A placeholder keeps, as its sha256, the
digest of the answer it was made from: landing an answer unchanged since the last time
writes nothing, so a study the upstream has not changed keeps its version and
lastUpdated however often its cache is refreshed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from sqlalchemy import Engine

from pacsfhir.dicom.reader import attributes_from_dataset
from pacsfhir.errors import RejectedInstance
from pacsfhir.index.writer import (
    ExistingInstance,
    IndexRecord,
    drop_placeholders,
    existing_instances,
    lock_index,
    write_instances,
)
from pacsfhir.upstream.fetch import StudyAnswer, uid_of
from pacsfhir.vocabulary.levels import Level

log = logging.getLogger(__name__)


def _dataset(answer: dict[str, object]) -> Dataset:
    return Dataset.from_json(answer)


def _canonical(answer: dict[str, object] | None) -> bytes:
    return json.dumps(answer, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def records_of(answer: StudyAnswer, upstream: str) -> list[IndexRecord]:
    """A placeholder record per instance of ``answer`` whose attributes can be read (one
    without SOP Class UID, or whose parents are missing, is left out and logged). Each
    level's JSON is read once."""
    study = _dataset(answer.study)
    series_by_uid = {uid_of(s, Level.SERIES): _dataset(s) for s in answer.series}
    # a placeholder's digest covers its study's, series' and own answers; the study's and
    # each series' are hashed once, not once an instance
    study_hash = hashlib.sha256(_canonical(answer.study))
    series_hashes = {}
    for s in answer.series:
        series_hashes[uid_of(s, Level.SERIES)] = hashed = study_hash.copy()
        hashed.update(b"\n" + _canonical(s))
    records = []
    for instance in answer.instances:
        merged = Dataset()
        merged.update(study)
        series_uid = uid_of(instance, Level.SERIES)
        series = series_by_uid.get(series_uid)
        if series is not None:
            merged.update(series)
        merged.update(_dataset(instance))
        merged.file_meta = FileMetaDataset()
        try:
            attributes = attributes_from_dataset(merged, "")
        except (RejectedInstance, ValueError, TypeError) as exc:
            log.warning("an instance %s answered is left out: %s", upstream, exc)
            continue
        digest = series_hashes.get(series_uid, study_hash).copy()
        digest.update(b"\n" + _canonical(instance))
        records.append(IndexRecord(attributes, "", 0, digest.hexdigest(), upstream=upstream))
    return records


def _changes(record: IndexRecord, known: ExistingInstance | None) -> bool:
    """Whether writing ``record`` would change the index: never over a stored copy, nor
    over a placeholder made from the same answer."""
    if known is None:
        return True
    return not known.blob and known.sha256 != record.sha256


def land(
    engine: Engine, answers: Sequence[StudyAnswer], upstream: str, now: int, timezone: str = ""
) -> int:
    """Write ``answers`` into the index (one transaction, under the write lock); how
    many placeholders were written (new or changed)."""
    written = 0
    with engine.begin() as conn:
        lock_index(conn)
        for answer in answers:
            records = records_of(answer, upstream)
            known = existing_instances(conn, [r.attributes.sop_uid for r in records])
            fresh = [r for r in records if _changes(r, known.get(r.attributes.sop_uid))]
            write_instances(conn, fresh, now, timezone)
            listed = {r.attributes.sop_uid for r in records}
            drop_placeholders(conn, uid_of(answer.study, Level.STUDY), listed, now)
            written += len(fresh)
    return written
