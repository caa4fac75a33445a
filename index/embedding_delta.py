"""Delta embedding files: a night writes only what changed; readers see base + deltas as one table.

Layout (inside one model version's folder, ``<store>/embeddings/<model_version>/``)::

    <modality>.parquet                              base: EMBEDDINGS rows, as written by a full embed
    _delta/DELTAS.json                              the committed deltas, oldest first
    _delta/<seq>.<modality>.parquet                 upserts: EMBEDDINGS rows new or changed in delta <seq>
    _delta/<seq>.<modality>.tombstones.parquet      tombstones: EMBEDDING_TOMBSTONES ids deleted or changed

The logical table of a modality is its base, then each live delta in order: rows whose record_id is
tombstoned or upserted by a later delta are dropped (latest wins), the delta's upserts are appended.
Ids are the store's stable int64 record ids. A store without ``_delta/`` reads exactly as before.

Which deltas are live: each delta records, per modality, a token of the base file it was written
against (a hash of the Parquet footer, which carries a unique id put there by every base write). A
delta whose token differs from the base file now on disk is ignored: rewriting a base (full embed,
merged shards, :func:`compact`) supersedes every earlier delta without touching ``DELTAS.json``, so
a compaction killed between its two steps leaves either the old base with its deltas or the new
base alone — the same logical table either way.

Commit (the store's pattern, :mod:`raretarget.store`): delta files are written under temporary names,
fsynced and renamed; then ``DELTAS.json`` is replaced with one atomic rename. Files that
``DELTAS.json`` does not name were left by a killed writer and are deleted at the next write.

Each delta also records the index generation its night started from (``generation``):
:func:`rollback` drops the deltas of nights that started from a generation that is still current,
i.e. nights that were killed or did not publish, so that their re-run diffs against the same table.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raretarget.arrays import unique
from raretarget.store import schema as S
from raretarget.store import atomic_write_bytes, atomic_write_parquet

DELTA_DIR = "_delta"
MANIFEST = "DELTAS.json"
#: Parquet schema metadata key of a base file: a fresh id per write, so equal tokens mean the same write
BASE_ID_KEY = b"raretarget.base_id"


# ---- locations (the one definition of each) ------------------------------------------------------------
def base_path(vdir: Path, modality: str) -> Path:
    return Path(vdir) / f"{modality}.parquet"


def delta_dir(vdir: Path) -> Path:
    return Path(vdir) / DELTA_DIR


def upserts_path(vdir: Path, seq: int, modality: str) -> Path:
    return delta_dir(vdir) / f"{seq:06d}.{modality}.parquet"


def tombstones_path(vdir: Path, seq: int, modality: str) -> Path:
    return delta_dir(vdir) / f"{seq:06d}.{modality}.tombstones.parquet"


# ---- base files -----------------------------------------------------------------------------------------
def stamp_base(table: pa.Table) -> pa.Table:
    """``table`` with a fresh base id in its schema metadata (written into the Parquet footer)."""
    meta = dict(table.schema.metadata or {})
    meta[BASE_ID_KEY] = uuid.uuid4().hex.encode()
    return table.replace_schema_metadata(meta)


def base_token(path: Path) -> str | None:
    """Identity of one base file: sha256 of its Parquet footer (16 hex); None when there is no file.
    Reads the footer only (a few KB), not the data."""
    try:
        with open(path, "rb") as f:
            f.seek(-8, os.SEEK_END)
            n = int.from_bytes(f.read(4), "little")
            f.seek(-8 - n, os.SEEK_END)
            return hashlib.sha256(f.read(n)).hexdigest()[:16]
    except (FileNotFoundError, OSError):
        return None


def base_modalities(vdir: Path) -> list[str]:
    return sorted(f.stem for f in Path(vdir).glob("*.parquet")) if Path(vdir).is_dir() else []


# ---- manifest ---------------------------------------------------------------------------------------------
def read_manifest(vdir: Path) -> dict:
    p = delta_dir(vdir) / MANIFEST
    return json.loads(p.read_text()) if p.exists() else {"deltas": []}


def _commit(vdir: Path, man: dict) -> None:
    d = delta_dir(vdir)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / MANIFEST, json.dumps(man, indent=1).encode())
    _clean(vdir, man)


def _named(vdir: Path, man: dict) -> set[str]:
    out = {MANIFEST}
    for e in man["deltas"]:
        for m, x in e["modalities"].items():
            if x["upserts"]:
                out.add(upserts_path(vdir, e["seq"], m).name)
            if x["tombstones"]:
                out.add(tombstones_path(vdir, e["seq"], m).name)
    return out


def _clean(vdir: Path, man: dict) -> None:
    """Delete delta files ``man`` does not name (a killed writer's, or of deltas dropped from it)."""
    keep = _named(vdir, man)
    for f in delta_dir(vdir).iterdir():
        if f.is_file() and f.name not in keep:
            f.unlink(missing_ok=True)


def live(vdir: Path, modality: str, man: dict | None = None) -> list[dict]:
    """Live deltas of ``modality`` (written against the base file now on disk), oldest first:
    ``[{"seq", "upserts", "tombstones", "rows", "base"}]``."""
    man = read_manifest(vdir) if man is None else man
    token = base_token(base_path(vdir, modality))
    if token is None:
        return []
    return [{"seq": e["seq"], **e["modalities"][modality]} for e in man["deltas"]
            if modality in e["modalities"] and e["modalities"][modality]["base"] == token]


# ---- reading ----------------------------------------------------------------------------------------------
def _read(path: Path, columns: Sequence[str] | None, ids: np.ndarray | None = None) -> pa.Table:
    # with ids, Arrow's scanner filters batch by batch: only the matching rows are held
    flt = None if ids is None else pc.field("record_id").isin(pa.array(ids, pa.int64()))
    return pq.read_table(path, columns=list(columns) if columns else None, filters=flt).replace_schema_metadata(None)


def read(vdir: Path, modality: str, columns: Sequence[str] | None = None, *, man: dict | None = None,
         ids: np.ndarray | None = None) -> pa.Table | None:
    """The logical table of ``modality`` (base + live deltas, see module doc); None when it has neither.
    ``columns``: read only these (``record_id`` is read anyway to apply the deltas); ``ids``: only the rows with
    these record ids (int64), in table order (a filter pushed into each file's scan)."""
    vdir = Path(vdir)
    cols = None if columns is None else list(dict.fromkeys(["record_id", *columns]))
    bp = base_path(vdir, modality)
    layers: list[tuple[pa.Table | None, np.ndarray | None]] = []
    if bp.exists():
        layers.append((_read(bp, cols, ids), None))
    for e in live(vdir, modality, man):
        ups = _read(upserts_path(vdir, e["seq"], modality), cols, ids) if e["upserts"] else None
        tomb = (pq.read_table(tombstones_path(vdir, e["seq"], modality)).column("record_id").to_numpy()
                if e["tombstones"] else None)
        layers.append((ups, tomb))
    if not layers:
        return None
    if len(layers) == 1:
        t = layers[0][0]
        return t if t is None or columns is None else t.select(list(columns))
    # latest first: each layer loses the ids tombstoned or upserted by the layers after it (one filter per layer)
    out, drop = [], np.zeros(0, np.int64)
    for t, tomb in reversed(layers):
        if t is not None:
            ids = t.column("record_id").to_numpy()
            out.append(t.filter(pa.array(~np.isin(ids, drop))) if len(drop) else t)
            drop = np.union1d(drop, ids)
        if tomb is not None:
            drop = np.union1d(drop, tomb)
    out.reverse()
    t = pa.concat_tables(out, promote_options="default")
    return t if columns is None else t.select(list(columns))


def iter_batches(vdir: Path, modality: str, columns: Sequence[str] | None = None, batch_rows: int = 65_536,
                 *, man: dict | None = None):
    """The rows of :func:`read` (same rows, same order) as tables of at most ``batch_rows`` rows, streamed from
    the base and delta files: only one batch and the record ids of the deltas are held."""
    vdir = Path(vdir)
    cols = None if columns is None else list(dict.fromkeys(["record_id", *columns]))
    layers: list[tuple[Path | None, np.ndarray]] = []      # (file of rows or None, ids it makes stale below it)
    bp = base_path(vdir, modality)
    if bp.exists():
        layers.append((bp, np.zeros(0, np.int64)))
    for e in live(vdir, modality, man):
        up = upserts_path(vdir, e["seq"], modality) if e["upserts"] else None
        stale = [pq.read_table(up, columns=["record_id"]).column(0).to_numpy()] if up is not None else []
        if e["tombstones"]:
            stale.append(pq.read_table(tombstones_path(vdir, e["seq"], modality)).column("record_id").to_numpy())
        layers.append((up, np.concatenate(stale) if stale else np.zeros(0, np.int64)))
    # a layer loses the ids upserted or tombstoned by the layers after it
    drops, drop = [], np.zeros(0, np.int64)
    for _, stale in reversed(layers):
        drops.append(drop)
        drop = np.union1d(drop, stale)
    drops.reverse()
    for (path, _), drop in zip(layers, drops):
        if path is None:
            continue
        # pre_buffer off: on a local file it only holds the column chunks of the whole file in Arrow's pool while
        # streaming (~+50 MB at 86k × 32-d vectors, measured), which defeats reading in batches
        for b in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_rows, columns=cols):
            t = pa.Table.from_batches([b]).replace_schema_metadata(None)
            if len(drop):
                t = t.filter(pa.array(~np.isin(t.column("record_id").to_numpy(), drop)))
            if t.num_rows:
                yield t if columns is None else t.select(list(columns))


