"""The local store: Parquet parts per table, committed atomically through a manifest.

Layout::

    <store>/                         shareable: pseudonymous data only
      store.json                     format version, creation info
      _manifest.json                 the committed state: parts per table + version counter
      tables/<table>/<batch>.parquet one part per table per committed batch
      .lock                          single-writer lock
    <store>.links/                   secure side (path configurable): never share
      secret.key                     pseudonymisation key (32 random bytes)
      <link table>/<batch>.parquet   pseudonym → original, file_ref → path, quarantined raw records

Commit protocol: a batch writes every part under a temporary name, renames each into place
(``os.replace`` is atomic on POSIX), writes its link parts, then publishes a new manifest with one
atomic rename. A part that is on disk but not in the manifest was left by a killed run and is
deleted on the next write. Readers take the manifest they find and see exactly that version.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from . import schema as S
from .io import atomic_write_bytes, atomic_write_parquet, fsync_dir, private_dir  # noqa: F401

FORMAT_VERSION = 1


class StoreError(RuntimeError):
    pass


def _tighten(links: Path) -> None:
    """Link folders written by older versions: every folder 700, every file 600 (owner's only)."""
    if not links.is_dir() or not os.access(links, os.W_OK):
        return
    for dirpath, dirnames, filenames in os.walk(links):
        try:
            os.chmod(dirpath, 0o700)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o600)
        except PermissionError:
            return


