"""Synthetic data: the generated rare-disease cohort (:mod:`.cohort`: FHIR Bundles, DICOM, VCF with known
causal genes) used by ``raretarget demo``, the tests and the benchmarks. Not imported by the library itself."""
