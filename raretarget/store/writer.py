"""The ingest commit rules: what one batch of reader output becomes in the store.

:class:`StoreWriter` is handed the rows a batch of files produced (``raretarget.ingest.core.BatchState``) and
commits them atomically with :meth:`raretarget.store.Store.commit`, after

* de-duplication: a row whose ``record_id`` is already stored with the same content
  (:func:`raretarget.store.schema.content_hashes`) or met earlier in the batch is dropped;
* updates: same ``record_id``, other content: the new row is stored and the old one hidden
  (a ``deleted`` row with reason ``update``);
* deletes: FHIR deletes hide every live row of the resource (reason ``delete``); rows deleted in the same
  batch are never stored;
* quarantine entries keyed by (file, position), so a file read again after a crash is not quarantined twice;
* the secure side: new pseudonym links, file paths, raw quarantined records and PHI terms go to the link folder.

It also keeps the lookups a batch needs from earlier batches (PHI terms per patient, alias map, study →
patient), loaded once per writer and kept current by each commit, so a lookup gives the same answer
whichever process made it (the PHI terms in bounded memory: :class:`raretarget.store.phi.PhiTerms`). An engine
keeps its writer between ingest calls (a nightly worker, a server): :meth:`sync`, called at the start of each
call under :meth:`Store.writer`'s lock, drops those lookups when another writer committed since, so that they are
read again rather than deduplicating against a stale view.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import schema as S
from .compact import DigestMap, IntSet
from .phi import PhiTerms
from .pseudo import Pseudonymizer


class StoreWriter:
    """Commits reader output into ``store`` (see module doc). ``pseudo``: the store's Pseudonymizer
    (made from the store key when not given)."""

    def __init__(self, store, pseudo: Pseudonymizer | None = None):
        self.store = store
        self._pseudo = pseudo
        self.phi_cache: PhiTerms | None = None
        self.alias_cache: DigestMap | None = None     # identifier (MRN ...) → patient_id
        self.study_cache: DigestMap | None = None     # pseudonymous study UID → patient_id
        self.id_cache: dict[str, IntSet] = {}         # record_ids per table, loaded on first dedupe (compact)
        #: options of the current ingest call (``{"fhir_validate": ...}``), read by the file readers
        self.options: dict = {}
        #: resources met in the current ingest call, by id → content hash (conflicts are found across batches)
        self.seen_resources: dict[int, int] | None = None
        self.synced: tuple | None = None              # the store state the lookups above reflect (see sync)

    @staticmethod
    def _state(man: dict) -> tuple:
        """What the lookups depend on: the manifest's commit counter and its parts (so a rewritten manifest with
        the same counter still counts as a change)."""
        return (man.get("version", 0), tuple((t, tuple(ps)) for t, ps in sorted(man.get("tables", {}).items())))

    def sync(self) -> None:
        """Drop the lookups loaded from the store if another writer committed since this writer last loaded or
        committed (call under :meth:`Store.writer`'s lock, which re-reads the manifest)."""
        state = self._state(self.store.manifest())
        if self.synced is not None and state != self.synced:
            self.forget()
        self.synced = state

    def forget(self) -> None:
        """Drop the lookups loaded from the store (read again when next needed)."""
        self.phi_cache = self.alias_cache = self.study_cache = None
        self.id_cache = {}
        self.synced = None

    @property
    def pseudo(self) -> Pseudonymizer:
        if self._pseudo is None:
            self._pseudo = Pseudonymizer(self.store.key())
        return self._pseudo

    def known_phi_items(self) -> dict[str, list[str]]:
        """The PHI term lists held in memory (the parallel readers' first snapshot: the most recently used
        patients', see :meth:`PhiTerms.hot_items`)."""
        return self.phi_cache.hot_items() if self.phi_cache is not None else {}

    def commit_batch(self, batch, ledger: list[tuple], batch_id: str, report) -> None:
        """Commit what ``batch`` holds (rows, quarantine, link records not committed yet) and the ledger rows
        of the files in ``ledger``, atomically; then empty the batch's buffers."""
        pseudo = self.pseudo
        tables: dict[str, pa.Table] = {}
        hidden: list[tuple[str, int, str, str | None, str]] = []     # table, record_id, part, patient, reason
        dkeys = {f"{rt}/{rid}" for rt, rid in batch.deletions}
        for name, t in batch.tables().items():
            if dkeys:                                   # deleted in this same batch: never stored
                t = t.filter(pa.array([resource_key(r) not in dkeys for r in t.column("source_ref").to_pylist()],
                                      pa.bool_()))
            n_in = t.num_rows
            t, upd = self.dedupe(name, t, with_updates=True)
            hidden.extend((name, rid, part, pid, "update") for rid, part, pid in upd)
            report.updated += len(upd)
            report.duplicates += n_in - t.num_rows
            tables[name] = t
            report.accepted[name] = report.accepted.get(name, 0) + t.num_rows
        if dkeys:
            dels = self.deleted_rows(dkeys)
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
        if "quarantine" not in self.id_cache:
            self.id_cache["quarantine"] = IntSet(self.store.read("quarantine", ["record_id"])
                                                 .column("record_id").to_numpy())
        known_q = self.id_cache["quarantine"]
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
        self.synced = self._state(self.store.commit(batch_id, tables, links))
        batch.committed_phi.update(phi)
        batch.committed_alias.update(alias)
        batch.committed_files = len(batch.files)
        batch.clear_committed()
        if self.phi_cache is not None:
            self.phi_cache.update(phi)
        if self.alias_cache is not None:
            self.alias_cache.update(alias)
        if self.study_cache is not None:
            studies = tables.get("imaging_studies")
            if any(h[0] == "imaging_studies" for h in hidden):
                self.study_cache = None          # a study updated or deleted: read the table again when asked
            elif studies is not None and studies.num_rows:
                self.study_cache.update(zip(studies.column("study_uid").to_pylist(),
                                            studies.column("patient_id").to_pylist()))
        known_q.update(np.asarray(qids, dtype=np.int64))
        for name, t in tables.items():
            if name in self.id_cache and name != "quarantine":
                self.id_cache[name].update(t.column("record_id").to_numpy())
        for name, rid, _, _, reason in hidden:
            if reason == "delete" and name in self.id_cache:
                self.id_cache[name].discard(rid)

    def dedupe(self, name: str, t: pa.Table, with_updates: bool = False):
        """Drop rows whose record_id is earlier in the same batch, or already in the store with the same
        content (:func:`raretarget.schema.content_hashes`). A row whose record_id is in the store with
        other content is an update: it is kept, and with ``with_updates=True`` the return value is
        ``(table, [(record_id, part of the old version, old patient_id)])`` so the caller hides the old row.
        """
        cache = self.id_cache
        if name not in cache:
            cache[name] = IntSet(self.store.read(name, ["record_id"]).column("record_id").to_numpy())
        existing = cache[name]
        ids = t.column("record_id").to_numpy()
        # the first row of each record_id is kept (later ones in the batch are duplicates), unless the store has
        # that id: then it is compared with the stored row below
        keep = np.zeros(len(ids), dtype=bool)
        keep[np.unique(ids, return_index=True)[1]] = True
        clash: list[int] = np.flatnonzero(keep & existing.contains_many(ids)).tolist()
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

    def deleted_rows(self, keys: set[str]) -> list[tuple[str, int, str, str | None]]:
        """Live rows (table, record_id, part, patient_id) of the FHIR resources ``keys`` ("Type/pseudo-id")."""
        out = []
        for name in S.DATA_TABLES:
            t = self.store.read(name, ["record_id", "patient_id", "source_ref"], with_part=True)
            if t.num_rows == 0:
                continue
            hit = [i for i, r in enumerate(t.column("source_ref").to_pylist()) if resource_key(r) in keys]
            if hit:
                sub = t.take(pa.array(hit))
                out.extend((name, rid, part, pid) for rid, part, pid in zip(
                    sub.column("record_id").to_pylist(), sub.column("_part").to_pylist(),
                    sub.column("patient_id").to_pylist()))
        return out

    def known_phi(self, patient_id: str) -> list[str] | None:
        """The scrub terms of a patient met in an earlier batch or ingest (the last ones committed), or None."""
        if self.phi_cache is None:
            cache = PhiTerms(self.store.links)
            for t in self.store.iter_links("phi"):     # one link part at a time (the whole table as lists: GBs)
                for pid, terms in zip(t.column("patient_id").to_pylist(), t.column("terms").to_pylist()):
                    cache.put(pid, terms)
            self.phi_cache = cache
        return self.phi_cache.get(patient_id)

    def known_alias(self) -> DigestMap:
        """identifier (MRN, SSN ...: ``Patient.identifier`` values) → patient_id, from the link folder, kept current
        by each commit. A :class:`DigestMap` (``.get`` as a dict's), ~32 bytes an identifier."""
        if self.alias_cache is None:
            cache = DigestMap()
            for t in self.store.iter_links("ids", kind="alias"):    # one part at a time, its alias rows only
                cache.update(zip(t.column("original").to_pylist(), t.column("pseudo").to_pylist()))
            self.alias_cache = cache
        return self.alias_cache

    def known_studies(self) -> DigestMap:
        """study_uid → patient_id of the stored imaging studies: read once, then kept current by each commit (it
        was read from every part for every batch, which made ingest quadratic in the store's size). A
        :class:`DigestMap` (``.get`` as a dict's)."""
        if self.study_cache is None:
            t = self.store.read("imaging_studies", ["study_uid", "patient_id"])
            cache = DigestMap()
            cache.update(zip(t.column("study_uid").to_pylist(), t.column("patient_id").to_pylist()))
            self.study_cache = cache
        return self.study_cache


def resource_key(source_ref: str | None) -> str | None:
    """``"Type/pseudo-id"`` of a FHIR row's ``source_ref`` (``fhir:<file_ref>/Type/id[#i]``), else None."""
    if not source_ref or not source_ref.startswith("fhir:"):
        return None
    loc = source_ref.split("/", 1)[1] if "/" in source_ref else ""
    return loc.split("#", 1)[0]
