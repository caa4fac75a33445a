"""Embeddings and index generations inside a store.

Layout::

    <store>/embeddings/<model_version>/<modality>.parquet   EMBEDDINGS schema (one base file per modality)
    <store>/embeddings/<model_version>/_delta/              a night's delta files (index/embedding_delta.py)
    <store>/index/gen-<NNNNNN>/<modality>/                  one VectorIndex per modality (+ manifest.json)
    <store>/index/gen-<NNNNNN>/_delta/<modality>/           delta index + deleted-id mask over it (index/delta.py)
    <store>/index/CURRENT                                   {"generation", "model_version", "counts"}

One index per modality (not one shared index with a filter): modalities differ in size by orders of
magnitude (a few thousand genes vs millions of variants/notes), each gets the factory that suits its
size, and a query over a subset of modalities touches only those indexes. Results from several
modalities are merged by cosine score, which is comparable because every tower projects into the
same L2-normalised space.

A new generation is built beside the current one and published by replacing ``CURRENT`` atomically;
readers holding an older generation keep using it; old generations beyond ``keep`` are removed.
An index built from one model version refuses embeddings/queries of another (IndexMismatchError).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from raretarget.machine import release_memory
from raretarget.store import atomic_write_bytes, atomic_write_parquet
from raretarget.store import schema as S
from raretarget.store.artifacts import GENERATION_GLOB, Artifacts

from . import embedding_delta
from .vector_index import IndexMismatchError, VectorIndex


class Generations:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.artifacts = Artifacts(self.root)        # the one on-disk layout
        self.emb_dir = self.artifacts.embeddings_root
        self.idx_dir = self.artifacts.index_dir

    # ---- embeddings ------------------------------------------------------------------------------
    def write_embeddings(self, model_version: str, modality: str, table: pa.Table) -> Path:
        t = S.conform_embeddings(table)
        if set(t.column("model_version").unique().to_pylist()) - {model_version}:
            raise ValueError("embedding rows carry another model_version than the folder they go to")
        path = embedding_delta.base_path(self.artifacts.embeddings_dir(model_version), modality)
        # a fresh base id in the footer: delta files written against the old base stop applying
        atomic_write_parquet(path, embedding_delta.stamp_base(t))
        return path

    def embeddings_writer(self, model_version: str) -> "EmbeddingsWriter":
        """Base embedding files of ``model_version`` written chunk by chunk (:class:`EmbeddingsWriter`): what
        :meth:`write_embeddings` does for whole tables, without holding a whole modality in memory."""
        return EmbeddingsWriter(self, model_version)

    def model_versions(self) -> list[str]:
        if not self.emb_dir.exists():
            return []
        return sorted((p.name for p in self.emb_dir.iterdir() if p.is_dir()),
                      key=lambda v: (self.emb_dir / v).stat().st_mtime)

    def read_embeddings(self, model_version: str, modality: str | None = None,
                        columns: list[str] | None = None, ids=None) -> pa.Table:
        """The logical embeddings table (base file + delta files, :mod:`.embedding_delta`) of one modality,
        or of all of them concatenated; ``columns``: only these; ``ids``: only the rows of these record ids."""
        d = self.emb_dir / model_version
        mods = [modality] if modality else sorted(embedding_delta.counts(d))
        tabs = [t for t in (embedding_delta.read(d, m, columns, ids=ids) for m in mods) if t is not None]
        if not tabs:
            t = S.EMBEDDINGS.empty_table()
            return t.select(columns) if columns else t
        return pa.concat_tables(tabs, promote_options="default")

    def iter_embeddings(self, model_version: str, modality: str, columns: list[str] | None = None,
                        batch_rows: int = 65_536):
        """The rows of :meth:`read_embeddings` of one modality as tables of at most ``batch_rows`` rows, streamed
        (memory: one batch)."""
        yield from embedding_delta.iter_batches(self.emb_dir / model_version, modality, columns, batch_rows)

    def read_vectors(self, model_version: str, modality: str, batch_rows: int = 8_192
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(vectors ``[n, D]`` float32, record ids ``[n]`` int64) of one modality — the rows and order of
        :meth:`read_embeddings` — streamed batch by batch into arrays allocated once for the modality's row count
        (memory: the two arrays and one batch of ``batch_rows``; reading the whole table first and converting it
        held the table, its combined chunks and the copy at once: the index build's peak at 100k patients)."""
        n = self.embedding_counts(model_version).get(modality, 0)
        vecs: np.ndarray | None = None
        ids = np.empty(n, np.int64)
        pos = 0
        for t in self.iter_embeddings(model_version, modality, ["record_id", "vector"], batch_rows):
            v = vectors_of(t)
            if vecs is None:
                vecs = np.empty((n, v.shape[1]), np.float32)
            if pos + len(v) > len(vecs):          # more rows than counted (never expected): grow, don't fail
                vecs = np.concatenate([vecs[:pos], np.empty((pos + len(v) - len(vecs), v.shape[1]), np.float32)])
                ids = np.concatenate([ids[:pos], np.empty(len(vecs) - pos, np.int64)])
            vecs[pos:pos + len(v)] = v
            ids[pos:pos + len(v)] = t.column("record_id").to_numpy()
            pos += len(v)
            del t, v
        if vecs is None:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return (vecs, ids) if pos == len(vecs) else (vecs[:pos].copy(), ids[:pos].copy())

    def embedding_counts(self, model_version: str | None) -> dict[str, int]:
        if not model_version:
            return {}
        d = self.emb_dir / model_version
        return embedding_delta.counts(d) if d.exists() else {}

    # ---- index generations -----------------------------------------------------------------------
    def current(self) -> dict | None:
        p = self.artifacts.index_current_file
        return json.loads(p.read_text()) if p.exists() else None

    def _new_dir(self) -> tuple[int, Path]:
        cur = self.current()
        gen = (cur["generation"] + 1) if cur else 1
        gdir = self.artifacts.generation_dir(gen)
        if gdir.exists():                               # left by a killed build: never published
            shutil.rmtree(gdir)
        for stale in self.idx_dir.glob(GENERATION_GLOB):        # later unpublished leftovers
            if stale.is_dir() and int(stale.name[4:]) > gen:
                shutil.rmtree(stale, ignore_errors=True)
        gdir.mkdir(parents=True)
        return gen, gdir

    def build(self, model_version: str, factory: str | None = None, keep: int = 3,
              modalities: list[str] | None = None, publish: bool = True, extra: dict | None = None) -> dict:
        """Build one index per modality from the embeddings of ``model_version``; publish atomically
        (``publish=False``: leave the generation folder unpublished, see :meth:`publish`).
        ``extra``: more keys for the generation info (e.g. the store batches it covers)."""
        gen, gdir = self._new_dir()
        counts = {}
        t0 = time.time()
        for modality in self.embedding_counts(model_version):
            if modalities and modality not in modalities:
                continue
            vecs, ids = self.read_vectors(model_version, modality)   # our own arrays, filled batch by batch
            if len(ids) == 0:
                continue
            release_memory()
            idx = VectorIndex.build(vecs, ids, factory=factory, copy=False,
                                    meta={"model_version": model_version, "modality": modality})
            del vecs, ids
            idx.save(gdir / modality)
            counts[modality] = len(idx)
            # one modality's index in memory at a time: without this the previous one lived until the next was
            # built (peak at 100k patients 441 → 347 MB, see benchmarks/RESULTS.md)
            del idx
            release_memory()
        info = {"generation": gen, "model_version": model_version, "counts": counts,
                "built_at": int(time.time()), "build_seconds": round(time.time() - t0, 3), **(extra or {})}
        atomic_write_bytes(gdir / "GENERATION.json", json.dumps(info).encode())
        if publish:
            self.publish(info, keep)
        return info

    def build_incremental(self, base: dict, changes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                          extra: dict | None = None) -> dict:
        """A new (unpublished) generation from generation ``base``: per modality ``(remove_ids,
        add_ids, add_vectors)`` (adding an id already present replaces its vector). Modalities without
        changes are hard-linked from ``base`` (saved index files are never modified in place)."""
        import os

        t0 = time.time()
        bdir = self.artifacts.generation_dir(base["generation"])
        gen, gdir = self._new_dir()
        counts = {}
        folded = base.get("delta", {})                  # base + delta modalities (index/delta.py): folded here
        for m in sorted(set(base["counts"]) | set(changes)):
            rm, ids, vecs = changes.get(m, (np.zeros(0, np.int64), np.zeros(0, np.int64), None))
            if m in base["counts"] and not len(rm) and not len(ids) and m not in folded:
                def link(src, dst):
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
                shutil.copytree(bdir / m, gdir / m, copy_function=link)
                counts[m] = base["counts"][m]
                continue
            if m in folded:
                from .delta import fold

                idx = fold(bdir, m, expect_meta={"model_version": base["model_version"]})
            elif m in base["counts"]:
                idx = VectorIndex.load(bdir / m, mmap=False, expect_meta={"model_version": base["model_version"]})
                if len(rm):
                    idx.remove(rm)
                if len(ids):
                    idx.add(vecs, ids)
            elif len(ids):
                idx = VectorIndex.build(vecs, ids, meta={"model_version": base["model_version"], "modality": m})
            else:
                continue
            if len(idx) == 0:
                continue
            idx.save(gdir / m)
            counts[m] = len(idx)
        info = {"generation": gen, "model_version": base["model_version"], "counts": counts,
                "built_at": int(time.time()), "build_seconds": round(time.time() - t0, 3),
                "base_generation": base["generation"], **(extra or {})}
        atomic_write_bytes(gdir / "GENERATION.json", json.dumps(info).encode())
        return info

    def publish(self, info: dict, keep: int = 3) -> None:
        """Make generation ``info`` current (one atomic rename), then prune old generations."""
        atomic_write_bytes(self.artifacts.index_current_file, json.dumps(info).encode())
        self._prune(keep)

    def discard(self, info: dict) -> None:
        """Remove an unpublished generation folder."""
        cur = self.current()
        if cur and cur["generation"] == info["generation"]:
            raise ValueError("refusing to discard the current generation")
        shutil.rmtree(self.artifacts.generation_dir(info["generation"]), ignore_errors=True)

    def _prune(self, keep: int) -> None:
        gens = sorted(p for p in self.idx_dir.glob(GENERATION_GLOB) if p.is_dir())
        cur = self.current()
        for p in gens[:-keep] if keep > 0 else []:
            if cur and p == self.artifacts.generation_dir(cur["generation"]):
                continue
            shutil.rmtree(p, ignore_errors=True)

    def open(self, model_version: str | None = None, generation: dict | None = None,
             modalities: Sequence[str] | None = None) -> dict[str, VectorIndex]:
        """Load the indexes of the current (or given) generation (``modalities``: only these); refuse another
        model version."""
        info = generation or self.current()
        if info is None:
            raise FileNotFoundError("no index built yet: call Engine.build_index() first")
        if model_version is not None and info["model_version"] != model_version:
            raise IndexMismatchError(
                f"index generation {info['generation']} was built with model {info['model_version']}, "
                f"but the store's current model is {model_version}: rebuild the index (Engine.build_index())")
        gdir = self.artifacts.generation_dir(info["generation"])
        out = {}
        for m in info["counts"]:
            if modalities is not None and m not in modalities:
                continue
            expect = {"model_version": info["model_version"]}
            if m in info.get("delta", {}):          # base + delta searched together (a night's generation)
                from .delta import DeltaIndex

                out[m] = DeltaIndex.load(gdir, m, expect_meta=expect)
            else:
                out[m] = VectorIndex.load(gdir / m, expect_meta=expect)
        return out


