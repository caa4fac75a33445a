"""The public entry point: ``Engine.open(store)`` → ingest, SQL, status (later: train, index, search, rank)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pyarrow as pa

from . import schema as S
from .pseudo import Pseudonymizer
from .store import Store

log = logging.getLogger("raretarget")


@dataclass
class IngestReport:
    """What one ``Engine.ingest`` call did.

    ``accepted``: rows added per table (after de-duplication against the store).
    ``quarantined``: number of rejected records/files; ``quarantine`` has (file, record, reason) each.
    ``records``: input records read, ``ignored``: valid records of resource types raretarget does not
    store (by type), ``duplicates``: rows already in the store. For every file
    ``records == accepted records + ignored + quarantined``.
    """

    accepted: dict[str, int] = field(default_factory=dict)
    quarantine: list = field(default_factory=list)
    records: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    files: int = 0
    files_already_ingested: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0

    @property
    def quarantined(self) -> int:
        return len(self.quarantine)

    def summary(self) -> str:
        acc = ", ".join(f"{k}={v}" for k, v in sorted(self.accepted.items()) if v) or "none"
        ign = sum(self.ignored.values())
        return (f"{self.files} file(s) read ({self.files_already_ingested} already ingested), "
                f"{self.records} record(s): rows accepted {acc}; {ign} ignored (unsupported types); "
                f"{self.duplicates} duplicate row(s) skipped; {self.quarantined} quarantined")


class Engine:
    """One store, opened for ingest, SQL and (in later stages) training, indexing and ranking.

    No hydra needed: configuration is plain keyword arguments.
    """

    def __init__(self, store: Store):
        self.store = store
        self._pseudo: Pseudonymizer | None = None
        from raretarget.ingest.core import Resources

        self.resources = Resources()
        self._phi_cache: dict[str, list[str]] | None = None
        self._alias_cache: dict[str, str] | None = None
        self._id_cache: dict[str, set[int]] = {}       # record_ids per table, loaded on first dedupe

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = False, links: str | os.PathLike | None = None) -> "Engine":
        """Open (or with ``create=True`` make) a store. ``links``: the secure link folder
        (default: the sibling ``<store>.links``)."""
        return cls(Store.open(path, create=create, links=links))

    @property
    def pseudo(self) -> Pseudonymizer:
        if self._pseudo is None:
            self._pseudo = Pseudonymizer(self.store.key())
        return self._pseudo

    # ---- ingest ----------------------------------------------------------------------------------
    def ingest(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *, batch_files: int = 64,
               batch_records: int = 200_000, fhir_validate: str = "none",
               progress: bool | Callable[[int, int], None] = False) -> IngestReport:
        """Ingest files or folders (FHIR Bundles/NDJSON, DICOM, VCF/BCF, any mix; gzip ok).

        Files are committed in batches (``batch_files`` files or about ``batch_records`` records),
        each batch atomically. A file whose content was already ingested is skipped, so re-running
        after a crash completes the store without duplicates. Bad records are quarantined, never fatal.
        ``fhir_validate="full"`` also validates each stored FHIR resource with the fhir.resources R4B
        models (about 10x slower; failures are quarantined).
        """
        if fhir_validate not in ("none", "full"):
            raise ValueError("fhir_validate must be 'none' or 'full'")
        self._options = {"fhir_validate": fhir_validate}
        from raretarget.ingest.core import discover, sha256_file

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        inputs, skipped = discover(paths)
        report = IngestReport(skipped_files=skipped)
        pseudo = self.pseudo
        bar = _progress(progress, len(inputs))
        with self.store.writer():
            done = set(self.store.read("ingested", ["file_ref"]).column("file_ref").to_pylist())
            pending: list[tuple] = []
            size = 0
            for inp in inputs:
                digest = sha256_file(inp.path)
                fref = pseudo.file(digest)
                if fref in done:
                    report.files_already_ingested += 1
                    bar(1)
                    continue
                done.add(fref)
                pending.append((inp, digest, fref))
                size += inp.path.stat().st_size
                if len(pending) >= batch_files or size >= batch_records * 500:
                    self._ingest_batch(pending, report, bar)
                    pending, size = [], 0
            if pending:
                self._ingest_batch(pending, report, bar)
        bar(0, close=True)
        return report

    def _ingest_batch(self, files, report: IngestReport, bar) -> None:
        from raretarget.ingest import readers
        from raretarget.ingest.core import BatchState, FileContext

        pseudo = self.pseudo
        batch = BatchState(pseudo, self.resources, self._known_phi)
        batch.study_patient.update(self._known_studies())
        batch.known_alias = self._known_alias()
        batch.options = dict(getattr(self, "_options", {}))
        batch_id = "b" + hashlib.blake2b("|".join(f for _, _, f in files).encode(), digest_size=8).hexdigest()
        ledger = []
        for inp, digest, fref in files:
            ctx = FileContext(batch, inp.path, fref, inp.kind)
            batch.files.append((fref, str(inp.path), digest, inp.kind))
            reader = readers.get(inp.kind)
            try:
                if reader is None:
                    ctx.record()
                    ctx.quarantine("file", "unrecognised file type: not FHIR JSON/NDJSON, DICOM or VCF")
                else:
                    reader(inp.path, ctx)
            except Exception as e:  # one bad file never stops the batch
                ctx.record()
                ctx.quarantine("file" if ctx.records <= 1 else f"after record {ctx.records - 1}",
                               f"{type(e).__name__}: {_clean_reason(e)}")
            accepted = ctx.records - sum(ctx.ignored.values()) - ctx.quarantined
            ledger.append((fref, inp.kind, ctx.records, accepted, sum(ctx.ignored.values()), ctx.quarantined))
            report.records += ctx.records
            for k, v in ctx.ignored.items():
                report.ignored[k] = report.ignored.get(k, 0) + v
            report.files += 1
            bar(1)

        tables: dict[str, pa.Table] = {}
        for name, cols in batch.rows.items():
            t = S.conform(name, cols)
            t = self._dedupe(name, t)
            report.duplicates += batch.nrows[name] - t.num_rows
            tables[name] = t
            report.accepted[name] = report.accepted.get(name, 0) + t.num_rows
        q = batch.quarantine
        tables["quarantine"] = S.conform("quarantine", {
            "record_id": S.record_ids("quarantine", [f"{batch_id}/{i}" for i in range(len(q))]),
            "batch_id": [batch_id] * len(q), "file_ref": [x.file_ref for x in q], "kind": [x.kind for x in q],
            "record": [x.record for x in q], "reason": [x.reason for x in q]})
        tables["ingested"] = S.conform("ingested", {
            "record_id": S.record_ids("ingested", [x[0] for x in ledger]),
            "file_ref": [x[0] for x in ledger], "kind": [x[1] for x in ledger], "batch_id": [batch_id] * len(ledger),
            "records": [x[2] for x in ledger], "accepted": [x[3] for x in ledger],
            "ignored": [x[4] for x in ledger], "quarantined": [x[5] for x in ledger]})
        report.quarantine.extend(q)

        ids = pseudo.drain() + [(pid, value, "alias") for value, pid in batch.alias.items()]
        links = {
            "ids": pa.table({"pseudo": [i[0] for i in ids], "original": [i[1] for i in ids], "kind": [i[2] for i in ids]},
                            schema=S.LINK_TABLES["ids"]),
            "files": pa.table({"file_ref": [f[0] for f in batch.files], "path": [f[1] for f in batch.files],
                               "sha256": [f[2] for f in batch.files], "kind": [f[3] for f in batch.files]},
                              schema=S.LINK_TABLES["files"]),
            "quarantine": pa.table({"file_ref": [x.file_ref for x in q], "path": [x.file for x in q],
                                    "record": [x.record for x in q], "reason": [x.reason for x in q],
                                    "raw": batch.raw}, schema=S.LINK_TABLES["quarantine"]),
            "phi": pa.table({"patient_id": list(batch.phi_terms), "terms": list(batch.phi_terms.values())},
                            schema=S.LINK_TABLES["phi"]),
        }
        self.store.commit(batch_id, tables, links)
        if self._phi_cache is not None:
            self._phi_cache.update(batch.phi_terms)
        if self._alias_cache is not None:
            self._alias_cache.update(batch.alias)
        for name, t in tables.items():
            if name in self._id_cache:
                self._id_cache[name].update(t.column("record_id").to_pylist())
        report.batches += 1

    def _dedupe(self, name: str, t: pa.Table) -> pa.Table:
        """Drop rows whose record_id is already in the store or earlier in the same batch."""
        import numpy as np

        cache = self._id_cache
        if name not in cache:
            cache[name] = set(self.store.read(name, ["record_id"]).column("record_id").to_pylist())
        existing = cache[name]
        ids = t.column("record_id").to_numpy()
        keep = np.ones(len(ids), dtype=bool)
        seen: set[int] = set()
        for i, rid in enumerate(ids.tolist()):
            if rid in existing or rid in seen:
                keep[i] = False
            seen.add(rid)
        return t if keep.all() else t.filter(pa.array(keep))

    def _known_phi(self, patient_id: str) -> list[str] | None:
        if self._phi_cache is None:
            t = self.store.read_links("phi")
            self._phi_cache = dict(zip(t.column("patient_id").to_pylist(), t.column("terms").to_pylist()))
        return self._phi_cache.get(patient_id)

    def _known_alias(self) -> dict[str, str]:
        if self._alias_cache is None:
            t = self.store.read_links("ids")
            self._alias_cache = {o: p for p, o, k in zip(t.column("pseudo").to_pylist(), t.column("original").to_pylist(),
                                                          t.column("kind").to_pylist()) if k == "alias"}
        return self._alias_cache

    def _known_studies(self) -> dict[str, str]:
        t = self.store.read("imaging_studies", ["study_uid", "patient_id"])
        return dict(zip(t.column("study_uid").to_pylist(), t.column("patient_id").to_pylist()))

    # ---- SQL / status ----------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence | None = None) -> pa.Table:
        """Run DuckDB SQL over the store's committed Parquet; one view per table. Returns a pyarrow Table."""
        con = self.store.duckdb()
        try:
            # con.sql(...).to_arrow_table() works on duckdb 1.x and 2.x (2.x dropped fetch_arrow_table)
            rel = con.sql(query, params=params) if params is not None else con.sql(query)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        finally:
            con.close()

    def status(self) -> dict:
        """``{"tables": {name: rows}, "quarantined": n, "embeddings": {modality: n}, "index": {...}}``."""
        self.store.manifest(refresh=True)
        tables = {name: self.store.count(name) for name in S.DATA_TABLES}
        return {
            "tables": tables,
            "quarantined": self.store.count("quarantine"),
            "files": self.store.count("ingested"),
            "embeddings": {},
            "index": {"generation": None, "count": 0},
            "version": self.store.manifest().get("version", 0),
        }

    def quarantine(self, reveal: bool = False) -> pa.Table:
        """Quarantined records with reasons. ``reveal=True`` adds real paths from the link folder."""
        q = self.store.read("quarantine")
        if not reveal:
            return q
        files = self.store.read_links("files")
        paths = dict(zip(files.column("file_ref").to_pylist(), files.column("path").to_pylist()))
        return q.append_column("path", pa.array([paths.get(f) for f in q.column("file_ref").to_pylist()], pa.string()))


def _clean_reason(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return msg[:300]


def _progress(progress, total: int):
    """A callable bar(n, close=False). progress=True uses rich; a callable gets (done, total)."""
    if callable(progress) and not isinstance(progress, bool):
        state = {"n": 0}

        def cb(n, close=False):
            state["n"] += n
            progress(state["n"], total)
        return cb
    if not progress:
        return lambda n, close=False: None
    from rich.progress import Progress

    p = Progress(transient=False)
    p.start()
    task = p.add_task("ingest", total=total)

    def bar(n, close=False):
        p.advance(task, n)
        if close:
            p.stop()
    return bar
