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

FORMAT_VERSION = 1


class StoreError(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
                atomic_write_bytes(keyfile, secrets.token_bytes(32))
                os.chmod(keyfile, 0o600)
            atomic_write_bytes(root / "_manifest.json", json.dumps({"version": 0, "tables": {}}).encode())
            atomic_write_bytes(meta, json.dumps({"format": FORMAT_VERSION, "kind": "raretarget-store"}).encode())
        else:
            info = json.loads(meta.read_text())
            if info.get("format") != FORMAT_VERSION:
                raise StoreError(f"{root}: store format {info.get('format')} is not supported (expected {FORMAT_VERSION})")
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

    def count(self, table: str) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts(table))

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        parts = self.parts(table)
        schema = S.TABLES[table]
        if not parts:
            t = schema.empty_table()
            return t.select(columns) if columns else t
        tables = [pq.read_table(p, columns=columns, schema=schema) for p in parts]
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
            if table.num_rows:
                atomic_write_parquet(self.links / name / f"{batch_id}.parquet", table)
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
    def read_links(self, name: str) -> pa.Table:
        d = self.links / name
        files = sorted(d.glob("*.parquet")) if d.exists() else []
        if not files:
            return S.LINK_TABLES[name].empty_table()
        return pa.concat_tables([pq.read_table(f) for f in files])

    # ---- SQL -------------------------------------------------------------------------------------
    def duckdb(self):
        """A DuckDB connection with one view per table over the committed Parquet parts."""
        import duckdb

        con = duckdb.connect(":memory:")
        for name in S.TABLES:
            parts = [str(p) for p in self.parts(name)]
            if parts:
                files = ", ".join("'" + p.replace("'", "''") + "'" for p in parts)
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{files}])")
            else:
                con.register(f"_empty_{name}", S.empty(name))
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _empty_{name}")
        return con
