"""The index schema: patients, studies, series and instances, each attribute at its true
DICOM level, with DICOM keywords verbatim as column names.

Derived columns (counts, modalities, search keys) are kept correct by ``index.writer``
as instances arrive. Alembic migrations in ``index/migrations`` create this schema; a
test checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

patient = Table(
    "patient",
    metadata,
    Column("pk", Integer, primary_key=True),
    # FHIR id, derived from (IssuerOfPatientID, PatientID); see vocabulary.ids
    Column("resource_id", String(64), nullable=False, unique=True),
    Column("PatientID", Text, nullable=False),
    Column("IssuerOfPatientID", Text, nullable=False),
    # the FHIR identifier system derived from the issuer, "" when none is known
    Column("identifier_system", Text, nullable=False),
    Column("PatientName", Text, nullable=False),
    Column("PatientBirthDate", Text, nullable=False),
    Column("PatientSex", Text, nullable=False),
    # name parts for FHIR string search, packed as |part|part| (see vocabulary.names):
    # *_search lower-cased and accent-folded, *_exact as written
    Column("name_search", Text, nullable=False),
    Column("family_search", Text, nullable=False),
    Column("given_search", Text, nullable=False),
    Column("name_exact", Text, nullable=False),
    Column("family_exact", Text, nullable=False),
    Column("given_exact", Text, nullable=False),
    # the implicit range of birthDate, microseconds since the epoch, inclusive
    Column("birth_low", BigInteger, nullable=True),
    Column("birth_high", BigInteger, nullable=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),  # microseconds since the epoch
    # the EHR patient (linked_patient.resource_id) whose identifier this patient's
    # Patient ID matches (index.links); None: not linked
    Column("linked_to", String(64), nullable=True, index=True),
)
Index("ix_patient_identifier", patient.c.PatientID, patient.c.identifier_system)

# The EHR's patients (index.links): written by PUT /fhir/Patient/{id} ("fhir") or looked
# up at the EHR ("ehr"), kept as the resource given, with their identifiers below.
linked_patient = Table(
    "linked_patient",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("resource_id", String(64), nullable=False, unique=True),
    Column("resource", Text, nullable=False),  # the Patient resource, JSON, without meta
    Column("source", String(8), nullable=False),  # "fhir" or "ehr"
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("fetched_at", BigInteger, nullable=False),  # when last read from its source
)

# An identifier of an EHR patient, as a DICOM patient row would hold it: ``value`` is a
# Patient ID, ``system`` an identifier_system, ``issuer`` the Issuer of Patient ID when
# ``system`` is "" (a local issuer has no URI) and "" otherwise.
linked_identifier = Table(
    "linked_identifier",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column(
        "linked_pk",
        Integer,
        ForeignKey("linked_patient.pk", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("value", Text, nullable=False),
    Column("system", Text, nullable=False),
    Column("issuer", Text, nullable=False),
)
Index("ix_linked_identifier_key", linked_identifier.c.value, linked_identifier.c.system)

study = Table(
    "study",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("StudyInstanceUID", String(64), nullable=False, unique=True),
    Column("patient_pk", Integer, ForeignKey("patient.pk"), nullable=False, index=True),
    Column("StudyDate", Text, nullable=False),
    Column("StudyTime", Text, nullable=False),
    Column("TimezoneOffsetFromUTC", Text, nullable=False),
    Column("AccessionNumber", Text, nullable=False),
    # FHIR system of the accession number's issuer, "" when none
    Column("accession_system", Text, nullable=False),
    Column("accession_issuer", Text, nullable=False),  # display name of the issuer
    Column("StudyID", Text, nullable=False),
    Column("StudyDescription", Text, nullable=False),
    Column("ReferringPhysicianName", Text, nullable=False),
    Column("NameOfPhysiciansReadingStudy", Text, nullable=False),  # JSON list of PN
    Column("ProcedureCodeSequence", Text, nullable=False),  # JSON list of codes
    Column("ReasonForTheRequestedProcedure", Text, nullable=False),
    Column("ReasonForRequestedProcedureCodeSequence", Text, nullable=False),  # JSON
    # the implicit range of `started` in microseconds since the epoch (UTC), inclusive
    Column("started_low", BigInteger, nullable=True),
    Column("started_high", BigInteger, nullable=True),
    Column("number_of_series", Integer, nullable=False),
    Column("number_of_instances", Integer, nullable=False),
    Column("modalities", Text, nullable=False),  # backslash-separated, sorted
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
)
Index("ix_study_started", study.c.started_low, study.c.started_high)
Index("ix_study_last_updated", study.c.last_updated)
Index("ix_study_accession", study.c.AccessionNumber)
Index("ix_study_study_id", study.c.StudyID)  # identifier= also matches Study ID

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("SeriesInstanceUID", String(64), nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("study.pk"), nullable=False, index=True),
    Column("Modality", Text, nullable=False),
    Column("SeriesNumber", Text, nullable=False),
    Column("SeriesDescription", Text, nullable=False),
    Column("BodyPartExamined", Text, nullable=False),
    Column("Laterality", Text, nullable=False),
    Column("SeriesDate", Text, nullable=False),
    Column("SeriesTime", Text, nullable=False),
    Column("PerformingPhysicianName", Text, nullable=False),  # JSON list of PN
    Column("OperatorsName", Text, nullable=False),  # JSON list of PN
    Column("number_of_instances", Integer, nullable=False),
)
Index("ix_series_modality", series.c.Modality)
Index("ix_series_body_part", series.c.BodyPartExamined)

instance = Table(
    "instance",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("SOPInstanceUID", String(64), nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.pk"), nullable=False, index=True),
    Column("SOPClassUID", Text, nullable=False, index=True),
    Column("InstanceNumber", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("TransferSyntaxUID", Text, nullable=False),
    Column("NumberOfFrames", Integer, nullable=False),
    # Image Pixel attributes (QIDO-RS instance defaults); 0: the file has none; NULL: not
    # indexed yet (an instance indexed before revision 0008)
    Column("Rows", Integer, nullable=True),
    Column("Columns", Integer, nullable=True),
    Column("BitsAllocated", Integer, nullable=True),
    Column("blob", Text, nullable=False),  # path relative to the blob root; "": remote
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("stored_at", BigInteger, nullable=False),
    # the upstream PACS holding an instance known here only from its answers (blob "",
    # size 0, sha256 the digest of the answer); None: the instance is stored here
    Column("upstream", String(64), nullable=True),
)

# Multi-valued study-level codes, one row a code, for token search (param: "reason").
study_code = Table(
    "study_code",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("study.pk", ondelete="CASCADE"), nullable=False),
    Column("param", String(32), nullable=False),
    Column("system", Text, nullable=False),
    Column("code", Text, nullable=False),
)
Index("ix_study_code_lookup", study_code.c.param, study_code.c.code)
Index("ix_study_code_study", study_code.c.study_pk)

# One row: a number every write transaction increments, so that what is derived from the
# index (match counts, see index.counts) can be remembered until the index changes.
index_state = Table(
    "index_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

# The audit log (index.audit): one row a request to a route that needs a token, allowed
# or refused. Search parameter NAMES only, never their values (values may be PHI).
audit_event = Table(
    "audit_event",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("recorded", BigInteger, nullable=False),  # microseconds since the epoch, UTC
    Column("subject", Text, nullable=True),  # the token's subject (None: no caller known)
    Column("client_id", Text, nullable=True),
    Column("fhir_user", Text, nullable=True),
    Column("token_patient", String(64), nullable=True),  # the SMART launch patient
    Column("patient", String(64), nullable=True),  # the patient the path names
    Column("study_uid", String(64), nullable=True),  # the study the path names
    Column("address", Text, nullable=True),  # the client's network address
    Column("method", String(8), nullable=False),
    Column("route", Text, nullable=False),  # the route's path template, never the path
    Column("action", String(1), nullable=False),  # AuditEvent.action: C, R, U, D or E
    Column("outcome", Integer, nullable=False),  # AuditEvent.outcome: 0, 4 or 8
    Column("status", Integer, nullable=False),  # the HTTP status answered
    Column("query_names", Text, nullable=False),  # "&"-joined parameter names, no values
)
Index("ix_audit_event_recorded", audit_event.c.recorded)
Index("ix_audit_event_subject", audit_event.c.subject)
Index("ix_audit_event_client_id", audit_event.c.client_id)
Index("ix_audit_event_patient", audit_event.c.patient)
Index("ix_audit_event_token_patient", audit_event.c.token_patient)
Index("ix_audit_event_study_uid", audit_event.c.study_uid)

# Upstream work (index.jobs): one row per distinct piece of work (``key``), shared by the
# requests and the processes that ask for it. Times in microseconds since the epoch.
job = Table(
    "job",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # JSON: what the work needs
    Column("state", String(8), nullable=False),  # queued, running, done, failed
    Column("owner", String(64), nullable=True),  # the worker running it
    Column("attempts", Integer, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("started", BigInteger, nullable=True),
    Column("heartbeat", BigInteger, nullable=True),  # a running job's last sign of life
    Column("finished", BigInteger, nullable=True),
    Column("expires", BigInteger, nullable=True),  # a done job's result holds until then
    Column("result", Text, nullable=True),  # JSON
    Column("error", Text, nullable=True),
)
Index("ix_job_state", job.c.state, job.c.pk)
Index("ix_job_kind_finished", job.c.kind, job.c.finished)
