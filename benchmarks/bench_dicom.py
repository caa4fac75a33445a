"""DICOM ingest throughput: ``Engine.ingest`` vs plain ``pydicom.dcmread`` + ``pixel_array``.

    python benchmarks/bench_dicom.py [FOLDER] [--repeat N]

FOLDER defaults to ``../shared/data/dicom`` next to the repository. Prints a small markdown table.
The baseline reads the same DICOM files (as the engine's discovery classifies them) with
``dcmread`` and decodes ``pixel_array`` when there is pixel data - no rescale, features,
thumbnails, hashing, pseudonymisation or Parquet commit - so the ratio is the engine's overhead.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _baseline(files: list[Path]) -> tuple[float, int, int]:
    from pydicom import dcmread

    t0 = time.perf_counter()
    decoded = failed = 0
    for f in files:
        try:
            ds = dcmread(f)
            if "PixelData" in ds:
                ds.pixel_array
                decoded += 1
        except Exception:  # noqa: BLE001 - count, like the engine quarantines
            failed += 1
    return time.perf_counter() - t0, decoded, failed


def bench_dicom(folder: str | os.PathLike, repeat: int = 3) -> dict:
    """Best-of-``repeat`` seconds for the engine and the baseline on the DICOM files of ``folder``."""
    from raretarget import Engine
    from raretarget.ingest.core import discover

    folder = Path(folder)
    inputs, _ = discover([folder])
    files = [i.path for i in inputs if i.kind == "dicom"]
    mb = sum(f.stat().st_size for f in files) / 1e6
    eng_times, base_times, rep = [], [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeat):
            tmp = Path(tempfile.mkdtemp(prefix="bench_dicom_"))
            try:
                eng = Engine.open(tmp / "store", create=True)
                t0 = time.perf_counter()
                rep = eng.ingest([folder])
                eng_times.append(time.perf_counter() - t0)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            bt, decoded, failed = _baseline(files)
            base_times.append(bt)
    te, tb = min(eng_times), min(base_times)
    return {
        "files": len(files), "megabytes": round(mb, 1), "records": rep.records,
        "images_stored": rep.accepted.get("images", 0), "quarantined": rep.quarantined,
        "engine_s": te, "engine_files_per_s": len(files) / te,
        "baseline_s": tb, "baseline_files_per_s": len(files) / tb,
        "baseline_decoded": decoded, "baseline_failed": failed, "repeat": repeat,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(REPO.parent / "shared" / "data" / "dicom"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    if not Path(a.folder).is_dir():
        print(f"no such folder: {a.folder}", file=sys.stderr)
        return 2
    r = bench_dicom(a.folder, a.repeat)
    machine = f"{platform.node()} / {platform.processor() or platform.machine()} / {os.cpu_count()} cores / Python {platform.python_version()}"
    print(f"machine: {machine}  ")
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  ")
    print(f"command: `python benchmarks/{Path(__file__).name} {a.folder} --repeat {a.repeat}` (best of {a.repeat})  ")
    print(f"input: {r['files']} DICOM files, {r['megabytes']} MB; engine read {r['records']} records "
          f"(DICOMDIR references included), stored {r['images_stored']} images, quarantined {r['quarantined']}\n")
    print("| pipeline | seconds | files/s |")
    print("|---|---:|---:|")
    print(f"| `Engine.ingest` (parse, decode, rescale, features, thumbnail, pseudonymise, Parquet commit) "
          f"| {r['engine_s']:.2f} | {r['engine_files_per_s']:.0f} |")
    print(f"| baseline `dcmread` + `pixel_array` ({r['baseline_decoded']} decoded, {r['baseline_failed']} failed) "
          f"| {r['baseline_s']:.2f} | {r['baseline_files_per_s']:.0f} |")
    print(f"\nengine / baseline time: {r['engine_s'] / r['baseline_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
