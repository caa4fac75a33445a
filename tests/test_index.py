"""raretarget.index.VectorIndex: exact/approximate cosine top-k, ids, updates, deletes, persistence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on shared 2-core boxes

import numpy as np
import pytest

from raretarget.index import IndexMismatchError, VectorIndex, auto_factory, l2_normalize

BASE = 10**12


def mixture(n: int, d: int, seed: int = 0, clusters: int = 100, nq: int = 200):
    """Gaussian mixture (clusters of std 0.35 around N(0,1) centres) and queries from the same mixture."""
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((clusters, d)).astype(np.float32)

    def draw(m):
        return cent[rng.integers(0, clusters, m)] + 0.35 * rng.standard_normal((m, d)).astype(np.float32)

    return draw(n), draw(nq)


def brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qn.astype(np.float64) @ xn.astype(np.float64).T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), ids[order]


def recall(I: np.ndarray, Iex: np.ndarray) -> float:
    k = Iex.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(I, Iex)]))


@pytest.fixture(scope="module")
def data20k():
    x, q = mixture(20_000, 64)
    ids = BASE + np.arange(len(x), dtype=np.int64) * 7
    Dex, Iex = brute(x, ids, q, 10)
    return x, ids, q, Dex, Iex


def check_exact(D, I, Dex, Iex):
    np.testing.assert_allclose(D, Dex, atol=1e-5)
    # ids equal wherever the score is not tied with a neighbour (float32 vs float64 ordering)
    gaps = np.diff(Dex, axis=1)
    untied = np.ones_like(Iex, bool)
    untied[:, 1:] &= np.abs(gaps) > 1e-5
    untied[:, :-1] &= np.abs(gaps) > 1e-5
    assert (I[untied] == Iex[untied]).all()


# ---- exact search ---------------------------------------------------------------------------------
def test_flat_equals_numpy_bruteforce(data20k):
    x, ids, q, Dex, Iex = data20k
    idx = VectorIndex.build(x, ids, factory="Flat", device="cpu")
    D, I = idx.search(q, k=10)
    assert D.shape == I.shape == (len(q), 10) and D.dtype == np.float32 and I.dtype == np.int64
    check_exact(D, I, Dex, Iex)
    assert set(np.unique(I)) <= set(ids.tolist())  # caller ids, not row numbers
    assert len(idx) == len(x) and idx.dim == 64 and idx.factory == "Flat"
    np.testing.assert_array_equal(idx.ids(), np.sort(ids))


def test_auto_factory_and_caller_array_not_mutated(data20k):
    x, ids, q, Dex, Iex = data20k
    x0, q0 = x.copy(), q.copy()
    idx = VectorIndex.build(x, ids)            # 20k -> Flat
    assert idx.factory == "Flat"
    D, I = idx.search(q, 10)
    check_exact(D, I, Dex, Iex)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(q, q0)
    assert auto_factory(10_000, 384) == "Flat"
    assert auto_factory(200_000, 384) == "HNSW32,Flat"
    # the exact-search bound is on the work a query (n·d), not on n: 49k × 256 exact, 60k × 256 not, 300k × 32 exact
    assert auto_factory(49_000, 256) == "Flat" and auto_factory(60_000, 256) == "HNSW32,Flat"
    assert auto_factory(300_000, 32) == "Flat" and auto_factory(500_000, 32) == "HNSW32,Flat"
    assert auto_factory(1_000_000, 256) == "IVF4000,SQ8"        # SQ8 + exact re-rank (bench_index.py)
    assert auto_factory(4_000_000, 384) == "IVF8000,SQ8"
    assert auto_factory(4_000_000, 384, memory="low") == "IVF8000,PQ96"
    f = auto_factory(200_000, 384, memory="low")
    assert f.startswith("IVF") and 384 % int(f.split("PQ")[1]) == 0


def test_k_larger_than_collection_pads():
    x, q = mixture(5, 8, nq=3)
    ids = BASE + np.arange(5)
    for fac in ("Flat", "HNSW32,Flat"):
        D, I = VectorIndex.build(x, ids, fac).search(q, 8)
        assert (I[:, :5] >= BASE).all() and (I[:, 5:] == -1).all()
        assert np.isfinite(D[:, :5]).all() and np.isneginf(D[:, 5:]).all()
        assert sorted(I[0, :5].tolist()) == ids.tolist()


# ---- approximate search ---------------------------------------------------------------------------
def test_hnsw_recall(data20k):
    x, ids, q, Dex, Iex = data20k
    idx = VectorIndex.build(x, ids, factory="HNSW32,Flat")
    D, I = idx.search(q, 10)
    r = recall(I, Iex)
    print(f"HNSW32,Flat recall@10 = {r:.4f}")
    assert r >= 0.95
    # scores of found ids are exact cosines (Flat storage)
    m = I == Iex
    np.testing.assert_allclose(D[m], Dex[m], atol=1e-5)


def test_ivfpq_recall(data20k):
    x, ids, q, Dex, Iex = data20k
    idx = VectorIndex.build(x, ids, factory="IVF128,PQ16")
    assert idx.mode == "ivf" and idx.nprobe >= 8
    r = recall(idx.search(q, 10)[1], Iex)                 # default params (exact re-rank of 8k candidates)
    idx.set_search_params(rerank=0)
    r_codes = recall(idx.search(q, 10)[1], Iex)           # raw PQ codes
    print(f"IVF128,PQ16 recall@10 = {r:.4f} (default, rerank 8); {r_codes:.4f} without rerank")
    assert r >= 0.8
    assert r_codes < r


# ---- ids, updates, deletes ------------------------------------------------------------------------
FACTORIES = ["Flat", "HNSW32,Flat", "IVF16,Flat"]


def small(n=2000, d=32, seed=1):
    x, q = mixture(n, d, seed=seed, clusters=20, nq=50)
    ids = BASE + np.arange(n, dtype=np.int64) * 13 + 5
    return x, ids, q


def build_small(fac, x, ids):
    idx = VectorIndex.build(x, ids, fac)
    if fac.startswith("HNSW"):
        idx.set_search_params(efSearch=256)   # exact on this size, so results compare with brute force
    if fac.startswith("IVF"):
        idx.set_search_params(nprobe=16)
    return idx


@pytest.mark.parametrize("fac", FACTORIES)
def test_add_is_update(fac):
    x, ids, q = small()
    idx = build_small(fac, x, ids)
    target = ids[100]
    # move id 100 onto a query: it must then be that query's top hit, with score 1
    idx.add(q[:1], [target])
    assert len(idx) == len(ids)
    D, I = idx.search(q[:1], 5)
    assert I[0, 0] == target and D[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert (I[0] == target).sum() == 1                      # the old vector is gone
    x2 = x.copy(); x2[100] = q[0]
    Dex, Iex = brute(x2, ids, q, 10)
    check_exact(*idx.search(q, 10), Dex, Iex)


def test_duplicate_ids_in_one_call_rejected():
    x, ids, q = small(100)
    with pytest.raises(ValueError, match="duplicate"):
        VectorIndex.build(x, np.r_[ids[:-1], ids[0]], "Flat")
    idx = VectorIndex.build(x, ids, "Flat")
    with pytest.raises(ValueError, match="duplicate"):
        idx.add(x[:2], [7, 7])
    with pytest.raises(ValueError, match="integer"):
        idx.add(x[:2], np.array([1.5, 2.5]))


@pytest.mark.parametrize("fac", FACTORIES)
def test_remove(fac):
    x, ids, q = small()
    idx = build_small(fac, x, ids)
    _, I0 = idx.search(q, 10)
    gone = np.unique(I0[:, :3])                              # remove every query's top-3
    assert idx.remove(gone) == len(gone)
    assert idx.remove(gone) == 0                             # unknown ids are ignored
    assert len(idx) == len(ids) - len(gone)
    D, I = idx.search(q, 10)
    assert not np.isin(I, gone).any()
    assert (I >= 0).all()                                    # still k results
    keep = ~np.isin(ids, gone)
    check_exact(D, I, *brute(x[keep], ids[keep], q, 10))
    assert set(idx.ids().tolist()) == set(ids[keep].tolist())
    if fac.startswith("HNSW"):
        assert idx.n_tombstones == len(gone)                 # HNSW cannot remove: tombstones
    else:
        assert idx.n_tombstones == 0                         # native remove_ids
    # re-adding a removed id brings it back
    idx.add(x[np.isin(ids, gone[:1])], gone[:1])
    assert gone[0] in idx.search(x[np.isin(ids, gone[:1])], 3)[1][0]


def test_hnsw_auto_compaction_keeps_results():
    x, ids, q = small(3000)
    idx = build_small("HNSW32,Flat", x, ids)
    assert idx.compact_fraction == 0.2
    rng = np.random.default_rng(3)
    order = rng.permutation(len(ids))
    drop1 = ids[order[:500]]                                 # 500/3000 < 20%: tombstones only
    idx.remove(drop1)
    assert idx.n_tombstones == 500
    keep = ~np.isin(ids, drop1)
    Dex, Iex = brute(x[keep], ids[keep], q, 10)
    check_exact(*idx.search(q, 10), Dex, Iex)
    drop2 = ids[order[500:700]]                              # 700/3000 > 20%: compaction
    idx.remove(drop2)
    assert idx.n_tombstones == 0
    assert idx._index.ntotal == len(ids) - 700 == len(idx)
    keep = ~np.isin(ids, np.r_[drop1, drop2])
    Dex, Iex = brute(x[keep], ids[keep], q, 10)
    check_exact(*idx.search(q, 10), Dex, Iex)


def test_updates_create_tombstones_and_compact():
    x, ids, q = small(1000)
    idx = build_small("HNSW32,Flat", x, ids)
    x2 = x.copy(); x2[:150] = x[500:650][::-1]
    idx.add(x2[:150], ids[:150])
    assert idx.n_tombstones == 150
    idx.compact()
    assert idx.n_tombstones == 0 and len(idx) == 1000
    check_exact(*idx.search(q, 10), *brute(x2, ids, q, 10))


# ---- persistence ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fac", FACTORIES + ["IVF16,PQ8"])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_roundtrip(tmp_path, fac, mmap):
    x, ids, q = small()
    idx = build_small(fac, x, ids)
    idx.remove(ids[:40])
    idx.add(x[40:60][::-1], ids[40:60])                      # updates
    D, I = idx.search(q, 10)
    p = idx.save(tmp_path / "ix", meta={"encoder_version": "v1"})
    man = json.loads((p / "manifest.json").read_text())
    assert man["factory"] == fac and man["dim"] == 32 and man["metric"] == "cosine"
    assert man["count"] == len(ids) - 40 and man["meta"] == {"encoder_version": "v1"}
    assert man["n_tombstones"] == idx.n_tombstones and man["faiss_version"] and man["build_time"]
    assert (p / "index.faiss").exists() and not list(tmp_path.glob(".ix.tmp-*"))
    if fac == "IVF16,PQ8":
        assert (p / "vectors.npy").exists()
    j = VectorIndex.load(p, mmap=mmap, expect_meta={"encoder_version": "v1"})
    assert j.meta == {"encoder_version": "v1"} and len(j) == len(idx) and j.factory == fac
    np.testing.assert_array_equal(j.ids(), idx.ids())
    D2, I2 = j.search(q, 10)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_allclose(D2, D, atol=1e-6)
    # a loaded (possibly mmapped) index can still be mutated and saved over the old folder
    j.remove(ids[60:70])
    j.add(q[:1], [ids[80]])
    assert j.search(q[:1], 1)[1][0, 0] == ids[80]
    j.save(p)
    k = VectorIndex.load(p, mmap=mmap)
    assert len(k) == len(ids) - 50
    np.testing.assert_array_equal(k.search(q, 10)[1], j.search(q, 10)[1])


def test_manifest_mismatch_refused(tmp_path):
    x, ids, q = small(200)
    VectorIndex.build(x, ids, "Flat", meta={"encoder_version": "minilm-1"}).save(tmp_path / "ix")
    with pytest.raises(IndexMismatchError, match="encoder_version"):
        VectorIndex.load(tmp_path / "ix", expect_meta={"encoder_version": "minilm-2"})
    with pytest.raises(IndexMismatchError, match="dimension"):
        VectorIndex.load(tmp_path / "ix", expect_dim=384)
    assert VectorIndex.load(tmp_path / "ix", expect_meta={"encoder_version": "minilm-1"}).meta["encoder_version"] == "minilm-1"


# ---- input validation -----------------------------------------------------------------------------
def test_zero_vector_rejected():
    x, ids, q = small(100)
    x[7] = 0
    with pytest.raises(ValueError, match="zero vector"):
        VectorIndex.build(x, ids, "Flat")
    idx = VectorIndex.build(x[8:], ids[8:], "Flat")
    with pytest.raises(ValueError, match="zero vector"):
        idx.search(np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match="zero vector"):
        idx.add(np.zeros((1, 32)), [1])
    with pytest.raises(ValueError, match="zero vector"):
        l2_normalize(np.zeros(4))


def test_l2_normalize_copies():
    a = np.array([[3.0, 4.0]], np.float32)
    b = l2_normalize(a)
    np.testing.assert_allclose(b, [[0.6, 0.8]])
    np.testing.assert_array_equal(a, [[3.0, 4.0]])
    assert b is not a and b.dtype == np.float32


def test_l2_normalize_in_place_only_when_asked_and_possible():
    a = np.array([[3.0, 4.0]], np.float32)
    assert l2_normalize(a, inplace=True) is a
    np.testing.assert_allclose(a, [[0.6, 0.8]])
    ro = np.array([[3.0, 4.0]], np.float32)
    ro.flags.writeable = False                               # e.g. a view on an Arrow buffer: never written
    assert l2_normalize(ro, inplace=True) is not ro and ro[0, 0] == 3.0
    f64 = np.array([[3.0, 4.0]])
    assert l2_normalize(f64, inplace=True) is not f64 and f64[0, 0] == 3.0


def test_build_without_copy_is_the_same_index():
    x, ids, q = small(300)
    a = VectorIndex.build(x.copy(), ids, "HNSW16,Flat")
    mine = (x * 3.0).astype(np.float32)                      # unnormalised: the build normalises it in place
    b = VectorIndex.build(mine, ids, "HNSW16,Flat", copy=False)
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, rtol=1e-5)
    (da, ia), (db, ib) = a.search(q, 5), b.search(q, 5)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(da, db, rtol=1e-5)


def test_wrong_dim_rejected():
    x, ids, q = small(100)
    idx = VectorIndex.build(x, ids, "Flat")
    with pytest.raises(ValueError, match="dimension"):
        idx.search(np.ones((2, 31), np.float32))
    with pytest.raises(ValueError, match="dimension"):
        idx.add(np.ones((2, 33), np.float32), [1, 2])
    with pytest.raises(ValueError, match="ids"):
        idx.add(np.ones((2, 32), np.float32), [1, 2, 3])


def test_import_does_not_load_faiss():
    code = ("import sys, raretarget.index as m; assert 'faiss' not in sys.modules, 'faiss imported'; "
            "m.auto_factory(10, 4); m.l2_normalize([[1.0, 0.0]]); assert 'faiss' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ---- GPU ------------------------------------------------------------------------------------------
def _gpus() -> int:
    try:
        import faiss
        return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() == 0, reason="needs faiss-gpu and a CUDA GPU")
@pytest.mark.parametrize("fac", ["Flat", "IVF16,Flat"])
def test_gpu_same_results(tmp_path, fac):
    x, ids, q = small()
    cpu = build_small(fac, x, ids); cpu.device = "cpu"
    gpu = build_small(fac, x, ids); gpu.device = "gpu"
    D1, I1 = cpu.search(q, 10)
    D2, I2 = gpu.search(q, 10)
    assert gpu._gpu is not None
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, atol=1e-4)
    gpu.remove(ids[:10]); cpu.remove(ids[:10])
    np.testing.assert_array_equal(gpu.search(q, 10)[1], cpu.search(q, 10)[1])
    gpu.save(tmp_path / "g")
    j = VectorIndex.load(tmp_path / "g", device="cpu")
    np.testing.assert_array_equal(j.search(q, 10)[1], cpu.search(q, 10)[1])


def test_negative_ids_other_than_minus_one_are_real_results():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(300, 16)).astype("float32")
    ids = -(np.arange(300, dtype=np.int64) + 2) * 1_000_003          # all negative, none == -1
    for factory in ("Flat", "HNSW32,Flat"):
        idx = VectorIndex.build(v, ids, factory=factory)
        scores, got = idx.search(v[:10], 1)
        assert (got[:, 0] == ids[:10]).all() and np.isfinite(scores).all()


def test_side_store_lookup_vectorised_matches_dict():
    """The sorted-id lookup used by re-ranking agrees with the id -> slot dict after updates/deletes."""
    from raretarget.index.vector_index import _SideStore
    rng = np.random.default_rng(3)
    st = _SideStore(4)
    ids = rng.choice(10**6, 500, replace=False).astype(np.int64) + BASE
    st.upsert(ids, rng.standard_normal((500, 4)).astype(np.float32))
    st.delete(ids[:50].tolist())
    st.upsert(ids[25:75], rng.standard_normal((50, 4)).astype(np.float32))   # re-add 25 deleted, update 25
    q = np.concatenate([ids[:99], [-1, 7, BASE - 1]]).reshape(-1, 3)
    vecs, ok = st.lookup(q)
    for i, v, o in zip(q.reshape(-1).tolist(), vecs.reshape(-1, 4), ok.reshape(-1)):
        p = st.pos.get(i)
        assert o == (p is not None)
        np.testing.assert_array_equal(v, st.vecs[p] if p is not None else np.zeros(4, np.float32))
    assert not _SideStore(4).lookup(np.array([[1, 2]]))[1].any()


@pytest.mark.parametrize("fac", ["Flat", "HNSW32,Flat"])
def test_id_map_stays_compact_until_changed_and_answers_the_same(tmp_path, fac):
    """A built or loaded index keeps its id → row map as int64 arrays (16 bytes a vector, not a dict of Python ints:
    the index build's and the searcher's peak memory); membership, updates and removals give the same answers
    before and after it turns into a dict on the first change."""
    from raretarget.index.vector_index import _LiveIds

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    ids = BASE + rng.permutation(10_000)[:300].astype(np.int64)
    idx = VectorIndex.build(x, ids, factory=fac)
    assert idx._live._d is None                                   # compact after a build
    idx.save(tmp_path / "i")
    got = VectorIndex.load(tmp_path / "i")
    assert got._live._d is None and len(got) == 300               # and after a load
    np.testing.assert_array_equal(got.ids(), np.sort(ids))
    assert int(ids[5]) in got and BASE - 1 not in got and got._live._d is None   # look-ups do not expand it
    # an update (id present) and a removal: the dict form from then on, same answers
    got.add(x[:1] * -1, ids[:1])
    assert got.remove(ids[1:3]) == 2 and len(got) == 298 and int(ids[1]) not in got and int(ids[0]) in got
    d, i = got.search(-x[:1], 1)
    assert i[0, 0] == ids[0]
    # the map itself
    m = _LiveIds(np.array([7, 3, 9]), np.array([0, 1, 2]))
    assert len(m) == 3 and 3 in m and 4 not in m
    np.testing.assert_array_equal(m.contains(np.array([9, 4, 7])), [True, False, True])
    m.add(np.array([11]), np.array([3]))
    assert m.pop(3) == 1 and m._d is not None and sorted(m.ids().tolist()) == [7, 9, 11]
    np.testing.assert_array_equal(m.contains(np.array([9, 3])), [True, False])
