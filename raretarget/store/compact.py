"""Compact sets and maps of 64-bit integers for the ingest's per-call state (record ids met, resources met).

A Python ``set`` of ints costs about 70 bytes an element and a ``dict`` of int → int about 110; an ingest of 100k
patients (4.5M records) held several such containers, so the committer's memory grew with the store. Here the
bulk lives in sorted numpy arrays (8 bytes a key, 8 a value) and only the elements added since the last merge
in a small Python container of at most :data:`MERGE_MIN` elements (a fixed size: a buffer that grew with the
sorted part, a quarter of it, held ~1M Python ints per container at 100k patients).

The sorted part is cut in chunks of at most :data:`CHUNK` elements (:class:`_Sorted`). A merge sorts the buffer
and inserts each chunk's share into that chunk (a chunk past :data:`CHUNK` is split in two): the same linear
copy per :data:`MERGE_MIN` additions as one array, but one array re-made at each merge (30 MB for the variant
ids of 100k patients) also needed a second copy of itself while it was made, and left holes in the C heap
that the next, larger one could not use; chunks are made, and freed, 2 MB at a time.

Semantics are those of ``set`` / ``dict`` for the operations the ingest uses; iteration order is not kept.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Iterable, Sequence

import numpy as np

from raretarget.arrays import unique

#: elements held in the Python container (the buffer) before they are merged into the sorted arrays: the
#: most a container holds in Python objects (about 70-110 bytes an element), whatever its size
MERGE_MIN = 1 << 16
#: elements of the sorted part per chunk at most (2 MB of 64-bit keys)
CHUNK = 1 << 18


class _Sorted:
    """Sorted distinct keys (and, with ``values``, one value per key) in chunks of at most :data:`CHUNK`."""

    def __init__(self, dtype, values: bool):
        self.dtype = np.dtype(dtype)
        self.keys: list[np.ndarray] = []
        self.vals: list[np.ndarray] | None = [] if values else None
        self.firsts = np.empty(0, dtype=self.dtype)       # each chunk's smallest key
        self._firsts: list[int] = []
        self.n = 0

    def _refirst(self) -> None:
        self.firsts = np.array([k[0] for k in self.keys], dtype=self.dtype)
        self._firsts = self.firsts.tolist()          # Python ints: bisect is 5x faster than a numpy call
        self.n = sum(len(k) for k in self.keys)

    def find(self, x: int) -> tuple[int, int]:
        """(chunk, position) of key ``x`` (a Python int), or (-1, -1)."""
        c = bisect.bisect_right(self._firsts, x) - 1 if self.keys else -1
        if c < 0:
            return -1, -1
        ks = self.keys[c]
        # the key as a scalar of the array's dtype: a Python int against a uint64 array would make numpy
        # compare in float64 (a copy of the whole array per call, and 64-bit keys rounded)
        i = int(ks.searchsorted(self.dtype.type(x)))
        return (c, i) if i < len(ks) and int(ks[i]) == x else (-1, -1)

    def find_many(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per element of ``xs`` (an array of the dtype): chunk, position, found (vectorised per chunk)."""
        c = np.searchsorted(self.firsts, xs, side="right") - 1
        pos = np.zeros(len(xs), dtype=np.int64)
        hit = np.zeros(len(xs), dtype=bool)
        if self.keys and len(xs):
            for cc in np.unique(c[c >= 0]).tolist():
                sel = np.flatnonzero(c == cc)
                ks = self.keys[cc]
                i = np.searchsorted(ks, xs[sel])
                ok = i < len(ks)
                good = np.zeros(len(sel), dtype=bool)
                good[ok] = ks[i[ok]] == xs[sel[ok]]
                pos[sel], hit[sel] = i, good
        return c, pos, hit

    def insert(self, r: np.ndarray, rv: np.ndarray | None = None) -> None:
        """Insert sorted distinct keys ``r`` (none already here), with their values ``rv``."""
        if not len(r):
            return
        if not self.keys:
            parts = range(0, len(r), CHUNK)
            self.keys = [r[i:i + CHUNK].copy() for i in parts]
            if self.vals is not None:
                self.vals = [rv[i:i + CHUNK].copy() for i in parts]
            self._refirst()
            return
        c = np.maximum(np.searchsorted(self.firsts, r, side="right") - 1, 0)    # below every chunk: the first
        bounds = np.searchsorted(c, np.arange(len(self.keys) + 1))             # c is sorted: each chunk's share
        keys, vals = [], [] if self.vals is not None else None
        for k in range(len(self.keys)):
            a, b = int(bounds[k]), int(bounds[k + 1])
            ks = self.keys[k]
            vs = self.vals[k] if vals is not None else None
            if b > a:
                at = np.searchsorted(ks, r[a:b])
                ks = np.insert(ks, at, r[a:b])
                if vals is not None:
                    vs = np.insert(vs, at, rv[a:b])
            if len(ks) > CHUNK:                     # split in two halves (each then has room for merges)
                h = len(ks) // 2
                keys += [ks[:h].copy(), ks[h:].copy()]
                if vals is not None:
                    vals += [vs[:h].copy(), vs[h:].copy()]
            else:
                keys.append(ks)
                if vals is not None:
                    vals.append(vs)
        self.keys, self.vals = keys, vals
        self._refirst()

    def remove(self, xs: np.ndarray) -> None:
        """Drop keys ``xs`` (present or not)."""
        keys, vals = [], [] if self.vals is not None else None
        for k, ks in enumerate(self.keys):
            keep = ~np.isin(ks, xs)
            if keep.any():
                keys.append(ks[keep])
                if vals is not None:
                    vals.append(self.vals[k][keep])
        self.keys, self.vals = keys, vals
        self._refirst()

    def items(self):
        for k, ks in enumerate(self.keys):
            yield from zip(ks.tolist(), self.vals[k].tolist()) if self.vals is not None else ks.tolist()


