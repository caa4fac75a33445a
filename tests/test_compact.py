"""Compact integer sets and maps (the ingest's per-call state): the same answers as set / dict."""

from __future__ import annotations

import random

import numpy as np
import pytest

from raretarget.store import compact
from raretarget.store.compact import IntMap, IntSet


@pytest.fixture(params=[compact.CHUNK, 5])
def chunk(request, monkeypatch):
    """The sorted part in one chunk, and in many chunks of at most 5 (split as merges fill them)."""
    monkeypatch.setattr(compact, "CHUNK", request.param)
    return request.param


def test_intset_behaves_like_a_set_across_merges(monkeypatch, chunk):
    monkeypatch.setattr(compact, "MERGE_MIN", 8)          # many merges on a small example
    rng = random.Random(0)
    ref: set[int] = set(rng.randrange(-2**63, 2**63) for _ in range(50))
    s = IntSet(np.array(sorted(ref), dtype=np.int64))
    for step in range(2000):
        x = rng.choice(list(ref)) if ref and rng.random() < 0.3 else rng.randrange(-2**63, 2**63)
        op = rng.random()
        if op < 0.5:
            s.add(x); ref.add(x)
        elif op < 0.6:
            s.discard(x); ref.discard(x)
        elif op < 0.7:
            xs = [rng.randrange(-50, 50) for _ in range(5)] + [x]
            s.update(np.array(xs, dtype=np.int64)); ref.update(xs)
        assert (x in s) == (x in ref)
        assert len(s) == len(ref)
    probe = np.array(list(ref)[:100] + [rng.randrange(-2**63, 2**63) for _ in range(100)], dtype=np.int64)
    assert s.contains_many(probe).tolist() == [int(p) in ref for p in probe]


def test_intmap_behaves_like_a_dict_with_uint64_keys(monkeypatch, chunk):
    monkeypatch.setattr(compact, "MERGE_MIN", 8)
    rng = random.Random(1)
    ref: dict[int, int] = {}
    m = IntMap(np.uint64)
    for _ in range(3000):
        k = rng.choice(list(ref)) if ref and rng.random() < 0.3 else rng.randrange(0, 2**64)
        v = rng.randrange(0, 2**64)
        if rng.random() < 0.5:
            assert m.setdefault(k, v) == ref.setdefault(k, v)
        else:
            m[k] = v
            ref[k] = v
        assert m.get(k) == ref.get(k) and len(m) == len(ref)
    absent = next(x for x in range(2**64 - 1, 0, -1) if x not in ref)
    assert m.get(absent) is None and absent not in m


def test_64_bit_keys_that_float64_would_round_together_stay_apart(monkeypatch, chunk):
    monkeypatch.setattr(compact, "MERGE_MIN", 2)
    keys = [2**60, 2**60 + 1, 2**63 + 1, 2**63 + 2, 2**64 - 1, 2**64 - 2]
    m = IntMap(np.uint64)
    for i, k in enumerate(keys):
        m[k] = i
    assert [m.get(k) for k in keys] == list(range(len(keys)))
    assert m.get(2**60 + 2) is None
    s = IntSet([2**60, 2**62 + 1], dtype=np.int64)
    assert 2**60 + 1 not in s and 2**62 + 1 in s and 2**62 not in s


def test_intmap_many_agrees_with_one_at_a_time(monkeypatch, chunk):
    monkeypatch.setattr(compact, "MERGE_MIN", 4)
    rng = random.Random(2)
    a, b = IntMap(np.uint64), IntMap(np.uint64)
    for _ in range(200):
        keys = [rng.randrange(0, 40) * (2**58) + rng.randrange(0, 3) for _ in range(rng.randrange(0, 6))]
        vals = [rng.randrange(0, 2**64) for _ in keys]
        assert a.get_many(keys) == [b.get(k) for k in keys]
        a.setdefault_many(keys, vals)
        for k, v in zip(keys, vals):
            b.setdefault(k, v)
        assert len(a) == len(b)
    probe = list(range(0, 40 * 2**58, 2**58))
    assert a.get_many(probe) == [b.get(k) for k in probe]


