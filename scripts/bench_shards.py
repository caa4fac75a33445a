"""Benchmark: ``Engine.embed()`` in one process vs ``Engine.embed(workers=N)`` (spawned shard processes + merge),
on an existing store with a trained model, measured in the same run.

    python scripts/bench_shards.py STORE [--workers 2]
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    from raretarget import Engine
    from raretarget.machine import describe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    eng = Engine.open(a.store)
    t = time.perf_counter()
    one = eng.embed()
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    many = eng.embed(workers=a.workers)
    tn = time.perf_counter() - t
    print(f"machine: {describe()}; records {sum(one.values())}; embed() {t1:.1f}s; embed(workers={a.workers}) "
          f"{tn:.1f}s; speed-up {t1 / tn:.2f}x; same counts {one == many}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
