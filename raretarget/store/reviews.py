"""Where the experts' verdicts live in a store, and how they are read back (written by :mod:`raretarget.review`).

Layout (inside ``<store>/``, :meth:`raretarget.store.artifacts.Artifacts.reviews_dir`)::

    reviews/hypotheses/<hypothesis id>.json        the ranked hypothesis (HPO ids, scrubbed text), written once
    reviews/verdicts/<YYYY-MM-DD>/<time>-<id>.parquet   one verdict per file (VERDICTS_SCHEMA), never rewritten

Readers here take an Engine, a Context, a :class:`raretarget.store.Store` or a store path, so training reads
verdicts without an Engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute in verdicts)

from .artifacts import Artifacts

#: one row per verdict; ``phenotypes`` / ``excluded``: the hypothesis' HPO ids (for training pairs)
VERDICTS_SCHEMA = pa.schema([
    ("review_id", pa.string()), ("time", pa.timestamp("ms", tz="UTC")), ("hypothesis_id", pa.string()),
    ("gene", pa.string()), ("verdict", pa.string()), ("note", pa.string()), ("reviewer", pa.string()),
    ("phenotypes", pa.list_(pa.string())), ("excluded", pa.list_(pa.string())),
])


def reviews_root(store) -> Path:
    """``<store>/reviews`` of an Engine / Context (``.store``), a Store (``.root``) or a store path."""
    if isinstance(store, (str, os.PathLike)):
        return Artifacts(store).reviews_dir            # (a Path's own .root is "/", never the store's)
    if hasattr(store, "store"):
        store = store.store
    return Artifacts(store.root).reviews_dir


def verdicts(store, hypothesis_id: str | None = None) -> pa.Table:
    """Every stored verdict (the full history), oldest first; only one hypothesis' with ``hypothesis_id``."""
    import pyarrow.parquet as pq

    files = sorted((reviews_root(store) / "verdicts").glob("*/*.parquet"))
    if not files:
        return VERDICTS_SCHEMA.empty_table()
    t = pa.concat_tables([pq.read_table(f, schema=VERDICTS_SCHEMA) for f in files])
    if hypothesis_id is not None:
        t = t.filter(pa.compute.equal(t.column("hypothesis_id"), hypothesis_id))
    return t.sort_by([("time", "ascending"), ("review_id", "ascending")])


def latest_verdicts(store, hypothesis_id: str) -> dict[str, dict]:
    """``{gene: latest verdict row}`` of a hypothesis."""
    out: dict[str, dict] = {}
    for r in verdicts(store, hypothesis_id).to_pylist():
        out[r["gene"]] = r                          # sorted by time: the last one wins
    return out


def training_pairs(store) -> list[tuple[list[str], str, str]]:
    """``(HPO ids, gene, verdict)`` of the latest verdict per (hypothesis, gene) with at least one HPO id:
    the pairs a later training can use (confirmed → positive, rejected → negative). Only HPO ids and gene
    symbols: notes, reviewers and free text never leave here."""
    latest: dict[tuple[str, str], dict] = {}
    for r in verdicts(store).to_pylist():
        latest[(r["hypothesis_id"], r["gene"])] = r
    return [(r["phenotypes"], r["gene"], r["verdict"]) for r in latest.values() if r["phenotypes"]]