def test_python_buffer_stays_small_however_large_the_sorted_part(monkeypatch):
    """The buffer of elements added since the last merge holds at most MERGE_MIN Python ints, whatever the size
    of the sorted part (it was allowed a quarter of it: ~1M Python ints per container at 100k patients), and the
    merge inserts into the sorted arrays in order."""
    monkeypatch.setattr(compact, "MERGE_MIN", 8)
    rng = random.Random(3)
    s = IntSet(np.arange(0, 20_000, 2, dtype=np.int64))
    m = IntMap(np.uint64)
    ref: dict[int, int] = {}
    for _ in range(3000):
        x = rng.randrange(0, 40_000)
        s.add(x)
        if rng.random() < 0.2:
            s.update(np.array([rng.randrange(0, 40_000) for _ in range(5)], dtype=np.int64))
        k, v = rng.randrange(0, 2**64), rng.randrange(0, 2**64)
        m[k] = v
        ref[k] = v
        assert len(s._recent) < 8 and len(m._recent) < 8
    flat = lambda srt: np.concatenate(srt.keys).astype(object)       # noqa: E731
    assert np.all(np.diff(flat(s._sorted)) > 0) and np.all(np.diff(flat(m._sorted)) > 0)
    assert len(m) == len(ref) and m.get_many(list(ref)) == list(ref.values())


def test_digest_map_answers_like_a_dict(monkeypatch):
    """DigestMap (identifier → patient, study → patient): the answers of a dict, last value wins, values that are
    not pseudonyms and a forced collision of first halves included; its digests rebuild the same map."""
    from raretarget.store.compact import DigestMap

    monkeypatch.setattr(DigestMap, "BUFFER", 4)
    rng = random.Random(7)
    keys = [f"MRN{rng.randrange(10**8)}" for _ in range(60)] + ["", "é\ud800x", None, "2.25.1234"]
    vals = [f"pt-{rng.getrandbits(64):016x}" for _ in range(30)] + ["pt-ABCDEF0123456789", "other", None]
    m, ref = DigestMap(), {}
    for step in range(800):
        k = rng.choice(keys)
        if rng.random() < 0.5:
            v = rng.choice(vals)
            m[k] = v
            ref[k] = v
        assert m.get(k) == ref.get(k) and (k in m) == (k in ref)
    # two keys whose digests share the first half: each keeps its own value
    a = DigestMap.digest("x")
    b = a[:8] + bytes(8)
    m.put_digest(a, vals[0])
    m.put_digest(b, vals[1])
    assert m.get_digest(a) == vals[0] and m.get_digest(b) == vals[1]
    copy = DigestMap()
    for d, v in m.digest_items():
        copy.put_digest(d, v)
    assert all(copy.get(k) == m.get(k) for k in keys) and copy.get_digest(b) == vals[1]
    assert m.get("never put") is None and m.get("never put", 0) == 0


def test_sorted_part_is_held_in_bounded_chunks(monkeypatch):
    """The sorted part is cut in chunks of at most CHUNK elements (a merge re-makes chunks, not one array of the
    whole set: no second copy of a 30 MB array while it is made), in order, the set's answers unchanged."""
    monkeypatch.setattr(compact, "MERGE_MIN", 16)
    monkeypatch.setattr(compact, "CHUNK", 64)
    rng = np.random.default_rng(4)
    xs = rng.integers(-2**63, 2**63 - 1, 5000, dtype=np.int64)
    s, m = IntSet(), IntMap(np.uint64)
    for i in range(0, len(xs), 7):
        s.update(xs[i:i + 7])
    for x in xs.tolist():
        m[x % 2**64] = x % 1000
    for srt in (s._sorted, m._sorted):
        assert len(srt.keys) > 40 and max(len(k) for k in srt.keys) <= 64
        flat = np.concatenate(srt.keys)
        assert np.all(flat[1:] > flat[:-1]) and np.array_equal(srt.firsts, [k[0] for k in srt.keys])
    assert len(s) == len(set(xs.tolist())) and s.contains_many(xs).all()
    assert m.get_many([x % 2**64 for x in xs[:50].tolist()]) == [x % 1000 for x in xs[:50].tolist()]
