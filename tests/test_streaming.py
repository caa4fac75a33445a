"""Issue 20: a store's training patients are streamed in chunks (raretarget.encoders.datamodule.StreamedPatients),
so the training loader's memory does not grow with the store. Tiny generated store, tiny model, CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from raretarget.encoders import data as D  # noqa: E402

TINY = {
    "text": {"name": "text", "backbone": "tiny", "freeze_backbone": False, "max_length": 32},
    "image": {"name": "image", "arch": "small", "image_size": 32, "features": 32},
    "labs": {"name": "labs", "hidden": 32},
    "variants": {"name": "variants", "dim": 32, "genes": ["FBN1", "COL1A1", "SCN1A"]},
}


@pytest.fixture(scope="module")
def store(cohort_store):
    return cohort_store(30, 0).eng


@pytest.fixture(scope="module")
def old_split(store):
    """The in-memory loader's split: every sample loaded, split by hash."""
    train, val = D.split(D.load_store_samples(store), 0.2, 0)
    return [s["patient_id"] for s in train], [s["patient_id"] for s in val]


def _model():
    from raretarget.encoders.model import MultiModalModel

    torch.manual_seed(0)
    return MultiModalModel(TINY, embed_dim=32)


def _dm(store, **kw):
    from raretarget.encoders.datamodule import MultiModalDataModule

    kw = {"knowledge": False, "verdicts": False, "batch_size": 3, "num_workers": 0, "chunk_patients": 4, **kw}
    dm = MultiModalDataModule(store=store, **kw)
    dm.prepare()
    return dm.attach(_model())


def _walk(ds, worker, workers, monkeypatch):
    """One epoch of ``ds`` as DataLoader worker ``worker`` of ``workers`` would read it (in its own copy of the
    dataset, as a worker process has): its batches."""
    import copy

    import torch.utils.data as tud

    info = type("Info", (), {"id": worker, "num_workers": workers})() if workers > 1 else None
    monkeypatch.setattr(tud, "get_worker_info", lambda: info)
    return list(iter(copy.copy(ds)))


# ---- the pure planning functions ------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_chunks_split_ranks_evenly_and_disjointly(world):
    ids = [f"pt-{i:03d}" for i in range(101)]
    per_rank = [D.epoch_chunks(ids, 7, epoch=2, seed=5, rank=r, world_size=world) for r in range(world)]
    flat = [[p for c in chunks for p in c] for chunks in per_rank]
    assert len({len(f) for f in flat}) == 1 and len(flat[0]) == len(ids) // world    # same count on every rank
    seen = [p for f in flat for p in f]
    assert len(seen) == len(set(seen)) and set(seen) <= set(ids)                     # disjoint
    assert len(ids) - len(seen) < world                                              # at most world-1 sit out
    assert all(1 <= len(c) <= 7 for chunks in per_rank for c in chunks)
    # the same plan on every call (every rank computes it alone); another epoch, another order
    assert D.epoch_chunks(ids, 7, epoch=2, seed=5, rank=0, world_size=world) == per_rank[0]
    assert D.epoch_chunks(ids, 7, epoch=3, seed=5, rank=0, world_size=world) != per_rank[0]
    # not shuffled (validation): sorted order, contiguous
    assert [p for c in D.epoch_chunks(ids, 7, shuffle=False) for p in c] == ids
    # workers take chunks round robin: each chunk read by exactly one worker
    chunks = per_rank[0]
    got = [i for w in range(3) for i, _ in D.worker_chunks(chunks, w, 3)]
    assert sorted(got) == list(range(len(chunks)))


def test_stream_batches_counts():
    assert D.stream_batches(10, 3, drop_last=True) == 3
    assert D.stream_batches(10, 3, drop_last=False) == 4
    assert D.stream_batches(2, 3, drop_last=True) == 1         # less than a batch: kept, as the in-memory loader did
    assert D.stream_batches(0, 3, drop_last=False) == 0


def test_split_ids_is_the_sample_split(store, old_split):
    ids = D.sample_patients(store)
    assert ids == sorted(s["patient_id"] for s in D.load_store_samples(store))   # exactly the patients with a sample
    assert D.split_ids(ids, 0.2, 0) == (sorted(old_split[0]), sorted(old_split[1]))


