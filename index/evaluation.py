"""Recall of an index generation against exact search over the embeddings it was built from (the check a nightly
update runs before it publishes a generation)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from raretarget.arrays import unique


def recall_check(gens, info: dict, model_version: str, sample_queries: int = 200, k: int = 10,
                 seed: int = 0, modalities: Sequence[str] | None = None) -> dict:
    """Per modality: ids of the index == ids of the embeddings, and recall@k of the index against
    exact search over the embeddings for a random sample of embedded vectors used as queries.
    ``modalities``: check only these (an incremental night skips the modalities whose index files are
    hard links of the already-checked current generation)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .delta import exact_kth_blocks
    from .generations import vectors_of

    # only the checked modalities' indexes are loaded, and each modality's vectors are streamed: the ids, the
    # sampled queries and the returned rows are all that is held (the whole table's vectors made a night's
    # memory grow with the store)
    indexes = gens.open(generation=info, modalities=modalities)
    rng = np.random.default_rng(seed)
    out = {}

    def rows_of(m: str, want: np.ndarray) -> np.ndarray:
        """Vectors ``(len(want), d)`` of these record ids, in their order."""
        t = gens.read_embeddings(model_version, m, ["record_id", "vector"], ids=unique(want))
        return vectors_of(t.take(pc.index_in(pa.array(want, pa.int64()), value_set=t.column("record_id"))))

    for m, idx in indexes.items():
        ids = gens.read_embeddings(model_version, m, ["record_id"]).column("record_id").to_numpy()
        same = len(idx) == len(ids) and np.array_equal(np.sort(idx.ids()), np.sort(ids))
        kk = min(k, len(ids))
        if kk == 0:
            out[m] = {"recall": 1.0, "ids_match": same, "queries": 0}
            continue
        q = rows_of(m, ids[rng.choice(len(ids), size=min(sample_queries, len(ids)), replace=False)])
        blocks = (vectors_of(t) for t in gens.iter_embeddings(model_version, m, ["record_id", "vector"]))
        kth = exact_kth_blocks(q, blocks, kk)                            # k-th best exact score per query
        got_s, got = idx.search(q, kk)
        # a returned id counts when its exact score reaches the k-th exact score (ties are not misses)
        found = np.isin(got, ids)                                        # returned ids that are embedded rows
        score = np.full(got.shape, -np.inf, np.float32)
        if found.any():
            score[found] = np.einsum("nd,nd->n", rows_of(m, got[found]), np.repeat(q, found.sum(1), axis=0))
        hits = ((score >= kth[:, None] - 1e-5) & found).sum(1) / kk
        out[m] = {"recall": float(np.mean(hits)), "ids_match": bool(same), "queries": int(len(q))}
    return out