def ids(vdir: Path, modality: str) -> np.ndarray:
    """Record ids (int64, table order) of the logical table of ``modality``."""
    t = read(vdir, modality, ["record_id"])
    return np.zeros(0, np.int64) if t is None else t.column("record_id").to_numpy()


def counts(vdir: Path) -> dict[str, int]:
    """Rows per modality of the logical tables; modalities whose deltas removed every row are left out.
    Reads footers and ``DELTAS.json`` only."""
    vdir = Path(vdir)
    man = read_manifest(vdir)
    mods = set(base_modalities(vdir)) | {m for e in man["deltas"] for m in e["modalities"]}
    out = {}
    for m in sorted(mods):
        ds = live(vdir, m, man)
        if ds:
            if ds[-1]["rows"]:
                out[m] = int(ds[-1]["rows"])
        elif base_path(vdir, m).exists():
            out[m] = pq.ParquetFile(base_path(vdir, m)).metadata.num_rows
    return out


# ---- writing ----------------------------------------------------------------------------------------------
def rollback(vdir: Path, generation: int) -> int:
    """Drop the deltas of nights that started from index generation ``generation`` or later (killed or
    unpublished: the index never covered them) and deltas no base matches any more. Returns how many
    deltas were dropped."""
    vdir = Path(vdir)
    man = read_manifest(vdir)
    if not man["deltas"] and not delta_dir(vdir).exists():
        return 0
    keep = _prune_stale(vdir, [e for e in man["deltas"] if e["generation"] < generation])
    n = len(man["deltas"]) - len(keep)
    if n or delta_dir(vdir).exists():
        _commit(vdir, {**man, "deltas": keep})
    return n


