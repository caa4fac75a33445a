"""Delta embedding files (index/embedding_delta.py) and the base + delta index (index/delta.py), on arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raretarget import schema as S
from raretarget.index import VectorIndex, embedding_delta as ED
from raretarget.index.delta import DeltaIndex, build_generation, delta_path, index_ids, merge_topk
from raretarget.index.generations import Generations, vectors_of

D = 16
VER = "m1"


def _vecs(rng, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _table(ids, vecs, pids=None, modality: str = "note") -> pa.Table:
    ids = np.asarray(ids, np.int64)
    return pa.table({"record_id": pa.array(ids, pa.int64()),
                     "patient_id": pa.array(pids if pids is not None else [f"p{i % 7}" for i in ids], pa.string()),
                     "modality": [modality] * len(ids), "source_ref": [f"ref{i}" for i in ids],
                     "model_version": [VER] * len(ids),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vecs, np.float32).ravel()), D)})


def _rows(t: pa.Table) -> dict[int, tuple]:
    v = vectors_of(t)
    return {r: (p, s, tuple(np.round(v[i], 6))) for i, (r, p, s) in enumerate(zip(
        t.column("record_id").to_pylist(), t.column("patient_id").to_pylist(), t.column("source_ref").to_pylist()))}


def test_delta_write_read_equals_full_rewrite(tmp_path):
    rng = np.random.default_rng(0)
    g = Generations(tmp_path)
    vdir = g.emb_dir / VER
    base = _table(np.arange(100), _vecs(rng, 100))
    g.write_embeddings(VER, "note", base)
    g.write_embeddings(VER, "labs", _table(np.arange(1000, 1010), _vecs(rng, 10), modality="labs"))
    assert g.embedding_counts(VER) == {"labs": 10, "note": 100}
    expect = _rows(base)
    # night 1: ids 0-9 deleted, 10-19 changed, 100-104 new
    ch = _table(np.r_[10:20, 100:105], _vecs(rng, 15))
    ED.write(vdir, {"note": (ch, np.arange(0, 20))}, generation=1)
    for i in range(10):
        expect.pop(i)
    expect.update(_rows(ch))
    # night 2: 100 (night 1's) changed again, 50 deleted, only tombstones in labs
    ch2 = _table([100], _vecs(rng, 1))
    ED.write(vdir, {"note": (ch2, [50, 100]), "labs": (None, [1000, 1001])}, generation=2)
    expect.pop(50)
    expect.update(_rows(ch2))
    got = g.read_embeddings(VER, "note")
    assert _rows(got) == expect and got.num_rows == len(expect)
    assert g.embedding_counts(VER) == {"labs": 8, "note": len(expect)}
    assert sorted(ED.ids(vdir, "note").tolist()) == sorted(expect)
    assert g.read_embeddings(VER).num_rows == len(expect) + 8            # all modalities
    # only some ids: the same rows as the whole read, across base and deltas (a deleted or superseded id is not
    # brought back; an id nowhere is simply absent)
    want = np.array([5, 15, 50, 60, 100, 104, 99999], np.int64)
    some = g.read_embeddings(VER, "note", ["record_id", "patient_id", "source_ref", "vector"], ids=want)
    assert _rows(some) == {r: v for r, v in expect.items() if r in set(want.tolist())}
    assert sorted(some.column("record_id").to_pylist()) == [15, 60, 100, 104]
    # streamed in small batches: the same rows in the same order (base first, then each night's upserts)
    streamed = pa.concat_tables(list(g.iter_embeddings(VER, "note", batch_rows=7)))
    assert streamed.equals(got) and max(t.num_rows for t in g.iter_embeddings(VER, "note", batch_rows=7)) <= 7
    # the index build's arrays, filled batch by batch: the same vectors and ids in the same order
    vecs, rids = g.read_vectors(VER, "note", batch_rows=7)
    assert vecs.dtype == np.float32 and vecs.shape == (got.num_rows, D) and vecs.flags.c_contiguous
    np.testing.assert_array_equal(rids, got.column("record_id").to_numpy())
    np.testing.assert_array_equal(vecs, vectors_of(got))
    assert g.read_vectors(VER, "gene")[0].shape[0] == 0                  # a modality with no rows
    # the same rows written as one file: what a full rewrite gives
    full = tmp_path / "full"
    Generations(full).write_embeddings(VER, "note", got)
    assert _rows(Generations(full).read_embeddings(VER, "note")) == expect
    # a base written again (full embed, compaction) supersedes the deltas
    g.write_embeddings(VER, "note", base)
    assert _rows(g.read_embeddings(VER, "note")) == _rows(base)
    assert g.embedding_counts(VER)["note"] == 100 and g.embedding_counts(VER)["labs"] == 8


def test_rollback_orphans_and_compaction(tmp_path):
    rng = np.random.default_rng(1)
    g = Generations(tmp_path)
    vdir = g.emb_dir / VER
    g.write_embeddings(VER, "note", _table(np.arange(50), _vecs(rng, 50)))
    ED.write(vdir, {"note": (_table([1, 60], _vecs(rng, 2)), [1, 2])}, generation=3)
    after3 = _rows(g.read_embeddings(VER, "note"))
    ED.write(vdir, {"note": (_table([61], _vecs(rng, 1)), [3])}, generation=4)     # a night that did not publish
    (ED.delta_dir(vdir) / "000009.note.parquet").write_bytes(b"left by a killed writer")
    assert ED.rollback(vdir, 4) == 1                                  # generation 4 is still current
    assert _rows(g.read_embeddings(VER, "note")) == after3
    assert sorted(f.name for f in ED.delta_dir(vdir).iterdir()) == [
        "000001.note.parquet", "000001.note.tombstones.parquet", "DELTAS.json"]
    p = ED.pending(vdir, "note")
    assert p == {"deltas": 1, "upserts": 2, "tombstones": 2, "base_rows": 50}
    assert ED.due(p, 0.05, 30) and not ED.due(p, 0.5, 30) and ED.due(p, 0.5, 1)
    assert ED.compact(vdir, "note", lambda t: g.write_embeddings(VER, "note", t)) == 50
    assert _rows(g.read_embeddings(VER, "note")) == after3
    assert ED.read_manifest(vdir)["deltas"] == [] and ED.pending(vdir, "note")["deltas"] == 0
    assert [f.name for f in ED.delta_dir(vdir).iterdir()] == ["DELTAS.json"]


def test_store_without_deltas_reads_as_before(tmp_path):
    """A base file written before delta files existed (no base id in its footer) reads unchanged."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    t = S.conform_embeddings(_table(np.arange(20), _vecs(rng, 20)))
    d = tmp_path / "embeddings" / VER
    d.mkdir(parents=True)
    pq.write_table(t, d / "note.parquet")
    g = Generations(tmp_path)
    assert g.read_embeddings(VER, "note").equals(pq.read_table(d / "note.parquet"))
    assert g.embedding_counts(VER) == {"note": 20}
    assert not ED.delta_dir(d).exists()


