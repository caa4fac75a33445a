"""The store layer: everything that reads or writes a store folder, below every other package but vocab.

* :mod:`.schema` – the one schema module (tables, link tables, embeddings, record ids);
* :mod:`.table` – :class:`Store`: Parquet parts per table, committed atomically through a manifest; read, SQL;
* :mod:`.safe_sql` – the one read-only query connection;
* :mod:`.writer` – :class:`~.writer.StoreWriter`: the ingest commit rules (dedupe, updates, deletes, links);
* :mod:`.pseudo` – keyed pseudonyms and date shifts;
* :mod:`.artifacts` – the one place for the on-disk layout of models, embeddings, index generations, runs;
* :mod:`.io` – durable atomic writes.

``from raretarget.store import Store, StoreError, atomic_write_bytes, atomic_write_parquet`` works as before
(``raretarget.store`` was one module until issue 18).
"""

from .io import _fsync_dir, atomic_write_bytes, atomic_write_parquet, fsync_dir, private_dir
from .table import FORMAT_VERSION, Store, StoreError, _tighten

__all__ = ["Store", "StoreError", "FORMAT_VERSION", "atomic_write_bytes", "atomic_write_parquet", "fsync_dir",
           "private_dir"]