class Store:
    """Parquet tables of one store folder plus its link folder. Not thread-safe for writers."""

    def __init__(self, root: Path, links: Path):
        self.root = Path(root)
        self.links = Path(links)
        self._manifest: dict | None = None

    # ---- open/create -----------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike, create: bool = False, links: str | os.PathLike | None = None) -> "Store":
        root = Path(root)
        links = Path(links) if links is not None else root.with_name(root.name + ".links")
        if links.resolve().is_relative_to(root.resolve()):
            raise StoreError(f"link folder {links} must be outside the store folder {root}")
        meta = root / "store.json"
        if not meta.exists():
            if not create:
                raise StoreError(f"{root} is not a raretarget store (no store.json); pass create=True to make one")
            root.mkdir(parents=True, exist_ok=True)
            (root / "tables").mkdir(exist_ok=True)
            links.mkdir(parents=True, exist_ok=True)
            os.chmod(links, 0o700)
            keyfile = links / "secret.key"
            if not keyfile.exists():
                atomic_write_bytes(keyfile, secrets.token_bytes(32), private=True)
            atomic_write_bytes(root / "_manifest.json", json.dumps({"version": 0, "tables": {}}).encode())
            atomic_write_bytes(meta, json.dumps({"format": FORMAT_VERSION, "kind": "raretarget-store"}).encode())
        else:
            info = json.loads(meta.read_text())
            if info.get("format") != FORMAT_VERSION:
                raise StoreError(f"{root}: store format {info.get('format')} is not supported (expected {FORMAT_VERSION})")
            _tighten(links)
        return cls(root, links)

    def key(self) -> bytes:
        keyfile = self.links / "secret.key"
        if not keyfile.exists():
            raise StoreError(
                f"pseudonymisation key not found at {keyfile}: this store can be read but not written "
                "(the link folder stays with the data owner)")
        return keyfile.read_bytes()

    # ---- manifest --------------------------------------------------------------------------------
    def manifest(self, refresh: bool = False) -> dict:
        if self._manifest is None or refresh:
            self._manifest = json.loads((self.root / "_manifest.json").read_text())
        return self._manifest

    def parts(self, table: str) -> list[Path]:
        return [self.root / "tables" / table / p for p in self.manifest().get("tables", {}).get(table, [])]

    def hidden(self, table: str) -> dict[str, set[int]]:
        """``{part (batch id): {record_id}}`` of rows of ``table`` hidden by the ``deleted`` table
        (superseded by an update, or deleted). Cached per manifest version."""
        if table not in S.DATA_TABLES:
            return {}
        man = self.manifest()
        key = (man.get("version", 0), tuple(man.get("tables", {}).get("deleted", [])))
        if getattr(self, "_hidden_key", None) != key:
            out: dict[str, dict[str, set[int]]] = {}
            for p in self.parts("deleted"):
                t = pq.read_table(p, columns=["table_name", "target_id", "part"])
                for tn, rid, part in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), t.column(2).to_pylist()):
                    out.setdefault(tn, {}).setdefault(part, set()).add(rid)
            self._hidden, self._hidden_key = out, key
        return self._hidden.get(table, {})

    def count(self, table: str) -> int:
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts(table))
        return n - sum(len(v) for v in self.hidden(table).values())

    def read(self, table: str, columns: list[str] | None = None, *, with_part: bool = False) -> pa.Table:
        """The live rows of ``table`` (hidden rows left out). ``with_part`` adds a ``_part`` column
        (the batch id of the part holding each row)."""
        parts = self.parts(table)
        if not with_part and len(parts) > 1 and not self.hidden(table):
            # one multi-threaded scan of every part: per-part reads cost ~1 ms each in fixed overhead, which a
            # store of ~1,600 parts a table (100k patients) pays on every whole-table read
            import pyarrow.dataset as ds

            return ds.dataset([str(p) for p in parts], schema=S.TABLES[table], format="parquet").to_table(
                columns=columns)
        tables = []
        for stem, t in self.iter_parts(table, columns):
            if with_part:
                t = t.append_column("_part", pa.array([stem] * t.num_rows, pa.string()))
            tables.append(t)
        if not tables:
            schema = S.TABLES[table]
            t = schema.empty_table()
            t = t.select(columns) if columns else t
            return t.append_column("_part", pa.array([], pa.string())) if with_part else t
        return pa.concat_tables(tables)

    def iter_parts(self, table: str, columns: list[str] | None = None,
                   batch_rows: int | None = None, stems=None) -> Iterator[tuple[str, pa.Table]]:
        """``(part stem, live rows)`` of each committed part of ``table`` in manifest order, one part in memory
        at a time (hidden rows left out); with ``batch_rows``, each part in batches of at most that many rows (a
        part holding a multi-sample VCF has ~10⁶ variant rows); ``stems``: only the parts of these batch ids."""
        schema = S.TABLES[table]
        hidden = self.hidden(table)
        cols = columns
        if columns is not None and hidden and "record_id" not in columns:
            cols = list(columns) + ["record_id"]
        import pyarrow.compute as pc

        for p in self.parts(table):
            if stems is not None and p.stem not in stems:
                continue
            if batch_rows is None:
                pieces = [pq.read_table(p, columns=cols, schema=schema)]
            else:
                import pyarrow.dataset as ds

                pieces = (pa.Table.from_batches([b]) for b in ds.dataset(p, schema=schema, format="parquet")
                          .to_batches(columns=cols, batch_size=batch_rows, batch_readahead=0, fragment_readahead=0))
            dead = hidden.get(p.stem)
            for t in pieces:
                if dead:
                    t = t.filter(pc.invert(pc.is_in(t.column("record_id"),
                                                    value_set=pa.array(sorted(dead), pa.int64()))))
                if cols is not columns:
                    t = t.select(columns)
                yield p.stem, t

    def read_ids(self, table: str, ids) -> pa.Table:
        """Live rows of ``table`` with these record_ids, plus ``_part`` (predicate pushed into Parquet)."""
        import pyarrow.compute as pc

        ids = pa.array(sorted({int(i) for i in ids}), pa.int64())
        schema = S.TABLES[table]
        hidden = self.hidden(table)
        tables = []
        for p in self.parts(table):
            t = pq.read_table(p, schema=schema, filters=pc.is_in(pc.field("record_id"), value_set=ids))
            dead = hidden.get(p.stem)
            if dead and t.num_rows:
                t = t.filter(pc.invert(pc.is_in(t.column("record_id"), value_set=pa.array(sorted(dead), pa.int64()))))
            tables.append(t.append_column("_part", pa.array([p.stem] * t.num_rows, pa.string())))
        if not tables:
            return schema.empty_table().append_column("_part", pa.array([], pa.string()))
        return pa.concat_tables(tables)

    @contextmanager
    def writer(self) -> Iterator["Store"]:
        """Exclusive writer lock (other writers block; readers never do)."""
        lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.manifest(refresh=True)
            self._clean_orphans()
            yield self
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _clean_orphans(self) -> None:
        """Delete parts and temporaries that no manifest references (left by a killed writer)."""
        live = {(t, p) for t, ps in self.manifest().get("tables", {}).items() for p in ps}
        tdir = self.root / "tables"
        if not tdir.exists():
            return
        for d in tdir.iterdir():
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if (d.name, f.name) not in live:
                    f.unlink(missing_ok=True)

    def commit(self, batch_id: str, tables: dict[str, pa.Table], links: dict[str, pa.Table]) -> dict:
        """Write one batch atomically: parts, then link parts, then the new manifest. Returns it."""
        man = self.manifest(refresh=True)
        new_tables = {t: list(ps) for t, ps in man.get("tables", {}).items()}
        for name, table in links.items():
            if table.num_rows:            # link folder: every folder 700, every file 600
                private_dir(self.links / name, self.links)
                atomic_write_parquet(self.links / name / f"{batch_id}.parquet", table, private=True)
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
            fname = f"{batch_id}.parquet"
            atomic_write_parquet(self.root / "tables" / name / fname, table)
            if fname not in new_tables.setdefault(name, []):
                new_tables[name].append(fname)
        new = {"version": int(man.get("version", 0)) + 1, "tables": new_tables, "committed_at": int(time.time())}
        atomic_write_bytes(self.root / "_manifest.json", json.dumps(new, indent=1).encode())
        self._manifest = new
        return new

    # ---- links (secure side) --------------------------------------------------------------------
    def read_links(self, name: str, kind: str | None = None) -> pa.Table:
        """A link table's rows in part order; ``kind``: only the rows of that ``kind`` (the ``ids`` table)."""
        tables = list(self.iter_links(name, kind))
        if not tables:
            return S.LINK_TABLES[name].empty_table()
        return pa.concat_tables(tables)

    def iter_links(self, name: str, kind: str | None = None) -> Iterator[pa.Table]:
        """The rows of link table ``name`` in part order, a batch at a time (at most one part's rows each);
        ``kind``: only the rows of that ``kind``, filtered while each part is scanned (the whole ``ids`` table is
        ~400 MB of Arrow at 100k patients, its alias rows ~5 % of it)."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        flt = None if kind is None else pc.field("kind") == kind
        d = self.links / name
        files = [str(f) for f in sorted(d.glob("*.parquet"))] if d.exists() else []
        if not files:
            return
        # one scan over the parts in order (a part's batches, a few parts read ahead): per-part reads cost ~1 ms
        # each in fixed overhead, ~1,800 parts of `ids` at 100k patients
        for b in ds.dataset(files, schema=S.LINK_TABLES[name], format="parquet").to_batches(filter=flt):
            yield pa.Table.from_batches([b])

    # ---- SQL -------------------------------------------------------------------------------------
    def sql(self, query: str, params=None):
        """One read-only SQL statement over the committed parts (what ``Engine.sql`` runs; :mod:`raretarget.safe_sql`)."""
        from .safe_sql import run

        con = self.duckdb()
        try:
            return run(con, query, params)
        finally:
            con.close()

    def duckdb(self):
        """The read-only query connection over the committed parts (:mod:`raretarget.safe_sql`): external
        access off, configuration locked, one view per table. Writers never use DuckDB."""
        from .safe_sql import connect

        return connect(self)
