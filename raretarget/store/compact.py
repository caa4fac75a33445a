"""Compact sets and maps of 64-bit integers for the ingest's per-call state (record ids met, resources met).

A Python ``set`` of ints costs about 70 bytes an element and a ``dict`` of int → int about 110; an ingest of 100k
patients (4.5M records) held several such containers, so the committer's memory grew with the store. Here the
bulk lives in sorted numpy arrays (8 bytes a key, 8 a value) and only the elements added since the last merge
in a small Python container of at most :data:`MERGE_MIN` elements (a fixed size: a buffer that grew with the
sorted part, a quarter of it, held ~1M Python ints per container at 100k patients). A merge sorts the buffer
and inserts it into the sorted arrays (``np.insert``: one linear copy, no re-sort of what was sorted), so its
cost is a copy of the arrays per :data:`MERGE_MIN` additions.

Semantics are those of ``set`` / ``dict`` for the operations the ingest uses; iteration order is not kept.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

#: elements held in the Python container (the buffer) before they are merged into the sorted arrays: the
#: most a container holds in Python objects (about 70-110 bytes an element), whatever its size
MERGE_MIN = 1 << 16


class IntSet:
    """A set of integers of ``dtype`` (int64 record ids, uint64 hashes)."""

    def __init__(self, values: Iterable[int] | np.ndarray = (), dtype=np.int64):
        self.dtype = np.dtype(dtype)
        self._sorted = np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                            dtype=self.dtype))
        self._recent: set[int] = set()
        self._removed: set[int] = set()       # removed from the sorted part (rare: deletes)

    def _in_sorted(self, x: int) -> bool:
        s = self._sorted
        # the key as a scalar of the array's dtype: a Python int against a uint64 array would make numpy
        # compare in float64 (a copy of the whole array per call, and 64-bit keys rounded)
        i = int(s.searchsorted(self.dtype.type(x)))
        return i < len(s) and int(s[i]) == x

    def __contains__(self, x) -> bool:
        x = int(x)
        return x in self._recent or (self._in_sorted(x) and x not in self._removed)

    def contains_many(self, xs: np.ndarray) -> np.ndarray:
        """Membership of each element of ``xs`` (a bool array of the same length), vectorised."""
        xs = np.asarray(xs, dtype=self.dtype)
        s = self._sorted
        idx = np.searchsorted(s, xs)
        hit = np.zeros(len(xs), dtype=bool)
        ok = idx < len(s)
        hit[ok] = s[idx[ok]] == xs[ok]
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
        return len(self._sorted) - len(self._removed) + len(self._recent)

    def _maybe_merge(self) -> None:
        if len(self._recent) >= MERGE_MIN:
            self._merge()

    def _merge(self) -> None:
        s = self._sorted
        if self._removed:
            s = s[~np.isin(s, np.fromiter(self._removed, dtype=self.dtype, count=len(self._removed)))]
            self._removed.clear()
        # the buffer never holds an element of the sorted part (add/update check first): insert, don't re-sort
        r = np.sort(np.fromiter(self._recent, dtype=self.dtype, count=len(self._recent)))
        self._sorted = np.insert(s, np.searchsorted(s, r), r) if len(s) else r
        self._recent.clear()


class IntMap:
    """A map of integer keys to integer values (``dtype`` for both): ``get``, ``[k] = v``, ``setdefault``, ``in``.
    ``buffer``: elements held in Python before a merge (default :data:`MERGE_MIN`; a small map's merges are cheap)."""

    def __init__(self, dtype=np.uint64, buffer: int | None = None):
        self.dtype = np.dtype(dtype)
        self._keys = np.empty(0, dtype=self.dtype)
        self._vals = np.empty(0, dtype=self.dtype)
        self._recent: dict[int, int] = {}
        self._buffer = buffer

    def _full(self) -> bool:
        return len(self._recent) >= (self._buffer or MERGE_MIN)

    def items(self):
        """Every ``(key, value)`` (the sorted part in key order, then the buffer)."""
        yield from zip(self._keys.tolist(), self._vals.tolist())
        yield from self._recent.items()

    def _find(self, k: int) -> int:
        ks = self._keys
        i = int(ks.searchsorted(self.dtype.type(k)))      # a dtype scalar: see IntSet._in_sorted
        return i if i < len(ks) and int(ks[i]) == k else -1

    def get(self, k, default=None):
        k = int(k)
        v = self._recent.get(k)
        if v is not None:
            return v
        i = self._find(k)
        return int(self._vals[i]) if i >= 0 else default

    def __contains__(self, k) -> bool:
        return self.get(k) is not None

    def __getitem__(self, k) -> int:
        v = self.get(k)
        if v is None:
            raise KeyError(k)
        return v

    def __setitem__(self, k, v) -> None:
        k = int(k)
        i = self._find(k) if len(self._keys) else -1
        if i >= 0:
            self._vals[i] = v
            return
        self._recent[k] = int(v)
        if self._full():
            self._merge()

    def setdefault(self, k, v) -> int:
        prev = self.get(k)
        if prev is not None:
            return prev
        self[k] = v
        return int(v)

    def get_many(self, keys: Sequence[int]) -> list[int | None]:
        """``[self.get(k) for k in keys]`` with one vectorised search of the sorted part (a file's resources at a
        time in the parallel committer, where per-key searches cost more than the rest of its merge)."""
        if not len(keys):
            return []
        out: list[int | None] = [None] * len(keys)
        if len(self._keys):
            ks = np.asarray(keys, dtype=self.dtype)
            idx = np.searchsorted(self._keys, ks)
            idx[idx == len(self._keys)] = 0
            hit = self._keys[idx] == ks
            for i in np.flatnonzero(hit).tolist():
                out[i] = int(self._vals[idx[i]])
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
        return len(self._keys) + len(self._recent)

    def _merge(self) -> None:
        n = len(self._recent)
        rk = np.fromiter(self._recent.keys(), dtype=self.dtype, count=n)
        rv = np.fromiter(self._recent.values(), dtype=self.dtype, count=n)
        order = np.argsort(rk)
        rk, rv = rk[order], rv[order]
        # buffered keys are never in the sorted part (__setitem__/setdefault* look there first): insert them
        at = np.searchsorted(self._keys, rk)
        self._keys, self._vals = np.insert(self._keys, at, rk), np.insert(self._vals, at, rv)
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