def _prune_stale(vdir: Path, deltas: list[dict]) -> list[dict]:
    tokens: dict[str, str | None] = {}
    out = []
    for e in deltas:
        mods = {}
        for m, x in e["modalities"].items():
            if m not in tokens:
                tokens[m] = base_token(base_path(vdir, m))
            if tokens[m] is not None and x["base"] == tokens[m]:
                mods[m] = x
        if mods:
            out.append({**e, "modalities": mods})
    return out


def write(vdir: Path, changes: Mapping[str, tuple[pa.Table | None, np.ndarray]], *, generation: int,
          batches: Sequence[str] = ()) -> dict:
    """Commit one delta: per modality ``(upserts, tombstones)`` — EMBEDDINGS rows new or changed (or None)
    and int64 ids ``(n,)`` deleted or changed. All modalities in one manifest commit. ``generation``: the
    index generation the night started from (see :func:`rollback`). Returns the delta's manifest entry."""
    vdir = Path(vdir)
    man = read_manifest(vdir)
    man["deltas"] = _prune_stale(vdir, man["deltas"])
    seq = max((e["seq"] for e in man["deltas"]), default=0) + 1
    entry = {"seq": seq, "generation": int(generation), "batches": sorted(batches), "modalities": {}}
    delta_dir(vdir).mkdir(parents=True, exist_ok=True)
    for m, (ups, tomb) in sorted(changes.items()):
        tomb = unique(np.asarray(tomb, np.int64))
        n_ups = 0 if ups is None else ups.num_rows
        if not n_ups and not len(tomb):
            continue
        if not base_path(vdir, m).exists() and not live(vdir, m, man):
            # a modality new tonight: its rows are its base (a delta always has a base file to apply to)
            if n_ups:
                atomic_write_parquet(base_path(vdir, m), stamp_base(S.conform_embeddings(ups)))
            continue
        before = ids(vdir, m)
        up_ids = np.zeros(0, np.int64)
        if n_ups:
            ups = S.conform_embeddings(ups)
            up_ids = ups.column("record_id").to_numpy()
            if len(unique(up_ids)) != len(up_ids):
                raise ValueError(f"{m}: duplicate record ids in one delta")
            atomic_write_parquet(upserts_path(vdir, seq, m), ups)
        if len(tomb):
            atomic_write_parquet(tombstones_path(vdir, seq, m), pa.table({"record_id": tomb}, schema=S.EMBEDDING_TOMBSTONES))
        gone = np.isin(before, np.union1d(tomb, up_ids)).sum()
        entry["modalities"][m] = {"base": base_token(base_path(vdir, m)), "upserts": int(n_ups),
                                  "tombstones": int(len(tomb)), "rows": int(len(before) - gone + n_ups)}
    if entry["modalities"]:
        man["deltas"].append(entry)
    _commit(vdir, man)
    return entry


