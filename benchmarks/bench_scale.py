"""Scale benchmark (issue 20): every stage of the pipeline on generated cohorts of increasing size, each stage in
its own process, timed, with its peak RSS.

``python benchmarks/bench_scale.py --sizes 1000 3000 10000 [--ray-size 1000] [--steps 60] [--out DIR]``

For each size N: a cohort of N patients (:func:`raretarget.synth.cohort.generate`, deterministic; its answer key
answer key in the hidden ``.answer_key/`` folder that ingest skips) and a night of ``max(1, N/100)``
new patients. Stages, each a fresh ``python`` process (so a stage's peak RSS is its own, from
``os.wait4``: the largest resident set of the process or of any child it waited for, not a sum):

* ``generate``: the cohort and the night;
* ``ingest``: ``Engine.ingest`` of fhir/, dicom/, vcf/;
* ``train``: a fixed step budget (``trainer.max_steps``, tiny text tower, 32-d: the pipeline, not MiniLM,
  is timed), no untrained evaluation;
* ``embed``: ``Engine.embed()``; ``index``: ``Engine.build_index()``;
* ``search``: 100 searches (HPO terms of 100 patients of the answer key), p50 per query recorded;
* ``rank``: 100 ``rank_targets`` calls (the same queries), p50 recorded;
* ``night``: ``Engine.update`` with the 1% night.

``--ray-size N``: the same cohort also ingested and embedded through Ray (``ingest(ray=True)``,
``embed(ray=True)``, a local ``ray.init(num_cpus=2)`` inside the stage's process; its peak RSS is the
driver's, Ray's worker processes are not its children).

Writes ``scale.json`` (every figure), ``scale.md`` (a markdown table) and ``scale.svg`` (seconds and peak
MB per stage against N, log-log, drawn here: no plotting package) into ``--out``
(default ``benchmarks/scale``). Never asserts anything: it reports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

TINY = {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "batch_size": 64, "model.knowledge.steps": 0,
        "eval_untrained": False}
STAGES = ["generate", "ingest", "train", "embed", "index", "search", "rank", "night"]
RAY_STAGES = ["ingest_ray", "embed_ray"]


# ---- one stage (child process) ---------------------------------------------------------------------------
def _queries(cohort: Path, n: int = 100) -> list[list[str]]:
    from raretarget.synth.cohort import read_truth

    truth = read_truth(cohort)
    qs = [p["hpo"] for p in truth["patients"] if p.get("hpo")]
    return [qs[i % len(qs)] for i in range(n)]


def _train_overrides(encoders: str, steps: int, knowledge_steps: int) -> dict:
    """``tiny``: the tiny text tower, 32-d (the pipeline, not MiniLM, is timed); ``default``: the config's encoders
    (MiniLM frozen, its ``embed_dim``, the device ``auto`` picks), the knowledge phase cut to ``knowledge_steps``."""
    base = dict(TINY) if encoders == "tiny" else {"model.knowledge.steps": knowledge_steps, "eval_untrained": False}
    return {**base, "trainer.max_steps": steps, "trainer.max_epochs": 1000}


def stage(name: str, work: Path, n: int, steps: int, encoders: str = "tiny", ingest_workers: int = 1,
          knowledge_steps: int = 0) -> dict:
    from raretarget import Engine

    cohort, night, store = work / "cohort", work / "night", work / "store"
    inputs = [cohort / "fhir", cohort / "dicom", cohort / "vcf"]
    out: dict = {}
    if name == "generate":
        from raretarget.synth import cohort as gen

        gen.generate(cohort, n_patients=n, seed=100 + n, n_background_variants=10, image_size=32)
        gen.generate(night, n_patients=max(1, n // 100), seed=10_000 + n, n_background_variants=10, image_size=32)
        out["source_files"] = sum(1 for _ in cohort.rglob("*") if _.is_file())
    elif name in ("ingest", "ingest_ray"):
        dst = store if name == "ingest" else work / "store_ray"
        eng = Engine.open(dst, create=True)
        if name == "ingest_ray":          # the same key as the one-process store: the stores can be compared
            shutil.copyfile(Path(f"{store}.links") / "secret.key", eng.store.links / "secret.key")
            eng = Engine.open(dst)
        rep = eng.ingest(inputs, ray=name == "ingest_ray", workers=1 if name == "ingest_ray" else ingest_workers)
        out.update(records=rep.records, files=rep.files, quarantined=rep.quarantined)
    elif name == "train":
        info = Engine.open(store).train(**_train_overrides(encoders, steps, knowledge_steps))
        out["model_version"] = info.get("model_version")
    elif name in ("embed", "embed_ray"):
        dst = store
        if name == "embed_ray":           # the Ray store gets the same model, then embeds through Ray
            dst = work / "store_ray"
            src_models = store / "models"
            if not (dst / "models").exists():
                shutil.copytree(src_models, dst / "models")
        counts = Engine.open(dst).embed(ray=name == "embed_ray")
        out["vectors"] = sum(counts.values())
        if name == "embed_ray":           # same rows as the single-process embedding?
            from raretarget.index.generations import Generations, vectors_of
            import numpy as np

            ver = Engine.open(store).current_model()["model_version"]
            a, b = Generations(store), Generations(dst)
            out["same_as_one_process"] = all(
                a.read_embeddings(ver, m).sort_by("record_id").column("record_id").equals(
                    b.read_embeddings(ver, m).sort_by("record_id").column("record_id"))
                and np.allclose(vectors_of(a.read_embeddings(ver, m).sort_by("record_id")),
                                vectors_of(b.read_embeddings(ver, m).sort_by("record_id")), atol=1e-5)
                for m in a.embedding_counts(ver))
    elif name == "index":
        info = Engine.open(store).build_index()
        out["vectors"] = sum(info["counts"].values())
    elif name in ("search", "rank"):
        eng = Engine.open(store)
        lat = []
        for q in _queries(cohort):
            t = time.perf_counter()
            if name == "search":
                eng.search(phenotypes=q, k=20)
            else:
                eng.rank_targets(phenotypes=q, k=20)
            lat.append(time.perf_counter() - t)
        out.update(calls=len(lat), p50_ms=1000 * statistics.median(lat), first_ms=1000 * lat[0],
                   max_ms=1000 * max(lat))
    elif name == "night":
        log = Engine.open(store).update([night])
        out.update(published=log.get("published"), patients_changed=log.get("counts", {}).get("patients_changed"))
    else:
        raise SystemExit(f"unknown stage {name}")
    if "torch" in sys.modules:                    # the stage's GPU peak, where it used one
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
            out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _same_store(work: Path) -> bool:
    """The Ray-ingested store equals the one-process store (compared before the night: the Ray stages run
    right after ``index``), every data table row by row, the ledger and the quarantine."""
    from raretarget import Engine
    from raretarget.store import schema as S

    a, b = Engine.open(work / "store"), Engine.open(work / "store_ray")
    return all(a.store.read(t).equals(b.store.read(t)) for t in list(S.DATA_TABLES) + ["quarantine", "ingested"])


# ---- driver ----------------------------------------------------------------------------------------------
def run_stage(name: str, work: Path, n: int, steps: int, log: Path, extra: Sequence[str] = ()) -> dict:
    """Run one stage in a fresh interpreter; seconds (wall), CPU seconds and peak RSS from wait4. ``extra``: the
    driver's ``--encoders / --ingest-workers / --knowledge-steps`` passed on."""
    res = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(work), "--n", str(n), "--steps", str(steps),
           *extra]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", TOKENIZERS_PARALLELISM="false")
    t, load0 = time.perf_counter(), os.getloadavg()[0]
    with open(log, "a") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    out = {"stage": name, "n": n, "seconds": round(wall, 2), "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
           "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "rc": p.returncode,
           "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}
    if p.returncode == 0 and res.exists():
        out.update(json.loads(res.read_text()))
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def _svg(rows: list[dict], path: Path) -> None:
    """Two log-log panels (seconds, peak MB) against patients, one line per stage."""
    stages = [s for s in STAGES + RAY_STAGES if any(r["stage"] == s for r in rows)]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf"]
    W, H, M = 420, 300, 55
    ns = sorted({r["n"] for r in rows})
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * W + 160}" height="{H + 40}" '
             'font-family="sans-serif" font-size="11">']
    panels = (("seconds", "wall seconds per stage"), ("cpu_seconds", "CPU seconds per stage"),
              ("peak_rss_mb", "peak RSS (MB)"))
    for k, (key, title) in enumerate(panels):
        ox = k * W
        vals = [r[key] for r in rows if r.get(key)]
        lo, hi = math.log10(max(min(vals), 0.01)), math.log10(max(vals))
        lo, hi = math.floor(lo), math.ceil(hi) if hi > lo else math.floor(lo) + 1
        nlo, nhi = math.log10(min(ns)), math.log10(max(ns)) if len(ns) > 1 else math.log10(min(ns)) + 1

        def x(n):
            return ox + M + (math.log10(n) - nlo) / (nhi - nlo) * (W - M - 20)

        def y(v):
            return 20 + (hi - math.log10(max(v, 10 ** lo))) / (hi - lo) * (H - M)

        parts.append(f'<text x="{ox + W / 2}" y="14" text-anchor="middle" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{ox + M}" y="20" width="{W - M - 20}" height="{H - M}" fill="none" stroke="#999"/>')
        for e in range(lo, hi + 1):
            parts.append(f'<text x="{ox + M - 4}" y="{y(10 ** e) + 4}" text-anchor="end">{10 ** e:g}</text>')
            parts.append(f'<line x1="{ox + M}" x2="{ox + W - 20}" y1="{y(10 ** e)}" y2="{y(10 ** e)}" stroke="#eee"/>')
        for n in ns:
            parts.append(f'<text x="{x(n)}" y="{H - M + 36}" text-anchor="middle">{n:,}</text>')
        parts.append(f'<text x="{ox + M + (W - M) / 2}" y="{H - M + 52}" text-anchor="middle">patients</text>')
        for i, s in enumerate(stages):
            pts = sorted((r["n"], r[key]) for r in rows if r["stage"] == s and r.get(key))
            c = colors[i % len(colors)]
            dash = ' stroke-dasharray="4 3"' if s.endswith("_ray") else ""
            if len(pts) > 1:
                parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5"{dash} points="'
                             + " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in pts) + '"/>')
            for n, v in pts:
                parts.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="2.5" fill="{c}"/>')
    for i, s in enumerate(stages):
        parts.append(f'<rect x="{3 * W + 10}" y="{24 + 16 * i}" width="10" height="10" fill="{colors[i % len(colors)]}"/>'
                     f'<text x="{3 * W + 26}" y="{33 + 16 * i}">{s}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _table(rows: list[dict]) -> str:
    """Per stage and size: wall s / CPU s / peak MB (CPU of the stage's process and its waited-for children;
    a Ray stage's workers are not its children), then the growth from the smallest to the largest size."""
    ns = sorted({r["n"] for r in rows})
    lines = ["| stage | " + " | ".join(f"{n:,} patients: wall s / CPU s / peak MB" for n in ns) + " |",
             "|---|" + "---|" * len(ns)]
    for s in STAGES + RAY_STAGES:
        cells = []
        for n in ns:
            r = next((r for r in rows if r["stage"] == s and r["n"] == n), None)
            if r is None:
                cells.append("")
                continue
            extra = f" (p50 {r['p50_ms']:.0f} ms)" if "p50_ms" in r else ""
            cells.append(("FAILED " if r["rc"] else "")
                         + f"{r['seconds']:.1f} / {r['cpu_seconds']:.1f} / {r['peak_rss_mb']:.0f}{extra}")
        if any(cells):
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", *_growth(rows)]
    return "\n".join(lines)


def _growth(rows: list[dict]) -> list[str]:
    """Smallest → largest size: each stage's CPU and peak ratios (with the records or vectors ratio where the
    stage counts them) and, per size, a 1% night's CPU against a full rebuild (ingest + embed + index)."""
    ok = [r for r in rows if not r["rc"]]
    ns = sorted({r["n"] for r in ok})
    if not ns:
        return []
    get = {(r["stage"], r["n"]): r for r in ok}
    out = []
    if len(ns) > 1:
        a, b = ns[0], ns[-1]
        out.append(f"Growth {a:,} → {b:,} patients ({b / a:.1f}x):")
        for s in STAGES + RAY_STAGES:
            ra, rb = get.get((s, a)), get.get((s, b))
            if not ra or not rb:
                continue
            size = next((f", {k} {rb[k] / ra[k]:.1f}x" for k in ("records", "vectors") if ra.get(k) and rb.get(k)), "")
            p50 = f", p50 {rb['p50_ms'] / ra['p50_ms']:.2f}x" if ra.get("p50_ms") and rb.get("p50_ms") else ""
            cpu = rb["cpu_seconds"] / ra["cpu_seconds"] if ra["cpu_seconds"] else float("nan")
            out.append(f"- {s}: CPU {cpu:.1f}x{size}{p50}; peak {rb['peak_rss_mb'] / ra['peak_rss_mb']:.2f}x")
    for n in ns:
        parts = [get.get((s, n)) for s in ("ingest", "embed", "index")]
        night = get.get(("night", n))
        if night and all(parts):
            full = sum(p["cpu_seconds"] for p in parts)
            out.append(f"- 1% night at {n:,}: {night['cpu_seconds']:.1f} CPU s against a full rebuild of "
                       f"{full:.1f} (ingest + embed + index): {100 * night['cpu_seconds'] / full:.1f} %")
    return out


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--ray-size", type=int, default=None, help="also ingest + embed this size through local Ray")
    ap.add_argument("--steps", type=int, default=60, help="training step budget (trainer.max_steps)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("scale")))
    ap.add_argument("--workdir", default=None, help="where cohorts and stores go (default: a temp dir, removed)")
    ap.add_argument("--encoders", choices=["tiny", "default"], default="tiny",
                    help="tiny: 32-d tiny text tower (CPU runs); default: the config's encoders on the auto device")
    ap.add_argument("--knowledge-steps", type=int, default=100, help="knowledge phase steps with --encoders default")
    ap.add_argument("--ingest-workers", type=int, default=1, help="Engine.ingest(workers=)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES,
                    help="run only these stages, in pipeline order (e.g. the GPU ones on a machine without faiss)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:                                   # child: one stage
        if a.stage.endswith("_ray"):
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        work = Path(a.work)
        out = stage(a.stage, work, a.n, a.steps, a.encoders, a.ingest_workers, a.knowledge_steps)
        if a.stage == "embed_ray":
            out["ingest_same_store"] = _same_store(work)
        (work / f"{a.stage}.json").write_text(json.dumps(out))
        return
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    base = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="bench_scale-"))
    rows: list[dict] = []
    extra = ["--encoders", a.encoders, "--ingest-workers", str(a.ingest_workers),
             "--knowledge-steps", str(a.knowledge_steps)]
    t0 = time.perf_counter()
    try:
        for n in a.sizes:
            work = base / f"n{n}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            for s in [s for s in STAGES if s in a.stages]:   # the Ray stages right after index (before the night changes the store)
                r = run_stage(s, work, n, a.steps, outdir / "scale.log", extra)
                rows.append(r)
                if s == "index" and n == a.ray_size:
                    rows.append(run_stage("ingest_ray", work, n, a.steps, outdir / "scale.log", extra))
                    rows.append(run_stage("embed_ray", work, n, a.steps, outdir / "scale.log", extra))
                (outdir / "scale.partial.json").write_text(json.dumps(rows, indent=1) + "\n")
                if r["rc"]:
                    break
            if not a.workdir:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not a.workdir:
            shutil.rmtree(base, ignore_errors=True)
    meta = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
                       f"Python {platform.python_version()}",
            "command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]),
            "gpu": _gpu_name(), "encoders": a.encoders, "ingest_workers": a.ingest_workers,
            "steps": a.steps, "total_seconds": round(time.perf_counter() - t0, 1)}
    (outdir / "scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (outdir / "scale.md").write_text(f"{meta['machine']}; {meta['date']}; `{meta['command']}`\n\n{_table(rows)}\n")
    _svg(rows, outdir / "scale.svg")
    print(_table(rows))


if __name__ == "__main__":
    main()