def test_gene_vocabulary_and_lab_stats_without_samples(store, old_split):
    samples = D.load_store_samples(store)
    assert D.store_genes(store) == sorted({v["gene"] for s in samples for v in (s["variants"] or []) if v.get("gene")})
    dm = _dm(store)
    assert set(dm.gene_vocabulary()) == set(D.store_genes(store))
    # lab z-score statistics from one aggregate query equal those of the loaded training samples
    from raretarget.encoders.labs import LabEncoder

    a, b = LabEncoder(embed_dim=8, min_count=2), LabEncoder(embed_dim=8, min_count=2)
    train = set(old_split[0])
    a.fit_stats(a.to_matrix([s["labs"] for s in samples if s["patient_id"] in train and s["labs"]]))
    dm.fit_lab_stats(b)
    assert not torch.equal(a.mean, LabEncoder(embed_dim=8).mean)             # something was fitted
    assert torch.allclose(a.mean, b.mean, rtol=1e-5) and torch.allclose(a.sd, b.sd, rtol=1e-4)


# ---- the streamed dataset -------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_validation_stream_yields_every_patient_once(store, old_split, workers, monkeypatch):
    from raretarget.encoders.datamodule import StreamedPatients

    ds = StreamedPatients(store, _dm(store).val_ids, train=False, batch_size=3, chunk_patients=4, num_workers=workers)
    batches = [b for w in range(workers) for b in _walk(ds, w, workers, monkeypatch)]
    pids = [it["patient_id"] for b in batches for it in b]
    assert sorted(pids) == sorted(old_split[1]) and len(batches) == len(ds)


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2)])
def test_training_stream_splits_ranks_and_workers(store, old_split, world, workers, monkeypatch):
    """Every (rank, worker) reads different patients; each rank makes the same number of batches (DDP collectives
    line up); one epoch reads each training patient at most once, all of them but what rounding drops; the next
    epoch reads them in another order."""
    from raretarget.encoders.datamodule import StreamedPatients

    train = sorted(old_split[0])
    per_rank, counts = [], []
    for r in range(world):
        ds = StreamedPatients(store, train, train=True, batch_size=3, chunk_patients=4, rank=r, world_size=world,
                              num_workers=workers)
        batches = [b for w in range(workers) for b in _walk(ds, w, workers, monkeypatch)]
        assert all(1 <= len(b) <= 3 for b in batches)
        counts.append(len(batches))
        assert len(batches) == len(ds)                             # len() is exact
        per_rank.append([it["patient_id"] for b in batches for it in b])
    assert len(set(counts)) == 1
    seen = [p for f in per_rank for p in f]
    assert len(seen) == len(set(seen)) and set(seen) <= set(train)
    assert len(train) - len(seen) < world + world * workers * 3   # rank rounding + one partial batch per worker
    # with nothing dropped (batches of one), every training patient exactly once per epoch
    ds = StreamedPatients(store, train, train=True, batch_size=1, chunk_patients=4, num_workers=workers)
    e0 = [it["patient_id"] for w in range(workers) for b in _walk(ds, w, workers, monkeypatch) for it in b]
    assert sorted(e0) == train
    again = [it["patient_id"] for w in range(workers) for b in _walk(ds, w, workers, monkeypatch) for it in b]
    assert again == e0                                             # seeded: the same epoch reads the same order
    ds.set_epoch(1)
    nxt = [it["patient_id"] for w in range(workers) for b in _walk(ds, w, workers, monkeypatch) for it in b]
    assert sorted(nxt) == train and nxt != e0


