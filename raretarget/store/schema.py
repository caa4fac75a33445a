"""The store's tables: one documented schema module for every record that flows through raretarget.

Conventions (all tables)
------------------------
* ``record_id`` – stable ``int64`` id of a row, derived from the table name and the row's
  pseudonymous ``source_ref`` (:func:`record_ids`). Never a row number: re-ingesting the same
  source record gives the same id, which is how duplicates are refused.
* ``patient_id`` – keyed pseudonym of the source patient identifier (``pt-`` + 16 hex digits).
  The same person gets the same pseudonym from FHIR ``Patient.id``, DICOM ``PatientID`` and a VCF
  sample name when they carry the same identifier.
* ``source_ref`` – pseudonymous provenance, ``<kind>:<file_ref>/<locator>``: ``file_ref`` is a keyed
  hash of the source file's content and ``locator`` a pseudonymised resource id, SOP instance UID
  or VCF position. The link table that turns it back into a real path and id lives outside the
  store folder (``<store>.links/``), so the store folder alone can be shared.
* Dates/times are ``timestamp[s, UTC]`` **shifted** by a per-patient offset of whole days
  (intervals within a patient are kept; calendar dates are not).
* Vectors are ``fixed_size_list<float32>[D]``, L2-normalised.

Coordinates: ``variants.pos`` is the VCF ``POS``, **1-based**, on the contig named in ``chrom``
(``chr`` prefix removed, ``chrM`` → ``MT``).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa

from raretarget.vocab.refs import gene_ref, patient_ref

TS = pa.timestamp("s", tz="UTC")

#: first-order pixel features stored in ``images.features`` (after rescale slope/intercept)
IMAGE_FEATURES: tuple[str, ...] = ("mean", "std", "min", "max", "p05", "p50", "p95", "entropy")
#: side of the square uint8 thumbnail stored in ``images.thumbnail`` (row-major)
THUMB_SIZE = 64

_COMMON = [pa.field("record_id", pa.int64(), nullable=False), pa.field("patient_id", pa.string())]

TABLES: dict[str, pa.Schema] = {
    "patients": pa.schema(_COMMON + [
        pa.field("sex", pa.string()),             # FHIR administrative gender: male|female|other|unknown
        pa.field("birth_year", pa.int16()),       # year only (HIPAA safe harbour); null when age > 89
        pa.field("deceased", pa.bool_()),
        pa.field("source_ref", pa.string()),
    ]),
    "conditions": pa.schema(_COMMON + [
        pa.field("system", pa.string()),          # source coding system URI (e.g. http://snomed.info/sct)
        pa.field("code", pa.string()),
        pa.field("display", pa.string()),
        pa.field("hpo_id", pa.string()),          # HP:nnnnnnn mapped via hp.obo xrefs or exact label; null if none
        pa.field("hpo_match", pa.string()),       # how hpo_id was found: source|xref|label
        pa.field("clinical_status", pa.string()),
        pa.field("onset", TS),
        pa.field("abatement", TS),
        pa.field("source_ref", pa.string()),
    ]),
    "observations": pa.schema(_COMMON + [
        pa.field("loinc", pa.string()),
        pa.field("display", pa.string()),
        pa.field("category", pa.string()),
        pa.field("value", pa.float64()),          # in `unit` (canonical UCUM for the LOINC code)
        pa.field("unit", pa.string()),            # canonical UCUM unit; null when not convertible
        pa.field("original_value", pa.float64()),
        pa.field("original_unit", pa.string()),
        pa.field("unit_status", pa.string()),     # canonical|converted|no_canonical|unknown_unit|incompatible|no_unit
        pa.field("value_text", pa.string()),      # valueString / valueCodeableConcept display
        pa.field("effective", TS),
        pa.field("source_ref", pa.string()),
    ]),
    "notes": pa.schema(_COMMON + [
        pa.field("kind", pa.string()),            # document type display (e.g. "History and physical note")
        pa.field("text", pa.string()),            # de-identified text
        pa.field("date", TS),
        pa.field("source_ref", pa.string()),
    ]),
    "images": pa.schema(_COMMON + [
        pa.field("modality", pa.string()),
        pa.field("body_part", pa.string()),
        pa.field("study_uid", pa.string()),       # pseudonymised UIDs (2.25.<int>), same mapping as FHIR ImagingStudy
        pa.field("series_uid", pa.string()),
        pa.field("instance_uid", pa.string()),
        pa.field("rows", pa.int32()),
        pa.field("columns", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("pixel_spacing", pa.list_(pa.float32())),   # mm, [row, column]
        pa.field("transfer_syntax", pa.string()),
        pa.field("decode_status", pa.string()),   # ok|no_pixels|unsupported_compression:<name>|error:<reason>
        pa.field("features", pa.list_(pa.float32(), len(IMAGE_FEATURES))),  # see IMAGE_FEATURES; null if not decoded
        pa.field("thumbnail", pa.list_(pa.uint8(), THUMB_SIZE * THUMB_SIZE)),  # windowed, resized middle frame
        pa.field("acquired", TS),
        pa.field("source_ref", pa.string()),
        pa.field("patient_link", pa.string()),    # how patient_id was found: imaging_study|patient_id|none (flag)
    ]),
    "imaging_studies": pa.schema(_COMMON + [
        pa.field("study_uid", pa.string()),
        pa.field("series_uid", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("body_part", pa.string()),
        pa.field("instance_uids", pa.list_(pa.string())),
        pa.field("started", TS),
        pa.field("source_ref", pa.string()),
    ]),
    "variants": pa.schema(_COMMON + [
        pa.field("chrom", pa.string()),           # no "chr" prefix; MT for mitochondria
        pa.field("pos", pa.int64()),              # VCF POS, 1-based
        pa.field("ref", pa.string()),
        pa.field("alt", pa.string()),             # one alt allele per row (multi-allelic sites split)
        pa.field("gene", pa.string()),            # approved symbol after normalisation
        pa.field("gene_raw", pa.string()),        # symbol as annotated
        pa.field("gene_status", pa.string()),     # approved|previous|alias|ambiguous|unknown|missing
        pa.field("consequence", pa.string()),     # most severe SO term for this allele (VEP CSQ / snpEff ANN)
        pa.field("impact", pa.string()),          # HIGH|MODERATE|LOW|MODIFIER
        pa.field("hgvsc", pa.string()),
        pa.field("hgvsp", pa.string()),
        pa.field("clinvar", pa.string()),         # CLNSIG, lower-case, '_' separated (e.g. likely_pathogenic)
        pa.field("af", pa.float32()),             # population allele frequency when annotated
        # in-silico predictions of the picked CSQ entry when VEP plugins / dbNSFP annotated them (else null;
        # stores written before these columns read them as null): REVEL 0-1, CADD PHRED, SpliceAI max delta 0-1
        pa.field("revel", pa.float32()),
        pa.field("cadd_phred", pa.float32()),
        pa.field("spliceai", pa.float32()),
        pa.field("zygosity", pa.string()),        # het|hom_alt|hemi; null for sites-only files
        pa.field("qual", pa.float32()),
        pa.field("filter", pa.string()),
        pa.field("source_ref", pa.string()),
    ]),
    "medications": pa.schema(_COMMON + [
        pa.field("system", pa.string()), pa.field("code", pa.string()), pa.field("display", pa.string()),
        pa.field("status", pa.string()), pa.field("authored", TS), pa.field("source_ref", pa.string()),
    ]),
    "procedures": pa.schema(_COMMON + [
        pa.field("system", pa.string()), pa.field("code", pa.string()), pa.field("display", pa.string()),
        pa.field("performed", TS), pa.field("source_ref", pa.string()),
    ]),
    "reports": pa.schema(_COMMON + [
        pa.field("system", pa.string()), pa.field("code", pa.string()), pa.field("display", pa.string()),
        pa.field("conclusion", pa.string()), pa.field("n_results", pa.int32()),
        pa.field("effective", TS), pa.field("source_ref", pa.string()),
    ]),
    # bookkeeping (pseudonymous: no file names, no raw records)
    "quarantine": pa.schema([
        pa.field("record_id", pa.int64(), nullable=False),
        pa.field("batch_id", pa.string()),
        pa.field("file_ref", pa.string()),
        pa.field("kind", pa.string()),            # input kind (fhir|dicom|vcf|unknown)
        pa.field("record", pa.string()),          # locator inside the file: "line 12", "entry 3", "file"
        pa.field("reason", pa.string()),          # "code: fixed message [field] (detail)": never the bad value
        pa.field("code", pa.string()),            # reason code (raretarget.ingest.reasons.REASONS)
        pa.field("field", pa.string()),           # field path in the record, e.g. Observation.valueQuantity.value
    ]),
    "ingested": pa.schema([
        pa.field("record_id", pa.int64(), nullable=False),
        pa.field("file_ref", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("records", pa.int64()),          # records read from the file
        pa.field("accepted", pa.int64()),
        pa.field("ignored", pa.int64()),          # valid records of types raretarget does not store
        pa.field("quarantined", pa.int64()),
        pa.field("conflicts", pa.int64()),        # same resource id met earlier in the ingest, other content
    ]),
    # rows hidden from every read: superseded by a newer version of the same record (``reason``
    # "update") or removed by a FHIR delete ("delete"). A row is identified by its table, its
    # record_id and the part (batch) that holds it, so the newer version of an updated record, which
    # has the same record_id in a later part, stays visible.
    "deleted": pa.schema([
        pa.field("record_id", pa.int64(), nullable=False),   # id of this entry: hash(table|target|part)
        pa.field("table_name", pa.string()),
        pa.field("target_id", pa.int64()),        # record_id of the hidden row
        pa.field("part", pa.string()),            # batch id of the part that holds the hidden row
        pa.field("patient_id", pa.string()),      # the hidden row's patient (what a nightly re-embeds)
        pa.field("reason", pa.string()),          # update|delete
        pa.field("batch_id", pa.string()),        # the batch that hid it
    ]),
}

#: tables holding patient data (the rest is bookkeeping)
DATA_TABLES = tuple(t for t in TABLES if t not in ("quarantine", "ingested", "deleted"))

# Link tables live in <store>.links/, never in the store folder: they map pseudonyms back.
LINK_TABLES: dict[str, pa.Schema] = {
    "ids": pa.schema([pa.field("pseudo", pa.string()), pa.field("original", pa.string()),
                      pa.field("kind", pa.string())]),
    "files": pa.schema([pa.field("file_ref", pa.string()), pa.field("path", pa.string()),
                        pa.field("sha256", pa.string()), pa.field("kind", pa.string())]),
    "quarantine": pa.schema([pa.field("file_ref", pa.string()), pa.field("path", pa.string()),
                             pa.field("record", pa.string()), pa.field("reason", pa.string()),
                             pa.field("raw", pa.string())]),
    # identifiers of each patient, used to scrub notes that arrive in later batches
    "phi": pa.schema([pa.field("patient_id", pa.string()), pa.field("terms", pa.list_(pa.string()))]),
}


def record_ids(table: str, source_refs: Iterable[str]) -> np.ndarray:
    """Stable non-negative int64 ids: blake2b(table + '|' + source_ref), 8 bytes, sign bit cleared.

    Non-negative because FAISS and most vector stores reserve -1 (and often all negatives) for
    "no result". 63 bits keep collisions negligible (~1e-7 at 1e6 rows per table)."""
    out = []
    prefix = table.encode() + b"|"
    for ref in source_refs:
        out.append(hashlib.blake2b(prefix + ref.encode(), digest_size=8).digest())
    if not out:
        return np.zeros(0, dtype=np.int64)
    return np.frombuffer(b"".join(out), dtype="<i8") & np.int64(0x7FFFFFFFFFFFFFFF)


def conform(table: str, data: Mapping[str, list] | pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """Build a table with exactly ``TABLES[table]``'s columns from column lists or another table.

    Missing columns become nulls; ``record_id`` is computed from ``source_ref`` when absent.
    Raises ``KeyError`` on a column the schema does not know, so typos fail loudly.
    """
    schema = schema if schema is not None else TABLES[table]
    if isinstance(data, pa.Table):
        cols = {name: data.column(name) for name in data.column_names}
        n = data.num_rows
    else:
        cols = dict(data)
        n = len(next(iter(cols.values()))) if cols else 0
    unknown = set(cols) - set(schema.names)
    if unknown:
        raise KeyError(f"{table}: unknown column(s) {sorted(unknown)}")
    if "record_id" not in cols and "record_id" in schema.names:
        refs = cols.get("source_ref")
        if refs is None:
            raise KeyError(f"{table}: needs record_id or source_ref")
        refs = refs.to_pylist() if isinstance(refs, (pa.Array, pa.ChunkedArray)) else refs
        cols["record_id"] = record_ids(table, refs)
    arrays = []
    for f in schema:
        v = cols.get(f.name)
        if v is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(v, (pa.Array, pa.ChunkedArray)):
            arrays.append(v.cast(f.type))
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def content_hashes(t: pa.Table) -> list[str]:
    """Per-row hash of a data table's content: every column except ``record_id`` and ``source_ref``
    (which names the file the row came from). Same record_id + same hash = a duplicate; same record_id
    + another hash = an updated version of the record."""
    cols = [c for c in t.column_names if c not in ("record_id", "source_ref")]
    if t.num_rows == 0:
        return []
    sub = t.select(cols)
    out = []
    for row in zip(*(sub.column(c).to_pylist() for c in cols)):
        out.append(hashlib.blake2b(repr(row).encode(), digest_size=12).hexdigest())
    return out


def empty(table: str) -> pa.Table:
    return TABLES[table].empty_table()


# ---- embeddings (written by raretarget.encoders.pipeline, read by index and query) --------------
#: one row per embedded record. ``record_id`` is the embedded row's record_id (note, image) or, for
#: per-patient modalities (labs, variants, patient), ``patient_record_id(patient_id)``; genes use
#: ``gene_record_id(symbol)``. ``vector`` is fixed_size_list<float32>[D], L2-normalised by the encoder.
EMBEDDINGS = pa.schema([
    pa.field("record_id", pa.int64(), nullable=False),
    pa.field("patient_id", pa.string()),
    pa.field("modality", pa.string()),
    pa.field("source_ref", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("vector", pa.list_(pa.float32(), 1)),   # placeholder width; real width set per model
])


#: tombstones of a delta embedding file (index/embedding_delta.py): ids removed from the earlier layers
EMBEDDING_TOMBSTONES = pa.schema([pa.field("record_id", pa.int64(), nullable=False)])


def embeddings_schema(dim: int) -> pa.Schema:
    return EMBEDDINGS.set(EMBEDDINGS.get_field_index("vector"), pa.field("vector", pa.list_(pa.float32(), dim)))


def patient_record_id(patient_id: str) -> int:
    return int(record_ids("patients", [patient_ref(patient_id)])[0])


def gene_record_id(symbol: str) -> int:
    return int(record_ids("genes", [gene_ref(symbol)])[0])


def conform_embeddings(t: pa.Table, atol: float = 1e-3) -> pa.Table:
    """Check/cast an embeddings table: vector must be fixed-size float32 and unit-norm (within atol)."""
    vt = t.schema.field("vector").type
    if not pa.types.is_fixed_size_list(vt):
        raise TypeError("embeddings.vector must be fixed_size_list<float32>[D]")
    dim = vt.list_size
    out = conform("embeddings", t, schema=embeddings_schema(dim))
    vals = out.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    if len(vals):
        norms = np.linalg.norm(vals.astype(np.float64), axis=1)
        if not np.allclose(norms, 1.0, atol=atol):
            raise ValueError("embedding vectors must be L2-normalised (encoders normalise in one place)")
    return out