class IntSet:
    """A set of integers of ``dtype`` (int64 record ids, uint64 hashes)."""

    def __init__(self, values: Iterable[int] | np.ndarray = (), dtype=np.int64):
        self.dtype = np.dtype(dtype)
        self._sorted = _Sorted(self.dtype, values=False)
        self._sorted.insert(unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                                 dtype=self.dtype)))
        self._recent: set[int] = set()
        self._removed: set[int] = set()       # removed from the sorted part (rare: deletes)

    def _in_sorted(self, x: int) -> bool:
        return self._sorted.find(x)[0] >= 0

    def __contains__(self, x) -> bool:
        x = int(x)
        return x in self._recent or (self._in_sorted(x) and x not in self._removed)

    def contains_many(self, xs: np.ndarray) -> np.ndarray:
        """Membership of each element of ``xs`` (a bool array of the same length), vectorised."""
        xs = np.asarray(xs, dtype=self.dtype)
        hit = self._sorted.find_many(xs)[2]
        if self._recent or self._removed:
            for i, x in enumerate(xs.tolist()):
                if x in self._recent:
                    hit[i] = True
                elif hit[i] and x in self._removed:
                    hit[i] = False
        return hit

    def add(self, x: int) -> None:
        x = int(x)
        if x in self._removed:
            self._removed.discard(x)
            return
        if not self._in_sorted(x):
            self._recent.add(x)
            self._maybe_merge()

    def update(self, xs: Iterable[int] | np.ndarray) -> None:
        xs = np.asarray(xs if isinstance(xs, np.ndarray) else list(xs), dtype=self.dtype)
        if not len(xs):
            return
        if self._removed:
            back = [x for x in xs.tolist() if x in self._removed]
            self._removed.difference_update(back)
        new = xs[~self.contains_many(xs)]
        self._recent.update(new.tolist())
        self._maybe_merge()

    def discard(self, x: int) -> None:
        x = int(x)
        if x in self._recent:
            self._recent.discard(x)
        elif self._in_sorted(x):
            self._removed.add(x)

    def __len__(self) -> int:
        return self._sorted.n - len(self._removed) + len(self._recent)

    def _maybe_merge(self) -> None:
        if len(self._recent) >= MERGE_MIN:
            self._merge()

    def _merge(self) -> None:
        if self._removed:
            self._sorted.remove(np.fromiter(self._removed, dtype=self.dtype, count=len(self._removed)))
            self._removed.clear()
        # the buffer never holds an element of the sorted part (add/update check first): insert, don't re-sort
        self._sorted.insert(np.sort(np.fromiter(self._recent, dtype=self.dtype, count=len(self._recent))))
        self._recent.clear()


