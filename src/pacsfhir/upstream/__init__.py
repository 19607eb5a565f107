"""Remote PACS: their configuration (``config``), DICOMweb (httpx) and DIMSE
(pynetdicom) clients, and what checks them (``check``)."""
