"""Ingest plumbing shared by the FHIR, DICOM and VCF readers.

A reader is a function ``read(path: Path, ctx: FileContext) -> None``. It calls

* ``ctx.record()`` once for every input record it reads (a resource, an image, a VCF line),
* ``ctx.emit(table, row)`` (a dict) or ``ctx.emit_columns(table, {col: list}, records=n)`` for accepted rows
  (a record with at least one row, or a delete, counts as accepted),
* ``ctx.ignore(kind)`` for a valid record of a type raretarget does not store,
* ``ctx.quarantine(record, code, raw, field=...)`` for a bad one (then goes on with the next record); the
  code is one of :data:`raretarget.ingest.reasons.REASONS`, the raw record goes to the link folder only,
* ``ctx.conflict(record, raw)`` for a resource id met again in this ingest with other content.

So for each file ``records == accepted + ignored + quarantined + conflicts``, every term counted from
what the reader did (nothing by subtraction; a shortfall is quarantined as ``unaccounted``) and nothing is
dropped silently. A reader that raises is caught by the runner: the exception becomes one quarantine
entry for the rest of the file (what was emitted before it is kept).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from raretarget.store.pseudo import Pseudonymizer

log = logging.getLogger("raretarget")

#: cap on raw bytes kept per quarantined record (on the secure side)
MAX_RAW = 65536
#: cap on raw bytes kept per file: a file of junk is not copied into the link folder (later entries keep
#: their code, locator and field, with an empty raw)
MAX_RAW_PER_FILE = 4 << 20
#: a file at least this large is read by the committing process and committed in parts of
#: ``chunk_records`` records (``Engine.ingest``): memory is bounded by the part, not by the file
LARGE_FILE = 32 << 20


@dataclass
class QuarantineItem:
    file: str        # real path (in memory and on the secure side only)
    file_ref: str    # pseudonymous file reference (what the store and printed summaries show)
    record: str      # locator inside the file ("line 12", "entry 3", "file"; never a value)
    reason: str      # ``code: fixed message [field] (detail)``: never the offending value
    kind: str
    code: str = ""   # one of raretarget.ingest.reasons.REASONS
    field: str | None = None   # where in the record (e.g. Observation.valueQuantity.value)
    seq: int = 0               # position among its file's entries (the entry's id comes from file + seq)

    def __str__(self) -> str:
        return f"{self.file_ref} [{self.record}]: {self.reason}"


_FIELD_OK = re.compile(r"[^A-Za-z0-9_.\[\]#:/-]")


def _safe_field(field: str | None) -> str | None:
    """Field paths are built by the readers; still, keep only path characters (never free text)."""
    return _FIELD_OK.sub("", str(field))[:80] or None if field else None


class BatchState:
    """What the files of one batch share: buffers, link records, cross-file lookups."""

    def __init__(self, pseudo: Pseudonymizer, resources: "Resources", known_phi: Callable[[str], Any]):
        self.pseudo = pseudo
        self.res = resources
        self.rows: dict[str, dict[str, list]] = defaultdict(dict)
        self.nrows: Counter = Counter()
        self.quarantine: list[QuarantineItem] = []
        self.raw: list[str] = []
        self.files: list[tuple[str, str, str, str]] = []     # file_ref, path, sha256, kind
        self.phi_terms: dict[str, list[str]] = {}           # patient_id -> identifying strings (secure side)
        self.alias: dict[str, str] = {}                     # identifier value (MRN, ...) -> patient_id (this batch)
        self.known_alias: Any = {}                          # same, from earlier batches (writer's DigestMap: .get)
        self.study_patient: dict[str, str] = {}             # pseudonymous study UID -> patient_id (this batch)
        self.known_studies: Any = {}                        # same, from earlier batches (the store; a DigestMap)
        self._known_phi = known_phi
        self.options: dict[str, Any] = {}
        self.deletions: list[tuple[str, str]] = []          # (resource type, pseudonymous resource id)
        #: content hash per pseudonymous resource id met in this ingest (shared by its batches): same id +
        #: other content is a conflict; None turns the check off
        self.seen_resources: dict[int, int] | None = None
        #: rows already converted to Arrow (per table, in input order): files read in parallel workers arrive
        #: as tables; :meth:`seal` turns the column lists read here into one before such a table is appended
        self.segments: dict[str, list] = defaultdict(list)
        #: set by the committer: commits what the batch holds so far (a large file's part)
        self.partial: Callable[[], None] | None = None
        self.chunk_records = 0
        # link records already committed by a part of this batch (the lookups themselves stay until its end)
        self.committed_phi: dict[str, list] = {}
        self.committed_alias: dict[str, str] = {}
        self.committed_files = 0

    def clear_committed(self) -> None:
        """After a commit: drop the rows, quarantine entries and deletes it wrote."""
        self.rows.clear()
        self.nrows.clear()
        self.segments.clear()
        self.quarantine.clear()
        self.raw.clear()
        self.deletions.clear()

    def seal(self) -> None:
        """Move the rows held as column lists into :attr:`segments` (keeps the input order)."""
        from raretarget.store import schema as S

        for name, cols in self.rows.items():
            if self.nrows[name]:
                self.segments[name].append(S.conform(name, cols))
        self.rows.clear()
        self.nrows.clear()

    def add_segment(self, name: str, table) -> None:
        self.seal()
        if table.num_rows:
            self.segments[name].append(table)

    def buffered_rows(self) -> int:
        """Rows held for the next commit (column lists and Arrow segments, every table)."""
        return sum(self.nrows.values()) + sum(t.num_rows for ts in self.segments.values() for t in ts)

    def tables(self) -> dict:
        """Every row of the batch as one conformed table per data table (input order)."""
        import pyarrow as pa

        self.seal()
        return {name: pa.concat_tables(ts).combine_chunks() for name, ts in self.segments.items() if ts}

    def add_alias(self, value: str, patient_id: str) -> None:
        """Register a secondary identifier (MRN, DICOM PatientID, VCF sample name) of a patient."""
        if value and value.strip():
            self.alias[value.strip()] = patient_id

    def patient_for_identifier(self, value: str | None) -> str | None:
        """Patient pseudonym for an identifier met in DICOM ``PatientID`` or a VCF sample name.

        A value registered as an identifier of a FHIR Patient (``Patient.identifier``: MRN ...) links
        to that patient; anything else is taken as the patient id itself and pseudonymised, so the
        same raw id in FHIR, DICOM and VCF gives the same ``patient_id``.
        """
        if value is None or not str(value).strip():
            return None
        v = str(value).strip()
        return self.alias.get(v) or self.known_alias.get(v) or self.pseudo.patient(v)

    def phi_for(self, patient_id: str):
        """Compiled scrub pattern of a patient's identifiers (this batch first, then earlier batches)."""
        from .deid import compile_terms

        terms = self.phi_terms.get(patient_id)
        if terms is None:
            terms = self._known_phi(patient_id)
        return compile_terms(terms or [])

    def study_of(self, study_uid: str) -> str | None:
        """Patient of a pseudonymous study UID (an ImagingStudy met in this batch or an earlier one)."""
        if study_uid in self.study_patient:
            return self.study_patient[study_uid]
        return self.known_studies.get(study_uid)

    def check_resource(self, key: int, content: int) -> bool:
        """True when the pseudonymous resource ``key`` was met earlier in this ingest with other content;
        the first content met is remembered (the same content again is a plain duplicate)."""
        seen = self.seen_resources
        if seen is None:
            return False
        return seen.setdefault(key, content) != content      # one search of the compact map, not two


