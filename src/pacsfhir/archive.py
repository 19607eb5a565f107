"""The archive: settings, the index engine and the blob store, opened once per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from pacsfhir.dicom.storage import BlobStore
from pacsfhir.index.counts import CountCache
from pacsfhir.index.engine import create_index_engine, migrate
from pacsfhir.settings import Settings


@dataclass
class Archive:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    counts: CountCache = field(default_factory=CountCache)

    @classmethod
    def open(cls, settings: Settings) -> Archive:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_index_engine(settings.index_url)
        migrate(engine)
        blobs = BlobStore(settings.blob_dir)
        blobs.ensure()
        blobs.sweep_incoming()
        return cls(settings, engine, blobs)

    def close(self) -> None:
        self.engine.dispose()
