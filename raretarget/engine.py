"""The public entry point: ``Engine.open(store)`` → ingest, SQL, status, train, embed, index, search, rank."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute used in search)

from . import schema as S
from .pseudo import Pseudonymizer
from .store import Store
from .vocab.refs import gene_ref

log = logging.getLogger("raretarget")


@dataclass
class IngestReport:
    """What one ``Engine.ingest`` call did.

    ``accepted``: rows added per table (after de-duplication against the store).
    ``quarantined``: number of rejected records/files; ``quarantine`` has (file, record, reason) each.
    ``records``: input records read, ``ignored``: valid records of resource types raretarget does not
    store (by type), ``duplicates``: rows already in the store or met earlier with the same content,
    ``conflicts``: resources met again in the same ``ingest`` call with the same id and other content (the
    first version is kept, each later one is listed in ``quarantine`` with code ``conflicting_duplicate``).
    For every file ``records == accepted records + ignored + quarantined + conflicts``, each term counted
    from what was written (the ``ingested`` table holds them per file).
    ``updated``: accepted rows that replace an older version of the same record (same record_id,
    other content; included in ``accepted``); ``deleted``: rows removed by FHIR deletes (Bundle
    entries with ``request.method = DELETE`` or Bulk Data ``deleted/`` listings).
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
    updated: int = 0
    deleted: int = 0
    conflicts: int = 0

    @property
    def quarantined(self) -> int:
        return len(self.quarantine) - self.conflicts

    def summary(self) -> str:
        acc = ", ".join(f"{k}={v}" for k, v in sorted(self.accepted.items()) if v) or "none"
        ign = sum(self.ignored.values())
        return (f"{self.files} file(s) read ({self.files_already_ingested} already ingested), "
                f"{self.records} record(s): rows accepted {acc}; {ign} ignored (unsupported types); "
                f"{self.duplicates} duplicate row(s) skipped; {self.quarantined} quarantined"
                + (f"; {self.conflicts} conflicting duplicate(s)" if self.conflicts else "")
                + (f"; {self.updated} updated, {self.deleted} deleted" if self.updated or self.deleted else ""))