def read_file(batch: BatchState, path: Path, kind: str, digest: str, file_ref: str) -> tuple:
    """Read one input file into ``batch`` (its rows, quarantine, link records) and account for it.

    Returns the file's ledger entry ``(file_ref, kind, records, accepted, ignored, quarantined, conflicts)``
    and its ignored counts by type. A reader that raises becomes one quarantine entry for the rest of the
    file; a record with no outcome is quarantined as ``unaccounted`` (never dropped silently). The same
    function runs in the ingest process and in parallel workers (:mod:`raretarget.ingest.parallel`).
    """
    from raretarget.ingest import readers

    ctx = FileContext(batch, path, file_ref, kind)
    batch.files.append((file_ref, str(path), digest, kind))
    reader = readers.get(kind)
    try:
        if reader is None:
            ctx.record()
            ctx.quarantine("file", "unrecognised_file_type")
        else:
            reader(path, ctx)
    except Exception as e:  # one bad file never stops the batch
        ctx.record()
        ctx.quarantine("file" if ctx.records <= 1 else f"after record {ctx.records - 1}", "reader_error", detail=e)
    ctx.chunk = 0                   # the file is read: what is left goes with its ledger row
    ignored = sum(ctx.ignored.values())
    gap = ctx.records - ctx.accepted - ignored - ctx.quarantined - ctx.conflicts
    if gap > 0:                     # a record with no outcome is never dropped silently
        ctx.quarantine("file", "unaccounted", detail=gap, n=gap)
    elif gap < 0:
        log.warning("%s: reader counted %d outcome(s) more than records", file_ref, -gap)
        ctx.record(-gap)
    return (file_ref, kind, ctx.records, ctx.accepted, ignored, ctx.quarantined, ctx.conflicts), dict(ctx.ignored)


