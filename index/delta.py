"""Base + delta index: a night's index generation without rewriting the base index.

Per modality, a night's generation holds

* the **base**: the :class:`VectorIndex` of an earlier generation, unchanged (its files hard-linked);
* the **delta**: an exact ``Flat`` :class:`VectorIndex` of every vector added or changed since that base;
* the **mask**: the base ids deleted or changed since that base (int64, sorted).

:class:`DeltaIndex` searches both and merges the two top-k lists by score, so for an exact (Flat)
base the result equals exact search over the logical table (base minus mask, plus delta); for an
approximate base it is the base's approximation with masked ids left out, plus exact delta hits.

Layout inside ``<store>/index/gen-<NNNNNN>/``::

    <modality>/                    the base VectorIndex (hard links of the base generation's files)
    _delta/<modality>/masked.npy   base ids no longer live (deleted, or replaced by a delta vector)
    _delta/<modality>/flat/        the delta VectorIndex (absent when the night only deleted)

The generation info (``GENERATION.json``, ``index/CURRENT``) names the modalities in that state under
``"delta"``, with the delta's size and the nights since its base; every other modality is a plain
VectorIndex as before, so generations written before this module read unchanged.

Compaction (:func:`build_generation`, schedule in ``conf/nightly.yaml``): when a modality's delta
vectors plus masked ids exceed ``compact_fraction`` of its base, or after ``compact_every`` nights with
changes, the night folds the delta into a new base (base minus mask, plus delta: the copy-and-patch of
:meth:`Generations.build_incremental`) and that modality is a plain VectorIndex again.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from raretarget.arrays import unique
from raretarget.store import atomic_write_bytes

from .vector_index import VectorIndex, l2_normalize

DELTA_DIR = "_delta"


def delta_path(gdir: Path, modality: str) -> Path:
    """Folder of the delta index and mask of ``modality`` in generation folder ``gdir``."""
    return Path(gdir) / DELTA_DIR / modality


# ---- search over arrays ----------------------------------------------------------------------------------
def merge_topk(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge top-k lists ``(nq, k_i)`` (scores float32, ids int64, -1/-inf for missing) into one
    ``(nq, k)`` list, best first; on equal scores the earlier list comes first."""
    d = np.concatenate(scores, axis=1)
    i = np.concatenate(ids, axis=1)
    d = np.where(i == -1, -np.inf, d).astype(np.float32)
    order = np.argsort(-d, axis=1, kind="stable")[:, :k]
    d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    if d.shape[1] < k:                          # fewer candidates than k in all lists together
        pad = k - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return d, np.where(np.isfinite(d), i, -1)


