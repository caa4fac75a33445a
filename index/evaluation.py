"""Recall of an index generation against exact search over the embeddings it was built from (the check a nightly
update runs before it publishes a generation)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def recall_check(gens, info: dict, model_version: str, sample_queries: int = 200, k: int = 10,
                 seed: int = 0, modalities: Sequence[str] | None = None) -> dict:
    """Per modality: ids of the index == ids of the embeddings, and recall@k of the index against
    exact search over the embeddings for a random sample of embedded vectors used as queries.
    ``modalities``: check only these (an incremental night skips the modalities whose index files are
    hard links of the already-checked current generation)."""
    from .delta import exact_kth
    from .generations import vectors_of

    indexes = gens.open(generation=info)
    rng = np.random.default_rng(seed)
    out = {}
    for m, idx in indexes.items():
        if modalities is not None and m not in modalities:
            continue
        t = gens.read_embeddings(model_version, m, ["record_id", "vector"])
        ids = t.column("record_id").to_numpy()
        same = len(idx) == len(ids) and np.array_equal(np.sort(idx.ids()), np.sort(ids))
        vecs = vectors_of(t)
        kk = min(k, len(ids))
        if kk == 0:
            out[m] = {"recall": 1.0, "ids_match": same, "queries": 0}
            continue
        q = vecs[rng.choice(len(ids), size=min(sample_queries, len(ids)), replace=False)]
        kth = exact_kth(q, vecs, kk)                                    # k-th best exact score per query
        got_s, got = idx.search(q, kk)
        # a returned id counts when its exact score reaches the k-th exact score (ties are not misses)
        order = np.argsort(ids, kind="stable")
        at = np.clip(np.searchsorted(ids[order], got), 0, len(ids) - 1)
        found = ids[order][at] == got                                   # returned ids that are embedded rows
        rows = order[at]                                                # (nq, kk) row of each returned id
        score = np.einsum("qkd,qd->qk", vecs[rows], q)                  # their exact scores
        hits = ((score >= kth[:, None] - 1e-5) & found).sum(1) / kk
        out[m] = {"recall": float(np.mean(hits)), "ids_match": bool(same), "queries": int(len(q))}
    return out
