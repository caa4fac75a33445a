"""Shared test helpers: paths to fixtures and ../shared/data, and a full-text dump of a store."""

from __future__ import annotations

import os

# faiss/torch OpenMP threads busy-wait by default; on a shared 2-core machine that makes them 10-25x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test (marked realdata) when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (../shared/data is for developers and CI only)")
    return p


def store_text(root: Path) -> str:
    """Every value of every Parquet file under ``root`` as text, plus the raw bytes of other files.

    Parquet pages are compressed, so grepping bytes would miss leaked strings: decode them instead.
    """
    chunks: list[str] = []
    for f in sorted(Path(root).rglob("*")):
        if not f.is_file():
            continue
        chunks.append(str(f.relative_to(root)))
        if f.suffix == ".parquet":
            t = pq.read_table(f)
            chunks.append(str(t.schema.metadata or ""))
            for col in t.columns:
                chunks.extend(str(v) for v in col.to_pylist())
        else:
            chunks.append(f.read_bytes().decode("utf-8", "replace"))
    return "\n".join(chunks)
