"""Benchmark: nightly incremental update vs full rebuild, measured in the same run.

``python scripts/bench_nightly.py [--sizes 300 1000 3000] [--fractions 0.001 0.01 0.1] [--model default|tiny]``

For each store size N: a generated cohort of N patients is ingested, a model (trained once on the
first store, then copied) embeds it and the index is built. Then, for each fraction f, a night of
max(1, round(f*N)) new patients is generated, and on two copies of the store:

* **nightly**: ``Engine.update(night)`` (ingest the night's files, re-embed the changed patients,
  patch the index, recall check, publish);
* **full rebuild**: what a store without the incremental path must do for the same night: ingest
  the same files, then ``embed()`` every record and ``build_index()`` from scratch.

Both include the night's ingest, so the ratio compares the same job done two ways; the table also
gives the ratio without ingest (embedding + index work only). ``--model default`` is the model a
user runs (frozen all-MiniLM-L6-v2 text tower, default towers and ``embed_dim``); ``--model tiny``
(random 2-layer text tower, 32-d) is there for quick runs: with it, embedding costs almost nothing
and the fixed costs of any run dominate. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TRAIN = {"tiny": {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 16,
                  "model.knowledge.steps": 0},
         "default": {"max_epochs": 1, "model.knowledge.steps": 0}}


def _copy_store(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    shutil.copytree(Path(str(src) + ".links"), Path(str(dst) + ".links"))


def _rm_store(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(Path(str(p) + ".links"), ignore_errors=True)


def main(argv=None) -> int:
    from raretarget import Engine
    from raretarget.synth import cohort
    from raretarget.machine import describe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    ap.add_argument("--model", choices=sorted(TRAIN), default="default")
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
        eng.ingest(src)
        if model_dir is None:
            eng.train(**TRAIN[a.model])
            model_dir = base / "models"
        else:
            shutil.copytree(model_dir, base / "models")
        eng.embed()
        eng.build_index()
        records = sum(eng.status()["embeddings"].values())
        for f in a.fractions:
            k = max(1, round(f * n))
            night = work / f"night{n}-{f}"
            cohort.generate(night, n_patients=k, seed=10_000 + n + k, n_background_variants=10)
            store = work / f"s{n}-{f}"
            _copy_store(base, store)
            t = time.perf_counter()
            log = Engine.open(store).update([night])
            t_night = time.perf_counter() - t
            assert log["published"], log
            _rm_store(store)
            _copy_store(base, store)
            e = Engine.open(store)
            t = time.perf_counter()
            e.ingest([night])
            t_ing = time.perf_counter() - t
            e.embed()
            e.build_index()
            t_full = time.perf_counter() - t
            rows.append((n, records, f, k, log["counts"].get("patients_changed"), log["seconds"], t_night, t_full,
                         t_ing))
            print(f"N={n} f={f}: night {t_night:.2f}s full {t_full:.2f}s", file=sys.stderr, flush=True)
            _rm_store(store)
    print(f"\nmachine: {describe()}, date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, command: python scripts/bench_nightly.py --model {a.model} "
          f"--sizes {' '.join(map(str, a.sizes))} --fractions {' '.join(map(str, a.fractions))}\n")
    print("| patients (embedded records) | night adds | nightly s: total (ingest / embed / index / recall) "
          "| full rebuild s: total (ingest / embed+build) | nightly / full | same, without ingest |")
    print("|---:|---:|---|---|---:|---:|")
    for n, recs, f, k, changed, secs, tn, tf, ti in rows:
        parts = " / ".join(f"{secs.get(s, 0):.2f}" for s in ("ingest", "embed", "index", "recall_check"))
        rest = tn - secs.get("ingest", 0)
        print(f"| {n} ({recs}) | {f:.1%} ({k}) | {tn:.2f} ({parts}) | {tf:.2f} ({ti:.2f} / {tf - ti:.2f}) "
              f"| {tn / tf:.1%} | {rest / (tf - ti):.1%} |")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