class FileContext:
    """Per-file view of the batch: counts records and stamps provenance."""

    def __init__(self, batch: BatchState, path: Path, file_ref: str, kind: str):
        self.batch = batch
        self.path = path
        self.file_ref = file_ref
        self.kind = kind
        self.pseudo = batch.pseudo
        self.res = batch.res
        self.records = 0
        self.ignored: Counter = Counter()
        self.quarantined = 0
        self.conflicts = 0
        self.raw_kept = 0                 # raw bytes of this file's quarantined records kept so far
        self.accepted = 0                 # records with at least one row emitted (or a delete applied)
        self._out_at = -1                 # the record number that last produced output
        self.accepted_rows: Counter = Counter()
        self.nq = 0                       # quarantine/conflict entries so far
        self.chunk = 0                    # commit a part every this many records (large files only)
        if batch.partial is not None and batch.chunk_records:
            try:
                if path.stat().st_size >= LARGE_FILE:
                    self.chunk = batch.chunk_records
            except OSError:
                pass
        self._chunk_at = 0

    # provenance ---------------------------------------------------------------------------------
    def ref(self, locator: str) -> str:
        """Pseudonymous source reference ``<kind>:<file_ref>/<locator>`` (locator must be pseudonymous)."""
        return f"{self.kind}:{self.file_ref}/{locator}"

    # accounting ---------------------------------------------------------------------------------
    def record(self, n: int = 1) -> None:
        # a part is committed before the record just counted produces anything (readers call this first, so
        # no record is ever half in one part and half in the next)
        if self.chunk and self.records - self._chunk_at >= self.chunk:
            self._chunk_at = self.records
            self.batch.partial()
        self.records += n

    def ignore(self, what: str, n: int = 1) -> None:
        self.ignored[what] += n

    def _output(self) -> None:
        if self._out_at != self.records:
            self.accepted += 1
            self._out_at = self.records

    def quarantine(self, record: str, code: str, raw: str | bytes | None = None, *, field: str | None = None,
                   detail=None, n: int = 1) -> None:
        """Quarantine a record: ``code`` (:mod:`raretarget.ingest.reasons`) + ``field`` path + ``detail``
        (an exception, shown by type, or a number). ``raw`` goes to the link folder only. ``n``: how many
        records this one entry stands for (e.g. the unread rest of a file)."""
        from .reasons import reason_text

        field = _safe_field(field)
        reason = reason_text(code, field, detail)
        self.quarantined += n
        self._add_item(record, code, field, reason, raw)

    def conflict(self, record: str, raw: str | bytes | None = None, field: str | None = None) -> None:
        """A resource id met again in this ingest with different content: listed in the quarantine
        (code ``conflicting_duplicate``), counted apart from the quarantined records."""
        from .reasons import reason_text

        self.conflicts += 1
        self._add_item(record, "conflicting_duplicate", field, reason_text("conflicting_duplicate", field), raw)

    def _add_item(self, record, code, field, reason, raw) -> None:
        room = min(MAX_RAW, MAX_RAW_PER_FILE - self.raw_kept)
        raw = raw[:max(room, 0)] if raw else None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        self.raw_kept += len(raw or "")
        self.batch.quarantine.append(QuarantineItem(str(self.path), self.file_ref, str(record)[:80], reason,
                                                    self.kind, code, field, self.nq))
        self.nq += 1
        self.batch.raw.append((raw or "")[:MAX_RAW])

    def delete(self, resource_type: str, original_id: str) -> None:
        """A FHIR delete of ``resource_type/original_id``: its rows are hidden when the batch commits."""
        self.batch.deletions.append((resource_type, self.pseudo.resource(resource_type, original_id)))
        self._output()

    # per-record transactions ----------------------------------------------------------------------
    def savepoint(self) -> tuple:
        """State to :meth:`rollback` to when a record fails half-way (its rows must not stay)."""
        b = self.batch
        return (dict(b.nrows), self.accepted, self._out_at, Counter(self.accepted_rows), len(b.deletions))

    def rollback(self, sp: tuple) -> None:
        nrows, self.accepted, self._out_at, self.accepted_rows, ndel = sp
        b = self.batch
        for table, cols in b.rows.items():
            n = nrows.get(table, 0)
            if b.nrows[table] != n:
                for col in cols.values():
                    del col[n:]
                b.nrows[table] = n
        del b.deletions[ndel:]

    def emit(self, table: str, row: dict) -> None:
        b = self.batch
        cols = b.rows[table]
        n = b.nrows[table]
        for k, v in row.items():
            col = cols.get(k)
            if col is None:                      # column first seen now: pad earlier rows
                col = cols[k] = [None] * n
            col.append(v)
        b.nrows[table] = n + 1
        if len(row) != len(cols):
            for col in cols.values():
                if len(col) == n:
                    col.append(None)
        self.accepted_rows[table] += 1
        self._output()

    def emit_columns(self, table: str, columns: dict[str, list], records: int = 0) -> None:
        """Rows in columns; ``records``: how many input records (already counted) they come from."""
        self.accepted += records
        b = self.batch
        cols = b.rows[table]
        n0 = b.nrows[table]
        n = len(next(iter(columns.values()))) if columns else 0
        for k, v in columns.items():
            if len(v) != n:
                raise ValueError(f"emit_columns({table}): column {k} has {len(v)} values, expected {n}")
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * n0
            col.extend(v)
        b.nrows[table] = n0 + n
        for col in cols.values():
            if len(col) == n0:
                col.extend([None] * n)
        self.accepted_rows[table] += n