class Engine:
    """One store, opened for ingest, SQL, training, embedding, indexing, search and ranking.

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
               batch_records: int = 200_000, fhir_validate: str = "none", workers: int = 1,
               chunk_records: int = 50_000, ray: bool | str = False,
               progress: bool | Callable[[int, int], None] = False) -> IngestReport:
        """Ingest files or folders (FHIR Bundles/NDJSON, DICOM, VCF/BCF, any mix; gzip ok).

        Files are committed in batches (``batch_files`` files or about ``batch_records`` records),
        each batch atomically. A file whose content was already ingested is skipped, so re-running
        after a crash completes the store without duplicates. Bad records are quarantined, never fatal.
        ``fhir_validate="full"`` also validates each stored FHIR resource with the fhir.resources R4B
        models (about 10x slower; failures are quarantined).
        ``workers``: files are parsed and de-identified in that many worker processes
        (:mod:`raretarget.ingest.parallel`) while this process merges them in input order and commits;
        the store is the same as with ``workers=1``.
        ``chunk_records``: a large file (:data:`raretarget.ingest.core.LARGE_FILE`) is read here, streamed,
        and committed every that many records, so memory does not grow with the file.
        ``ray``: read the files in Ray Data actors instead (True: a local Ray or ``RAY_ADDRESS``; a string: that
        cluster's address), merged and committed here the same way (:mod:`raretarget.distributed`).
        """
        if fhir_validate not in ("none", "full"):
            raise ValueError("fhir_validate must be 'none' or 'full'")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError("workers must be an integer >= 1")
        if not isinstance(chunk_records, int) or chunk_records < 1:
            raise ValueError("chunk_records must be an integer >= 1")
        self._options = {"fhir_validate": fhir_validate}
        from raretarget.ingest.core import discover, sha256_file

        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        inputs, skipped = discover(paths)
        report = IngestReport(skipped_files=skipped)
        self._seen_resources: dict[int, int] = {}         # conflicts are found across the batches of this call
        pseudo = self.pseudo
        bar = _progress(progress, len(inputs))
        with self.store.writer():
            # Earlier batches' identifiers, loaded once and then kept current by each commit, so a lookup
            # gives the same answer whichever process made it (and in whatever batch).
            self._known_phi("")
            self._known_alias()
            done = set(self.store.read("ingested", ["file_ref"]).column("file_ref").to_pylist())
            pool = None
            if ray:
                from raretarget.distributed import RayReader

                pool = RayReader(self, kinds=[i.kind for i in inputs], local=_is_large,
                                 address=None if ray is True else ray,
                                 actors=workers if workers > 1 else None)
            elif workers > 1 and len(inputs) > 1:     # started now: they load while the inputs are hashed
                from raretarget.ingest.parallel import ParallelReader

                pool = ParallelReader(self, workers, kinds=[i.kind for i in inputs], local=_is_large)
            try:
                batches: list[list[tuple]] = []
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
                        batches.append(pending)
                        pending, size = [], 0
                if pending:
                    batches.append(pending)
                if pool is not None:
                    pool.plan([f for b in batches for f in b])
                for b in batches:
                    self._ingest_batch(b, report, bar, pool, chunk_records)
            finally:
                if pool is not None:
                    pool.close()
        bar(0, close=True)
        return report

    def _ingest_batch(self, files, report: IngestReport, bar, pool=None, chunk_records: int = 50_000) -> None:
        from raretarget.ingest.core import BatchState, read_file

        pseudo = self.pseudo
        batch = BatchState(pseudo, self.resources, self._known_phi)
        batch.study_patient.update(self._known_studies())
        batch.known_alias = self._known_alias()
        batch.options = dict(getattr(self, "_options", {}))
        batch.seen_resources = getattr(self, "_seen_resources", None)
        batch_id = "b" + hashlib.blake2b("|".join(f for _, _, f in files).encode(), digest_size=8).hexdigest()
        ledger: list[tuple] = []
        chunks = [0]

        def partial() -> None:
            """A large file's rows so far (and the files finished before it) committed as their own part, so
            memory holds at most ``chunk_records`` records of it. The file's ledger row comes with its last
            part: a killed ingest reads the file again, its committed rows are then duplicates and its
            quarantine entries (ids from file and position) are not stored twice."""
            chunks[0] += 1
            self._commit_batch(batch, ledger, f"{batch_id}-{chunks[0]}", report)
            ledger.clear()

        batch.partial = partial
        batch.chunk_records = chunk_records
        for inp, digest, fref in files:
            if pool is not None:            # read by a worker, checked and merged here (or read here)
                entry, ignored = pool.merge(batch, inp, digest, fref)
            else:
                entry, ignored = read_file(batch, inp.path, inp.kind, digest, fref)
            ledger.append(entry)
            report.conflicts += entry[6]
            report.records += entry[2]
            for k, v in ignored.items():
                report.ignored[k] = report.ignored.get(k, 0) + v
            report.files += 1
            bar(1)
        self._commit_batch(batch, ledger, batch_id, report)
        report.batches += 1

    def _commit_batch(self, batch, ledger: list[tuple], batch_id: str, report: IngestReport) -> None:
        """Commit what ``batch`` holds (rows, quarantine, link records not committed yet) and the ledger rows
        of the files in ``ledger``, atomically; then empty the batch's buffers."""
        pseudo = self.pseudo
        tables: dict[str, pa.Table] = {}
        hidden: list[tuple[str, int, str, str | None, str]] = []     # table, record_id, part, patient, reason
        dkeys = {f"{rt}/{rid}" for rt, rid in batch.deletions}
        for name, t in batch.tables().items():
            if dkeys:                                   # deleted in this same batch: never stored
                t = t.filter(pa.array([_resource_key(r) not in dkeys for r in t.column("source_ref").to_pylist()],
                                      pa.bool_()))
            n_in = t.num_rows
            t, upd = self._dedupe(name, t, with_updates=True)
            hidden.extend((name, rid, part, pid, "update") for rid, part, pid in upd)
            report.updated += len(upd)
            report.duplicates += n_in - t.num_rows
            tables[name] = t
            report.accepted[name] = report.accepted.get(name, 0) + t.num_rows
        if dkeys:
            dels = self._deleted_rows(dkeys)
            hidden.extend((name, rid, part, pid, "delete") for name, rid, part, pid in dels)
            report.deleted += len(dels)
        tables["deleted"] = S.conform("deleted", {
            "record_id": S.record_ids("deleted", [f"{h[0]}|{h[1]}|{h[2]}" for h in hidden]),
            "table_name": [h[0] for h in hidden], "target_id": [h[1] for h in hidden], "part": [h[2] for h in hidden],
            "patient_id": [h[3] for h in hidden], "reason": [h[4] for h in hidden], "batch_id": [batch_id] * len(hidden)})
        q, raw = batch.quarantine, batch.raw
        # ids from the file and the entry's position in it: the same entry read again after a crash (a large
        # file committed in parts) has the same id and is not stored twice
        qids = S.record_ids("quarantine", [f"{x.file_ref}/{x.seq}" for x in q])
        if "quarantine" not in self._id_cache:
            self._id_cache["quarantine"] = set(self.store.read("quarantine", ["record_id"])
                                               .column("record_id").to_pylist())
        known_q = self._id_cache["quarantine"]
        if q and any(int(i) in known_q for i in qids):
            keep = [int(i) not in known_q for i in qids]
            q = [x for x, k in zip(q, keep) if k]
            raw = [x for x, k in zip(raw, keep) if k]
            qids = [i for i, k in zip(qids, keep) if k]
        tables["quarantine"] = S.conform("quarantine", {
            "record_id": qids,
            "batch_id": [batch_id] * len(q), "file_ref": [x.file_ref for x in q], "kind": [x.kind for x in q],
            "record": [x.record for x in q], "reason": [x.reason for x in q], "code": [x.code for x in q],
            "field": [x.field for x in q]})
        tables["ingested"] = S.conform("ingested", {
            "record_id": S.record_ids("ingested", [x[0] for x in ledger]),
            "file_ref": [x[0] for x in ledger], "kind": [x[1] for x in ledger], "batch_id": [batch_id] * len(ledger),
            "records": [x[2] for x in ledger], "accepted": [x[3] for x in ledger],
            "ignored": [x[4] for x in ledger], "quarantined": [x[5] for x in ledger],
            "conflicts": [x[6] for x in ledger]})
        report.quarantine.extend(q)

        # link records not committed by an earlier part of this batch (a batch keeps its lookups until its end)
        phi = {k: v for k, v in batch.phi_terms.items() if batch.committed_phi.get(k) is not v}
        alias = {k: v for k, v in batch.alias.items() if batch.committed_alias.get(k) != v}
        files = batch.files[batch.committed_files:]
        ids = pseudo.drain() + [(pid, value, "alias") for value, pid in alias.items()]
        links = {
            "ids": pa.table({"pseudo": [i[0] for i in ids], "original": [i[1] for i in ids], "kind": [i[2] for i in ids]},
                            schema=S.LINK_TABLES["ids"]),
            "files": pa.table({"file_ref": [f[0] for f in files], "path": [f[1] for f in files],
                               "sha256": [f[2] for f in files], "kind": [f[3] for f in files]},
                              schema=S.LINK_TABLES["files"]),
            "quarantine": pa.table({"file_ref": [x.file_ref for x in q], "path": [x.file for x in q],
                                    "record": [x.record for x in q], "reason": [x.reason for x in q],
                                    "raw": raw}, schema=S.LINK_TABLES["quarantine"]),
            "phi": pa.table({"patient_id": list(phi), "terms": list(phi.values())},
                            schema=S.LINK_TABLES["phi"]),
        }
        self.store.commit(batch_id, tables, links)
        batch.committed_phi.update(phi)
        batch.committed_alias.update(alias)
        batch.committed_files = len(batch.files)
        batch.clear_committed()
        if self._phi_cache is not None:
            self._phi_cache.update(phi)
        if self._alias_cache is not None:
            self._alias_cache.update(alias)
        known_q.update(int(i) for i in qids)
        for name, t in tables.items():
            if name in self._id_cache and name != "quarantine":
                self._id_cache[name].update(t.column("record_id").to_pylist())
        for name, rid, _, _, reason in hidden:
            if reason == "delete" and name in self._id_cache:
                self._id_cache[name].discard(rid)

    def _dedupe(self, name: str, t: pa.Table, with_updates: bool = False):
        """Drop rows whose record_id is earlier in the same batch, or already in the store with the same
        content (:func:`raretarget.schema.content_hashes`). A row whose record_id is in the store with
        other content is an update: it is kept, and with ``with_updates=True`` the return value is
        ``(table, [(record_id, part of the old version, old patient_id)])`` so the caller hides the old row.
        """
        cache = self._id_cache
        if name not in cache:
            cache[name] = set(self.store.read(name, ["record_id"]).column("record_id").to_pylist())
        existing = cache[name]
        ids = t.column("record_id").to_numpy()
        keep = np.ones(len(ids), dtype=bool)
        seen: set[int] = set()
        clash: list[int] = []
        for i, rid in enumerate(ids.tolist()):
            if rid in seen:
                keep[i] = False
            elif rid in existing:
                clash.append(i)
            seen.add(rid)
        updates: list[tuple[int, str, str | None]] = []
        if clash:
            old = self.store.read_ids(name, ids[clash])
            old_h = dict(zip(old.column("record_id").to_pylist(),
                             zip(S.content_hashes(old.drop_columns(["_part"])), old.column("_part").to_pylist(),
                                 old.column("patient_id").to_pylist())))
            new_h = S.content_hashes(t.take(pa.array(clash)))
            for i, h in zip(clash, new_h):
                prev = old_h.get(int(ids[i]))
                if prev is None or prev[0] == h:      # same content (or vanished): a duplicate
                    keep[i] = False
                else:
                    updates.append((int(ids[i]), prev[1], prev[2]))
        out = t if keep.all() else t.filter(pa.array(keep))
        return (out, updates) if with_updates else out

    def _deleted_rows(self, keys: set[str]) -> list[tuple[str, int, str, str | None]]:
        """Live rows (table, record_id, part, patient_id) of the FHIR resources ``keys`` ("Type/pseudo-id")."""
        out = []
        for name in S.DATA_TABLES:
            t = self.store.read(name, ["record_id", "patient_id", "source_ref"], with_part=True)
            if t.num_rows == 0:
                continue
            hit = [i for i, r in enumerate(t.column("source_ref").to_pylist()) if _resource_key(r) in keys]
            if hit:
                sub = t.take(pa.array(hit))
                out.extend((name, rid, part, pid) for rid, part, pid in zip(
                    sub.column("record_id").to_pylist(), sub.column("_part").to_pylist(),
                    sub.column("patient_id").to_pylist()))
        return out

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
        """Run one read-only SQL statement (SELECT/EXPLAIN) over the store's committed Parquet; one view per
        table. The connection has no file, network or extension access and its configuration is locked
        (:mod:`raretarget.safe_sql`); anything else raises :class:`raretarget.safe_sql.QueryError`."""
        from .safe_sql import run

        con = self.store.duckdb()
        try:
            return run(con, query, params)
        finally:
            con.close()

    def select_where(self, table: str, predicate: str, columns: Sequence[str] = ("patient_id",)) -> pa.Table:
        """``columns`` of ``table`` rows matching ``predicate`` (one SQL expression, e.g. ``sex = 'female'``),
        on the same read-only connection as :meth:`sql`."""
        from .safe_sql import select_where

        if table not in S.TABLES:
            raise ValueError(f"unknown table {table!r}")
        con = self.store.duckdb()
        try:
            return select_where(con, table, predicate, columns)
        finally:
            con.close()

    def status(self) -> dict:
        """``{"tables": {name: rows}, "quarantined": n, "embeddings": {modality: n}, "index": {...}}``."""
        self.store.manifest(refresh=True)
        tables = {name: self.store.count(name) for name in S.DATA_TABLES}
        model = self.current_model()
        gens = self._generations()
        cur = gens.current()
        return {
            "tables": tables,
            "quarantined": self.store.count("quarantine"),
            "files": self.store.count("ingested"),
            "model": model["model_version"] if model else None,
            "embeddings": gens.embedding_counts(model["model_version"] if model else None),
            "index": {"generation": cur["generation"] if cur else None,
                      "count": sum(cur["counts"].values()) if cur else 0,
                      "model_version": cur["model_version"] if cur else None},
            "version": self.store.manifest().get("version", 0),
        }

    # ---- reports -----------------------------------------------------------------------------------
    def report(self, out: str | os.PathLike, *, ranked: pa.Table | None = None, max_patients: int = 50,
               outcomes: Sequence[dict] | None = None):
        """Static HTML report (population, patient pages, optional hypothesis page, optional outcome
        results from :meth:`predict_outcome`) in folder ``out``; opens offline; store data only
        (pseudonymous). Returns the path of ``index.html``."""
        from .report import write_report

        return write_report(self, out, ranked=ranked, max_patients=max_patients, outcomes=outcomes)

    def predict_outcome(self, target: str, *, modalities: Sequence[str] | None = None, seed: int = 0,
                        labels: dict | None = None) -> dict:
        """Held-out classifiers for a condition from each modality's embeddings and from their fusion
        (:mod:`raretarget.outcome`): target ``HP:...`` (with descendants), ``SNOMED:<code>``, a code, or
        ``sql:<predicate over conditions>``; or explicit ``labels={patient_id: 0/1}``. AUROC and accuracy."""
        from .outcome import predict_outcome

        return predict_outcome(self, target, modalities=modalities, seed=seed, labels=labels)

    # ---- prioritize --------------------------------------------------------------------------------
    def knowledge(self):
        """The gene knowledge base (HPO annotations via hpo3, druggability table), built once per Engine."""
        if getattr(self, "_kb", None) is None:
            from raretarget.prioritize import KnowledgeBase

            self._kb = KnowledgeBase.from_hpo3()
        return self._kb

    def rank_targets(self, query: str | None = None, *, phenotypes: Sequence[str] | None = None,
                     excluded: Sequence[str] = (), phenopacket=None, patients: Sequence[str] | None = None,
                     patient: str | None = None, vcf=None, k: int | None = 50, weights=None,
                     sample: str | int | None = None, build: str | None = None) -> pa.Table:
        """Rank candidate genes/targets for a hypothesis; one row per gene with every component score.

        Query forms as in :meth:`search` (free text, HPO ``phenotypes`` + ``excluded``, a Phenopacket);
        ``patients``: the cohort of cases (default: patients matching the query's phenotypes);
        ``patient`` / ``vcf``: the index patient's variants (a store patient, or a VCF/BCF file read without a
        store); with ``vcf``, ``sample`` picks the sample column of a multi-sample file (name or 0-based index;
        default the first, said in the notes) and ``build`` (``GRCh37``/``GRCh38``) places variants without a
        CSQ/ANN gene by position when the header does not name the build.
        Components: phenotype_ic, knowledge, druggability, variant, cohort, embedding (see
        :mod:`raretarget.prioritize`); weights from ``conf/prioritize/default.yaml`` or ``weights``.
        Works on a store with no patients (knowledge evidence only). Columns: rank, gene, score,
        one per component (NaN = no input), evidence (JSON), verdict (the experts' latest verdict for this
        hypothesis, :meth:`review`; rejected genes are moved last). The table's schema metadata holds
        ``hypothesis_id`` (:func:`raretarget.review.hypothesis_id`). Audited (:mod:`raretarget.audit`).
        """
        from raretarget.prioritize.targets import rank_targets
        from . import audit, review

        audit.record(self, "rank", query=query, phenotypes=phenotypes, excluded=excluded, phenopacket=phenopacket,
                     patient=patient, vcf=vcf, k=k)

        def run(q, k, **kw):
            return rank_targets(self, q, k=k, **kw)
        with audit.quiet():                 # its internal searches are part of this one audited ranking
            return review.rank(self, run, query, phenotypes=phenotypes, excluded=excluded, phenopacket=phenopacket,
                               patients=patients, patient=patient, vcf=vcf, k=k, weights=weights,
                               sample=sample, build=build)

    def explain(self, gene: str, **query) -> dict:
        """Evidence behind ``gene``'s row for a query (same keywords as :meth:`rank_targets`), with the
        source records: matching conditions (HPO), variants in the gene, images of carriers; plus
        ``hypothesis_id`` and the gene's latest ``verdict`` (or None)."""
        from raretarget.prioritize.targets import explain
        from . import audit, review

        audit.record(self, "explain", gene=gene, **{k: v for k, v in query.items() if k != "patients"})
        with audit.quiet():
            row = explain(self, gene, **query)
        q = {k: query.get(k) for k in ("phenotypes", "excluded", "phenopacket", "patient", "vcf")}
        row["hypothesis_id"] = hid = review.hypothesis_id(query.get("query"), **q)
        row["verdict"] = review.latest_verdicts(self, hid).get(row["gene"], {}).get("verdict")
        return row

    # ---- expert review + audit (raretarget.review, raretarget.audit) -------------------------------
    def hypothesis_id(self, query: str | None = None, **kw) -> str:
        """Deterministic id of a query (keywords as :meth:`rank_targets`); shown by ``raretarget rank``."""
        from .review import hypothesis_id

        return hypothesis_id(query, **{k: v for k, v in kw.items() if k not in ("patients", "k", "weights")})

    def review(self, hypothesis_id: str, gene: str, verdict: str, note: str = "", reviewer: str | None = None) -> dict:
        """Record an expert's verdict (confirmed | rejected | unsure) on ``gene`` for a ranked hypothesis:
        append-only, timestamped, note de-identified. Later rankings of the hypothesis mark the gene and
        move a rejected one last. Audited."""
        from . import audit, review

        audit.record(self, "review", hypothesis_id=hypothesis_id, gene=gene, verdict=verdict)   # user: who acted
        return review.review(self, hypothesis_id, gene, verdict, note=note, reviewer=reviewer)

    def reviews(self, hypothesis_id: str | None = None) -> pa.Table:
        """Every stored verdict (history, oldest first), optionally of one hypothesis."""
        from .review import verdicts

        return verdicts(self, hypothesis_id)

    def audit_log(self, **filters) -> list[dict]:
        """Audit events in time order (filters: action, user, since)."""
        from .audit import read_audit

        return read_audit(self.store.root, **filters)

    # ---- train / embed / index / search -----------------------------------------------------------
    def generations(self):
        """The store's index generations (:class:`raretarget.index.generations.Generations`)."""
        from raretarget.index.generations import Generations

        return Generations(self.store.root)

    _generations = generations          # the old private name

    def current_model(self) -> dict | None:
        """``{"model_version", "path"}`` of the model that ``embed``/``search`` use, or None."""
        p = self.store.root / "models" / "CURRENT"
        if not p.exists():
            return None
        info = json.loads(p.read_text())
        info["path"] = str(self.store.root / "models" / info["model_version"])
        return info

    def require_model(self) -> dict:
        """:meth:`current_model`, or a clear error when the store has no trained model yet."""
        model = self.current_model()
        if model is None:
            raise RuntimeError("no trained model in this store: call Engine.train() first")
        return model

    def train(self, **overrides) -> dict:
        """Train the shared-space encoders contrastively on this store; make the result current.

        Overrides are dotted config keys or sections of :data:`raretarget.encoders.training.DEFAULTS`,
        e.g. ``eng.train(max_epochs=1)`` or ``eng.train(**{"model.embed_dim": 128})``. Saved under
        ``<store>/models/<model_version>/`` (safetensors + config.json + metrics.json).
        """
        from raretarget.encoders import train
        from .store import atomic_write_bytes

        for short in ("max_epochs", "precision", "accelerator", "devices", "strategy", "num_nodes"):
            if short in overrides:
                overrides[f"trainer.{short}"] = overrides.pop(short)
        for short in ("batch_size",):
            if short in overrides:
                overrides[f"data.{short}"] = overrides.pop(short)
        models = self.store.root / "models"
        tmp = models / f".training-{os.getpid()}"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        models.mkdir(parents=True, exist_ok=True)
        # label features of the gene-alignment phase depend only on public HPO labels + the backbone
        overrides.setdefault("model.knowledge.cache_dir", str(models / "cache"))
        summary = train(store=self, out_dir=tmp, **overrides)
        version = summary["model_version"]
        final = models / version
        if final.exists():                      # same weights trained again: keep the first copy
            import shutil

            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
        atomic_write_bytes(models / "CURRENT", json.dumps({"model_version": version}).encode())
        self._searcher = None
        summary["out_dir"] = str(final)
        return summary

    #: where embed / update / search run the encoders: "auto" = CUDA when present (bf16 autocast), else
    #: CPU; "cpu", "cuda:1", ... to choose. ``embed``/``embed_shard``/``update`` also take ``device=``.
    device: str = "auto"

    def embed(self, batch_size: int = 128, *, workers: int = 1, device: str | None = None,
              ray: bool | str = False) -> dict[str, int]:
        """Embed every record with the current model into ``<store>/embeddings/<model_version>/``.

        Returns rows per modality: note, image, labs, variants, patient (mean of a patient's modality
        vectors, re-normalised), gene. ``workers > 1``: the patients are split into that many shards
        (:func:`raretarget.encoders.data.shard_of`) embedded by parallel processes (:meth:`embed_shard`),
        then merged (:meth:`merge_shards`); same rows as ``workers=1``. The workers are *spawned*, so a script
        calling this needs the usual ``if __name__ == "__main__":`` guard. ``device``: where the encoders run
        (default :attr:`device`, "auto": CUDA when present, with bf16 autocast; CPU vectors are float32).
        ``ray``: a Ray Data job over patient partitions (True: local Ray or ``RAY_ADDRESS``; a string: that
        cluster's address; ``workers`` > 1: that many actors), merged here (:func:`raretarget.distributed.embed`).
        """
        if ray:
            from raretarget.distributed import embed as embed_ray

            return embed_ray(self, address=None if ray is True else ray, batch_size=batch_size, device=device,
                             actors=workers if workers > 1 else None)
        device = self.device if device is None else device
        if workers > 1:
            return self._embed_parallel(int(workers), batch_size, device)
        from raretarget.encoders.training import load_model

        model = self.require_model()
        net = load_model(model["path"], device=device)
        from raretarget.nightly import store_batches
        from .store import atomic_write_bytes

        gens = self._generations()
        batches = sorted(store_batches(self.store))         # what these embeddings cover
        counts = {}
        for name, tab in self._embedding_tables(net, model["model_version"], batch_size=batch_size).items():
            gens.write_embeddings(model["model_version"], name, tab)
            counts[name] = tab.num_rows
        atomic_write_bytes(gens.emb_dir / model["model_version"] / "_batches.json", json.dumps(batches).encode())
        self._searcher = None
        return counts

    def _shard_dir(self, version: str, shards: int, shard: int | None = None) -> Path:
        d = self._generations().emb_dir / version / "_shards" / f"of-{shards}"
        return d if shard is None else d / f"{shard:04d}"

    def embed_shard(self, shard: int, shards: int, batch_size: int = 128, *,
                    device: str | None = None, net=None) -> dict[str, int]:
        """Embed only the patients of shard ``shard`` of ``shards`` (stable hash of the patient id) with the
        current model into ``embeddings/<version>/_shards/of-<shards>/<shard>/`` (shard 0 also embeds the genes).

        Shards are independent: run them as parallel processes, or on several machines that share the store
        folder, then call :meth:`merge_shards`. A shard's ``DONE.json`` (written last, atomically) records the
        store batches it saw, so a merge refuses shards of different store states. Re-running a shard replaces it.
        """
        from raretarget.encoders.data import shard_of, store_patients
        from raretarget.encoders.training import load_model
        from raretarget.nightly import store_batches
        from .store import atomic_write_bytes, atomic_write_parquet

        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
        model = self.require_model()
        version = model["model_version"]
        batches = sorted(store_batches(self.store))
        pids = [p for p in store_patients(self) if shard_of(p, shards) == shard]
        if net is None:         # a caller embedding many shards (a Ray actor) passes the model it loaded once
            net = load_model(model["path"], device=self.device if device is None else device)
        d = self._shard_dir(version, shards, shard)
        (d / "DONE.json").unlink(missing_ok=True)
        tabs = self._embedding_tables(net, version, batch_size=batch_size, patients=pids, genes=shard == 0)
        counts = {}
        for name, tab in tabs.items():
            atomic_write_parquet(d / f"{name}.parquet", S.conform_embeddings(tab))
            counts[name] = tab.num_rows
        atomic_write_bytes(d / "DONE.json", json.dumps({"batches": batches, "counts": counts,
                                                         "patients": len(pids)}).encode())
        return counts

    def merge_shards(self, shards: int) -> dict[str, int]:
        """Merge the ``shards`` parts written by :meth:`embed_shard` into the current model's embeddings (one
        atomic file per modality, as :meth:`embed` writes them), then delete the parts. Raises when a shard is
        missing or the shards saw different store states (re-run those shards)."""
        import shutil

        import pyarrow.parquet as pq

        from .store import atomic_write_bytes

        model = self.require_model()
        version = model["model_version"]
        infos = {}
        for i in range(shards):
            f = self._shard_dir(version, shards, i) / "DONE.json"
            if not f.exists():
                raise RuntimeError(f"embedding shard {i} of {shards} is missing or unfinished ({f.parent}): "
                                   f"run Engine.embed_shard({i}, {shards})")
            infos[i] = json.loads(f.read_text())
        states = {tuple(v["batches"]) for v in infos.values()}
        if len(states) > 1:
            raise RuntimeError(f"embedding shards of {shards} saw different store states (ingest ran between them): "
                               "re-run every shard")
        gens = self._generations()
        names = sorted({n for v in infos.values() for n in v["counts"]})
        counts = {}
        for name in names:
            parts = [self._shard_dir(version, shards, i) / f"{name}.parquet" for i in range(shards)]
            tabs = [pq.read_table(p) for p in parts if p.exists()]
            t = pa.concat_tables(tabs).sort_by("record_id")
            gens.write_embeddings(version, name, t)
            counts[name] = t.num_rows
        atomic_write_bytes(gens.emb_dir / version / "_batches.json", json.dumps(sorted(states.pop())).encode())
        shutil.rmtree(self._shard_dir(version, shards), ignore_errors=True)
        try:
            self._shard_dir(version, shards).parent.rmdir()         # _shards/, when no other split is pending
        except OSError:
            pass
        self._searcher = None
        return counts

    def _embed_parallel(self, workers: int, batch_size: int, device: str = "auto") -> dict[str, int]:
        import concurrent.futures as cf
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn: a fresh interpreter per worker (no forked torch/OpenMP state)
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_embed_shard_job, str(self.store.root), str(self.store.links), i, workers, batch_size,
                              threads, device) for i in range(workers)]
            for f in futs:
                f.result()
        return self.merge_shards(workers)

    def embedding_tables(self, net, version: str, batch_size: int = 128,
                          patients: Sequence[str] | None = None, genes: bool | None = None) -> dict[str, pa.Table]:
        """Embedding tables per modality name (EMBEDDINGS schema) of every patient, or only of
        ``patients`` (then by default without the gene table, which depends on the model only)."""
        from raretarget.encoders.data import load_store_samples
        from raretarget.encoders.training import embed
        from raretarget.index import l2_normalize
        from raretarget.index.generations import vectors_of
        from raretarget.query.search import MODALITY_NAMES

        samples = load_store_samples(self, patients=patients)
        tables = embed(net, self, samples=samples, batch_size=batch_size,
                       genes=(patients is None) if genes is None else genes)
        pf, params = "", None
        if patients is not None:
            pf, params = " where patient_id in (select unnest(?))", [sorted(set(patients))]
        t = self.sql(f"select record_id, source_ref from patients{pf} union all "
                     f"select record_id, source_ref from images{pf}", None if params is None else params * 2)
        refs = dict(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
        out: dict[str, pa.Table] = {}
        per_patient: dict[str, list[np.ndarray]] = {}
        for m, tab in tables.items():
            name = MODALITY_NAMES.get(m, m)
            rids = tab.column("record_id").to_pylist()
            if name == "gene":        # embed() writes the gene table in vocabulary order
                src = [gene_ref(g) for g in net.encoders["variants"].genes]
            else:
                src = [refs.get(r) for r in rids]
                vecs = vectors_of(tab)
                for pid, v in zip(tab.column("patient_id").to_pylist(), vecs):
                    if pid is not None:
                        per_patient.setdefault(pid, []).append(v)
            tab = tab.drop_columns([c for c in ("source_ref",) if c in tab.column_names])
            tab = tab.append_column("source_ref", pa.array(src, pa.string()))
            tab = tab.set_column(tab.column_names.index("modality"), "modality", pa.array([name] * tab.num_rows))
            out[name] = tab
        if per_patient:
            pids = sorted(per_patient)
            fused = l2_normalize(np.stack([np.mean(per_patient[p], axis=0) for p in pids]))
            prid = {p: r for p, r in zip(*self.sql(f"select patient_id, min(record_id) from patients{pf} group by 1",
                                                   params).to_pydict().values())}
            rids = [prid.get(p) or S.patient_record_id(p) for p in pids]
            dim = fused.shape[1]
            out["patient"] = pa.table({"record_id": pa.array(rids, pa.int64()), "patient_id": pids,
                                       "modality": ["patient"] * len(pids), "model_version": [version] * len(pids),
                                       "source_ref": [refs.get(r) for r in rids],
                                       "vector": pa.FixedSizeListArray.from_arrays(pa.array(fused.ravel()), dim)})
        return out

    _embedding_tables = embedding_tables    # the old private name

    def build_index(self, factory: str | None = None, keep: int = 3) -> dict:
        """Build one FAISS index per modality from the current embeddings; publish a new generation.

        ``factory``: a faiss factory string for every modality, or None to choose by size
        (:func:`raretarget.index.auto_factory`). Returns the generation info.
        """
        model = self.current_model()
        if model is None or not self._generations().embedding_counts(model["model_version"]):
            raise RuntimeError("no embeddings for the current model: call Engine.embed() first")
        gens = self._generations()
        bfile = gens.emb_dir / model["model_version"] / "_batches.json"      # written by embed()
        extra = {"batches": json.loads(bfile.read_text())} if bfile.exists() else None
        info = gens.build(model["model_version"], factory=factory, keep=keep, extra=extra)
        self._searcher = None
        return info

    def update(self, paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None, **cfg) -> dict:
        """Nightly incremental update (:mod:`raretarget.nightly`): ingest ``paths``, re-embed only the
        patients whose records were added, updated or deleted, patch the index into a new generation,
        check its recall against exact search and publish it atomically. A changed model version
        means a full re-embed + build. Options: recall_threshold (0.95), keep_generations (3),
        sample_queries (200), k (10), batch_size, batch_files, factory, seed, device (default
        :attr:`device`). Returns the run log."""
        from raretarget.nightly import update

        cfg.setdefault("device", self.device)
        return update(self, paths, **cfg)

    def reset_searcher(self) -> None:
        """Drop the cached :meth:`searcher` (after a new model, embeddings or index generation)."""
        self._searcher = None

    def searcher(self):
        """The loaded model + indexes of the current generation (:class:`raretarget.query.search.Searcher`),
        cached until :meth:`reset_searcher`."""
        s = getattr(self, "_searcher", None)
        if s is not None:
            return s
        from raretarget.encoders.training import load_model
        from raretarget.query.search import Searcher

        model = self.require_model()
        gens = self._generations()
        indexes = gens.open(model_version=model["model_version"])      # refuses a stale index
        cols = ["record_id", "patient_id", "source_ref"]
        # patient vectors too: a patient query then uses this view's vector (Searcher.patient_vector)
        lookups = {m: gens.read_embeddings(model["model_version"], m).select(cols + ["vector"] * (m == "patient"))
                   for m in indexes}
        self._searcher = Searcher(self, load_model(model["path"], device=self.device), model["model_version"], indexes,
                                  lookups)
        return self._searcher

    _get_searcher = searcher            # the old private name

    def search(self, query: str | None = None, *, phenotypes: Sequence[str] | None = None,
               excluded: Sequence[str] = (), phenopacket=None, patient: str | None = None, image=None,
               k: int = 20, modalities: Sequence[str] | None = None, where: str | None = None,
               genes: Sequence[str] | None = None, pathogenic_only: bool = False, labs=None) -> pa.Table:
        """Cross-modal top-k search. Exactly one query form: free text, HPO ``phenotypes`` (with optional
        ``excluded``), a GA4GH ``phenopacket`` (path/dict), a pseudonymous ``patient`` id, or a DICOM ``image``.

        ``modalities``: subset of note, image, labs, variants, patient, gene (default: all indexed).
        Filters (``where`` over patients, carriers of ``genes``, ``labs`` thresholds) restrict patient
        records; genes are never filtered. Returns a pyarrow Table: rank, score (cosine), modality,
        record_id, patient_id, gene, source_ref.
        """
        from raretarget.query.filters import allowed_patients
        from raretarget.query.search import phenotype_text
        from .audit import record

        record(self, "search", query=query, phenotypes=phenotypes, excluded=excluded, phenopacket=phenopacket,
               patient=patient, image=image, k=k, modalities=modalities, where=where, genes=genes)
        forms = [x is not None for x in (query, phenotypes, phenopacket, patient, image)]
        if sum(forms) != 1:
            raise ValueError("give exactly one of: query text, phenotypes, phenopacket, patient, image")
        s = self._get_searcher()
        exclude = None
        if query is not None:
            q = s.encode_text(query)
        elif phenotypes is not None or phenopacket is not None:
            if phenopacket is not None:
                from raretarget.prioritize import parse_phenopacket

                pp = parse_phenopacket(phenopacket)
                known = self.resources.phenotypes.current        # skip ids the ontology lacks (not fatal)
                phenotypes = [t for t in pp.observed if known(t)]
                excluded = [t for t in pp.excluded if known(t)]
                if not phenotypes:
                    raise ValueError("the Phenopacket has no known observed HPO term")
            q = s.encode_text(phenotype_text(phenotypes, excluded, self.resources.phenotypes))
        elif patient is not None:
            q = s.patient_vector(patient)            # the loaded generation's vector: one consistent view
            if q is None:
                t = self._generations().read_embeddings(s.model_version, "patient")
                hit = t.filter(pa.compute.equal(t.column("patient_id"), patient))
                if hit.num_rows == 0:
                    raise ValueError(f"unknown patient {patient!r} (no embeddings)")
                from raretarget.index.generations import vectors_of

                q = vectors_of(hit)[:1]
            exclude = patient
        else:
            q = s.encode_image(image)
        allowed = allowed_patients(self.sql, where=where, genes=genes, pathogenic_only=pathogenic_only, labs=labs)
        return s.search(q, k, modalities, allowed, exclude_patient=exclude)

    def quarantine(self, reveal: bool = False) -> pa.Table:
        """Quarantined records with reasons. ``reveal=True`` adds real paths from the link folder."""
        q = self.store.read("quarantine")
        if not reveal:
            return q
        from .audit import record

        record(self, "reveal_links", what="quarantine paths")
        files = self.store.read_links("files")
        paths = dict(zip(files.column("file_ref").to_pylist(), files.column("path").to_pylist()))
        return q.append_column("path", pa.array([paths.get(f) for f in q.column("file_ref").to_pylist()], pa.string()))


def _embed_shard_job(root: str, links: str, shard: int, shards: int, batch_size: int, threads: int,
                     device: str = "auto") -> dict:
    """Worker process of :meth:`Engine.embed` with ``workers > 1``."""
    import torch

    torch.set_num_threads(threads)
    return Engine.open(root, links=links).embed_shard(shard, shards, batch_size=batch_size, device=device)


def _is_large(inp) -> bool:
    """Large files are read (streamed, committed in parts) by the committing process, never by a worker."""
    from raretarget.ingest.core import LARGE_FILE

    return inp.path.stat().st_size >= LARGE_FILE


def _resource_key(source_ref: str | None) -> str | None:
    """``"Type/pseudo-id"`` of a FHIR row's ``source_ref`` (``fhir:<file_ref>/Type/id[#i]``), else None."""
    if not source_ref or not source_ref.startswith("fhir:"):
        return None
    loc = source_ref.split("/", 1)[1] if "/" in source_ref else ""
    return loc.split("#", 1)[0]


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
