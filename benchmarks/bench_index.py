"""Benchmark raretarget.index.VectorIndex: build time, memory, recall@10 vs exact, batched and single-threaded
queries/s and single-query latency, for exact Flat and the approximate default (``auto_factory``).

    python benchmarks/bench_index.py --dim 256 --sizes 100000 1000000        # the issue's measurements
    python benchmarks/bench_index.py [--sizes 10000 100000] [--dim 384] [--queries 1000]
        [--factories Flat auto HNSW32,Flat] [--latency-queries 300] [--exact-subset 100]

Data: gaussian mixture (n/100 clusters of std 0.35 around N(0,1) centres), queries drawn from the same
mixture, k=10. For every size and factory:

* build s: ``VectorIndex.build`` wall time (normalise, train, add), all threads;
* memory: ``VectorIndex.index_bytes()`` = serialised faiss index plus, for lossy codes (every IVF), the kept
  float32 vectors used for rebuilds and exact re-ranking;
* recall@10: against the exact Flat results of the same run, over all ``--queries`` queries;
* batched q/s: one ``search`` of ``--queries`` queries, all faiss OpenMP threads, best of ``--repeat`` runs
  (the best, because other jobs on a small shared machine only ever slow a run down);
* 1-thread q/s: the same batch with ``faiss.omp_set_num_threads(1)``, best of ``--repeat``;
* latency p50/p95: ``--latency-queries`` queries one at a time through ``VectorIndex.search`` (all threads,
  ``time.perf_counter``);
* ``--exact-subset N`` (default 0 = off) times exact Flat's 1-thread batch and latency at n ≥ 500k on N queries
  only (marked ``*``). Beware: Flat's batched (BLAS) throughput drops sharply for small batches — on the
  1M × 256 data, 100 queries ran at ~30 q/s single-threaded against ~240 q/s for 1,000 — so a subset
  understates exact throughput and overstates the speed-up; the default times the full batch.
* speed-up: approximate q/s ÷ exact Flat q/s, same threading (batched / 1-thread).

All searches go through ``VectorIndex.search`` (normalisation, id mapping and re-ranking included).
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


def recall_at(I, Iex):
    k = Iex.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(I, Iex)]))


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000, help="batch size; also the recall query set")
    ap.add_argument("--factories", nargs="+", default=["Flat", "auto"],
                    help="factory strings; 'auto' = auto_factory(n, dim); Flat (exact) is always run first")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--exact-subset", type=int, default=0,
                    help="queries for exact Flat's 1-thread and latency timings at n >= 500k (0 = all)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each batch; the best counts")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    k = args.k

    import faiss
    from raretarget.index import VectorIndex, auto_factory

    nthreads = faiss.omp_get_max_threads()
    load0 = loadavg()
    t_start = time.perf_counter()
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        x, q = mixture(n, args.dim, max(args.queries, args.latency_queries))
        qb = q[: args.queries]
        ids = 10**12 + np.arange(n, dtype=np.int64)
        print(f"n={n}: data {time.perf_counter() - t0:.1f}s (load {loadavg()})", file=sys.stderr, flush=True)
        facs = ["Flat"] + [f for f in args.factories if f != "Flat"]
        exact = None
        for fac in facs:
            name = auto_factory(n, args.dim) if fac == "auto" else fac
            label = f"{name} (auto)" if fac == "auto" else name
            is_exact = fac == "Flat"
            faiss.omp_set_num_threads(nthreads)
            t0 = time.perf_counter()
            idx = VectorIndex.build(x, ids, factory=name, device="cpu")
            bt = time.perf_counter() - t0
            mem = idx.index_bytes()
            idx.search(qb[:10], k)  # warm-up
            def best(qs):
                ts = []
                for _ in range(max(1, args.repeat)):
                    t0 = time.perf_counter()
                    _, I = idx.search(qs, k)
                    ts.append(time.perf_counter() - t0)
                return I, len(qs) / min(ts)

            I, qps_b = best(qb)
            if is_exact:
                exact = {"I": I}
            rec = recall_at(I, exact["I"])
            sub = bool(is_exact and n >= 500_000 and args.exact_subset)
            # single-threaded, batched
            faiss.omp_set_num_threads(1)
            q1 = qb[: args.exact_subset] if sub else qb
            idx.search(q1[:5], k)
            _, qps_1 = best(q1)
            faiss.omp_set_num_threads(nthreads)
            # single-query latency, all threads
            nl = min(args.exact_subset, args.latency_queries) if sub else args.latency_queries
            lat = np.empty(nl)
            for j in range(nl):
                qq = q[j]
                t0 = time.perf_counter()
                idx.search(qq, k)
                lat[j] = time.perf_counter() - t0
            p50, p95 = np.percentile(lat, [50, 95]) * 1e3
            if is_exact:
                exact.update(b=qps_b, s=qps_1)
            notes = []
            if idx.nprobe:
                notes.append(f"nprobe={idx.nprobe}")
            if idx.efSearch:
                notes.append(f"efSearch={idx.efSearch}")
            if idx.rerank:
                notes.append(f"rerank={idx.rerank}·k")
            if sub:
                notes.append(f"*1-thread q/s and latency on {len(q1)}/{nl} queries")
            rows.append(dict(n=n, fac=label, bt=bt, mem=mem, rec=rec, qb=qps_b, q1=qps_1, p50=p50, p95=p95,
                             xb=None if is_exact else qps_b / exact["b"],
                             x1=None if is_exact else qps_1 / exact["s"], sub=sub, notes="; ".join(notes)))
            print(f"  {label}: build {bt:.1f}s, {mem / 2**20:.0f} MiB, recall {rec:.3f}, batched {qps_b:,.0f} q/s, "
                  f"1-thread {qps_1:,.0f} q/s, p50 {p50:.2f} ms (load {loadavg()})", file=sys.stderr, flush=True)
            del idx
        del x, q

    from raretarget.machine import cpu_model

    cpu = cpu_model()
    print("\n### VectorIndex benchmark\n")
    print(f"- machine: {cpu}, {os.cpu_count()} cores (faiss OpenMP threads: {nthreads}), "
          f"{platform.system()} {platform.release()}; faiss {faiss.__version__}, CPU; numpy {np.__version__}")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; total run {time.perf_counter() - t_start:.0f} s")
    print(f"- command: `python {' '.join(['benchmarks/bench_index.py'] + (argv if argv is not None else sys.argv[1:]))}`")
    print(f"- load average (1/5/15 min): {load0} at start, {loadavg()} at end")
    print(f"- d={args.dim}, k={k}, gaussian-mixture data (n/100 clusters); recall@{k} vs exact Flat on {args.queries} "
          f"queries; batched = one batch of {args.queries}, all threads; 1-thread = same batch, "
          f"omp_set_num_threads(1) (both best of {args.repeat}); latency = {args.latency_queries} single queries through VectorIndex.search\n")
    print(f"| n | factory | build s | memory MiB | recall@{k} | batched q/s | speed-up | 1-thread q/s | speed-up "
          "| p50 ms | p95 ms | notes |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        star = "*" if r["sub"] else ""
        xb = "1×" if r["xb"] is None else f"{r['xb']:.0f}×"
        x1 = "1×" if r["x1"] is None else f"{r['x1']:.0f}×"
        print(f"| {r['n']:,} | {r['fac']} | {r['bt']:.1f} | {r['mem'] / 2**20:,.0f} | {r['rec']:.3f} | {r['qb']:,.0f} "
              f"| {xb} | {r['q1']:,.0f}{star} | {x1} | {r['p50']:.2f}{star} | {r['p95']:.2f}{star} | {r['notes']} |")


if __name__ == "__main__":
    main()