def _exact(vecs: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int):
    s = q @ vecs.T
    o = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, o, 1), ids[o]


def _gen_store(tmp_path, rng, n=400):
    """A generation 1 with a Flat 'note' index over ``n`` vectors, as Generations.build writes it."""
    g = Generations(tmp_path)
    vecs = _vecs(rng, n)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    g.write_embeddings(VER, "note", _table(ids, vecs))
    info = g.build(VER, factory="Flat")
    return g, info, dict(zip(ids.tolist(), vecs))


def _apply(live: dict, rm, add, vecs) -> None:
    for i in rm:
        live.pop(int(i), None)
    for i, v in zip(add, vecs):
        live[int(i)] = v


def test_base_plus_delta_search_equals_exact_search(tmp_path):
    rng = np.random.default_rng(3)
    g, cur, live = _gen_store(tmp_path, rng)
    ids0 = np.array(sorted(live))
    for night in range(3):                      # three nights: deletions, changed vectors, new ids
        rm = rng.choice(ids0, 15, replace=False)
        changed = rng.choice(np.setdiff1d(ids0, rm), 10, replace=False)
        new = np.arange(10_000 + night * 100, 10_000 + night * 100 + 8)
        add = np.r_[changed, new]
        vecs = _vecs(rng, len(add))
        info = build_generation(g, cur, {"note": (rm, add, vecs)}, compact_fraction=1.0, compact_every=99)
        g.publish(info)
        cur = info
        _apply(live, rm, add, vecs)
        assert "note" in info["delta"] and info["delta"]["note"]["nights"] == night + 1 and not info["compacted"]
        idx = g.open()["note"]
        assert isinstance(idx, DeltaIndex) and len(idx) == len(live) == info["counts"]["note"]
        assert idx.ids().tolist() == sorted(live) == index_ids(g.idx_dir / f"gen-{info['generation']:06d}", "note",
                                                                info).tolist()
        lids = np.array(sorted(live))
        lvecs = np.stack([live[i] for i in lids.tolist()])
        q = np.r_[_vecs(rng, 20), lvecs[rng.choice(len(lids), 10)]]
        for k in (1, 10, 50):
            s, i = idx.search(q, k)
            es, ei = _exact(lvecs, lids, q, k)
            np.testing.assert_allclose(s, es, atol=1e-5)
            assert (i == ei).all()
    # base files are shared with generation 1 (linked, not rewritten); the deltas are small
    assert (g.idx_dir / f"gen-{cur['generation']:06d}" / "note" / "index.faiss").stat().st_nlink >= 2
    assert (delta_path(g.idx_dir / f"gen-{cur['generation']:06d}", "note") / "masked.npy").exists()


