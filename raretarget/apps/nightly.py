"""Nightly incremental update: ingest → changed patients → re-embed only those → patch the index →
recall check → publish a new index generation. Costs in proportion to what changed.

``Engine.update(paths, **cfg)`` / ``scripts/nightly.py`` (hydra, ``conf/nightly.yaml``).

What "changed" means: every store batch (committed ingest) that the current index generation does
not cover (a generation records the batch ids it was built from). New rows, updated rows (same
record_id, other content) and deleted rows of those batches name the patients to re-embed; the
re-run of a killed night therefore finds the same patients again, even though its ingest adds
nothing (files already ingested are skipped by content hash).

Crash safety, stage by stage (:func:`update`'s ``after_stage`` callback runs right after each stage: the
tests kill the process there with SIGKILL):

``ingest``   batches are committed atomically; a killed batch leaves orphan parts, cleaned next write.
``embed``    ``delta: true`` (default): one delta commit of every modality's new/changed rows and
             tombstones (:mod:`raretarget.index.embedding_delta`); the re-run first drops the deltas
             of attempts the index never covered, then writes the same ones again. ``delta: false``:
             embeddings are rewritten one modality file at a time (atomic rename each); the re-run
             recomputes the same rows (same model, same patients).
``index``    the new generation (``delta: true``: base index files linked, a small exact delta index
             and a deleted-id mask, :mod:`raretarget.index.delta`; compacted on the schedule of
             ``compact_fraction`` / ``compact_every``) is written beside the current one and is not published; the next
             run deletes it and builds it again. Index ids are made equal to the embedding ids
             (base index ids not in the new embeddings are removed), so a half-done earlier run
             cannot leave stale or missing vectors.
``publish``  ``index/CURRENT`` is replaced with one atomic rename: readers that loaded a generation
             keep it; a reader opening now gets either the old or the new one, never a mix.

When the current model differs from the index generation's model (or no generation records its
batches) the night is a full re-embed + build into a fresh generation.
A run log (counts, seconds per stage, generation ids, recall; no PHI) goes to ``<store>/runs/``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raretarget.store import schema as S
from raretarget.store import atomic_write_bytes
from raretarget.index.evaluation import recall_check  # noqa: F401  (its old home)
from raretarget.store.artifacts import Artifacts, store_batches  # noqa: F401  (store_batches: its old home)

STAGES = ("ingest", "embed", "index", "publish")

#: keys of conf/nightly.yaml that are the hydra app's arguments, not options of :func:`update`
_APP_KEYS = ("store", "links", "inputs", "every", "runs")


def defaults() -> dict:
    """Options of :func:`update` and their defaults: ``conf/nightly.yaml`` (the one source; a fresh dict per call).
    ``drift`` is ``None`` here: the YAML's thresholds, applied by :mod:`raretarget.drift`."""
    from raretarget.config import compose

    c = {k: v for k, v in compose("nightly").items() if k not in _APP_KEYS}
    c["drift"] = None
    return c


def __getattr__(name: str):
    # ``DEFAULTS`` stays importable, read lazily from the packaged YAML (no file is read at import)
    if name == "DEFAULTS":
        return defaults()
    raise AttributeError(name)


def changed_patients(store, batches: set[str]) -> set[str]:
    """Patients with rows added, updated or deleted by ``batches``."""
    out: set[str] = set()
    for name in S.DATA_TABLES + ("deleted",):
        for p in store.parts(name):
            if p.stem in batches:
                col = pq.read_table(p, columns=["patient_id"]).column(0)
                out.update(v for v in pc.unique(col).to_pylist() if v is not None)
    return out


def _embed_patients(store, net, version: str, batch_size: int, pids: list[str]) -> dict[str, pa.Table]:
    """Embedding tables of the night's changed patients, ``data.chunk_patients`` at a time, each chunk read from
    its own partition of the store (:mod:`raretarget.store.partition`: one scan of each table with one part in
    memory, instead of SQL filters over the whole store)."""
    from raretarget.encoders.pipeline import embedding_tables, patient_chunks
    from raretarget.store.partition import patient_partitions

    chunks = patient_chunks(pids)
    out: dict[str, list[pa.Table]] = {}
    with patient_partitions(store, chunks, sparse=True) as reads:
        for chunk, src in zip(chunks, reads):
            for m, t in embedding_tables(src, net, version, batch_size=batch_size, patients=chunk).items():
                out.setdefault(m, []).append(t)
    return {m: pa.concat_tables(ts) for m, ts in out.items()}