def pending(vdir: Path, modality: str) -> dict:
    """Size of the live deltas of ``modality``: ``{"deltas", "upserts", "tombstones", "base_rows"}``."""
    ds = live(vdir, modality)
    bp = base_path(vdir, modality)
    return {"deltas": len(ds), "upserts": sum(d["upserts"] for d in ds), "tombstones": sum(d["tombstones"] for d in ds),
            "base_rows": pq.ParquetFile(bp).metadata.num_rows if bp.exists() else 0}


def due(p: Mapping[str, int], compact_fraction: float, compact_every: int) -> bool:
    """The compaction schedule (conf/nightly.yaml): deltas larger than ``compact_fraction`` of the base, or
    ``compact_every`` deltas since the base."""
    return bool(p["deltas"]) and (p["upserts"] + p["tombstones"] > compact_fraction * p["base_rows"]
                                  or p["deltas"] >= compact_every)


def compact(vdir: Path, modality: str, write_base) -> int:
    """Fold the live deltas of ``modality`` into a new base file: ``write_base(table)`` writes the logical
    table atomically (:meth:`Generations.write_embeddings`); the old deltas then no longer match the base
    and are dropped from ``DELTAS.json``. Returns the rows of the new base."""
    vdir = Path(vdir)
    t = read(vdir, modality)
    n = 0 if t is None else t.num_rows
    if n:
        write_base(t)
    else:
        base_path(vdir, modality).unlink(missing_ok=True)
    man = read_manifest(vdir)
    folded = [{**e, "modalities": {m: x for m, x in e["modalities"].items() if m != modality}} for e in man["deltas"]]
    _commit(vdir, {**man, "deltas": _prune_stale(vdir, [e for e in folded if e["modalities"]])})
    return n