def vectors_of(t: pa.Table) -> np.ndarray:
    """(n, D) float32 view of a ``fixed_size_list<float32>[D]`` column named ``vector``."""
    col = t.column("vector").combine_chunks()
    d = col.type.list_size
    return col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d)


class EmbeddingsWriter:
    """One base file per modality (:meth:`Generations.write_embeddings`'s files) filled by :meth:`write` calls
    of any number of chunks (EMBEDDINGS tables); every file appears (atomically, each with a fresh base id) on
    :meth:`commit`, none on :meth:`abort` (or an exception in a ``with`` block). ``counts``: rows per modality."""

    def __init__(self, gens: Generations, model_version: str):
        self.gens, self.version = gens, model_version
        self._files: dict = {}
        self.counts: dict[str, int] = {}

    def write(self, modality: str, table: pa.Table) -> None:
        from raretarget.store.io import AtomicParquetWriter

        t = S.conform_embeddings(table)
        if set(t.column("model_version").unique().to_pylist()) - {self.version}:
            raise ValueError("embedding rows carry another model_version than the folder they go to")
        w = self._files.get(modality)
        if w is None:
            path = embedding_delta.base_path(self.gens.artifacts.embeddings_dir(self.version), modality)
            # a fresh base id in the footer: delta files written against the old base stop applying
            w = self._files[modality] = AtomicParquetWriter(path, embedding_delta.stamp_base(t).schema)
        w.write(t)
        self.counts[modality] = self.counts.get(modality, 0) + t.num_rows

    def commit(self) -> dict[str, int]:
        for w in self._files.values():
            w.commit()
        self._files.clear()
        return dict(self.counts)

    def abort(self) -> None:
        for w in self._files.values():
            w.abort()
        self._files.clear()

    def __enter__(self) -> "EmbeddingsWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()
