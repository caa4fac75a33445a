"""The public entry point, a thin facade: ``Engine.open(store)`` → ingest, SQL, status, train, embed, index, search,
rank, review, report.

Each method is a few lines over a :class:`raretarget.context.Context` (the store, its writer and on-disk artifacts,
reference vocabularies, caches) and the layers below it, which never import this module:

    vocab, config → store → ingest → index → encoders → query → prioritize → (audit, review, distributed,
    context) → engine → apps (nightly, report, outcome, cli, serve, drift)

``update`` / ``report`` / ``predict_outcome`` hand the Engine itself to their app, which uses only public methods.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import pyarrow as pa

from .context import Context
from .ingest.pipeline import IngestReport
from .store import Store
from .store import schema as S

__all__ = ["Engine", "IngestReport"]

log = logging.getLogger("raretarget")


class Engine:
    """One store, opened for ingest, SQL, training, embedding, indexing, search and ranking.

    No hydra needed: configuration is plain keyword arguments (defaults from the packaged YAML, ``raretarget.conf``).
    """

    #: where embed / update / search run the encoders: "auto" = CUDA when present (bf16 autocast), else
    #: CPU; "cpu", "cuda:1", ... to choose. ``embed``/``embed_shard``/``update`` also take ``device=``.
    device: str = "auto"

    def __init__(self, store: Store):
        self.ctx = Context(store)
        self.store = store
        self.resources = self.ctx.resources

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = False, links: str | os.PathLike | None = None) -> "Engine":
        """Open (or with ``create=True`` make) a store. ``links``: the secure link folder
        (default: the sibling ``<store>.links``)."""
        return cls(Store.open(path, create=create, links=links))

    @property
    def pseudo(self):
        """The store's :class:`raretarget.store.pseudo.Pseudonymizer` (needs the link folder's key)."""
        return self.ctx.writer.pseudo

    def _sync(self) -> Context:
        self.ctx.device = self.device          # an instance may set .device after opening
        return self.ctx

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
        and committed every that many records, so memory does not grow with the file; a batch of smaller files
        is committed in parts, at file boundaries, once it holds that many rows (multi-sample VCFs).
        ``ray``: read the files in Ray Data actors instead (True: a local Ray or ``RAY_ADDRESS``; a string: that
        cluster's address), merged and committed here the same way (:mod:`raretarget.distributed`).
        """
        from .ingest.pipeline import run_ingest

        ray_reader = None
        if ray:
            import functools

            from .distributed import RayReader

            ray_reader = functools.partial(RayReader, address=None if ray is True else ray,
                                           actors=workers if workers > 1 else None)
        return run_ingest(self.ctx.writer, self.resources, paths, batch_files=batch_files, batch_records=batch_records,
                          fhir_validate=fhir_validate, workers=workers, chunk_records=chunk_records,
                          ray_reader=ray_reader, progress=progress)

    # ---- SQL / status ----------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence | None = None) -> pa.Table:
        """Run one read-only SQL statement (SELECT/EXPLAIN) over the store's committed Parquet; one view per
        table. The connection has no file, network or extension access and its configuration is locked
        (:mod:`raretarget.safe_sql`); anything else raises :class:`raretarget.safe_sql.QueryError`."""
        return self.ctx.sql(query, params)

    def select_where(self, table: str, predicate: str, columns: Sequence[str] = ("patient_id",)) -> pa.Table:
        """``columns`` of ``table`` rows matching ``predicate`` (one SQL expression, e.g. ``sex = 'female'``),
        on the same read-only connection as :meth:`sql`."""
        return self.ctx.select_where(table, predicate, columns)

    def status(self) -> dict:
        """``{"tables": {name: rows}, "quarantined": n, "embeddings": {modality: n}, "index": {...}}``."""
        self.store.manifest(refresh=True)
        model = self.current_model()
        gens = self.generations()
        cur = gens.current()
        return {
            "tables": {name: self.store.count(name) for name in S.DATA_TABLES},
            "quarantined": self.store.count("quarantine"),
            "files": self.store.count("ingested"),
            "model": model["model_version"] if model else None,
            "embeddings": gens.embedding_counts(model["model_version"] if model else None),
            "index": {"generation": cur["generation"] if cur else None,
                      "count": sum(cur["counts"].values()) if cur else 0,
                      "model_version": cur["model_version"] if cur else None},
            "version": self.store.manifest().get("version", 0),
        }

    # ---- reports (apps) ----------------------------------------------------------------------------
    def report(self, out: str | os.PathLike, *, ranked: pa.Table | None = None, max_patients: int = 50,
               outcomes: Sequence[dict] | None = None):
        """Static HTML report (population, patient pages, optional hypothesis page, optional outcome
        results from :meth:`predict_outcome`) in folder ``out``; opens offline; store data only
        (pseudonymous). Returns the path of ``index.html``."""
        from .apps.report import write_report

        return write_report(self, out, ranked=ranked, max_patients=max_patients, outcomes=outcomes)

    def predict_outcome(self, target: str, *, modalities: Sequence[str] | None = None, seed: int = 0,
                        labels: dict | None = None) -> dict:
        """Held-out classifiers for a condition from each modality's embeddings and from their fusion
        (:mod:`raretarget.outcome`): target ``HP:...`` (with descendants), ``SNOMED:<code>``, a code, or
        ``sql:<predicate over conditions>``; or explicit ``labels={patient_id: 0/1}``. AUROC and accuracy."""
        from .apps.outcome import predict_outcome

        return predict_outcome(self, target, modalities=modalities, seed=seed, labels=labels)

    # ---- prioritize --------------------------------------------------------------------------------
    def knowledge(self):
        """The gene knowledge base (HPO annotations via hpo3, druggability table), built once per Engine."""
        return self.ctx.knowledge()

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

        def run(q, k, **kw):            # over the Context: the ranking never calls back into the Engine
            return rank_targets(self._sync(), q, k=k, **kw)
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
            row = explain(self._sync(), gene, **query)
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
        return self.ctx.generations()

    _generations = generations          # the old private name

    def current_model(self) -> dict | None:
        """``{"model_version", "path"}`` of the model that ``embed``/``search`` use, or None."""
        return self.ctx.current_model()

    def require_model(self) -> dict:
        """:meth:`current_model`, or a clear error when the store has no trained model yet."""
        return self.ctx.require_model()

    def loaded_model(self, device: str | None = None):
        """The current model loaded on ``device`` (default :attr:`device`), eval mode; this engine keeps it until the
        current model changes (``update`` and ``search`` use it, so a long-lived process loads it once)."""
        return self._sync().loaded_model(device)

    def train(self, **overrides) -> dict:
        """Train the shared-space encoders contrastively on this store; make the result current.

        Overrides are dotted config keys or sections of :data:`raretarget.encoders.training.DEFAULTS`,
        e.g. ``eng.train(max_epochs=1)`` or ``eng.train(**{"model.embed_dim": 128})``. Saved under
        ``<store>/models/<model_version>/`` (safetensors + config.json + metrics.json).
        """
        from raretarget.encoders.pipeline import train_into_store

        summary = train_into_store(self.store, **overrides)
        self.reset_searcher()
        return summary

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
            from .distributed import embed as embed_ray

            return embed_ray(self, address=None if ray is True else ray, batch_size=batch_size, device=device,
                             actors=workers if workers > 1 else None)
        from raretarget.encoders import pipeline

        device = self.device if device is None else device
        if workers > 1:
            counts = pipeline.embed_parallel(self.store, int(workers), batch_size, device)
        else:
            counts = pipeline.embed_store(self.store, batch_size=batch_size, device=device)
        self.reset_searcher()
        return counts

    def embed_shard(self, shard: int, shards: int, batch_size: int = 128, *,
                    device: str | None = None, net=None) -> dict[str, int]:
        """Embed only the patients of shard ``shard`` of ``shards`` (stable hash of the patient id) with the
        current model into ``embeddings/<version>/_shards/of-<shards>/<shard>/`` (shard 0 also embeds the genes).

        Shards are independent: run them as parallel processes, or on several machines that share the store
        folder, then call :meth:`merge_shards`. A shard's ``DONE.json`` (written last, atomically) records the
        store batches it saw, so a merge refuses shards of different store states. Re-running a shard replaces it.
        """
        from raretarget.encoders.pipeline import embed_shard

        return embed_shard(self.store, shard, shards, batch_size, device=self.device if device is None else device,
                           net=net)

    def merge_shards(self, shards: int) -> dict[str, int]:
        """Merge the ``shards`` parts written by :meth:`embed_shard` into the current model's embeddings (one
        atomic file per modality, as :meth:`embed` writes them), then delete the parts. Raises when a shard is
        missing or the shards saw different store states (re-run those shards)."""
        from raretarget.encoders.pipeline import merge_shards

        counts = merge_shards(self.store, shards)
        self.reset_searcher()
        return counts

    def embedding_tables(self, net, version: str, batch_size: int = 128,
                          patients: Sequence[str] | None = None, genes: bool | None = None) -> dict[str, pa.Table]:
        """Embedding tables per modality name (EMBEDDINGS schema) of every patient, or only of
        ``patients`` (then by default without the gene table, which depends on the model only)."""
        from raretarget.encoders.pipeline import embedding_tables

        return embedding_tables(self.store, net, version, batch_size=batch_size, patients=patients, genes=genes)

    _embedding_tables = embedding_tables    # the old private name

    def build_index(self, factory: str | None = None, keep: int = 3) -> dict:
        """Build one FAISS index per modality from the current embeddings; publish a new generation.

        ``factory``: a faiss factory string for every modality, or None to choose by size
        (:func:`raretarget.index.auto_factory`). Returns the generation info.
        """
        model = self.current_model()
        gens = self.generations()
        if model is None or not gens.embedding_counts(model["model_version"]):
            raise RuntimeError("no embeddings for the current model: call Engine.embed() first")
        batches = self.ctx.artifacts.read_batches(model["model_version"])      # written by embed()
        info = gens.build(model["model_version"], factory=factory, keep=keep,
                          extra={"batches": batches} if batches is not None else None)
        self.reset_searcher()
        return info

    def update(self, paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None, **cfg) -> dict:
        """Nightly incremental update (:mod:`raretarget.nightly`): ingest ``paths``, re-embed only the
        patients whose records were added, updated or deleted, patch the index into a new generation,
        check its recall against exact search and publish it atomically. A changed model version
        means a full re-embed + build. Options: recall_threshold (0.95), keep_generations (3),
        sample_queries (200), k (10), batch_size, batch_files, factory, seed, device (default
        :attr:`device`). Returns the run log."""
        from .apps.nightly import update

        cfg.setdefault("device", self.device)
        return update(self, paths, **cfg)

    def watch(self, paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *, every: float,
              runs: int | None = None, **cfg):
        """A long-lived nightly worker: :meth:`update` on ``paths`` every ``every`` seconds (``runs`` times; None:
        until interrupted), in this process, so that the start-up (imports, reference tables, the loaded model) is
        paid once, not each night. Yields each run's log (a failed run's log has ``ok: False`` and ``error``; the
        worker goes on). Files of ``paths`` ingested before are skipped by content hash."""
        from .apps.nightly import watch

        cfg.setdefault("device", self.device)
        return watch(self, paths, every=every, runs=runs, **cfg)

    def reset_searcher(self) -> None:
        """Drop the cached :meth:`searcher` (after a new model, embeddings or index generation)."""
        self.ctx.reset_searcher()

    def searcher(self):
        """The loaded model + indexes of the current generation (:class:`raretarget.query.search.Searcher`),
        cached until :meth:`reset_searcher`."""
        return self._sync().searcher()

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
        from .audit import record

        record(self, "search", query=query, phenotypes=phenotypes, excluded=excluded, phenopacket=phenopacket,
               patient=patient, image=image, k=k, modalities=modalities, where=where, genes=genes)
        return self._sync().search(query, phenotypes=phenotypes, excluded=excluded, phenopacket=phenopacket,
                                   patient=patient, image=image, k=k, modalities=modalities, where=where,
                                   genes=genes, pathogenic_only=pathogenic_only, labs=labs)

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
