"""Ingest throughput benchmark: FHIR resources/s against a full fhir.resources validation baseline.

    python benchmarks/bench_ingest.py [--fhir ../shared/data/fhir/synthea_r4_dev.tar.xz] [--bundles 200]

Measured in one run, one process (so one core), on the same files:
  * raretarget fast path: ``Engine.ingest`` end to end (parse, normalise units, map HPO, de-identify,
    pseudonymise, write Parquet, commit), reference tables loaded before the clock starts;
  * raretarget with ``fhir_validate="full"`` (each stored resource validated with R4B models);
  * baseline: ``fhir.resources.R4B.bundle.Bundle.model_validate`` of each whole Bundle, parse only
    (no normalisation, no write), i.e. what a pydantic-first reader costs before doing any work.
DICOM and VCF have their own scripts (bench_dicom.py, bench_vcf.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def extract_bundles(src: Path, n: int, dest: Path) -> list[Path]:
    if src.is_dir():
        files = sorted(p for p in src.glob("*.json"))[:n]
        return files
    out = []
    with tarfile.open(src, "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".json") and "Information" not in m.name:
                tf.extract(m, dest, filter="data")
                out.append(dest / m.name)
                if len(out) >= n:
                    break
    return out


def machine() -> str:
    from raretarget.machine import describe

    return describe()


def bench_fhir(files: list[Path], baseline_files: int) -> list[tuple[str, int, float]]:
    from raretarget import Engine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        for mode in ("none", "full"):
            sub = folder if mode == "none" else Path(tmp) / "in_small"
            if mode == "full":
                sub.mkdir()
                for f in files[:baseline_files]:
                    shutil.copy(f, sub / f.name)
            eng = Engine.open(Path(tmp) / f"store_{mode}", create=True)
            eng.resources.units, eng.resources.phenotypes          # load reference tables off the clock
            t0 = time.perf_counter()
            rep = eng.ingest([sub], fhir_validate=mode)
            rows.append((f"raretarget ingest, fhir_validate={mode}", rep.records, time.perf_counter() - t0))
        from fhir.resources.R4B.bundle import Bundle

        n = 0
        t0 = time.perf_counter()
        for f in files[:baseline_files]:
            doc = orjson.loads(f.read_bytes())
            Bundle.model_validate(doc)
            n += len(doc.get("entry", []))
        rows.append(("baseline: fhir.resources R4B Bundle.model_validate (parse only)", n, time.perf_counter() - t0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fhir", default=str(ROOT.parent / "shared/data/fhir/synthea_r4_dev.tar.xz"))
    ap.add_argument("--bundles", type=int, default=200)
    ap.add_argument("--baseline-bundles", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = extract_bundles(Path(args.fhir), args.bundles, Path(tmp))
        rows = bench_fhir(files, args.baseline_bundles)
    base = rows[-1][1] / rows[-1][2]
    print(f"### FHIR ingest ({dt.date.today()}, {machine()})\n")
    print(f"command: `python {' '.join(sys.argv)}`\n")
    print("| path | resources | seconds | resources/s | vs baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, n, sec in rows:
        print(f"| {name} | {n} | {sec:.2f} | {n / sec:,.0f} | {n / sec / base:.1f}x |")


if __name__ == "__main__":
    main()
