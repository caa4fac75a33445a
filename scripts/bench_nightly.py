"""Benchmark: nightly incremental update vs full rebuild, measured in the same run.

``python scripts/bench_nightly.py [--sizes 300 1000 3000] [--fractions 0.001 0.01 0.1] [--model default|tiny]
[--steps N] [--rewrite] [--repeats R] [--workdir DIR [--reuse]] [--out FILE.json]``

For each store size N: a generated cohort of N patients is ingested, a model (trained once on the
first store, then copied) embeds it and the index is built. Then, for each fraction f, a night of
max(1, round(f*N)) new patients is generated, and on two copies of the store:

* **nightly**: ``Engine.update(night)`` (ingest the night's files, re-embed the changed patients,
  patch the index, recall check, publish);
* **full rebuild**: what a store without the incremental path must do for the same night: ingest
  the same files, then ``embed()`` every record and ``build_index()`` from scratch.

Both include the night's ingest, so the ratio compares the same job done two ways; an untimed night on a
scratch copy first warms the process (ontology, unit registry, model), so all timed runs find it warm; the table also
gives the ratio without ingest (embedding + index work only). ``--model default`` is the model a
user runs (frozen all-MiniLM-L6-v2 text tower, default towers and ``embed_dim``); ``--model tiny``
(random 2-layer text tower, 32-d) is there for quick runs: with it, embedding costs almost nothing
and the fixed costs of any run dominate. ``--steps N``: train for a fixed budget of N optimizer steps instead of
one epoch (for large stores, as ``benchmarks/bench_scale.py`` does; embedding cost does not depend on it).
``--rewrite``: also time the night the pre-delta way (``delta=False``: whole embedding files rewritten, the index
copied and patched) on a third copy. ``--repeats R``: each kind R times, interleaved, medians reported. The nightly run uses ``conf/nightly.yaml`` (``delta: true``: delta embedding
files and a base + delta index). Prints a markdown table; ``--out`` also writes every figure as JSON.
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
    ap.add_argument("--steps", type=int, default=None, help="fixed training budget (optimizer steps)")
    ap.add_argument("--rewrite", action="store_true", help="also time the night with delta=False")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each kind, interleaved (medians)")
    ap.add_argument("--reuse", action="store_true", help="reuse base stores and nights left in --workdir")
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_nightly-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, out = [], []
    model_dir = None
    train = dict(TRAIN[a.model])
    if a.steps:
        train.update({"trainer.max_steps": a.steps, "trainer.max_epochs": 1000, "eval_untrained": False})
        train.pop("max_epochs", None)
    for n in a.sizes:
        src = work / f"cohort{n}"
        base = work / f"base{n}"
        if a.reuse and (base / "index" / "CURRENT").exists():     # a base store left by an earlier run
            eng = Engine.open(base)
            model_dir = model_dir or base / "models"
        else:
            t0 = time.perf_counter()
            cohort.generate(src, n_patients=n, seed=100 + n, n_background_variants=10)
            eng = Engine.open(base, create=True)
            eng.ingest(src)
            print(f"N={n}: cohort + ingest {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
            if model_dir is None:
                eng.train(**train)
                model_dir = base / "models"
            else:
                shutil.copytree(model_dir, base / "models")
            eng.embed()
            eng.build_index()
        records = sum(eng.status()["embeddings"].values())
        for f in a.fractions:
            k = max(1, round(f * n))
            night = work / f"night{n}-{f}"
            if not (a.reuse and night.exists()):
                cohort.generate(night, n_patients=k, seed=10_000 + n + k, n_background_variants=10)
            store = work / f"s{n}-{f}"
            if f == a.fractions[0]:     # warm-up, not timed: the three timed runs all find the process warm
                _copy_store(base, store)
                Engine.open(store).update([night])
                _rm_store(store)
            nights, fulls, rewrites = [], [], []
            for _ in range(a.repeats):          # interleaved, medians: the machine's load moves between runs
                _copy_store(base, store)
                t = time.perf_counter()
                log = Engine.open(store).update([night])
                nights.append((time.perf_counter() - t, log))
                assert log["published"], log
                delta_bytes = sum(p.stat().st_size for p in store.glob("embeddings/*/_delta/*") if p.is_file())
                gen_info = Engine.open(store).generations().current() or {}
                _rm_store(store)
                _copy_store(base, store)
                e = Engine.open(store)
                t = time.perf_counter()
                e.ingest([night])
                t_ing = time.perf_counter() - t
                e.embed()
                e.build_index()
                fulls.append((time.perf_counter() - t, t_ing))
                _rm_store(store)
                if a.rewrite:
                    _copy_store(base, store)
                    t = time.perf_counter()
                    rw = Engine.open(store).update([night], delta=False)
                    rewrites.append((time.perf_counter() - t, rw))
                    assert rw["published"], rw
                    _rm_store(store)
            t_night, log = sorted(nights, key=lambda x: x[0])[len(nights) // 2]
            t_full, t_ing = sorted(fulls)[len(fulls) // 2]
            t_rw, rw = sorted(rewrites, key=lambda x: x[0])[len(rewrites) // 2] if rewrites else (None, {})
            rows.append((n, records, f, k, log["counts"].get("patients_changed"), log["seconds"], t_night, t_full,
                         t_ing))
            out.append({"patients": n, "embedded_records": records, "fraction": f, "night_patients": k,
                        "patients_changed": log["counts"].get("patients_changed"), "mode": log["mode"],
                        "night_s": round(t_night, 3), "night_stages_s": log["seconds"], "full_rebuild_s": round(t_full, 3),
                        "full_ingest_s": round(t_ing, 3), "ratio": round(t_night / t_full, 4),
                        "ratio_without_ingest": round((t_night - log["seconds"].get("ingest", 0)) / (t_full - t_ing), 4),
                        "rewrite_night_s": None if t_rw is None else round(t_rw, 3),
                        "rewrite_stages_s": rw.get("seconds"),
                        "all_s": {"night": [round(x[0], 3) for x in nights], "full": [round(x[0], 3) for x in fulls],
                                  "rewrite": [round(x[0], 3) for x in rewrites]},
                        "delta_files_bytes": delta_bytes,
                        "base_files_bytes": sum(p.stat().st_size for p in base.glob("embeddings/*/*.parquet")),
                        "embeddings_delta": log.get("embeddings_delta"),
                        "index_delta": gen_info.get("delta"), "index_compacted": gen_info.get("compacted"),
                        "recall_min": log.get("recall_min")})
            print(f"N={n} f={f}: night {t_night:.2f}s full {t_full:.2f}s"
                  + (f" rewrite-night {t_rw:.2f}s" if t_rw is not None else ""), file=sys.stderr, flush=True)
    print(f"\nmachine: {describe()}, date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, command: python scripts/bench_nightly.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)}\n")
    print("| patients (embedded records) | night adds | nightly s: total (ingest / embed / index / recall) "
          "| full rebuild s: total (ingest / embed+build) | nightly / full | same, without ingest |")
    print("|---:|---:|---|---|---:|---:|")
    for n, recs, f, k, changed, secs, tn, tf, ti in rows:
        parts = " / ".join(f"{secs.get(s, 0):.2f}" for s in ("ingest", "embed", "index", "recall_check"))
        rest = tn - secs.get("ingest", 0)
        print(f"| {n} ({recs}) | {f:.1%} ({k}) | {tn:.2f} ({parts}) | {tf:.2f} ({ti:.2f} / {tf - ti:.2f}) "
              f"| {tn / tf:.1%} | {rest / (tf - ti):.1%} |")
    if a.out:
        import json

        Path(a.out).write_text(json.dumps({"machine": describe(), "argv": sys.argv[1:], "rows": out}, indent=1,
                                          default=str))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