def test_tombstones_exclude_base_ids_even_when_most_are_masked(tmp_path):
    """Masked ids never come back, and k live results still do when most of the base is masked (the
    base search is repeated with a larger fetch)."""
    rng = np.random.default_rng(4)
    g, cur, live = _gen_store(tmp_path, rng, n=200)
    ids0 = np.array(sorted(live))
    rm = ids0[:190]                            # 95% deleted
    info = build_generation(g, cur, {"note": (rm, np.zeros(0, np.int64), None)}, compact_fraction=10.0,
                            compact_every=99)
    idx = DeltaIndex.load(g.idx_dir / f"gen-{info['generation']:06d}", "note")
    assert idx.delta is None and len(idx) == 10
    s, i = idx.search(_vecs(rng, 30), 10)
    assert set(i.ravel().tolist()) <= set(ids0[190:].tolist()) and (i != -1).all()
    s, i = idx.search(_vecs(rng, 3), 15)                              # more than are live: -1 / -inf tail
    assert (i[:, 10:] == -1).all() and np.isneginf(s[:, 10:]).all()
    assert not np.isin(i, rm).any()


def test_compaction_gives_the_same_search_results(tmp_path):
    rng = np.random.default_rng(5)
    g, cur, live = _gen_store(tmp_path, rng)
    ids0 = np.array(sorted(live))
    rm, add = ids0[:5], np.r_[ids0[5:10], [99_999]]
    vecs = _vecs(rng, len(add))
    kept = build_generation(g, cur, {"note": (rm, add, vecs)}, compact_fraction=1.0, compact_every=99)
    g.publish(kept)
    q = _vecs(rng, 25)
    s1, i1 = g.open()["note"].search(q, 10)
    # the same night under a schedule that compacts (delta + masked = 11 > 1% of 400)
    g2, cur2, _ = _gen_store(tmp_path / "b", np.random.default_rng(5))
    comp = build_generation(g2, cur2, {"note": (rm, add, vecs)}, compact_fraction=0.01, compact_every=99)
    assert comp["compacted"] == ["note"] and "note" not in comp["delta"]
    g2.publish(comp)
    idx = g2.open()["note"]
    assert isinstance(idx, VectorIndex) and len(idx) == kept["counts"]["note"]
    s2, i2 = idx.search(q, 10)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert (i1 == i2).all()
    # compact_every: the second night with changes since the base folds it
    g.publish(build_generation(g, kept, {"note": (ids0[20:21], [], None)}, compact_fraction=1.0, compact_every=3))
    third = build_generation(g, g.current(), {"note": (ids0[21:22], [], None)}, compact_fraction=1.0, compact_every=3)
    assert third["compacted"] == ["note"]


