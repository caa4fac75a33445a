"""FAISS cosine top-k over plain arrays, with stable caller ids, deletes/updates and atomic save/load.

Metric: **cosine similarity**. Every vector (stored or query) goes through :func:`l2_normalize` (the
one place normalisation happens; it copies, never mutates the caller's array, and rejects zero
vectors), and the FAISS index uses ``METRIC_INNER_PRODUCT``, so a score is ``cos(q, x)`` in
``[-1, 1]`` (approximate for PQ codes unless re-ranked, see below). Missing results (fewer live
vectors than ``k``) come back as id ``-1`` and score ``-inf``.

Shapes/dtypes: vectors ``float32 (n, d)`` (other float dtypes are converted), ids ``int64 (n,)``
(any integer dtype is converted; ``-1`` is reserved for "missing"), queries ``float32 (nq, d)`` or
``(d,)``; ``search`` returns ``scores float32 (nq, k)`` and ``ids int64 (nq, k)``.

How ids, deletes and updates work, per index family (``VectorIndex.mode``):

``"idmap"``  Flat and other ``IndexFlatCodes`` (``SQ8``, ``PQ16``, ...): ``IndexIDMap2`` holds the
             caller's ids; ``remove_ids`` is native.
``"ivf"``    any IVF factory (``IVF1024,PQ48``, ``IVF256,Flat``, ``PCA64,IVF..``): the IVF index
             holds the caller's ids itself (``add_with_ids``) and removes natively. It is *not*
             wrapped in ``IndexIDMap2``: in faiss (checked on 1.15) ``IndexIDMap*.remove_ids`` over
             an IVF compacts the id map while the IVF keeps the old row labels, which silently
             returns wrong ids afterwards.
``"tomb"``   HNSW (and anything else that cannot ``remove_ids``): ``IndexIDMap2`` holds the caller's
             ids; a removed or replaced vector stays in the graph and its *row* becomes a tombstone,
             excluded at search time with ``SearchParametersHNSW(sel=IDSelectorNot(IDSelectorBatch(rows)))``
             (rows, not ids, because an updated id has a dead old row and a live new one). ``efSearch``
             is raised with the tombstone fraction and rows that still come back short are searched
             again with a larger ``efSearch``, so ``k`` results come back whenever ``k`` are live.
             When tombstones exceed ``compact_fraction`` (default 0.2) of the stored rows the index is
             rebuilt from the live vectors (:meth:`VectorIndex.compact`, also callable directly).

``add`` with an id already present replaces its vector (update); duplicate ids inside one call are
an error. Vectors needed to rebuild are kept: for lossless storage (``Flat``, ``HNSW..,Flat``) they
are reconstructed from the index; for lossy codes (PQ, SQ, every IVF) the normalised float32 vectors
are kept beside the index (``vectors.npy`` + ``vector_ids.npy`` in the saved folder) — that is also
what the exact re-ranking of lossy results uses (``rerank``, default 8, 4 for ``SQ`` codes: fetch
``8·k`` candidates from the codes, re-score them exactly; ``set_search_params(rerank=0)`` turns it off).

GPU: with ``device="auto"`` (default) and faiss-gpu installed with a GPU visible
(``faiss.get_num_gpus() > 0``), Flat and IVF searches run on a GPU copy of the CPU index
(``index_cpu_to_gpu``), made lazily and dropped on every mutation; the CPU index stays the source of
truth, so saving always writes a CPU index. HNSW always stays on CPU. ``device="gpu"`` raises when no
GPU is available; ``device="cpu"`` never uses one.

``import raretarget.index`` does not import faiss; it is imported inside the functions that need it.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

FORMAT_VERSION = 1
METRIC = "cosine"

#: auto factory thresholds. Exact search costs n·d multiply-adds a query: ``Flat`` while that is below
#: ``FLAT_MAX`` vectors of ``FLAT_DIM`` dimensions (50k × 256: p50 ≈ 1.7 ms a query on one core, issue-6 table),
#: i.e. up to 50k vectors at 256-d and 400k at 32-d
FLAT_MAX = 50_000
FLAT_DIM = 256
HNSW_MAX = 1_000_000


class IndexMismatchError(ValueError):
    """A saved index does not match what the caller expects (encoder version, dimension, ...)."""


def _faiss():
    import faiss  # lazy: importing raretarget.index must stay cheap

    return faiss


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def l2_normalize(x: Any, dim: int | None = None, what: str = "vectors", *, inplace: bool = False) -> np.ndarray:
    """Return a new C-contiguous float32 ``(n, d)`` array of unit rows; never mutates ``x``, unless ``inplace``
    and ``x`` is already a writable C-contiguous float32 array: then ``x`` itself is normalised and returned
    (a caller that owns a large array saves one copy of it).

    A 1-D input is treated as one row. Raises ``ValueError`` on a wrong dimension, non-finite values,
    or a zero (or numerically zero) row: a zero vector has no direction, so no cosine.
    """
    own = (inplace and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous
           and x.flags.writeable)
    a = x if own else np.array(x, dtype=np.float32, copy=True, order="C")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (n, d) array, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{what}: dimension {a.shape[1]} does not match the index dimension {dim}")
    if a.shape[0] == 0:
        return a
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    norms = np.linalg.norm(a.astype(np.float64), axis=1)
    bad = np.flatnonzero(norms < 1e-12)
    if bad.size:
        raise ValueError(f"{what}: {bad.size} zero vector(s) (rows {bad[:5].tolist()}); "
                         "cosine similarity is undefined for a zero vector")
    a /= norms[:, None].astype(np.float32)
    return a


def _as_ids(ids: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"ids: expected a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"ids: expected integers (int64), got dtype {a.dtype}")
    a = a.astype(np.int64, copy=True)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"ids: {a.shape[0]} ids for {n} vectors")
    if (a == -1).any():
        raise ValueError("ids: -1 is reserved for 'missing result'")
    return a


def _check_unique(ids: np.ndarray) -> None:
    u, c = np.unique(ids, return_counts=True)
    if (c > 1).any():
        raise ValueError(f"duplicate ids in one call: {u[c > 1][:5].tolist()}")


def _largest_divisor_at_most(d: int, limit: int) -> int:
    for m in range(max(1, min(d, limit)), 0, -1):
        if d % m == 0:
            return m
    return 1


def auto_factory(n: int, d: int, memory: str = "normal") -> str:
    """Pick a faiss factory string by collection size (all used with the inner-product metric).

    * ``n · d < 50_000 · 256`` (``FLAT_MAX · FLAT_DIM``): ``"Flat"`` — exact, no training, linear build time,
      and fast enough at this much work a query (p50 ≈ 1.7 ms on one core at 50k × 256; the bound is on the
      work, not the count: at 32-d it allows 400k vectors). On the 100k-patient store's real 32-d embeddings
      exact search beat every approximate index on recall (HNSW32 0.50–0.87 on cross-modal queries) at
      0.35–0.8 ms a query (``benchmarks/RESULTS.md``).
    * ``n < 1_000_000``: ``"HNSW32,Flat"`` — graph search, recall@10 ≳ 0.95 at default ``efSearch``,
      keeps the exact float32 vectors (≈ 4·d + 256 bytes per vector).
    * beyond: ``"IVF{nlist},SQ8"`` with ``nlist ≈ 4·√n`` (at least 16): 8-bit scalar codes (1 byte per
      dimension) scanned in ``nprobe`` lists, candidates re-ranked exactly with the kept float32 vectors
      (``rerank``). On the clustered 1M × 256 benchmark (``benchmarks/bench_index.py``) this gave
      recall@10 ≈ 1.0 at ≳ 50× exact Flat's queries/s, where ``IVF4000,PQ64`` stayed ≈ 0.7 even with
      re-ranking (PQ codes cannot separate near neighbours inside one tight cluster) and an
      ``HNSW32,Flat`` build takes minutes on two cores.
    * ``memory="low"``: ``"IVF{nlist},PQ{m}"`` with ``m`` the largest divisor of ``d`` that is ≤ ``d/4``
      (≈ 4 dimensions per byte-sized code, so ``d=384 → PQ96``: 96 bytes instead of 1536 per vector);
      trained on a sample at build. With ``n < 20_000`` (too few points to train PQ) it gives
      ``"SQ8"`` (1 byte/dim).
    """
    if memory not in ("normal", "low"):
        raise ValueError(f"memory must be 'normal' or 'low', got {memory!r}")
    if memory == "normal" and n * d < FLAT_MAX * FLAT_DIM:
        return "Flat"
    if memory == "normal" and n < HNSW_MAX:
        return "HNSW32,Flat"
    nlist = max(16, int(round(4 * math.sqrt(n))))
    if memory == "normal":
        return f"IVF{nlist},SQ8"
    if n < 20_000:
        return "SQ8"
    m = _largest_divisor_at_most(d, max(1, d // 4))
    return f"IVF{nlist},PQ{m}"


class _LiveIds:
    """id → row of an index's live vectors (rows matter in "tomb" mode only).

    Kept as two int64 arrays (16 bytes a vector) while ids are only added, looked up, searched, saved and loaded;
    the first removal (or replacement of a live id) turns it into a dict, where popping one id is O(1). A dict of
    Python ints costs ~100 bytes a vector and fragments the heap: at 100k vectors a modality that was ~11 MB per
    index, held by every built or loaded index (the index build's peak and the searcher's, ``benchmarks/RESULTS.md``).
    """

    __slots__ = ("_ids", "_rows", "_d")

    def __init__(self, ids: np.ndarray | None = None, rows: np.ndarray | None = None):
        self._ids = np.zeros(0, np.int64) if ids is None else np.ascontiguousarray(ids, np.int64)
        self._rows = (np.zeros(len(self._ids), np.int64) if rows is None
                      else np.ascontiguousarray(rows, np.int64))
        self._d: dict[int, int] | None = None

    def _dict(self) -> dict[int, int]:
        if self._d is None:
            self._d = dict(zip(self._ids.tolist(), self._rows.tolist()))
            self._ids = self._rows = None
        return self._d

    def __len__(self) -> int:
        return len(self._d) if self._d is not None else len(self._ids)

    def __contains__(self, id_: int) -> bool:
        return bool(self.contains(np.array([id_], np.int64))[0])

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """``[n]`` bool: which of ``ids`` (int64) are live."""
        if self._d is not None:
            d = self._d
            return np.fromiter((i in d for i in ids.tolist()), bool, len(ids))
        return np.isin(ids, self._ids)

    def ids(self) -> np.ndarray:
        """Live ids, int64, unsorted."""
        return self._ids.copy() if self._d is None else np.fromiter(self._d.keys(), np.int64, len(self._d))

    def rows(self) -> np.ndarray:
        """Rows of the live ids, int64, in :meth:`ids` order."""
        return self._rows.copy() if self._d is None else np.fromiter(self._d.values(), np.int64, len(self._d))

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Add ids that are not live (the caller removed those that were)."""
        if self._d is None:
            if len(self._ids) == 0:
                self._ids, self._rows = np.array(ids, np.int64), np.array(rows, np.int64)
            else:
                self._ids = np.concatenate([self._ids, np.asarray(ids, np.int64)])
                self._rows = np.concatenate([self._rows, np.asarray(rows, np.int64)])
        else:
            self._d.update(zip(np.asarray(ids).tolist(), np.asarray(rows).tolist()))

    def pop(self, id_: int) -> int:
        return self._dict().pop(id_)


