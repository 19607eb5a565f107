"""The DICOM and FHIR vocabulary the index and the mapping share (pure: no I/O).

Levels, tags, VRs and keywords; person names; DICOM and FHIR dates; code systems and
tables; resource ids and identifier systems; the plain records the index hands to the
mapping. Nothing here imports another part of pacsfhir.
"""