class Resources:
    """Lazily loaded reference data (unit table, gene table, HPO maps), one per Engine."""

    def __init__(self):
        self._units = None
        self._genes = None
        self._pheno = None
        #: parsed DICOM results by file_ref, so content met twice (folder + DICOMDIR) is decoded once
        self.dicom_cache: dict[str, dict] = {}

    @property
    def units(self):
        if self._units is None:
            from .units import UnitNormalizer
            self._units = UnitNormalizer()
        return self._units

    @property
    def genes(self):
        if self._genes is None:
            from .genes import GeneNormalizer
            self._genes = GeneNormalizer()
        return self._genes

    @property
    def phenotypes(self):
        if self._pheno is None:
            from .phenotypes import PhenotypeMapper
            self._pheno = PhenotypeMapper()
        return self._pheno


# ---- input discovery ---------------------------------------------------------------------------

@dataclass(order=True)
class InputFile:
    order: int
    path: Path = field(compare=True)
    kind: str = field(compare=False, default="unknown")   # fhir|dicom|vcf|unknown
    note: str = field(compare=False, default="")
    #: position among the files the ingest call reads (:class:`Planned`); -1 when not part of a plan
    pos: int = field(compare=False, default=-1)


class InputList:
    """The inputs of one ingest call in input order, held in columns (issue 20): every path in one bytes blob
    with offsets, order and kind as one byte each, and once hashed (:meth:`set_hash`) each file's SHA-256
    (32 bytes) and file reference. About 150 bytes a file; a list of :class:`InputFile` and their ``Path``
    objects took about 1.3 KB a file (~250 MB for the 185k files of 100k generated patients), for the whole
    call. ``inputs[i]`` is an :class:`InputFile` made on demand; iterating gives them in input order."""

    KINDS = ("fhir", "dicom", "vcf", "unknown")

    def __init__(self, paths: list[str], orders: list[int], kinds: list[str]):
        import numpy as np

        n = len(paths)
        blob = bytearray()
        offsets = np.zeros(n + 1, dtype=np.int64)
        for i, p in enumerate(paths):
            blob += os.fsencode(p)               # surrogate escapes (undecodable names) round-trip
            offsets[i + 1] = len(blob)
        self._blob, self._offsets = bytes(blob), offsets
        self._order = np.asarray(orders, dtype=np.int16)
        code = {k: i for i, k in enumerate(self.KINDS)}
        self._kind = np.asarray([code[k] for k in kinds], dtype=np.uint8)
        self._sha = np.zeros((n, 32), dtype=np.uint8)
        self._ref = np.zeros(n, dtype="S13")       # "f" + 12 hex digits (Pseudonymizer.file); widened if longer

    def __len__(self) -> int:
        return len(self._order)

    def path(self, i: int) -> str:
        return os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]])

    def kind(self, i: int) -> str:
        return self.KINDS[self._kind[i]]

    def __getitem__(self, i: int) -> InputFile:
        return InputFile(int(self._order[i]), Path(self.path(i)), self.kind(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def kinds(self) -> list[str]:
        """The kinds of file present (sorted)."""
        import numpy as np

        return sorted(self.KINDS[k] for k in np.unique(self._kind))

    def set_hash(self, i: int, digest: str, fref: str) -> None:
        """Record file ``i``'s SHA-256 (hex) and its pseudonymous reference."""
        self._sha[i] = bytearray.fromhex(digest)
        b = fref.encode()
        if len(b) > self._ref.dtype.itemsize:
            self._ref = self._ref.astype(f"S{len(b)}")
        self._ref[i] = b

    def digest(self, i: int) -> str:
        return self._sha[i].tobytes().hex()

    def ref(self, i: int) -> str:
        return self._ref[i].decode()


class Planned:
    """The files an ingest call reads, in input order: positions into an :class:`InputList` (8 bytes a file).
    Item ``k`` is the tuple ``(InputFile, sha256 hex, file_ref)`` the readers take, made on demand, its
    ``InputFile.pos`` set to ``k``."""

    def __init__(self, inputs: InputList, positions):
        import numpy as np

        self.inputs = inputs
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple:
        i = int(self.positions[k])
        inp = self.inputs[i]
        inp.pos = k
        return inp, self.inputs.digest(i), self.inputs.ref(i)

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def open_text(path: Path):
    """Open a text file, transparently gunzipping; UTF-8 strictly (bad bytes raise)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return open(path, "r", encoding="utf-8", errors="strict")


def _peek(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        head = f.read(max(n, 132))
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                return g.read(n)
        except (OSError, EOFError):
            return b""
    return head


_SKIP_SUFFIXES = (".tbi", ".csi", ".md", ".txt", ".gitkeep")


def classify(path: str | os.PathLike) -> str:
    base = os.path.basename(os.fspath(path))
    name = base.lower()
    for suf in (".gz", ".bgz"):
        if name.endswith(suf):
            name = name[: -len(suf)]
    if name.endswith((".vcf", ".bcf")):
        return "vcf"
    if name.endswith((".ndjson", ".json", ".jsonl")):
        return "fhir"
    if name.endswith((".dcm", ".dicom")) or base.upper() == "DICOMDIR":
        return "dicom"
    head = _peek(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"##fileformat=VCF") or head.startswith(b"BCF"):
        return "vcf"
    if head.lstrip()[:1] == b"{":
        return "fhir"
    return "unknown"


def _fhir_order(name: str) -> int:
    # Patients first so notes in later files can be scrubbed of their names; Bundles carry their own.
    return 0 if name.startswith("Patient") else 1


def _walk(root: str, hidden: bool = False):
    """``(path, hidden)`` of every file under folder ``root``, in the order ``sorted(Path(root).rglob("*"))``
    gives them (each folder's entries by name, a subfolder's files where its name falls), without making a
    ``Path`` per file. As ``rglob``: symlinked files are files, symlinked folders are not entered, an
    unreadable folder is skipped. ``hidden``: a name below ``root`` starts with a dot."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except PermissionError:
        return
    for e in entries:
        h = hidden or e.name.startswith(".")
        # the path as Path(root) / name writes it (under "." just the name; scandir would give "./name")
        path = e.name if root == "." else os.path.join(root, e.name)
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(path, h)
        elif e.is_file():
            yield path, h


def _sort_key(path: str) -> str:
    """A string whose order is the order of ``Path(path)`` (its parts compared in turn): the parts joined by
    NUL, which sorts before any character a name can hold (``path`` as ``str(Path(...))`` writes it)."""
    if path.startswith("//") and not path.startswith("///"):
        root, rest = "//", path[2:]
    elif path.startswith("/"):
        root, rest = "/", path[1:]
    else:
        return path.replace("/", "\0")
    return root + "\0" + rest.replace("/", "\0") if rest else root


def discover(paths, skip: Callable[[Path], bool] | None = None) -> tuple[InputList, list[tuple[str, str]]]:
    """Expand files/folders into ordered inputs: FHIR (Patient files first), then DICOM, then VCF.

    Returns (inputs, skipped) where skipped lists (path, reason) for index/sidecar files that are
    not input records themselves (``.tbi``, ``.csi``, README files, hidden files). ``inputs`` is an
    :class:`InputList` (columns, not an object per file: an ingest of 185k files held ~250 MB of them).
    """
    found: list[str] = []
    keys: list[str] = []          # input order: chr(order) + the path's sort key
    orders: list[int] = []
    kinds: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    rank = {"fhir": 0, "dicom": 2, "vcf": 3, "unknown": 4}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"input path does not exist: {p}")
        files = _walk(str(p)) if p.is_dir() else [(str(p), p.name.startswith("."))]
        for f, hidden in files:
            rp = os.path.realpath(f)           # what Path.resolve() gives
            if rp in seen:
                continue
            seen.add(rp)
            name = os.path.basename(f)
            if hidden or name.lower().endswith(_SKIP_SUFFIXES) \
                    or name.upper().startswith(("LICENSE", "README", "SOURCES", "COPYRIGHT")):
                skipped.append((f, "sidecar/index/hidden file, not an input record"))
                continue
            kind = classify(f)
            order = rank[kind] * 10 + (_fhir_order(name) if kind == "fhir" else 0)
            found.append(f)
            keys.append(chr(order) + _sort_key(f))
            orders.append(order)
            kinds.append(kind)
    del seen
    idx = sorted(range(len(found)), key=keys.__getitem__)
    del keys
    return InputList([found[i] for i in idx], [orders[i] for i in idx], [kinds[i] for i in idx]), skipped


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