def _fsync_dir(path: Path) -> None:
    from raretarget.store.io import fsync_dir     # one implementation of the durability step

    fsync_dir(path)


def _exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE)
    return rc == 0


class _SideStore:
    """Normalised float32 vectors by id, for lossy index codes (rebuild + exact re-ranking)."""

    def __init__(self, dim: int, vecs: np.ndarray | None = None, ids: np.ndarray | None = None):
        self.dim = dim
        self.vecs = np.zeros((0, dim), np.float32) if vecs is None else vecs
        self.ids = np.zeros(0, np.int64) if ids is None else ids
        self.n = len(self.ids)
        self.alive = np.ones(self.n, bool)
        self.pos: dict[int, int] = {int(i): p for p, i in enumerate(self.ids.tolist())}
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None   # (live ids sorted, their slots)

    def _writable(self) -> None:
        if not self.vecs.flags.writeable:
            self.vecs = np.array(self.vecs)

    def upsert(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        self._writable()
        self._sorted = None
        slots = np.array([self.pos.get(i, -1) for i in ids.tolist()], np.int64)
        old = slots >= 0
        if old.any():
            self.vecs[slots[old]] = vecs[old]
        new = ~old
        k = int(new.sum())
        if k:
            need = self.n + k
            if need > len(self.vecs):
                cap = max(need, 2 * len(self.vecs), 1024)
                v = np.zeros((cap, self.dim), np.float32); v[: self.n] = self.vecs[: self.n]
                i2 = np.zeros(cap, np.int64); i2[: self.n] = self.ids[: self.n]
                a2 = np.zeros(cap, bool); a2[: self.n] = self.alive[: self.n]
                self.vecs, self.ids, self.alive = v, i2, a2
            rng = np.arange(self.n, need)
            self.vecs[rng] = vecs[new]
            self.ids[rng] = ids[new]
            self.alive[rng] = True
            for p, i in zip(rng.tolist(), ids[new].tolist()):
                self.pos[i] = p
            self.n = need

    def delete(self, ids: Iterable[int]) -> None:
        self._sorted = None
        for i in ids:
            p = self.pos.pop(int(i), None)
            if p is not None:
                self.alive[p] = False

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.alive[: self.n]
        return self.ids[: self.n][m], self.vecs[: self.n][m]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``ids`` (any shape); second value is a mask of ids found."""
        if self._sorted is None:     # live slots are exactly the values of ``pos``
            slots = np.flatnonzero(self.alive[: self.n])
            order = np.argsort(self.ids[slots], kind="stable")
            self._sorted = (np.ascontiguousarray(self.ids[slots][order]), slots[order])
        sid, sslot = self._sorted
        flat = np.asarray(ids, np.int64).reshape(-1)
        if len(sid):
            p = np.minimum(np.searchsorted(sid, flat), len(sid) - 1)
            ok = sid[p] == flat
            slots = sslot[p]
        else:
            ok = np.zeros(len(flat), bool)
            slots = np.zeros(len(flat), np.int64)
        if ok.all():                 # the usual case: one gather, no zero-filled temporary
            out = self.vecs[slots]
        else:
            out = self.vecs[np.where(ok, slots, 0)] if self.n else np.zeros((len(flat), self.dim), np.float32)
            out[~ok] = 0.0
        return out.reshape(ids.shape + (self.dim,)), ok.reshape(ids.shape)


# ---------------------------------------------------------------------------------------------------
class VectorIndex:
    """Cosine top-k over float32 vectors with the caller's stable int64 ids (see module docstring).

    Build with :meth:`build`, query with :meth:`search`, mutate with :meth:`add` / :meth:`remove`,
    persist with :meth:`save` / :meth:`load`. Not thread-safe for writers.
    """

    def __init__(self, dim: int, factory: str, *, device: str = "auto", compact_fraction: float = 0.2,
                 meta: Mapping[str, Any] | None = None, _index: Any = None):
        faiss = _faiss()
        if device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
        if not 0 < compact_fraction <= 1:
            raise ValueError("compact_fraction must be in (0, 1]")
        self.dim = int(dim)
        self.factory = factory
        self.meta: dict[str, Any] = dict(meta or {})
        self.compact_fraction = float(compact_fraction)
        self.device = device
        self.build_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.build_seconds = 0.0
        probe = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT) if _index is None else None
        try:
            faiss.extract_index_ivf(_index if _index is not None else probe)
            self.mode = "ivf"
        except Exception:
            base = faiss.downcast_index((_index.index if _index is not None else probe))
            self.mode = "idmap" if isinstance(base, faiss.IndexFlatCodes) else "tomb"
        if _index is None:
            _index = probe if self.mode == "ivf" else faiss.index_factory(
                self.dim, "IDMap2," + factory, faiss.METRIC_INNER_PRODUCT)
        self._index = _index
        base = self._base()
        if self.mode == "ivf" and hasattr(faiss.downcast_index(base), "do_polysemous_training"):
            # factory "IVF..,PQm" turns on polysemous training (unused here: no Hamming filtering), which
            # dominates training time (~10 s for 2k vectors); "PQmnp" is the same index without it
            faiss.downcast_index(base).do_polysemous_training = False
        self.lossless = self.mode != "ivf" and isinstance(base, (faiss.IndexFlat, faiss.IndexHNSWFlat))
        self._store = None if self.lossless else _SideStore(self.dim)
        self._live = _LiveIds()              # id -> row (rows meaningful in "tomb" mode only)
        self._dead: set[int] = set()         # tombstoned rows ("tomb" mode)
        self._row_ids_cache: np.ndarray | None = None
        self._gpu = None                     # lazily made GPU copy, dropped on mutation
        self._gpu_res = None
        self._mapped_fd: int | None = None   # open fd of an mmap-loaded index.faiss (see _writable)
        self.nprobe: int | None = None
        self.efSearch: int | None = None
        # SQ codes are close to exact (recall@10 ≈ 0.94 unranked on the 1M bench, ≈ 1.0 with 2·k re-ranked),
        # PQ codes much less so: re-rank 4·k candidates for SQ, 8·k for everything else lossy
        sq = (faiss.IndexIVFScalarQuantizer, faiss.IndexScalarQuantizer)
        self.rerank = 0 if self.lossless else (4 if isinstance(faiss.downcast_index(base), sq) else 8)
        self._default_params()

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, ids: Any, factory: str | None = None, *, memory: str = "normal",
              device: str = "auto", compact_fraction: float = 0.2, meta: Mapping[str, Any] | None = None,
              train_size: int | None = None, seed: int = 1234, copy: bool = True) -> "VectorIndex":
        """Build an index over ``vectors`` (float32 ``(n, d)``) with ``ids`` (int64 ``(n,)``).
        ``copy=False``: ``vectors`` may be L2-normalised in place (a caller handing over its own array: one copy
        fewer at the build's peak).

        ``factory=None`` picks one with :func:`auto_factory` (``memory`` is passed on). Trainable
        indexes (IVF, PQ, SQ) are trained on a random sample of at most ``train_size`` vectors
        (default ``max(64·nlist, 2**16)``, all of them when fewer: k-means needs ≳ 40 points per list,
        and at 1M vectors ``256·nlist`` meant clustering all of them, minutes on two cores).
        """
        t0 = time.perf_counter()
        x = np.asarray(vectors)
        if x.ndim != 2:
            raise ValueError(f"vectors: expected a 2-D (n, d) array, got shape {x.shape}")
        n, d = x.shape
        xn = l2_normalize(x, inplace=not copy)
        ids64 = _as_ids(ids, n)
        _check_unique(ids64)
        if factory is None:
            factory = auto_factory(n, d, memory)
        self = cls(d, factory, device=device, compact_fraction=compact_fraction, meta=meta)
        self._train(xn, train_size, seed)
        self._add_normalized(xn, ids64)
        self.build_seconds = time.perf_counter() - t0
        return self

    def _train(self, xn: np.ndarray, train_size: int | None, seed: int) -> None:
        faiss = _faiss()
        if self._index.is_trained:
            return
        n = len(xn)
        if train_size is None:
            nlist = faiss.extract_index_ivf(self._index).nlist if self.mode == "ivf" else 0
            train_size = max(64 * nlist, 1 << 16)
        if n == 0:
            raise ValueError(f"factory {self.factory!r} needs training vectors; build it with data")
        if self.mode == "ivf" and n < faiss.extract_index_ivf(self._index).nlist:
            raise ValueError(f"factory {self.factory!r}: {n} vectors are fewer than its nlist lists")
        sample = xn if n <= train_size else xn[np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))]
        self._index.train(sample)

    def _base(self):
        faiss = _faiss()
        if self.mode == "ivf":
            return faiss.extract_index_ivf(self._index)
        return faiss.downcast_index(self._index.index)

    def _default_params(self) -> None:
        faiss = _faiss()
        if self.mode == "ivf":
            ivf = faiss.extract_index_ivf(self._index)
            self.nprobe = max(8, int(round(ivf.nlist / 512)))
            ivf.nprobe = self.nprobe
        base = self._base()
        if isinstance(base, faiss.IndexHNSW):
            self.efSearch = max(64, base.hnsw.efSearch)
            base.hnsw.efSearch = self.efSearch

    def set_search_params(self, nprobe: int | None = None, efSearch: int | None = None,
                          rerank: int | None = None) -> "VectorIndex":
        """Set IVF ``nprobe`` (default ``max(8, nlist/512)``: 8 up to nlist 4096, i.e. up to ~1M vectors), HNSW ``efSearch`` (default 64) and the
        re-ranking factor for lossy codes (default 8, 4 for SQ codes; 0 = off). Unused parameters are ignored."""
        faiss = _faiss()
        if nprobe is not None and self.mode == "ivf":
            self.nprobe = int(nprobe)
            faiss.extract_index_ivf(self._index).nprobe = self.nprobe
            self._gpu = None
        if efSearch is not None and isinstance(self._base(), faiss.IndexHNSW):
            self.efSearch = int(efSearch)
            self._base().hnsw.efSearch = self.efSearch
        if rerank is not None:
            if rerank and self._store is None:
                raise ValueError("rerank needs stored vectors; this index stores exact vectors already")
            self.rerank = int(rerank)
        return self

    # ---- info ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._live

    def ids(self) -> np.ndarray:
        """Live ids, int64, sorted ascending."""
        return np.sort(self._live.ids())

    @property
    def n_tombstones(self) -> int:
        return len(self._dead)

    def __repr__(self) -> str:
        return (f"VectorIndex(factory={self.factory!r}, dim={self.dim}, n={len(self)}, "
                f"tombstones={self.n_tombstones}, mode={self.mode!r})")

    def index_bytes(self) -> int:
        """Bytes of the serialised faiss index (plus kept side vectors, if any)."""
        faiss = _faiss()
        n = int(faiss.serialize_index(self._index).nbytes)
        if self._store is not None:
            n += self._store.n * self.dim * 4 + self._store.n * 8
        return n

    # ---- mutation --------------------------------------------------------------------------------
    def add(self, vectors: Any, ids: Any) -> None:
        """Add ``vectors`` (float32 ``(n, d)``) under ``ids`` (int64 ``(n,)``); an id already present
        is updated (its vector replaced). Duplicate ids within one call raise ``ValueError``."""
        xn = l2_normalize(vectors, self.dim)
        ids64 = _as_ids(ids, len(xn))
        _check_unique(ids64)
        self._add_normalized(xn, ids64)
        self._maybe_compact()

    def _add_normalized(self, xn: np.ndarray, ids64: np.ndarray) -> None:
        faiss = _faiss()
        if len(ids64) == 0:
            return
        self._writable()
        existing = ids64[self._live.contains(ids64)].tolist()
        if existing:
            self._remove_existing(existing)
        row0 = self._index.ntotal
        self._index.add_with_ids(xn, ids64)
        self._live.add(ids64, np.arange(row0, row0 + len(ids64), dtype=np.int64) if self.mode == "tomb"
                       else np.zeros(len(ids64), np.int64))
        if self._store is not None:
            self._store.upsert(ids64, xn)
        self._row_ids_cache = None
        self._gpu = None
        del faiss

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` (int64); unknown ids are ignored. Returns how many were removed."""
        ids64 = _as_ids(ids)
        present = list(dict.fromkeys(ids64[self._live.contains(ids64)].tolist()))
        if present:
            self._writable()
            self._remove_existing(present)
            self._gpu = None
            self._maybe_compact()
        return len(present)

    def _remove_existing(self, present: list[int]) -> None:
        faiss = _faiss()
        if self.mode == "tomb":
            for i in present:
                self._dead.add(self._live.pop(i))
        else:
            arr = np.asarray(present, np.int64)
            n = self._index.remove_ids(faiss.IDSelectorBatch(arr))
            if n != len(present):
                raise RuntimeError(f"faiss removed {n} vectors, expected {len(present)}")
            for i in present:
                self._live.pop(i)
        if self._store is not None:
            self._store.delete(present)
        self._row_ids_cache = None

    def _maybe_compact(self) -> None:
        total = self._index.ntotal
        if self._dead and len(self._dead) > self.compact_fraction * total:
            self.compact()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Live ``(ids int64 (n,), normalised vectors float32 (n, d))``, in storage order."""
        if self._store is not None:
            ids, vecs = self._store.live()
            return ids.copy(), np.array(vecs)
        inner = self._index.index
        n = self._index.ntotal
        allv = inner.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)
        row_ids = self._row_ids()
        if self.mode == "tomb":
            rows = np.sort(self._live.rows())
            return row_ids[rows], allv[rows]
        return row_ids.copy(), allv

    def compact(self, retrain: bool = False) -> None:
        """Rebuild from the live vectors, dropping tombstones (and dead side-store slots).

        Trained quantizers are kept unless ``retrain=True`` (IVF/PQ are then retrained on the live
        vectors). Search parameters are kept.
        """
        faiss = _faiss()
        self._writable()
        ids, vecs = self.vectors()
        if self.mode == "tomb" or retrain:
            new = VectorIndex(self.dim, self.factory, device=self.device,
                              compact_fraction=self.compact_fraction, meta=self.meta)
            if not new._index.is_trained:
                new._train(vecs, None, 1234)
            new._add_normalized(vecs, ids)
            self._index, self._live, self._dead = new._index, new._live, set()
            self._mapped_fd = None
            if new._store is not None:
                self._store = new._store
        elif self._store is not None:
            self._store = _SideStore(self.dim, np.array(vecs), ids.copy())
        self._row_ids_cache = None
        self._gpu = None
        self.set_search_params(nprobe=self.nprobe, efSearch=self.efSearch)
        del faiss

    def _writable(self) -> None:
        """An mmap-loaded index is read-only: copy it into memory before the first mutation."""
        if self._mapped_fd is None:
            return
        faiss = _faiss()
        fd, self._mapped_fd = self._mapped_fd, None
        try:
            self._index = faiss.read_index(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        if self._store is not None:
            self._store._writable()
        self.set_search_params(nprobe=self.nprobe, efSearch=self.efSearch)

    # ---- search ----------------------------------------------------------------------------------
    def _row_ids(self) -> np.ndarray:
        if self._row_ids_cache is None:
            self._row_ids_cache = _faiss().vector_to_array(self._index.id_map).astype(np.int64)
        return self._row_ids_cache

    def _use_gpu(self) -> bool:
        if self.device == "cpu" or self.mode == "tomb":
            if self.device == "gpu" and self.mode == "tomb":
                return False  # HNSW stays on CPU by design
            return False
        faiss = _faiss()
        have = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if self.device == "gpu" and not have:
            raise RuntimeError("device='gpu' but faiss has no GPU support or sees no GPU")
        return have

    def _gpu_index(self):
        faiss = _faiss()
        if self._gpu is None:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
            if self.mode == "ivf":
                try:
                    faiss.GpuParameterSpace().set_index_parameter(self._gpu, "nprobe", self.nprobe)
                except Exception:
                    pass
        return self._gpu

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine neighbours of each query (float32 ``(nq, d)`` or ``(d,)``).

        Returns ``(scores float32 (nq, k), ids int64 (nq, k))``, best first; where fewer than ``k``
        live vectors exist the tail is id ``-1`` / score ``-inf``.
        """
        k = int(k)
        if k < 1:
            raise ValueError("k must be >= 1")
        q = l2_normalize(queries, self.dim, what="queries")
        nq = len(q)
        D = np.full((nq, k), -np.inf, np.float32)
        I = np.full((nq, k), -1, np.int64)
        if nq == 0 or not self._live:
            return D, I
        kf = k * self.rerank if (self.rerank and self._store is not None) else k
        kf = min(kf, self._index.ntotal)
        if self.mode == "tomb":
            d, i = self._search_tomb(q, kf)
        else:
            idx = self._gpu_index() if (self._use_gpu() and kf <= 2048) else self._index
            d, i = idx.search(q, kf)
        if self.rerank and self._store is not None:
            d, i = self._rerank(q, d, i, k)
        w = min(k, d.shape[1])
        I[:, :w] = i[:, :w]
        D[:, :w] = np.where(i[:, :w] != -1, d[:, :w], -np.inf)
        return D, I

    def _rerank(self, q: np.ndarray, d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vecs, ok = self._store.lookup(i)
        ok &= i != -1
        exact = np.matmul(vecs, q[:, :, None])[..., 0]   # (nq, kf): exact cosines of the candidates
        exact[~ok] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.where(
            np.take_along_axis(ok, order, 1), np.take_along_axis(i, order, 1), -1)

    def _search_tomb(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        inner = self._base()
        row_ids = self._row_ids()
        if not self._dead:
            d, rows = inner.search(q, k)
        else:
            dead = np.fromiter(self._dead, np.int64, len(self._dead))
            batch = faiss.IDSelectorBatch(dead)
            sel = faiss.IDSelectorNot(batch)
            hnsw = isinstance(inner, faiss.IndexHNSW)
            total = inner.ntotal
            want = min(k, len(self._live))
            ef = max(self.efSearch or 16, k)
            ef = int(math.ceil(ef * total / max(1, len(self._live))))   # over-fetch by tombstone fraction
            d = np.empty((len(q), k), np.float32)
            rows = np.empty((len(q), k), np.int64)
            todo = np.arange(len(q))
            while True:
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef) if hnsw else faiss.SearchParameters(sel=sel)
                dd, rr = inner.search(q[todo], k, params=params)
                d[todo], rows[todo] = dd, rr
                short = (rr >= 0).sum(1) < want
                if not short.any() or not hnsw or ef >= total:
                    break
                todo = todo[short]
                ef = min(total, ef * 4)
            del batch, sel
        ids = np.where(rows >= 0, row_ids[np.clip(rows, 0, None)], -1)
        return d, ids

    # ---- persistence -----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        faiss = _faiss()
        return {
            "format": FORMAT_VERSION, "kind": "raretarget-vector-index",
            "factory": self.factory, "dim": self.dim, "metric": METRIC, "mode": self.mode,
            "count": len(self), "n_tombstones": self.n_tombstones, "stored_rows": int(self._index.ntotal),
            "vectors_kept": self._store is not None,
            "build_time": self.build_time, "build_seconds": round(self.build_seconds, 3),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "faiss_version": faiss.__version__,
            "search_params": {"nprobe": self.nprobe, "efSearch": self.efSearch, "rerank": self.rerank},
            "compact_fraction": self.compact_fraction,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
        """Write the index to folder ``path`` atomically (temp folder, then rename/exchange).

        Contents: ``index.faiss`` (CPU index), ``ids.npy`` (live ids), ``tombstones.npy`` (dead rows,
        HNSW only), ``vectors.npy`` + ``vector_ids.npy`` (kept vectors, lossy codes only) and
        ``manifest.json``. ``meta`` (e.g. ``{"encoder_version": ...}``) is merged into ``self.meta``.
        """
        faiss = _faiss()
        if meta:
            self.meta.update(meta)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            np.save(tmp / "ids.npy", self.ids())
            if self.mode == "tomb":
                np.save(tmp / "tombstones.npy", np.sort(np.fromiter(self._dead, np.int64, len(self._dead))))
            if self._store is not None:
                sids, svecs = self._store.live()
                np.save(tmp / "vectors.npy", np.ascontiguousarray(svecs))
                np.save(tmp / "vector_ids.npy", sids)
            (tmp / "manifest.json").write_text(json.dumps(self.manifest(), indent=2, sort_keys=True, default=str))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if not path.exists():
                os.replace(tmp, path)
            elif _exchange_dirs(tmp, path):
                shutil.rmtree(tmp)          # tmp now holds the old version
            else:                           # no renameat2: two renames (brief window without `path`)
                old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            _fsync_dir(path.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, expect_meta: Mapping[str, Any] | None = None,
             expect_dim: int | None = None, device: str = "auto") -> "VectorIndex":
        """Load a folder written by :meth:`save`.

        ``mmap=True`` maps the index file instead of reading it (``IO_FLAG_MMAP`` for IVF inverted
        lists, ``IO_FLAG_MMAP_IFC`` for flat/HNSW storage; falls back to a normal read if faiss
        refuses) and the kept vectors (``np.load(mmap_mode="r")``); the first mutation copies them
        into memory. ``expect_meta`` / ``expect_dim`` raise :class:`IndexMismatchError` when the
        manifest differs (e.g. a different ``encoder_version``).
        """
        faiss = _faiss()
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"{path} is not a saved VectorIndex (no manifest.json)")
        man = json.loads(mpath.read_text())
        if man.get("format") != FORMAT_VERSION or man.get("metric") != METRIC:
            raise IndexMismatchError(f"{path}: format {man.get('format')} / metric {man.get('metric')} "
                                     f"not supported (expected {FORMAT_VERSION} / {METRIC})")
        if expect_dim is not None and man["dim"] != expect_dim:
            raise IndexMismatchError(f"{path}: index dimension {man['dim']} != expected {expect_dim}")
        if expect_meta:
            have = man.get("meta", {})
            diff = {k: (have.get(k, "<missing>"), v) for k, v in expect_meta.items() if have.get(k, "<missing>") != v}
            if diff:
                raise IndexMismatchError(
                    f"{path}: index metadata does not match: "
                    + ", ".join(f"{k}={a!r} in index, expected {b!r}" for k, (a, b) in diff.items())
                    + " (refusing to mix, e.g., vectors of different encoder versions; rebuild the index)")
        fpath = str(path / "index.faiss")
        index, fd = None, None
        if mmap:
            flag = faiss.IO_FLAG_MMAP if man["mode"] == "ivf" else faiss.IO_FLAG_MMAP_IFC
            try:
                fd = os.open(fpath, os.O_RDONLY)
                index = faiss.read_index(fpath, flag)
            except Exception:
                index = None
                if fd is not None:
                    os.close(fd); fd = None
        if index is None:
            index = faiss.read_index(fpath)
        self = cls(man["dim"], man["factory"], device=device, compact_fraction=man.get("compact_fraction", 0.2),
                   meta=man.get("meta"), _index=index)
        self._mapped_fd = fd
        self.build_time = man.get("build_time", self.build_time)
        self.build_seconds = man.get("build_seconds", 0.0)
        if self.mode == "tomb":
            dead = np.load(path / "tombstones.npy")
            self._dead = set(dead.tolist())
            row_ids = self._row_ids()
            alive = np.ones(len(row_ids), bool); alive[dead] = False
            rows = np.flatnonzero(alive)
            self._live = _LiveIds(row_ids[rows], rows)
        else:
            self._live = _LiveIds(np.load(path / "ids.npy"))
        if man.get("vectors_kept"):
            self._store = _SideStore(self.dim, np.load(path / "vectors.npy", mmap_mode="r" if mmap else None),
                                     np.load(path / "vector_ids.npy"))
        sp = man.get("search_params", {})
        self.rerank = sp.get("rerank", self.rerank)
        self.set_search_params(nprobe=sp.get("nprobe"), efSearch=sp.get("efSearch"))
        if len(self._live) != man["count"]:
            raise IndexMismatchError(f"{path}: {len(self._live)} live ids but the manifest says {man['count']}")
        return self

    def __del__(self):
        fd = getattr(self, "_mapped_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
