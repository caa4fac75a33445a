"""What an :class:`raretarget.Engine` works over: one store and what is derived from it, with the caches a long-
lived process keeps. The Engine's methods are a few lines each over this object.

A ``Context`` has the names the lower packages read from "an engine" (``store``, ``resources``, ``sql``,
``select_where``, ``generations()``, ``current_model()``, ``require_model()``, ``searcher()``, ``knowledge()``,
``search()``), so a package below the engine takes either, duck-typed, and never imports this module or the
engine. Nothing is read from disk when it is made; the caches fill on first use.

* ``store`` – :class:`raretarget.store.Store`; ``artifacts`` – the on-disk layout (:mod:`raretarget.store.artifacts`);
* ``writer`` – the ingest commit rules and their lookups (:class:`raretarget.store.writer.StoreWriter`),
  kept for the context's lifetime so later ingests reuse the loaded identifiers (read again when another
  writer committed in between, or after a failed ingest);
* ``resources`` – reference vocabularies loaded on first use (units, genes, HPO: :class:`raretarget.ingest.core.Resources`);
* caches: the knowledge base (``knowledge()``); the loaded model (``loaded_model()``: the current model on one
  device, loaded once per model version, so that a long-lived process — a server, a nightly worker running
  ``update`` night after night — does not pay torch / transformers / MONAI start-up and weight loading each
  time); the loaded model + index generation (``searcher()``, which borrows that model); and the cohort index of
  the current store version (``cohort_index()``: who has which phenotypes, who carries what, for ranking;
  rebuilt when the manifest changes, e.g. after an ingest or update).
"""

from __future__ import annotations

import threading
from typing import Sequence

import pyarrow as pa

from .store import schema as S
from .store.artifacts import Artifacts
from .store.writer import StoreWriter


class Context:
    """One store + its derived artifacts + caches (see module doc). ``device``: where the encoders run."""

    def __init__(self, store, device: str = "auto"):
        from raretarget.ingest.core import Resources

        self.store = store
        self.artifacts = Artifacts(store.root)
        self.writer = StoreWriter(store)
        self.resources = Resources()
        self.device = device
        self.kb = None                  # knowledge base, built on first knowledge()
        self.cached_searcher = None     # loaded model + indexes, until reset_searcher()
        self.cached_model = None        # ((model_version, path, device), model) of loaded_model()
        self.model_lock = threading.Lock()
        self.review_phi = None          # (PHI rows, compiled patterns) of review note scrubbing
        self.cached_cohort = None       # CohortIndex of one store version (its .key), until the store changes
        self.cohort_lock = threading.Lock()   # a server's threads build it once, not once each

    # ---- reading -------------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence | None = None) -> pa.Table:
        """One read-only SQL statement over the committed parts (:mod:`raretarget.store.safe_sql`)."""
        return self.store.sql(query, params)

    def select_where(self, table: str, predicate: str, columns: Sequence[str] = ("patient_id",)) -> pa.Table:
        from .store.safe_sql import select_where

        if table not in S.TABLES:
            raise ValueError(f"unknown table {table!r}")
        con = self.store.duckdb()
        try:
            return select_where(con, table, predicate, columns)
        finally:
            con.close()

    # ---- models, embeddings, index ------------------------------------------------------------
    def generations(self):
        from raretarget.index.generations import Generations

        return Generations(self.store.root)

    def current_model(self) -> dict | None:
        return self.artifacts.current_model()

    def require_model(self) -> dict:
        model = self.current_model()
        if model is None:
            raise RuntimeError("no trained model in this store: call Engine.train() first")
        return model

    def loaded_model(self, device: str | None = None):
        """The store's current model loaded on ``device`` (None: this context's device), eval mode
        (:func:`raretarget.encoders.training.load_model`). Kept until the current model (or the device) changes:
        the model version is the hash of the weights, so one version is one set of weights."""
        from raretarget.encoders.device import resolve_device

        model = self.require_model()
        # "auto" and "cpu" name one device on a machine without CUDA: keyed by the resolved device
        key = (model["model_version"], str(model["path"]), str(resolve_device(device or self.device)))
        with self.model_lock:
            hit = self.cached_model
            if hit is None or hit[0] != key:
                from raretarget.encoders.training import load_model

                self.cached_model = None            # the old one can go before the new one is loaded
                self.cached_model = hit = (key, load_model(model["path"], device=key[2]))
        return hit[1]

    def reset_searcher(self) -> None:
        self.cached_searcher = None

    def searcher(self):
        """The loaded model + indexes of the current generation (:class:`raretarget.query.search.Searcher`),
        cached until :meth:`reset_searcher`."""
        if self.cached_searcher is None:
            from raretarget.query.search import open_searcher

            self.cached_searcher = open_searcher(self, self.require_model(), self.generations(), self.device)
        return self.cached_searcher

    def knowledge(self):
        """The gene knowledge base (HPO annotations via hpo3, druggability table), built once per context."""
        if self.kb is None:
            from raretarget.prioritize import KnowledgeBase

            self.kb = KnowledgeBase.from_hpo3()
        return self.kb

    def cohort_key(self) -> tuple:
        """What the cohort index depends on: the manifest version this context reads and the parts of the
        tables it is built from (a rewritten manifest with the same counter still changes the key)."""
        man = self.store.manifest()
        tables = man.get("tables", {})
        return (man.get("version", 0),) + tuple(tuple(tables.get(t, ())) for t in
                                                ("conditions", "variants", "patients", "deleted"))

    def cohort_index(self):
        """The :class:`raretarget.prioritize.cohort_index.CohortIndex` of the store version this context reads
        (with ``resources.phenotypes`` as ontology), built on first use (four queries on one connection) and
        again after the store changed."""
        key = self.cohort_key()
        hit = self.cached_cohort
        if hit is not None and hit.key == key:
            return hit
        with self.cohort_lock:
            hit = self.cached_cohort
            if hit is None or hit.key != key:
                from raretarget.prioritize.cohort_index import CohortIndex

                con = self.store.duckdb()
                try:           # the ontology is built only for a store with patients (an empty store: no hp.obo)
                    hit = CohortIndex.build(con, lambda: self.resources.phenotypes, key=key)
                finally:
                    con.close()
                self.cached_cohort = hit
        return hit

    # ---- queries -------------------------------------------------------------------------------
    def resolve(self, query=None, **forms):
        """The keywords of a search / ranking → :class:`raretarget.query.spec.QuerySpec` (the one resolver)."""
        from raretarget.query.spec import QuerySpec

        return QuerySpec.resolve(query, ontology=lambda: self.resources.phenotypes, **forms)

    def search(self, query: str | None = None, *, k: int = 20, modalities: Sequence[str] | None = None,
               where: str | None = None, genes: Sequence[str] | None = None, pathogenic_only: bool = False,
               labs=None, **forms) -> pa.Table:
        """``Engine.search`` without the audit record (see there)."""
        from raretarget.query.search import search_spec
        from raretarget.query.spec import require_one_form

        require_one_form(query, **forms)
        spec = self.resolve(query, **forms)
        return search_spec(self, spec, k=k, modalities=modalities, where=where, genes=genes,
                           pathogenic_only=pathogenic_only, labs=labs)
