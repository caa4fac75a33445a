"""Approximate index factories on a store's real embeddings: build CPU, recall@10 against exact search, latency.

    python benchmarks/bench_index_real.py STORE [--min-vectors 50000] [--factories HNSW32,Flat IVF{nlist},SQ8]
        [--queries 1000] [--latency-queries 300] [--nprobe 8 16]

For every modality of STORE's current model with at least ``--min-vectors`` vectors (read as
``Generations.build`` reads them) and every factory (exact ``Flat`` first; ``{nlist}`` is replaced by
``auto_factory``'s ``round(4·√n)``; the one ``auto_factory(n, d)`` picks is marked ``(auto)``), in this one process:

* build CPU s / wall s: ``VectorIndex.build`` (normalise, train, add), ``time.process_time`` (all threads) and
  ``time.perf_counter``;
* MiB: ``VectorIndex.index_bytes()`` (serialised index plus, for lossy codes, the kept float32 vectors);
* recall@10 against an exact ``Flat`` ``VectorIndex`` over the same vectors, for ``--queries`` query vectors drawn
  from the same modality ("same", these are indexed vectors) and, where the store has other modalities, as many
  drawn from all the other modalities ("cross"); ``id`` = share of the exact top-10 ids found; ``tie`` = share of
  returned results whose exact cosine is ≥ the exact 10th score − 1e-6 (a duplicate vector returned in place of
  its twin counts as found); ``exact_*_cos_1_10``: median exact cosine of the 1st and 10th neighbour (how far the
  queries are from the indexed vectors);
* latency p50 / p95 ms: ``--latency-queries`` same-modality queries one at a time through ``VectorIndex.search``,
  with faiss's default OpenMP threads (``p50_ms``) and with ``faiss.omp_set_num_threads(1)`` (``p50_1t_ms``: on a
  shared 2-core machine a one-query ``Flat`` search on all threads often waits a scheduler slice, ~8–24 ms, for
  the other core);
* ``--nprobe``: IVF factories are also searched with these ``nprobe`` values (the shipped default first).

Every search goes through ``VectorIndex.search`` with the shipped defaults (nprobe, efSearch, re-rank). Prints one
JSON line per (modality, factory, nprobe); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def recalls(I, D_ex, I_ex, exact_score_of):
    k = I_ex.shape[1]
    rid = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(I, I_ex)]))
    s = exact_score_of(I)                     # (nq, k) exact cosine of each returned id
    rtie = float(np.mean(s >= D_ex[:, -1:] - 1e-6))
    return rid, rtie


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--min-vectors", type=int, default=50_000)
    ap.add_argument("--factories", nargs="*", default=["HNSW32,Flat", "IVF{nlist},SQ8", "IVF{nlist},Flat"])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--nprobe", type=int, nargs="*", default=[])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import faiss

    from raretarget import Engine
    from raretarget.index import VectorIndex, auto_factory
    from raretarget.index.generations import Generations, vectors_of

    version = Engine.open(a.store).current_model()["model_version"]
    gens = Generations(a.store)
    counts = gens.embedding_counts(version)
    rng = np.random.default_rng(a.seed)
    nthreads = faiss.omp_get_max_threads()
    data = {}
    for m, n in counts.items():
        t = gens.read_embeddings(version, m, ["record_id", "vector"])
        data[m] = (np.array(vectors_of(t)), t.column("record_id").to_numpy())
    for m in counts:
        x, ids = data[m]
        n, d = x.shape
        if n < a.min_vectors:
            continue
        q_same = x[rng.choice(n, min(a.queries, n), replace=False)]
        others = np.concatenate([data[o][0] for o in counts if o != m]) if len(counts) > 1 else None
        q_cross = others[rng.choice(len(others), a.queries, replace=False)] if others is not None else None
        exact = VectorIndex.build(x, ids, "Flat", device="cpu")
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        pos = {int(i): p for p, i in enumerate(ids.tolist())}
        truth = {}
        for name, q in (("same", q_same), ("cross", q_cross)):
            if q is None:
                continue
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            D_ex, I_ex = exact.search(q, 10)

            def score_of(I, qn=qn):
                rows = np.vectorize(lambda i: pos.get(int(i), -1))(I)
                s = np.einsum("qkd,qd->qk", xn[np.clip(rows, 0, None)], qn)
                return np.where(rows >= 0, s, -np.inf)

            truth[name] = (q, D_ex, I_ex, score_of)
        lat_q = q_same[: a.latency_queries]

        def latency(idx, threads=None):
            if threads:
                faiss.omp_set_num_threads(threads)
            try:
                idx.search(lat_q[:1], 10)
                ts = []
                for qq in lat_q:
                    t0 = time.perf_counter()
                    idx.search(qq, 10)
                    ts.append(time.perf_counter() - t0)
            finally:
                faiss.omp_set_num_threads(nthreads)
            return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 95) * 1e3)

        nlist = max(16, int(round(4 * math.sqrt(n))))
        for fac in ["Flat"] + a.factories:
            name = fac.replace("{nlist}", str(nlist))
            if fac == "Flat":
                idx, cpu, wall = exact, float("nan"), float("nan")
            else:
                c0, w0 = time.process_time(), time.perf_counter()
                idx = VectorIndex.build(x, ids, name, device="cpu")
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            settings = [None] + ([p for p in a.nprobe if p != idx.nprobe] if idx.mode == "ivf" else [])
            for npb in settings:
                if npb is not None:
                    idx.set_search_params(nprobe=npb)
                label = name + (" (auto)" if name == auto_factory(n, d) else "")
                row = {"modality": m, "n": n, "d": d, "factory": label,
                       "build_cpu_s": round(cpu, 2), "build_wall_s": round(wall, 2),
                       "mib": round(idx.index_bytes() / 2**20, 1),
                       "nprobe": idx.nprobe, "efSearch": idx.efSearch, "rerank": idx.rerank}
                for qname, (q, D_ex, I_ex, score_of) in truth.items():
                    rid, rtie = recalls(idx.search(q, 10)[1], D_ex, I_ex, score_of)
                    row[f"recall_{qname}_id"], row[f"recall_{qname}_tie"] = round(rid, 4), round(rtie, 4)
                    row[f"exact_{qname}_cos_1_10"] = [round(float(np.median(D_ex[:, j])), 3) for j in (0, 9)]
                row["p50_ms"], row["p95_ms"] = (round(v, 3) for v in latency(idx))
                row["p50_1t_ms"], row["p95_1t_ms"] = (round(v, 3) for v in latency(idx, 1))
                print(json.dumps(row), flush=True)
            if idx is not exact:
                del idx


if __name__ == "__main__":
    main()
