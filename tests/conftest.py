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


class CohortStore:
    """A generated cohort ingested into a store: ``dir`` (the cohort folder), ``root`` (the store's parent folder),
    ``eng`` (an Engine on the store), ``truth`` (``truth.json``: diseases, patients, causal genes)."""

    def __init__(self, root: Path, eng, truth: dict):
        self.root, self.dir, self.eng, self.truth = root, root / "c", eng, truth

    def __iter__(self):                      # tmp, eng, truth = cohort_store(...)
        return iter((self.root, self.eng, self.truth))


@pytest.fixture(scope="session")
def cohort_store(tmp_path_factory):
    """The one builder of generated-cohort stores: ``cohort_store(n_patients, seed, kinds=("fhir", "dicom", "vcf"),
    **generate_options)`` → :class:`CohortStore`, generated (:func:`raretarget.synth.cohort.generate`) into
    ``<root>/c`` and ingested into ``<root>/s`` once per session (per xdist worker) for each distinct set of
    arguments. Modules asking the same arguments share the store: a test that writes to it (reviews, audit,
    models) does so for everyone with those arguments."""
    import json

    from raretarget import Engine
    from raretarget.synth.cohort import generate, read_truth

    built: dict[tuple, CohortStore] = {}

    def make(n_patients: int, seed: int, kinds=("fhir", "dicom", "vcf"), **options) -> CohortStore:
        key = (n_patients, seed, tuple(kinds), tuple(sorted(options.items())))
        if key not in built:
            root = tmp_path_factory.mktemp(f"cohort{n_patients}s{seed}")
            generate(root / "c", n_patients=n_patients, seed=seed, **options)
            eng = Engine.open(root / "s", create=True)
            eng.ingest([root / "c" / k for k in kinds])
            built[key] = CohortStore(root, eng, read_truth(root / "c"))
        return built[key]

    return make
