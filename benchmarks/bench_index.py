"""Benchmark raretarget.index.VectorIndex: build time, query throughput, recall@10 vs exact, memory.

    python benchmarks/bench_index.py [--sizes 10000 100000] [--dim 384] [--queries 1000]

Data: gaussian mixture (n/100 clusters of std 0.35 around N(0,1) centres), queries drawn from the same
mixture. Recall@10 is measured against an exact Flat index built in the same run. Throughput is for one
batch of ``--queries`` queries (k=10). Memory = bytes of the serialised faiss index, plus the kept
float32 vectors for lossy codes (IVF-PQ keeps them for rebuilds and exact re-ranking).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on shared small boxes

import argparse
import platform
import sys
import time

import numpy as np


def mixture(n, d, nq, seed=0):
    rng = np.random.default_rng(seed)
    c = max(10, n // 100)
    cent = rng.standard_normal((c, d)).astype(np.float32)
    draw = lambda m: cent[rng.integers(0, c, m)] + 0.35 * rng.standard_normal((m, d)).astype(np.float32)  # noqa: E731
    return draw(n), draw(nq)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args(argv)

    import faiss
    from raretarget.index import VectorIndex, auto_factory

    rows = []
    for n in args.sizes:
        x, q = mixture(n, args.dim, args.queries)
        ids = 10**12 + np.arange(n, dtype=np.int64)
        ivf = auto_factory(max(n, HNSW_MAX := 1_000_000), args.dim).replace(
            f"IVF{int(round(4 * np.sqrt(max(n, HNSW_MAX))))}", f"IVF{max(16, int(round(4 * np.sqrt(n))))}")
        exact_I = None
        for fac in ["Flat", "HNSW32,Flat", ivf]:
            t0 = time.perf_counter()
            idx = VectorIndex.build(x, ids, factory=fac, device="cpu")
            bt = time.perf_counter() - t0
            idx.search(q[:10], 10)  # warm-up
            t0 = time.perf_counter()
            _, I = idx.search(q, 10)
            st = time.perf_counter() - t0
            if exact_I is None:
                exact_I = I
            rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, exact_I)]))
            extra = ""
            if idx.mode == "ivf":
                idx.set_search_params(rerank=0)
                t1 = time.perf_counter(); _, I0 = idx.search(q, 10); st0 = time.perf_counter() - t1
                r0 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I0, exact_I)]))
                extra = f"nprobe={idx.nprobe}; no rerank: recall {r0:.3f}, {args.queries / st0:,.0f} q/s"
            elif idx.efSearch:
                extra = f"efSearch={idx.efSearch}"
            rows.append((n, fac, bt, args.queries / st, 1000 * st / args.queries, rec, idx.index_bytes() / 2**20, extra))
            print(f"  n={n} {fac}: build {bt:.1f}s, {args.queries / st:,.0f} q/s, recall {rec:.3f}", file=sys.stderr)
            del idx

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip(); break
    except OSError:
        pass
    print(f"\n### VectorIndex benchmark\n")
    print(f"- machine: {cpu}, {os.cpu_count()} cores (faiss OpenMP threads: {faiss.omp_get_max_threads()}), "
          f"{platform.system()} {platform.release()}; faiss {faiss.__version__}, CPU")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"- command: `python {' '.join(['benchmarks/bench_index.py'] + (argv if argv is not None else sys.argv[1:]))}`")
    print(f"- d={args.dim}, k=10, one batch of {args.queries} queries, gaussian-mixture data; recall@10 vs exact Flat\n")
    print("| n | factory | build s | queries/s | ms/query | recall@10 | memory MiB | notes |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for n, fac, bt, qps, ms, rec, mib, extra in rows:
        print(f"| {n:,} | {fac} | {bt:.2f} | {qps:,.0f} | {ms:.3f} | {rec:.3f} | {mib:.1f} | {extra} |")


if __name__ == "__main__":
    main()
