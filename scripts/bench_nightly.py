"""Benchmark: nightly incremental update vs full rebuild (embed everything + build the index).

``python scripts/bench_nightly.py [--sizes 100 300 1000] [--fractions 0.001 0.01 0.1]``

For each store size N: a synthetic cohort of N patients is ingested, the (tiny, trained once on
the smallest store and copied) model embeds it and the index is built. Then, for each fraction f, a
night of max(1, round(f*N)) new patients is applied with ``Engine.update`` on a copy of that store
and a full rebuild (``embed`` + ``build_index``) of the same updated store is timed in the same run.
The ingest of the night is part of the nightly time; the full rebuild does not ingest. A tiny model
(text backbone "tiny", 32-d) keeps this to a few minutes on CPU: absolute times are small, the ratio
night / full is what the benchmark is for (a real model makes embedding, the part the nightly
saves, more expensive, so the ratio only gets better). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY = {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 16,
        "model.knowledge.steps": 0}


def _copy_store(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    shutil.copytree(Path(str(src) + ".links"), Path(str(dst) + ".links"))


def main(argv=None) -> int:
    from raretarget import Engine, cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_nightly-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    model_dir = None
    for n in a.sizes:
        src = work / f"cohort{n}"
        cohort.generate(src, n_patients=n, seed=100 + n, n_background_variants=10)
        base = work / f"base{n}"
        eng = Engine.open(base, create=True)
        t = time.perf_counter()
        eng.ingest(src)
        t_ingest = time.perf_counter() - t
        if model_dir is None:
            eng.train(**TINY)
            model_dir = base / "models"
        else:
            shutil.copytree(model_dir, base / "models")
        eng.embed()
        eng.build_index()
        for f in a.fractions:
            k = max(1, round(f * n))
            night = work / f"night{n}-{f}"
            cohort.generate(night, n_patients=k, seed=10_000 + n + k, n_background_variants=10)
            store = work / f"s{n}-{f}"
            _copy_store(base, store)
            e = Engine.open(store)
            t = time.perf_counter()
            log = e.update([night])
            t_night = time.perf_counter() - t
            assert log["published"], log
            e2 = Engine.open(store)
            t = time.perf_counter()
            e2.embed()
            e2.build_index()
            t_full = time.perf_counter() - t
            rows.append((n, f, k, log["counts"].get("patients_changed"), log["seconds"], t_night, t_full, t_ingest))
            print(f"N={n} f={f}: night {t_night:.2f}s full {t_full:.2f}s", file=sys.stderr, flush=True)
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(Path(str(store) + ".links"), ignore_errors=True)
    print(f"\nmachine: {platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), "
          f"date: {datetime.datetime.now().isoformat(timespec='seconds')}, command: "
          f"python scripts/bench_nightly.py --sizes {' '.join(map(str, a.sizes))} "
          f"--fractions {' '.join(map(str, a.fractions))}\n")
    print("| patients | night adds | patients re-embedded | nightly total s (ingest / embed / index / recall) "
          "| full rebuild s | nightly / full |")
    print("|---:|---:|---:|---|---:|---:|")
    for n, f, k, changed, secs, tn, tf, _ in rows:
        parts = " / ".join(f"{secs.get(s, 0):.2f}" for s in ("ingest", "embed", "index", "recall_check"))
        print(f"| {n} | {f:.1%} ({k}) | {changed} | {tn:.2f} ({parts}) | {tf:.2f} | {tn / tf:.1%} |")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