def test_merge_topk_pads_and_orders():
    d, i = merge_topk([np.array([[0.9, 0.1]], np.float32), np.array([[0.5, -np.inf]], np.float32)],
                      [np.array([[1, 2]]), np.array([[3, -1]])], 4)
    assert i.tolist() == [[1, 3, 2, -1]] and np.isneginf(d[0, 3])


def test_exact_kth_in_chunks():
    from raretarget.index.delta import exact_kth

    rng = np.random.default_rng(6)
    v, q = _vecs(rng, 1000), _vecs(rng, 7)
    want = -np.sort(-(q @ v.T), axis=1)[:, 9]
    np.testing.assert_allclose(exact_kth(q, v, 10, chunk=64), want, atol=1e-6)
    np.testing.assert_allclose(exact_kth(q, v, 10), want, atol=1e-6)


def test_new_modality_becomes_a_base(tmp_path):
    """Rows of a modality that has no base file yet are written as its base, not as a delta."""
    rng = np.random.default_rng(7)
    g = Generations(tmp_path)
    vdir = g.emb_dir / VER
    g.write_embeddings(VER, "note", _table(np.arange(10), _vecs(rng, 10)))
    t = _table([500, 501], _vecs(rng, 2), modality="image")
    e = ED.write(vdir, {"image": (t, []), "note": (None, [3])}, generation=1)
    assert set(e["modalities"]) == {"note"} and ED.base_path(vdir, "image").exists()
    assert g.embedding_counts(VER) == {"image": 2, "note": 9}
    assert _rows(g.read_embeddings(VER, "image")) == _rows(t)


def test_recall_check_streams_the_vectors_and_matches_the_whole_array_computation(tmp_path, monkeypatch):
    """The nightly recall check never reads a modality's vectors whole (ids, sampled queries and returned rows
    only; the rest streamed), loads only the checked modalities' indexes, and gives the recall of the
    whole-array computation, also for an approximate index that misses neighbours."""
    from raretarget.index.evaluation import recall_check
    from raretarget.index.delta import exact_kth

    rng = np.random.default_rng(4)
    g = Generations(tmp_path)
    vecs = _vecs(rng, 400)
    g.write_embeddings(VER, "note", _table(np.arange(400) * 3, vecs))
    g.write_embeddings(VER, "labs", _table(np.arange(1000, 1040), _vecs(rng, 40), modality="labs"))
    ED.write(g.emb_dir / VER, {"note": (_table([3, 2000], _vecs(rng, 2)), np.array([0, 6]))}, generation=1)
    info = g.build(VER, factory="PQ2x4", publish=False)
    t = g.read_embeddings(VER, "note")

    def whole(k=5, n=60, seed=2):                     # the former computation, on the whole arrays
        r = np.random.default_rng(seed)
        ids, v = t.column("record_id").to_numpy(), vectors_of(t)
        q = v[r.choice(len(ids), size=n, replace=False)]
        kth = exact_kth(q, v, k)
        _, got = g.open(generation=info)["note"].search(q, k)
        pos = {x: i for i, x in enumerate(ids.tolist())}
        score = np.array([[v[pos[x]] @ q[i] if x in pos else -np.inf for x in row] for i, row in enumerate(got)])
        return float(np.mean(((score >= kth[:, None] - 1e-5)).sum(1) / k))

    reads, opened = [], []
    real_read, real_open = g.read_embeddings, g.open
    monkeypatch.setattr(g, "read_embeddings",
                        lambda ver, m=None, columns=None, ids=None: (reads.append((columns, ids)),
                                                                     real_read(ver, m, columns, ids=ids))[1])
    monkeypatch.setattr(g, "open", lambda **kw: (opened.append(kw.get("modalities")), real_open(**kw))[1])
    rc = recall_check(g, info, VER, sample_queries=60, k=5, seed=2, modalities=["note"])
    assert 0.3 < rc["note"]["recall"] < 1.0                   # the coarse PQ index misses some: a real comparison
    assert set(rc) == {"note"} and opened == [["note"]] and rc["note"]["ids_match"]
    assert rc["note"]["recall"] == pytest.approx(whole()) and rc["note"]["queries"] == 60
    assert reads and all(ids is not None for cols, ids in reads if cols is None or "vector" in cols)
