"""Train, embed, shard and merge against a store, without the Engine: the training/embedding part of the
encoders that ``Engine.train`` / ``Engine.embed`` / ``embed_shard`` / ``merge_shards`` and the nightly update
call. Every path comes from :class:`raretarget.store.artifacts.Artifacts` (the one on-disk layout).

``store`` is a :class:`raretarget.store.Store` (anything with ``root``, ``links``, ``sql`` and ``manifest``).
Vectors are float32, L2-normalised, one row per embedded record (EMBEDDINGS schema,
:mod:`raretarget.store.schema`).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import pyarrow as pa

from raretarget.store import schema as S
from raretarget.store.artifacts import Artifacts, store_batches
from raretarget.store.io import AtomicParquetWriter, atomic_write_parquet
from raretarget.vocab.modalities import ENCODER_TO_MODALITY
from raretarget.vocab.refs import gene_ref


def require_model(store) -> dict:
    """``{"model_version", "path"}`` of the store's current model, or a clear error when none was trained."""
    model = Artifacts(store.root).current_model()
    if model is None:
        raise RuntimeError("no trained model in this store: call Engine.train() first")
    return model


def train_into_store(store, **overrides) -> dict:
    """Train the encoders on ``store`` (:func:`raretarget.encoders.train`), keep the result under
    ``models/<model_version>/`` and make it current. Overrides: dotted keys or sections of the training
    config; the short names ``max_epochs precision accelerator devices strategy num_nodes batch_size`` are
    accepted. Returns the training summary plus ``out_dir``."""
    import shutil

    from raretarget.encoders import train

    for short in ("max_epochs", "precision", "accelerator", "devices", "strategy", "num_nodes"):
        if short in overrides:
            overrides[f"trainer.{short}"] = overrides.pop(short)
    for short in ("batch_size",):
        if short in overrides:
            overrides[f"data.{short}"] = overrides.pop(short)
    art = Artifacts(store.root)
    tmp = art.training_dir()
    if tmp.exists():
        shutil.rmtree(tmp)
    art.models_dir.mkdir(parents=True, exist_ok=True)
    # label features of the gene-alignment phase depend only on public HPO labels + the backbone
    overrides.setdefault("model.knowledge.cache_dir", str(art.knowledge_cache_dir))
    summary = train(store=store, out_dir=tmp, **overrides)
    version = summary["model_version"]
    final = art.model_dir(version)
    if final.exists():                      # same weights trained again: keep the first copy
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    art.set_current_model(version)
    summary["out_dir"] = str(final)
    return summary