def update(eng, paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
           after_stage: Callable[[str], None] | None = None, **cfg) -> dict:
    """One nightly run (see module doc). Returns the run log dict; ``log["published"]`` says whether a
    new generation was published, ``log["ok"]`` whether the run succeeded (nothing to publish is ok).
    ``after_stage``: called with each stage name of :data:`STAGES` as it completes (crash tests kill the
    process there); ``cfg``: options of :func:`defaults`."""
    base = defaults()
    unknown = set(cfg) - set(base)
    if unknown:
        raise TypeError(f"unknown nightly option(s) {sorted(unknown)}")
    c = {**base, **cfg}
    art = Artifacts(eng.store.root)
    started = time.time()
    log: dict = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "mode": None,
                 "counts": {}, "seconds": {}, "published": False, "ok": False, "config": c}
    lock = open(art.nightly_lock, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        _run(eng, paths, c, log, after_stage or (lambda stage: None))
    except Exception as e:
        log["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        raise
    finally:
        log["seconds"]["total"] = round(time.time() - started, 3)
        runs = art.runs_dir
        runs.mkdir(exist_ok=True)
        # microseconds in the name: two runs within one second (an unchanged night right after a night) must not
        # overwrite each other's log; names still sort in time order (drift history reads them sorted)
        name = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + f".{int(started * 1e6) % 1_000_000:06d}Z"
                + f"-{os.getpid()}.json")
        atomic_write_bytes(runs / name, json.dumps(log, indent=1, default=str).encode())
        log["log_path"] = str(runs / name)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        eng.reset_searcher()
    return log


def _run(eng, paths, c: dict, log: dict, after_stage: Callable[[str], None]) -> None:
    counts, secs = log["counts"], log["seconds"]
    t = time.time()
    if paths:
        rep = eng.ingest(paths, batch_files=c["batch_files"])
        counts.update({"files": rep.files, "files_already_ingested": rep.files_already_ingested,
                       "records": rep.records, "in": sum(rep.accepted.values()) - rep.updated,
                       "updated": rep.updated, "deleted": rep.deleted, "quarantined": rep.quarantined,
                       "duplicates": rep.duplicates})
    secs["ingest"] = round(time.time() - t, 3)
    after_stage("ingest")

    model = eng.require_model()
    version = model["model_version"]
    gens = eng.generations()
    cur = gens.current()
    log["generation_before"] = cur["generation"] if cur else None
    log["model_version"] = version
    batches = store_batches(eng.store)
    full = (cur is None or cur.get("model_version") != version or "batches" not in cur
            or not gens.embedding_counts(version))
    t = time.time()
    if full:
        log["mode"] = "full"
        # a first build is the drift baseline; a new model is another space: no comparison
        log["drift"] = "baseline" if cur is None or cur.get("model_version") == version else "n/a"
        emb = eng.embed(batch_size=c["batch_size"], device=c["device"])        # records the batches it covers
        batches = set(Artifacts(eng.store.root).read_batches(version))
        counts["embedded"] = sum(emb.values())
        secs["embed"] = round(time.time() - t, 3)
        after_stage("embed")
        t = time.time()
        info = gens.build(version, factory=c["factory"], publish=False, extra={"batches": sorted(batches)})
        checked = None
    else:
        new = batches - set(cur["batches"])
        if not new:
            log.update(mode="unchanged", ok=True, generation_after=cur["generation"], drift="ok", drift_metrics={})
            return
        log["mode"] = "incremental"
        pids = changed_patients(eng.store, new)
        counts["patients_changed"] = len(pids)
        # the engine keeps the loaded model: a long-lived worker (``watch``) loads it once, not every night
        net = eng.loaded_model(device=c["device"])
        tabs = _embed_patients(eng.store, net, version, c["batch_size"], sorted(pids))
        counts["embedded"] = sum(x.num_rows for x in tabs.values())
        bdir = Artifacts(eng.store.root).generation_dir(cur["generation"])
        pid_arr = pa.array(sorted(pids), pa.string())
        changes = {}
        from raretarget.apps import drift

        log["drift_metrics"] = {}
        if c["delta"]:          # delta embedding files and a base + delta index: raretarget/apps/nightly_delta.py
            from raretarget.apps.nightly_delta import night_changes

            changes = night_changes(gens, cur, version, tabs, pids, c, log, batches=sorted(new))
        for m in ([] if c["delta"] else sorted(set(gens.embedding_counts(version)) | set(tabs))):
            if m == "gene":
                continue
            old = gens.read_embeddings(version, m)
            newt = tabs.get(m)
            log["drift_metrics"][m] = drift.table_drift(old, newt, k=c["k"], seed=c["seed"], cfg=c["drift"])
            keep = old.filter(pc.invert(pc.fill_null(pc.is_in(old.column("patient_id"), value_set=pid_arr), False)))
            if newt is not None and newt.num_rows:
                newt = newt.select(keep.column_names).cast(keep.schema) if keep.num_rows else newt
                merged = pa.concat_tables([keep, newt]) if keep.num_rows else newt
            else:
                merged = keep
            if newt is None and keep.num_rows == old.num_rows:
                pass                                    # untouched modality: no rewrite
            elif merged.num_rows:
                gens.write_embeddings(version, m, merged)
            else:
                Artifacts(eng.store.root).embeddings_file(version, m).unlink(missing_ok=True)
            from raretarget.index.delta import index_ids
            from raretarget.index.generations import vectors_of

            base_ids = index_ids(bdir, m, cur)          # the live ids, also of a base + delta generation
            mids = merged.column("record_id").to_numpy() if merged.num_rows else np.zeros(0, np.int64)
            rm = np.setdiff1d(base_ids, mids)
            add_mask = np.isin(mids, base_ids, invert=True)
            if newt is not None and newt.num_rows:
                add_mask |= np.isin(mids, newt.column("record_id").to_numpy())
            add_ids = mids[add_mask]
            add_vecs = vectors_of(merged)[add_mask] if merged.num_rows else None
            changes[m] = (rm, add_ids, add_vecs)
        log["drift"] = drift.status(log["drift_metrics"], c["drift"])
        counts["index_removed"] = int(sum(len(v[0]) for v in changes.values()))
        counts["index_added"] = int(sum(len(v[1]) for v in changes.values()))
        secs["embed"] = round(time.time() - t, 3)
        after_stage("embed")
        t = time.time()
        if c["delta"]:
            from raretarget.index.delta import build_generation

            info = build_generation(gens, cur, changes, compact_fraction=c["compact_fraction"],
                                    compact_every=c["compact_every"], extra={"batches": sorted(batches)})
        else:
            info = gens.build_incremental(cur, changes, extra={"batches": sorted(batches)})
        checked = [m for m, (rm, add, _) in changes.items() if len(rm) or len(add)]
        log["recall_checked"] = checked
    secs["index"] = round(time.time() - t, 3)
    log["generation_built"] = info["generation"]
    after_stage("index")

    t = time.time()
    rc = recall_check(gens, info, version, c["sample_queries"], c["k"], c["seed"], modalities=checked)
    secs["recall_check"] = round(time.time() - t, 3)
    log["recall"] = {m: round(v["recall"], 4) for m, v in rc.items()}
    log["recall_min"] = min(log["recall"].values()) if rc else 1.0
    bad = [m for m, v in rc.items() if not v["ids_match"]]
    if bad or log["recall_min"] < c["recall_threshold"]:
        log["failure"] = (f"index ids differ from embedding ids in {bad}" if bad else
                          f"recall@{c['k']} {log['recall_min']:.3f} below threshold {c['recall_threshold']}")
        gens.discard(info)
        log["generation_after"] = log["generation_before"]
        return
    t = time.time()
    gens.publish(info, keep=c["keep_generations"])
    secs["publish"] = round(time.time() - t, 3)
    log.update(published=True, ok=True, generation_after=info["generation"],
               index_count=sum(info["counts"].values()))
    after_stage("publish")


def watch(eng, paths=None, *, every: float, runs: int | None = None, sleep: Callable[[float], None] = time.sleep,
          **cfg):
    """A long-lived nightly worker: :func:`update` every ``every`` seconds (start to start; a run longer than
    ``every`` is followed by the next at once), ``runs`` times (None: until interrupted). Yields each run's log.

    Why: a night in a fresh process pays Python's start, importing torch / transformers / MONAI and loading the
    model (~9 of a 1 % night's ~13 CPU s at 10k patients on 2 cores, benchmarks/RESULTS.md); here they are paid by
    the first run only (the engine keeps the model, the writer's identifier sets and the reference tables). A run that
    raises is logged (its run log is written by :func:`update`) and yielded as ``{"ok": False, "error": ...}``:
    one bad night does not stop the worker. ``paths`` are read again each run; files ingested before are skipped
    by content hash, so a drop folder can keep its old files (hashing them is the cost: prefer a folder per night
    or clear it)."""
    if every < 0:
        raise ValueError(f"every must be >= 0 seconds, got {every}")
    n = 0
    while runs is None or n < runs:
        t0 = time.monotonic()
        try:
            log = update(eng, paths, **cfg)
        except Exception as e:  # noqa: BLE001  (the run log on disk has it too; the worker goes on)
            log = {"ok": False, "published": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        yield log
        n += 1
        if runs is None or n < runs:
            sleep(max(0.0, every - (time.monotonic() - t0)))