@pytest.mark.parametrize("workers", [2, 3])
def test_small_store_gives_every_worker_a_chunk(store, old_split, workers, monkeypatch):
    """A rank's share smaller than ``workers * chunk_patients`` is cut so that every worker reads and collates a
    part (before, one chunk: one worker did the whole epoch while the others idled); still every patient once."""
    from raretarget.encoders.datamodule import StreamedPatients

    train = sorted(old_split[0])
    ds = StreamedPatients(store, train, train=True, batch_size=1, chunk_patients=10_000, num_workers=workers)
    assert ds.chunk_size(workers) == -(-len(train) // workers) and ds.chunk_size(1) == len(train)
    per_worker = [[it["patient_id"] for b in _walk(ds, w, workers, monkeypatch) for it in b] for w in range(workers)]
    sizes = [len(p) for p in per_worker]
    assert min(sizes) > 0 and max(sizes) - min(sizes) <= ds.chunk_size(workers)
    assert sorted(p for w in per_worker for p in w) == train
    # never more than chunk_patients a chunk: a large share keeps the configured size
    assert StreamedPatients(store, train, train=True, batch_size=1, chunk_patients=2, num_workers=workers).chunk_size(
        workers) == 2


def _spy_chunks(monkeypatch) -> list:
    """Record how many patients each ``load_store_samples`` call asks for (None: the whole store)."""
    asked = []
    real = D.load_store_samples

    def spy(st, loincs=None, patients=None):
        asked.append(None if patients is None else len(patients))
        return real(st, loincs, patients=patients)

    monkeypatch.setattr(D, "load_store_samples", spy)
    return asked


def test_loader_never_asks_the_store_for_more_than_a_chunk(store, monkeypatch):
    """Bounded memory as behaviour: from preparing the split to a training epoch, a validation pass and the
    held-out evaluation, the store is asked for the samples of at most ``chunk_patients`` patients at once."""
    real = D.load_store_samples
    asked = _spy_chunks(monkeypatch)
    dm = _dm(store, chunk_patients=5)
    train = list(dm.train_dataloader())
    val = list(dm.val_dataloader())
    ev = dm.eval_samples()
    assert train and val and len(ev) == dm.n_val
    assert asked and None not in asked and max(asked) <= 5
    assert sum(len(b["patient_id"]) for b in val) == dm.n_val
    assert dm.n_train + dm.n_val == len(real(store))


def test_dataloader_workers_read_different_chunks(store, old_split):
    """Real DataLoader worker processes: the validation epoch reads every held-out patient once."""
    dm = _dm(store, num_workers=2, batch_size=2, chunk_patients=2)
    pids = [p for b in dm.val_dataloader() for p in b["patient_id"]]
    assert sorted(pids) == sorted(old_split[1])
    n = sum(1 for _ in dm.train_dataloader())
    assert n == len(dm.train_dataloader())


def _ddp_worker(rank, port, root, out):
    import datetime
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        dm = _dm(root, batch_size=2, chunk_patients=3)           # a store path; rank and world from torch.distributed
        loader = dm.train_dataloader()
        pids = []
        for b in loader:
            pids += b["patient_id"]
            x = torch.ones(1)
            dist.all_reduce(x)                                    # one collective per batch: unequal counts would hang
        out[rank] = {"pids": pids, "len": len(loader), "rank": loader.dataset.rank, "world": loader.dataset.world_size}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_ranks_read_different_patients_in_as_many_batches(store):
    """Two gloo processes: each rank streams its own patients, in the same number of batches (a collective per
    batch completes), and together they read the training split."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, str(store.store.root), out), nprocs=2, join=True)
    a, b = out[0], out[1]
    assert (a["rank"], a["world"], b["rank"], b["world"]) == (0, 2, 1, 2)
    assert a["len"] == b["len"] and len(a["pids"]) == len(b["pids"]) > 0
    assert not set(a["pids"]) & set(b["pids"])
    assert set(a["pids"]) | set(b["pids"]) <= set(_dm(store).train_ids)


def test_rank_comes_from_the_trainer(store):
    dm = _dm(store)
    dm.trainer = type("T", (), {"global_rank": 1, "world_size": 2})()
    ds = dm.train_dataloader().dataset
    assert (ds.rank, ds.world_size) == (1, 2)


def test_training_on_a_streamed_store(store, tmp_path):
    """A few steps of training from the streamed store: finite losses, the split's sizes, a saved model."""
    from raretarget.encoders import train

    s = train({"encoders": TINY}, store=store, out_dir=tmp_path / "m", **{
        "model.embed_dim": 32, "model.knowledge.steps": 0, "trainer.max_epochs": 2, "data.batch_size": 4,
        "data.chunk_patients": 5, "data.num_workers": 0, "data.knowledge": False, "data.verdicts": False})
    assert s["n_train"] + s["n_val"] == len(D.sample_patients(store))
    assert len(s["train_loss"]) == 2 and all(np.isfinite(s["train_loss"]))
    assert s["recall"] is not None and (tmp_path / "m" / "model.safetensors").exists()


def test_chunk_size_default_comes_from_the_yaml(store):
    from raretarget.encoders.training import default_config

    dm = _dm(store, chunk_patients=None)
    assert dm.chunk_patients == default_config()["data"]["chunk_patients"] > 0


# ---- embedding a store chunk by chunk -------------------------------------------------------------
def test_embedding_in_chunks_writes_the_rows_of_one_pass(cohort_store, monkeypatch):
    """``embed_store`` / ``embed_shard`` read ``chunk_patients`` patients at a time and append each chunk's vectors
    to the modality files: the same rows and vectors as one whole-store pass (the old path)."""
    from raretarget.encoders import pipeline
    from raretarget.index.generations import Generations, vectors_of

    eng = cohort_store(14, 5).eng
    eng.train(**{"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 8,
                 "encoders.image.arch": "small", "model.knowledge.steps": 0, "data.num_workers": 0})
    version = eng.current_model()["model_version"]
    gens = Generations(eng.store.root)

    def snapshot():
        out = {}
        for m in sorted(gens.embedding_counts(version)):
            t = gens.read_embeddings(version, m).sort_by([("record_id", "ascending")])
            out[m] = (t.column("record_id").to_pylist(), t.column("patient_id").to_pylist(),
                      t.column("source_ref").to_pylist(), vectors_of(t))
        return out

    whole = pipeline.embed_store(eng.store, batch_size=16, device="cpu", chunk_patients=10_000)
    ref = snapshot()
    asked = _spy_chunks(monkeypatch)
    chunked = pipeline.embed_store(eng.store, batch_size=16, device="cpu", chunk_patients=3)
    assert asked and None not in asked and max(asked) <= 3 and len(asked) >= 4
    assert chunked == whole and set(whole) >= {"note", "image", "patient", "gene"}
    got = snapshot()
    assert got.keys() == ref.keys()
    for m in ref:
        assert got[m][:3] == ref[m][:3], m
        assert np.allclose(got[m][3], ref[m][3], atol=1e-5), m
    # shards, each in chunks, merge to the same rows
    asked.clear()
    for i in range(2):
        pipeline.embed_shard(eng.store, i, 2, batch_size=16, device="cpu", chunk_patients=2)
    assert max(asked) <= 2
    assert pipeline.merge_shards(eng.store, 2) == whole
    got = snapshot()
    for m in ref:
        assert got[m][:3] == ref[m][:3] and np.allclose(got[m][3], ref[m][3], atol=1e-5), m


def test_patient_chunks():
    from raretarget.encoders.pipeline import patient_chunks

    assert patient_chunks(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert patient_chunks([], 2) == [[]]                  # an empty store still writes its (gene) files
    with pytest.raises(ValueError):
        patient_chunks(["a"], 0)


def test_a_worker_reads_its_later_chunks_from_one_split_of_the_store(store, old_split, monkeypatch):
    """A training epoch: a worker reads its first chunk from the store and, going on, its other chunks from one
    split of the store (one scan, not one per chunk); the batches are those of reading every chunk from the
    store."""
    import numpy as np

    from raretarget.encoders import datamodule as DM
    from raretarget.encoders.datamodule import StreamedPatients

    train = sorted(old_split[0])
    ds = StreamedPatients(store, train, train=True, batch_size=2, chunk_patients=4)
    assert len(ds.chunks(0)) >= 3
    root = D.as_store(store).root
    real_load, real_split = D.load_store_samples, DM.patient_partitions
    sources, splits = [], []
    monkeypatch.setattr(D, "load_store_samples", lambda st, loincs=None, patients=None: (
        sources.append(D.as_store(st).root == root), real_load(st, loincs, patients=patients))[1])
    monkeypatch.setattr(DM, "patient_partitions", lambda st, chunks: (splits.append(len(chunks)), real_split(st, chunks))[1])
    got = _walk(ds, 0, 1, monkeypatch)
    # training drops the last partial batch: a last chunk holding only items that batch would have taken is
    # never read (whether it happens depends on the shuffled chunk sizes)
    chunks = ds.chunks(0)
    keep = D.stream_batches(sum(len(c) for _, c in chunks), 2, True) * 2
    before = np.cumsum([0] + [len(c) for _, c in chunks])[:-1]
    assert sources[0] and not any(sources[1:]) and len(sources) == int((before < keep).sum()) >= 3
    assert splits == [len(ds.chunks(0)) - 1]

    class AllFromStore:                        # the former path: every chunk read from the store
        def __init__(self, st, chunks):
            self.n = len(chunks)

        def __enter__(self):
            return [store] * self.n

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(DM, "patient_partitions", AllFromStore)
    want = _walk(ds, 0, 1, monkeypatch)
    assert len(got) == len(want) == len(ds)

    def key(it):
        img = None if it["image"] is None else np.asarray(it["image"]).tobytes()
        var = None if it["variants"] is None else list(map(str, it["variants"]))
        return (it["patient_id"], it["record_id"], it["text"], img, it["labs"], var)

    assert [[key(i) for i in b] for b in got] == [[key(i) for i in b] for b in want]
    # a short run that stops inside the first chunk never splits the store
    splits.clear()
    monkeypatch.setattr(DM, "patient_partitions", lambda st, chunks: (splits.append(len(chunks)), real_split(st, chunks))[1])
    it = iter(ds)
    next(it)
    it.close()
    assert splits == []
    assert not list((D.as_store(store).root / ".scratch").glob("partition-*"))