def embedding_tables(store, net, version: str, batch_size: int = 128,
                     patients: Sequence[str] | None = None, genes: bool | None = None) -> dict[str, pa.Table]:
    """Embedding tables per modality name (EMBEDDINGS schema) of every patient, or only of
    ``patients`` (then by default without the gene table, which depends on the model only).

    ``patient``: the mean of a patient's modality vectors, re-normalised; its record_id is the patient's
    ``patients.record_id`` (or :func:`raretarget.store.schema.patient_record_id`)."""
    from raretarget.index import l2_normalize
    from raretarget.index.generations import vectors_of

    from .data import load_store_samples
    from .training import embed

    samples = load_store_samples(store, patients=patients)
    tables = embed(net, store, samples=samples, batch_size=batch_size,
                   genes=(patients is None) if genes is None else genes)
    pf, params = "", None
    if patients is not None:
        pf, params = " where patient_id in (select unnest(?))", [sorted(set(patients))]
    t = store.sql(f"select record_id, source_ref from patients{pf} union all "
                  f"select record_id, source_ref from images{pf}", None if params is None else params * 2)
    refs = dict(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    out: dict[str, pa.Table] = {}
    per_patient: dict[str, list[np.ndarray]] = {}
    for m, tab in tables.items():
        name = ENCODER_TO_MODALITY.get(m, m)
        rids = tab.column("record_id").to_pylist()
        if name == "gene":        # embed() writes the gene table in vocabulary order
            src = [gene_ref(g) for g in net.encoders["variants"].genes]
        else:
            src = [refs.get(r) for r in rids]
            vecs = vectors_of(tab)
            for pid, v in zip(tab.column("patient_id").to_pylist(), vecs):
                if pid is not None:
                    per_patient.setdefault(pid, []).append(v)
        tab = tab.set_column(tab.column_names.index("source_ref"), "source_ref", pa.array(src, pa.string()))
        tab = tab.set_column(tab.column_names.index("modality"), "modality", pa.array([name] * tab.num_rows, pa.string()))
        out[name] = tab
    if per_patient:
        pids = sorted(per_patient)
        fused = l2_normalize(np.stack([np.mean(per_patient[p], axis=0) for p in pids]))
        prid = {p: r for p, r in zip(*store.sql(f"select patient_id, min(record_id) from patients{pf} group by 1",
                                                params).to_pydict().values())}
        rids = [prid.get(p) or S.patient_record_id(p) for p in pids]
        dim = fused.shape[1]
        out["patient"] = pa.table({"record_id": pa.array(rids, pa.int64()), "patient_id": pids,
                                   "modality": ["patient"] * len(pids), "source_ref": [refs.get(r) for r in rids],
                                   "model_version": [version] * len(pids),
                                   "vector": pa.FixedSizeListArray.from_arrays(pa.array(fused.ravel()), dim)})
    return out


def embed_store(store, batch_size: int = 128, device: str = "auto", chunk_patients: int | None = None) -> dict[str, int]:
    """Embed every record with the store's current model into ``embeddings/<model_version>/`` and record the
    store batches they cover. Returns rows per modality.

    Patients are embedded ``chunk_patients`` at a time (None: ``data.chunk_patients`` of ``conf/data/store.yaml``)
    and each chunk's vectors are appended to the modality files (:meth:`Generations.embeddings_writer`, published
    together at the end), so memory does not grow with the store; the rows are those of one whole-store pass."""
    from raretarget.index.generations import Generations

    from .data import sample_patients
    from .training import load_model

    model = require_model(store)
    version = model["model_version"]
    net = load_model(model["path"], device=device)
    gens = Generations(store.root)
    batches = sorted(store_batches(store))         # what these embeddings cover
    chunks = patient_chunks(sample_patients(store), chunk_patients)
    with gens.embeddings_writer(version) as w, chunk_stores(store, chunks) as reads:
        for i, (chunk, src) in enumerate(zip(chunks, reads)):
            for name, tab in embedding_tables(src, net, version, batch_size=batch_size, patients=chunk,
                                              genes=i == 0).items():
                w.write(name, tab)
    Artifacts(store.root).write_batches(version, batches)
    return dict(w.counts)


@contextmanager
def chunk_stores(store, chunks: Sequence[Sequence[str]]):
    """A store to read per chunk of patients: ``store`` itself for a single chunk, else temporary stores holding
    only each chunk's rows (:func:`raretarget.store.partition.patient_partitions`: one pass over the store
    instead of one per chunk, which made a full pass quadratic in the store's size)."""
    if len(chunks) <= 1:
        yield [store] * len(chunks)
        return
    from raretarget.store.partition import patient_partitions

    with patient_partitions(store, chunks) as subs:
        yield subs


def patient_chunks(patients: Sequence[str], chunk_patients: int | None = None) -> list[list[str]]:
    """``patients`` cut into chunks of ``chunk_patients`` (None: the YAML's ``data.chunk_patients``); no patients
    give one empty chunk, so that the gene table and the (empty) modality files are still written."""
    if chunk_patients is None:
        from .training import default_config

        chunk_patients = default_config()["data"]["chunk_patients"]
    c = int(chunk_patients)
    if c < 1:
        raise ValueError(f"chunk_patients must be >= 1, got {chunk_patients}")
    ids = list(patients)
    return [ids[i:i + c] for i in range(0, len(ids), c)] or [[]]


def embed_shard(store, shard: int, shards: int, batch_size: int = 128, *, device: str = "auto",
                net=None, chunk_patients: int | None = None) -> dict[str, int]:
    """Embed the patients of shard ``shard`` of ``shards`` (see :meth:`raretarget.Engine.embed_shard`)."""
    from raretarget.store.io import atomic_write_bytes

    from .data import shard_of, store_patients
    from .training import load_model

    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    model = require_model(store)
    version = model["model_version"]
    batches = sorted(store_batches(store))
    pids = [p for p in store_patients(store) if shard_of(p, shards) == shard]
    if net is None:         # a caller embedding many shards (a Ray actor) passes the model it loaded once
        net = load_model(model["path"], device=device)
    d = Artifacts(store.root).shard_dir(version, shards, shard)
    (d / "DONE.json").unlink(missing_ok=True)
    files: dict[str, AtomicParquetWriter] = {}
    counts: dict[str, int] = {}
    chunks = patient_chunks(pids, chunk_patients)
    try:                                    # chunk by chunk, as embed_store: memory does not grow with the shard
        with chunk_stores(store, chunks) as reads:
            for i, (chunk, src) in enumerate(zip(chunks, reads)):
                for name, tab in embedding_tables(src, net, version, batch_size=batch_size, patients=chunk,
                                                  genes=shard == 0 and i == 0).items():
                    tab = S.conform_embeddings(tab)
                    if name not in files:
                        files[name] = AtomicParquetWriter(d / f"{name}.parquet", tab.schema)
                    files[name].write(tab)
                    counts[name] = counts.get(name, 0) + tab.num_rows
        for w in files.values():
            w.commit()
    except BaseException:
        for w in files.values():
            w.abort()
        raise
    atomic_write_bytes(d / "DONE.json", json.dumps({"batches": batches, "counts": counts,
                                                     "patients": len(pids)}).encode())
    return counts


def merge_shards(store, shards: int) -> dict[str, int]:
    """Merge the ``shards`` parts of :func:`embed_shard` into the current model's embeddings, then delete them
    (see :meth:`raretarget.Engine.merge_shards`)."""
    import shutil

    import pyarrow.parquet as pq

    from raretarget.index.generations import Generations

    model = require_model(store)
    version = model["model_version"]
    art = Artifacts(store.root)
    infos = {}
    for i in range(shards):
        f = art.shard_dir(version, shards, i) / "DONE.json"
        if not f.exists():
            raise RuntimeError(f"embedding shard {i} of {shards} is missing or unfinished ({f.parent}): "
                               f"run Engine.embed_shard({i}, {shards})")
        infos[i] = json.loads(f.read_text())
    states = {tuple(v["batches"]) for v in infos.values()}
    if len(states) > 1:
        raise RuntimeError(f"embedding shards of {shards} saw different store states (ingest ran between them): "
                           "re-run every shard")
    gens = Generations(store.root)
    names = sorted({n for v in infos.values() for n in v["counts"]})
    counts = {}
    for name in names:
        parts = [art.shard_dir(version, shards, i) / f"{name}.parquet" for i in range(shards)]
        tabs = [pq.read_table(p) for p in parts if p.exists()]
        t = pa.concat_tables(tabs).sort_by("record_id")
        gens.write_embeddings(version, name, t)
        counts[name] = t.num_rows
    art.write_batches(version, states.pop())
    shutil.rmtree(art.shards_dir(version, shards), ignore_errors=True)
    try:
        art.shards_dir(version, shards).parent.rmdir()         # _shards/, when no other split is pending
    except OSError:
        pass
    return counts


def embed_parallel(store, workers: int, batch_size: int, device: str = "auto") -> dict[str, int]:
    """:func:`embed_shard` in ``workers`` spawned processes, then :func:`merge_shards`."""
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: a fresh interpreter per worker (no forked torch/OpenMP state)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_embed_shard_job, str(store.root), str(store.links), i, workers, batch_size,
                          threads, device) for i in range(workers)]
        for f in futs:
            f.result()
    return merge_shards(store, workers)


def _embed_shard_job(root: str, links: str, shard: int, shards: int, batch_size: int, threads: int,
                     device: str = "auto") -> dict:
    """Worker process of :func:`embed_parallel`."""
    import torch

    from raretarget.store import Store

    torch.set_num_threads(threads)
    return embed_shard(Store.open(root, links=links), shard, shards, batch_size=batch_size, device=device)
