"""Independent checks of an archive's state (plain SQL and file listings, not the code
under test): index counts, and the index consistent with the blobs on disk."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select

from pacsfhir.archive import Archive
from pacsfhir.index.schema import instance, series, study


def index_counts(archive: Archive) -> tuple[int, int, int]:
    with archive.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(study)).scalar_one(),
            conn.execute(select(func.count()).select_from(series)).scalar_one(),
            conn.execute(select(func.count()).select_from(instance)).scalar_one(),
        )


def blobs_on_disk(archive: Archive) -> set[str]:
    """Every ``.dcm`` blob under the blob root (staging excluded), relative to it."""
    return {
        str(p.relative_to(archive.blobs.root))
        for p in archive.blobs.root.rglob("*.dcm")
        if "incoming" not in p.relative_to(archive.blobs.root).parts
    }


def assert_consistent(archive: Archive, *, staging_empty: bool = True) -> None:
    """Every index row has its blob, byte for byte; no blob is unreferenced; one row per
    SOP Instance UID; counts agree."""
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(instance.c.SOPInstanceUID, instance.c.blob, instance.c.sha256, instance.c.size)
        ).all()
        studies = conn.execute(
            select(study.c.pk, study.c.number_of_series, study.c.number_of_instances)
        ).all()
        for pk, n_series, n_instances in studies:
            real_series = conn.execute(
                select(func.count()).select_from(series).where(series.c.study_pk == pk)
            ).scalar_one()
            real_instances = conn.execute(
                select(func.count())
                .select_from(instance.join(series))
                .where(series.c.study_pk == pk)
            ).scalar_one()
            assert (n_series, n_instances) == (real_series, real_instances)
    assert len({sop for sop, *_ in rows}) == len(rows), "one row per SOP Instance UID"
    referenced = set()
    for _sop, blob, sha, size in rows:
        data = archive.blobs.absolute(blob).read_bytes()
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == sha
        referenced.add(blob)
    assert blobs_on_disk(archive) == referenced
    if staging_empty:
        assert not list(archive.blobs.incoming.iterdir()), "staging must be empty"
