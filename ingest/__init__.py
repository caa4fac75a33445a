"""raretarget.ingest: FHIR R4 (Bundles, Bulk NDJSON), DICOM and VCF/BCF readers into the store's tables.

Readers register by input kind in :data:`readers` and are imported lazily (pydicom/cyvcf2 load only
when such a file is met). Readers emit rows; one ingest call (:func:`raretarget.ingest.pipeline.run_ingest`) hands
each batch to the store writer (:class:`raretarget.store.writer.StoreWriter`), which alone commits.
"""

from __future__ import annotations

import importlib
from typing import Callable


class _Readers:
    """kind -> reader function ``read(path, ctx)``; modules import on first use."""

    _spec = {
        "fhir": ("raretarget.ingest.fhir", "read_fhir"),
        "dicom": ("raretarget.ingest.dicom", "read_dicom"),
        "vcf": ("raretarget.ingest.vcf", "read_vcf"),
    }

    def __init__(self):
        self._loaded: dict[str, Callable] = {}

    def register(self, kind: str, module: str, func: str) -> None:
        self._spec = {**self._spec, kind: (module, func)}
        self._loaded.pop(kind, None)

    def get(self, kind: str) -> Callable | None:
        if kind not in self._spec:
            return None
        if kind not in self._loaded:
            mod, fn = self._spec[kind]
            self._loaded[kind] = getattr(importlib.import_module(mod), fn)
        return self._loaded[kind]


readers = _Readers()
