"""A nightly run's embedding and index changes as deltas (``conf/nightly.yaml``: ``delta: true``).

Called by :func:`raretarget.apps.nightly.update` for an incremental night, in place of rewriting whole
per-modality embedding files and patching a copy of the whole index:

1. :func:`raretarget.index.embedding_delta.rollback` drops the delta files of earlier attempts of this
   night (killed, or not published), so the night diffs against the table its index generation covers;
2. per modality, the rows of the changed patients are tombstoned and their re-embedded rows upserted,
   all modalities in one delta commit (:func:`raretarget.index.embedding_delta.write`);
3. modalities whose deltas are due (``compact_fraction`` / ``compact_every``) are compacted into a new
   base embedding file;
4. the index changes per modality (ids gone, ids added or changed with their vectors) are diffed
   against the ids of the current generation, which :func:`raretarget.index.delta.build_generation`
   turns into a base + delta index (or a compacted one, on the same schedule).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def night_changes(gens, cur: dict, version: str, tabs: dict[str, pa.Table], pids, c: dict, log: dict,
                  batches=()) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write tonight's delta embedding files; return the index changes per modality ``(remove_ids (r,),
    add_ids (a,), add_vectors (a, D))`` for :func:`raretarget.index.delta.build_generation`. Fills
    ``log["drift_metrics"]`` and ``log["embeddings_delta"]``."""
    from raretarget.apps import drift
    from raretarget.index import embedding_delta as ED
    from raretarget.index.delta import index_ids
    from raretarget.index.generations import vectors_of

    vdir = gens.artifacts.embeddings_dir(version)
    ED.rollback(vdir, cur["generation"])
    pid_arr = pa.array(sorted(pids), pa.string())
    deltas: dict[str, tuple[pa.Table | None, np.ndarray]] = {}
    for m in sorted(set(gens.embedding_counts(version)) | set(tabs)):
        if m == "gene":                             # depends on the model only: never changes in a night
            continue
        # ids and patients only: the drift reads the vectors of its reference sample alone (the whole modality's
        # vectors made the night's memory grow with the store)
        old = gens.read_embeddings(version, m, ["record_id", "patient_id"])
        newt = tabs.get(m)
        log["drift_metrics"][m] = drift.table_drift(
            old, newt, k=c["k"], seed=c["seed"], cfg=c["drift"],
            read_vectors=lambda ids, m=m: gens.read_embeddings(version, m, ["record_id", "vector"], ids=ids))
        hit = pc.fill_null(pc.is_in(old.column("patient_id"), value_set=pid_arr), False)
        tomb = old.filter(hit).column("record_id").to_numpy()          # every old row of a changed patient
        ups = newt if newt is not None and newt.num_rows else None
        if ups is not None or len(tomb):
            deltas[m] = (ups, tomb)
    entry = ED.write(vdir, deltas, generation=cur["generation"], batches=batches)
    log["embeddings_delta"] = {"seq": entry["seq"], **{m: {k: v for k, v in x.items() if k != "base"}
                                                      for m, x in entry["modalities"].items()}}
    compacted = []
    for m in entry["modalities"]:
        if ED.due(ED.pending(vdir, m), c["compact_fraction"], c["compact_every"]):
            ED.compact(vdir, m, lambda t, m=m: gens.write_embeddings(version, m, t))
            compacted.append(m)
    log["embeddings_compacted"] = compacted

    bdir = gens.artifacts.generation_dir(cur["generation"])
    changes = {}
    for m, (ups, _) in deltas.items():
        have = index_ids(bdir, m, cur)
        mids = ED.ids(vdir, m)
        up_ids = ups.column("record_id").to_numpy() if ups is not None else np.zeros(0, np.int64)
        rm = np.setdiff1d(have, mids)
        # ids the index lacks, and tonight's re-embedded rows (their vectors may have changed)
        add = np.union1d(np.setdiff1d(mids, have), np.intersect1d(mids, up_ids))
        from_ups = np.isin(add, up_ids)
        parts_i, parts_v = [], []
        if from_ups.any():
            sel = np.isin(up_ids, add)
            parts_i.append(up_ids[sel])
            parts_v.append(vectors_of(ups)[sel])
        if (~from_ups).any():                       # only after an inconsistent earlier state: read them
            t = gens.read_embeddings(version, m, ["record_id", "vector"])
            sel = np.isin(t.column("record_id").to_numpy(), add[~from_ups])
            t = t.filter(pa.array(sel))
            parts_i.append(t.column("record_id").to_numpy())
            parts_v.append(vectors_of(t))
        add_ids = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
        add_vecs = np.concatenate(parts_v) if parts_v else None
        changes[m] = (rm, add_ids, add_vecs)
    return changes