class IntMap:
    """A map of integer keys to integer values (``dtype`` for both): ``get``, ``[k] = v``, ``setdefault``, ``in``.
    ``buffer``: elements held in Python before a merge (default :data:`MERGE_MIN`; a small map's merges are cheap)."""

    def __init__(self, dtype=np.uint64, buffer: int | None = None):
        self.dtype = np.dtype(dtype)
        self._sorted = _Sorted(self.dtype, values=True)
        self._recent: dict[int, int] = {}
        self._buffer = buffer

    def _full(self) -> bool:
        return len(self._recent) >= (self._buffer or MERGE_MIN)

    def items(self):
        """Every ``(key, value)`` (the sorted part in key order, then the buffer)."""
        yield from self._sorted.items()
        yield from self._recent.items()

    def get(self, k, default=None):
        k = int(k)
        v = self._recent.get(k)
        if v is not None:
            return v
        c, i = self._sorted.find(k)
        return int(self._sorted.vals[c][i]) if c >= 0 else default

    def __contains__(self, k) -> bool:
        return self.get(k) is not None

    def __getitem__(self, k) -> int:
        v = self.get(k)
        if v is None:
            raise KeyError(k)
        return v

    def __setitem__(self, k, v) -> None:
        k = int(k)
        c, i = self._sorted.find(k)
        if c >= 0:
            self._sorted.vals[c][i] = v
            return
        self._recent[k] = int(v)
        if self._full():
            self._merge()

    def setdefault(self, k, v) -> int:
        """As ``dict.setdefault``, with one search (the ingest calls it once per resource read)."""
        k = int(k)
        prev = self._recent.get(k)
        if prev is not None:
            return prev
        c, i = self._sorted.find(k)
        if c >= 0:
            return int(self._sorted.vals[c][i])
        self._recent[k] = v = int(v)
        if self._full():
            self._merge()
        return v

    def get_many(self, keys: Sequence[int]) -> list[int | None]:
        """``[self.get(k) for k in keys]`` with one vectorised search of the sorted part (a file's resources at a
        time in the parallel committer, where per-key searches cost more than the rest of its merge)."""
        if not len(keys):
            return []
        out: list[int | None] = [None] * len(keys)
        if self._sorted.n:
            c, pos, hit = self._sorted.find_many(np.asarray(keys, dtype=self.dtype))
            vals = self._sorted.vals
            for i in np.flatnonzero(hit).tolist():
                out[i] = int(vals[c[i]][pos[i]])
        recent = self._recent
        if recent:
            for i, k in enumerate(keys):
                v = recent.get(int(k))
                if v is not None:
                    out[i] = v
        return out

    def setdefault_many(self, keys: Sequence[int], values: Sequence[int]) -> None:
        """``self.setdefault(k, v)`` for each pair, in order (the first value of a key wins)."""
        for k, prev, v in zip(keys, self.get_many(keys), values):
            if prev is None and self._recent.get(int(k)) is None:
                self._recent[int(k)] = int(v)
        if self._full():
            self._merge()

    def __len__(self) -> int:
        return self._sorted.n + len(self._recent)

    def _merge(self) -> None:
        n = len(self._recent)
        rk = np.fromiter(self._recent.keys(), dtype=self.dtype, count=n)
        rv = np.fromiter(self._recent.values(), dtype=self.dtype, count=n)
        order = np.argsort(rk)
        # buffered keys are never in the sorted part (__setitem__/setdefault* look there first): insert them
        self._sorted.insert(rk[order], rv[order])
        self._recent.clear()


_MISSING = object()


class DigestMap:
    """Strings → patient pseudonyms for the ingest's lookups (an identifier's patient, a study's patient) in
    about 32 bytes an entry, where a dict of str took 150-330 (issue 20: ~40 MB at 100k patients).

    A key is held as its 128-bit BLAKE2b digest, in two :class:`IntMap` of its 64-bit halves: the first half
    finds the entry, the second confirms it, so a key never answers for another. A value ``pt-<16 hex digits>``
    is held as its 64-bit integer; any other value (None included), and a key whose first half is taken by
    another key, go to a small dict by digest. ``get``/``update`` as a dict (the last value put wins); the parallel
    readers exchange digests (:meth:`digest_items`, :meth:`put_digest`), so raw identifiers stay in this process.
    """

    BUFFER = 4096             # a small buffer: merging a map of 200k entries costs ~1 ms

    def __init__(self):
        self._val = IntMap(np.uint64, buffer=self.BUFFER)     # first half → the pseudonym's integer
        self._chk = IntMap(np.uint64, buffer=self.BUFFER)     # first half → second half
        self._other: dict[bytes, object] = {}

    @staticmethod
    def digest(key) -> bytes:
        if key is None:
            return b""
        return hashlib.blake2b(str(key).encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @staticmethod
    def _pid(value) -> int | None:
        if isinstance(value, str) and len(value) == 19 and value.startswith("pt-"):
            try:
                n = int(value[3:], 16)
            except ValueError:
                return None
            return n if f"pt-{n:016x}" == value else None      # upper-case hex would not come back the same
        return None

    def get(self, key, default=None):
        return self.get_digest(self.digest(key), default)

    def get_digest(self, d: bytes, default=None):
        if self._other:
            v = self._other.get(d, _MISSING)
            if v is not _MISSING:
                return v
        if len(d) != 16:
            return default
        a, b = int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")
        if self._chk.get(a) != b:
            return default
        return f"pt-{self._val.get(a):016x}"

    def __contains__(self, key) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def __setitem__(self, key, value) -> None:
        self.put_digest(self.digest(key), value)

    def update(self, pairs) -> None:
        """From a dict or an iterable of ``(key, value)``."""
        for k, v in (pairs.items() if isinstance(pairs, dict) else pairs):
            self[k] = v

    def put_digest(self, d: bytes, value) -> None:
        n = self._pid(value)
        if n is not None and len(d) == 16:
            a, b = int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")
            prev = self._chk.get(a)
            if prev is None or prev == b:
                self._chk[a] = b
                self._val[a] = n
                self._other.pop(d, None)
                return
        self._other[d] = value

    def digest_items(self):
        """Every ``(digest, value)``."""
        # both maps are written together, key for key, so they hold the same keys in the same places
        for (a, b), (a2, n) in zip(self._chk.items(), self._val.items()):
            assert a == a2
            d = a.to_bytes(8, "little") + b.to_bytes(8, "little")
            if d not in self._other:
                yield d, f"pt-{n:016x}"
        yield from self._other.items()