def masked_search(index: VectorIndex, q: np.ndarray, k: int, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``index`` for normalised queries ``q (nq, d)`` leaving out the ids in ``masked``
    (int64, sorted). Over-fetches by the masked share, and searches the rows still short of
    ``min(k, live)`` again with 4x the fetch, so an exact index gives the exact top-k of its live ids.
    Returns ``(scores float32 (nq, k), ids int64 (nq, k))``."""
    nq, n = len(q), len(index)
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    if nq == 0 or n == 0:
        return D, I
    if not len(masked):
        return index.search(q, k)
    live = n - len(masked)
    want = min(k, live)
    # expected masked hits among the first `fetch` results is fetch·|masked|/n: fetch that many more, plus slack
    fetch = min(n, k + int(math.ceil(k * len(masked) / max(1, live))) + 8)
    todo = np.arange(nq)
    while len(todo):
        d, i = index.search(q[todo], fetch)
        ok = (i != -1) & ~np.isin(i, masked)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]          # live hits first, in score order
        w = order.shape[1]
        okw = np.take_along_axis(ok, order, 1)
        D[todo, :w] = np.where(okw, np.take_along_axis(d, order, 1), -np.inf)
        I[todo, :w] = np.where(okw, np.take_along_axis(i, order, 1), -1)
        short = okw.sum(1) < want
        if not short.any() or fetch >= n:
            break
        todo, fetch = todo[short], min(n, fetch * 4)
    return D, I


def exact_kth(q: np.ndarray, vecs: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """The ``k``-th best exact inner product of each query ``q (nq, d)`` over ``vecs (n, d)``, scanned
    ``chunk`` rows at a time (memory ``nq·(chunk + k)`` floats, not ``nq·n``). Returns float32 ``(nq,)``."""
    return exact_kth_blocks(q, (vecs[s:s + chunk] for s in range(0, len(vecs), chunk)), k)


def exact_kth_blocks(q: np.ndarray, blocks, k: int) -> np.ndarray:
    """:func:`exact_kth` over vectors given as blocks ``(n_i, d)`` (e.g. streamed from Parquet): only the running
    top-``k`` per query and one block are held."""
    top = np.full((len(q), 0), -np.inf, np.float32)
    for b in blocks:
        s = np.concatenate([top, q @ b.T], axis=1)
        top = -np.partition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k] if s.shape[1] > k else s
    return top.min(axis=1) if top.shape[1] >= k else np.full(len(q), -np.inf, np.float32)


class DeltaIndex:
    """A base :class:`VectorIndex`, a mask of its ids that are no longer live, and an exact delta index,
    searched as one index (same ``search``/``ids``/``len`` as :class:`VectorIndex`). Read-only."""

    def __init__(self, base: VectorIndex, delta: VectorIndex | None, masked: np.ndarray):
        self.base = base
        self.delta = delta if delta is not None and len(delta) else None
        self.masked = unique(np.asarray(masked, np.int64))
        self.dim = base.dim
        self.meta = base.meta

    def __len__(self) -> int:
        return len(self.base) - len(self.masked) + (len(self.delta) if self.delta is not None else 0)

    def __contains__(self, id_: int) -> bool:
        id_ = int(id_)
        return (self.delta is not None and id_ in self.delta) or (
            id_ in self.base and not np.isin(id_, self.masked))

    def ids(self) -> np.ndarray:
        """Live ids, int64, sorted ascending."""
        b = self.base.ids()
        parts = [b[~np.isin(b, self.masked)]] + ([self.delta.ids()] if self.delta is not None else [])
        return np.sort(np.concatenate(parts))

    def __repr__(self) -> str:
        return (f"DeltaIndex(base={self.base!r}, delta={len(self.delta) if self.delta is not None else 0}, "
                f"masked={len(self.masked)})")

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours over base (masked) + delta; same contract as :meth:`VectorIndex.search`:
        ``(scores float32 (nq, k), ids int64 (nq, k))``, best first, -1/-inf where fewer than ``k`` are live."""
        k = int(k)
        if k < 1:
            raise ValueError("k must be >= 1")
        q = l2_normalize(queries, self.dim, what="queries")
        db, ib = masked_search(self.base, q, k, self.masked)
        if self.delta is None:
            return db, ib
        dd, id_ = self.delta.search(q, k)
        return merge_topk([db, dd], [ib, id_], k)

    @classmethod
    def load(cls, gdir: Path, modality: str, *, expect_meta: Mapping[str, Any] | None = None,
             mmap: bool = True) -> "DeltaIndex":
        gdir = Path(gdir)
        p = delta_path(gdir, modality)
        base = VectorIndex.load(gdir / modality, mmap=mmap, expect_meta=expect_meta)
        delta = VectorIndex.load(p / "flat", mmap=False, expect_meta=expect_meta) if (p / "flat").exists() else None
        return cls(base, delta, np.load(p / "masked.npy"))


# ---- generations -----------------------------------------------------------------------------------------
def _link_tree(src: Path, dst: Path) -> None:
    """Copy a saved index folder as hard links (saved index files are never modified in place)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)


def _save_delta(gdir: Path, modality: str, delta: VectorIndex | None, masked: np.ndarray) -> None:
    p = delta_path(gdir, modality)
    p.mkdir(parents=True, exist_ok=True)
    if delta is not None:
        delta.save(p / "flat")
    buf = io.BytesIO()
    np.save(buf, np.asarray(masked, np.int64))
    atomic_write_bytes(p / "masked.npy", buf.getvalue())


def fold(gdir: Path, modality: str, *, expect_meta: Mapping[str, Any] | None = None) -> VectorIndex:
    """The base + delta of ``modality`` in generation folder ``gdir`` as one in-memory :class:`VectorIndex`
    (base minus mask, plus the delta vectors), to be saved as a new base."""
    d = DeltaIndex.load(gdir, modality, expect_meta=expect_meta)
    idx = VectorIndex.load(Path(gdir) / modality, mmap=False, expect_meta=expect_meta)
    if len(d.masked):
        idx.remove(d.masked)
    if d.delta is not None:
        ids, vecs = d.delta.vectors()
        idx.add(vecs, ids)
    return idx


def index_ids(gdir: Path, modality: str, info: Mapping[str, Any]) -> np.ndarray:
    """Live ids (int64, sorted) of ``modality`` in generation ``info`` stored at ``gdir``, from the saved id
    arrays only (no faiss load)."""
    gdir = Path(gdir)
    if modality not in info.get("counts", {}):
        return np.zeros(0, np.int64)
    b = np.load(gdir / modality / "ids.npy")
    if modality not in info.get("delta", {}):
        return np.sort(b)
    p = delta_path(gdir, modality)
    b = b[~np.isin(b, np.load(p / "masked.npy"))]
    d = np.load(p / "flat" / "ids.npy") if (p / "flat").exists() else np.zeros(0, np.int64)
    return np.sort(np.concatenate([b, d]))


def build_generation(gens, base: dict, changes: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]], *,
                     compact_fraction: float, compact_every: int, extra: dict | None = None) -> dict:
    """A new (unpublished) generation from generation ``base``: per modality ``(remove_ids (r,), add_ids (a,),
    add_vectors (a, D))`` (adding an id already present replaces its vector). Changed modalities get a
    base + delta (the base index files linked, a new delta index and mask), or, when the schedule says so,
    a compacted plain index; unchanged modalities are linked as they are. Same contract as
    :meth:`Generations.build_incremental`; the info lists the compacted modalities under ``"compacted"``."""
    t0 = time.time()
    bdir = gens.artifacts.generation_dir(base["generation"])
    gen, gdir = gens._new_dir()
    model_version = base["model_version"]
    meta = {"model_version": model_version}
    prev_delta = base.get("delta", {})
    counts, delta_info, compacted = {}, {}, []
    empty = np.zeros(0, np.int64)
    for m in sorted(set(base["counts"]) | set(changes)):
        rm, add, vecs = changes.get(m, (empty, empty, None))
        rm, add = np.asarray(rm, np.int64), np.asarray(add, np.int64)
        if m in base["counts"] and not len(rm) and not len(add):          # untouched: linked as it is
            _link_tree(bdir / m, gdir / m)
            if m in prev_delta:
                _link_tree(delta_path(bdir, m), delta_path(gdir, m))
                delta_info[m] = prev_delta[m]
            counts[m] = base["counts"][m]
            continue
        if m not in base["counts"]:                                       # a modality new tonight: small
            if len(add):
                idx = VectorIndex.build(vecs, add, meta={**meta, "modality": m})
                idx.save(gdir / m)
                counts[m] = len(idx)
            continue
        base_ids = np.load(bdir / m / "ids.npy")
        dim = int(json.loads((bdir / m / "manifest.json").read_text())["dim"])
        d_ids, d_vecs, masked = empty, np.zeros((0, dim), np.float32), empty
        if m in prev_delta:                     # the delta so far: tonight's changes replace its entries
            p = delta_path(bdir, m)
            masked = np.load(p / "masked.npy")
            if (p / "flat").exists():
                d_ids, d_vecs = VectorIndex.load(p / "flat", mmap=False).vectors()
        touched = np.union1d(rm, add)
        keep = ~np.isin(d_ids, touched)
        d_ids = np.concatenate([d_ids[keep], add])
        d_vecs = np.concatenate([d_vecs[keep], l2_normalize(vecs, dim)]) if len(add) else d_vecs[keep]
        masked = np.union1d(masked, np.intersect1d(touched, base_ids))
        nights = int(prev_delta.get(m, {}).get("nights", 0)) + 1
        live = len(base_ids) - len(masked) + len(d_ids)
        if live == 0:
            continue
        if len(d_ids) + len(masked) > compact_fraction * len(base_ids) or nights >= compact_every:
            idx = VectorIndex.load(bdir / m, mmap=False, expect_meta=meta)      # fold: base - mask + delta
            if len(masked):
                idx.remove(masked)
            if len(d_ids):
                idx.add(d_vecs, d_ids)
            idx.save(gdir / m)
            counts[m] = len(idx)
            compacted.append(m)
            continue
        _link_tree(bdir / m, gdir / m)
        delta = VectorIndex.build(d_vecs, d_ids, factory="Flat", meta={**meta, "modality": m}) if len(d_ids) else None
        _save_delta(gdir, m, delta, masked)
        counts[m] = live
        delta_info[m] = {"base_generation": int(prev_delta.get(m, {}).get("base_generation", base["generation"])),
                         "nights": nights, "delta": int(len(d_ids)), "masked": int(len(masked)),
                         "base": int(len(base_ids))}
    info = {"generation": gen, "model_version": model_version, "counts": counts,
            "built_at": int(time.time()), "build_seconds": round(time.time() - t0, 3),
            "base_generation": base["generation"], "delta": delta_info, "compacted": compacted, **(extra or {})}
    atomic_write_bytes(gdir / "GENERATION.json", json.dumps(info).encode())
    return info
