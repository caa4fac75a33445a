"""A store's rows split by patient chunk into temporary read-only stores: one pass over each table per full
embedding pass, instead of one pass per chunk.

A full embedding pass reads the store ``chunk_patients`` patients at a time so that its memory does not grow with
the store. Filtering the whole store for each chunk (SQL ``patient_id in (...)`` over every part) made the pass
cost chunks × store, i.e. quadratic in the store's size (~3 s a chunk at 30k patients; 75 chunks at 300k).
:func:`patient_partitions` reads each table's committed parts once, sends every live row to its patient's chunk
and appends it to that chunk's Parquet file. Each chunk is then a small :class:`~raretarget.store.table.Store`
(manifest + its parts per table, no hidden rows) that the unchanged readers query with the same SQL, so a chunk
costs its own size. Memory: one batch of a part plus the write buffers (``buffer_bytes`` in all).

The files hold the store's own pseudonymous rows; they are written under :attr:`Artifacts.scratch_dir`
(``<store>/.scratch/partition-<pid>@<host>-<x>/``) and deleted when the pass ends, or by the next call on the
same host after a killed one (folders of processes that are gone). They are never part of the store's committed state.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema as S
from .artifacts import Artifacts
from .table import Store

#: the tables a patient's sample is made of (:func:`raretarget.encoders.data.load_store_samples`)
SAMPLE_TABLES: tuple[str, ...] = ("patients", "notes", "images", "observations", "variants")

_PREFIX = "partition-"


def _clean_stale(scratch: Path) -> None:
    """Remove partition folders of this host whose process is gone (a killed pass). Folders of other hosts (a
    store folder shared by the machines of a cluster) are left to their own host."""
    if not scratch.is_dir():
        return
    host = socket.gethostname()
    for d in scratch.glob(_PREFIX + "*"):
        try:
            pid_s, rest = d.name[len(_PREFIX):].split("@", 1)
            pid, their_host = int(pid_s), rest.rsplit("-", 1)[0]
        except ValueError:
            continue
        if their_host != host or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:            # alive, another user's
            pass


def _route(t: pa.Table, chunk_of: dict[str, int]) -> Iterator[tuple[int, pa.Table]]:
    """``(chunk, rows)`` of one part's rows by their patient's chunk; rows of no listed patient are left out.
    The patient ids are dictionary-encoded first, so the mapping is looked up once per patient of the part."""
    col = t.column("patient_id").combine_chunks()
    enc = col.dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    lut = np.array([chunk_of.get(v, -1) for v in enc.dictionary.to_pylist()] + [-1], dtype=np.int64)
    ch = lut[np.where(enc.indices.is_null().to_numpy(zero_copy_only=False), len(lut) - 1,
                      np.nan_to_num(codes, nan=len(lut) - 1).astype(np.int64))]
    order = np.argsort(ch, kind="stable")         # stable: a chunk keeps the part's row order
    chs = ch[order]
    cuts = np.flatnonzero(np.diff(chs)) + 1
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(chs)]):
        if b > a and chs[a] >= 0:
            yield int(chs[a]), t.take(pa.array(order[a:b]))


def _touches(part: Path, chunk_of: dict[str, int]) -> bool:
    """Whether any row of the Parquet ``part`` (hidden rows included: a superset) has a patient of ``chunk_of``;
    reads its ``patient_id`` column only, dictionary-encoded (one lookup per distinct patient)."""
    col = pq.ParquetFile(part, read_dictionary=["patient_id"]).read(columns=["patient_id"]).column(0)
    return any(v in chunk_of for ch in col.chunks for v in ch.dictionary.to_pylist())


@contextmanager
def patient_partitions(store: Store, chunks: Sequence[Sequence[str]], tables: Sequence[str] = SAMPLE_TABLES,
                       buffer_bytes: int = 64 << 20, batch_rows: int = 65_536,
                       sparse: bool = False) -> Iterator[list[Store]]:
    """Yield one read-only :class:`Store` per chunk of patient ids holding the live rows of ``tables`` whose
    ``patient_id`` is in that chunk (rows keep the store's part order; other tables are empty). A patient may be
    in one chunk only. ``buffer_bytes``: rows held before they are appended to the chunk files (Arrow bytes);
    ``batch_rows``: the store's parts are read in batches of at most this many rows. ``sparse``: the chunks hold
    few of the store's patients (a night's changed ones): a part is decoded only if its ``patient_id`` column,
    read first and alone, names one of them (at 30k patients a night's 300: 4.3 → 0.7 s; for a full pass that
    pre-read costs ~15 %, hence off by default).
    The folders are deleted on exit."""
    chunk_of: dict[str, int] = {}
    for i, c in enumerate(chunks):
        for p in c:
            if chunk_of.setdefault(str(p), i) != i:
                raise ValueError("a patient is listed in two chunks")
    scratch = Artifacts(store.root).scratch_dir
    _clean_stale(scratch)
    scratch.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}@{socket.gethostname()}-", dir=scratch))
    written: dict[tuple[int, str], list[str]] = {}     # (chunk, table) -> its part files
    try:
        buf: dict[tuple[int, str], list[pa.Table]] = {}
        held = 0

        def flush() -> None:
            # one closed part per chunk and table per flush: no file stays open across the pass, whatever the
            # number of chunks
            for (c, name), ts in buf.items():
                d = work / f"c{c}" / "tables" / name
                d.mkdir(parents=True, exist_ok=True)
                files = written.setdefault((c, name), [])
                f = f"part-{len(files):05d}.parquet"
                pq.write_table(pa.concat_tables(ts).cast(S.TABLES[name]), d / f)
                files.append(f)
            buf.clear()

        for name in tables:
            # a part none of whose rows belongs to a listed patient is not decoded (its patient_id column is
            # read alone): a night's few changed patients are in a few parts, and a table's other columns
            # (notes, thumbnails) are most of its bytes
            stems = {p.stem for p in store.parts(name) if _touches(p, chunk_of)} if sparse else None
            for _, t in store.iter_parts(name, batch_rows=batch_rows, stems=stems):
                if not t.num_rows:
                    continue
                for c, rows in _route(t, chunk_of):
                    buf.setdefault((c, name), []).append(rows)
                    held += rows.nbytes
                if held > buffer_bytes:
                    flush()
                    held = 0
        flush()
        subs = []
        for i in range(len(chunks)):
            root = work / f"c{i}"
            (root / "tables").mkdir(parents=True, exist_ok=True)
            have = {n: written[(i, n)] for n in tables if (i, n) in written}
            (root / "_manifest.json").write_text(json.dumps({"version": 1, "tables": have}))
            subs.append(Store(root, work / "no-links"))     # read-only: no link folder, no key
        yield subs
    finally:
        shutil.rmtree(work, ignore_errors=True)
