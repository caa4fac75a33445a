"""Durable file writes shared by every on-disk artifact (store parts, manifests, models, embeddings, indexes).

A write goes to a temporary name beside the target, is fsynced, renamed into place (``os.replace`` is atomic on
POSIX) and the folder is fsynced, so a crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa


def fsync_dir(path: Path) -> None:
    """fsync a folder (makes a rename inside it durable); a folder that cannot be opened is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path, top: Path) -> None:
    """Make ``path`` (and every folder between ``top`` and it) with mode 700 whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    p = Path(path)
    while True:
        os.chmod(p, 0o700)
        if p == top or p.parent == p or not p.is_relative_to(top):
            break
        p = p.parent


def atomic_write_bytes(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` atomically; ``private``: the file is created 600 (the link folder's files)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    with os.fdopen(fd, "wb") as f:
        if private:
            os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


#: rows per Parquet row group of a written part: a reader decodes a row group's column chunks whole, so a part of a
#: multi-sample VCF (~10⁶ variant rows in Arrow's default 1Mi-row group) cost ~280 MB to stream; 64Ki rows bound it
ROW_GROUP_ROWS = 65_536


def atomic_write_parquet(path: Path, table: pa.Table, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if private:                                  # created 600 before any byte is written
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(tmp, 0o600)
    import pyarrow.parquet as pq

    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class AtomicParquetWriter:
    """One Parquet file written in parts (a row group or more per :meth:`write`), so that a table larger than
    memory can be written chunk by chunk; like :func:`atomic_write_parquet` it appears at ``path`` only on
    :meth:`commit` (temporary name, fsync, rename, folder fsync). :meth:`abort` (or leaving a ``with`` block by an
    exception) removes the temporary file and leaves any old ``path`` as it was. ``schema``: the file's schema
    (its metadata goes into the footer); each part is cast to it."""

    def __init__(self, path: Path, schema: pa.Schema):
        import pyarrow.parquet as pq

        self.path, self.schema = Path(path), schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.rows = 0
        self._w = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._w.write_table(table.replace_schema_metadata(None).cast(self.schema))
            self.rows += table.num_rows

    def commit(self) -> Path:
        self._w.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        try:
            self._w.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicParquetWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


_fsync_dir = fsync_dir          # the old private name (raretarget.store._fsync_dir)
