"""The one read-only query connection for everything a user or an input can influence.

``Engine.sql``, ``raretarget sql``, the ``where=`` predicate of ``Engine.search``, cohort predicates of batch
ranking (``prioritize/batch.py``, ``scripts/rank_candidates.py``), outcome targets (``sql:``) and reports all
run through :func:`connect` + :func:`run`. Internal writers never use it (they write Parquet through
``raretarget.store``).

What the connection allows and refuses (a hospital security reviewer's checklist):

* DuckDB in memory, opened with ``enable_external_access=false`` (no file, directory or network access at
  all: ``read_csv``/``read_parquet``/``read_text``/``read_blob``/``glob`` on any path, ``COPY ... TO``,
  ``EXPORT``, ``ATTACH`` and ``INSTALL``/``LOAD`` of extensions fail), ``autoload_known_extensions`` and
  ``autoinstall_known_extensions`` off, ``python_enable_replacements=false`` (a query can't name a Python
  variable of the calling process), then ``lock_configuration=true`` (no ``SET``/``RESET`` afterwards).
* The store's tables are visible as views over Arrow datasets that *raretarget* opened (the committed
  parts of the manifest, rows hidden by updates/deletes left out); the link folder is never opened.
* Only one statement per call, and only ``SELECT`` (incl. ``WITH``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``)
  or ``EXPLAIN``: ``CREATE``/``INSERT``/``UPDATE``/``DELETE``/``DROP``/``ALTER``/``COPY``/``ATTACH``/
  ``DETACH``/``INSTALL``/``LOAD``/``SET``/``PRAGMA``/``CALL``/``EXPORT``/``IMPORT`` are refused by
  statement type (DuckDB's own parser), before anything runs.
* Predicates (``where=``) are parsed as one SQL *expression* (``duckdb.SQLExpression``), never pasted
  into a statement: ``1=1 union select ...`` or ``...; drop ...`` do not parse.
* Error messages are re-raised as :class:`QueryError` with every quoted value replaced by ``'…'``: a
  conversion error never echoes a value of the data.
"""

from __future__ import annotations

import re
from typing import Sequence

import pyarrow as pa

#: DuckDB settings of the query connection (fixed before any view exists, then locked)
SETTINGS = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "python_enable_replacements": False,
}

_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


class QueryError(ValueError):
    """A query refused by the read-only connection, or one that failed (message redacted)."""


def redact(msg: str) -> str:
    """An error message with every quoted value replaced (values may come from the data)."""
    return _QUOTED.sub("'…'", msg)


def connect(store):
    """A locked, read-only DuckDB connection with one view per store table (see the module doc)."""
    import duckdb
    import pyarrow.dataset as ds

    from . import schema as S

    con = duckdb.connect(":memory:", config=dict(SETTINGS))
    for name in S.TABLES:
        schema = S.TABLES[name]
        parts = store.parts(name)
        hidden = store.hidden(name)
        selects = []
        clean = [str(p) for p in parts if not hidden.get(p.stem)]
        if clean:
            con.register(f"_{name}_0", ds.dataset(clean, schema=schema, format="parquet"))
            selects.append(f"SELECT * FROM _{name}_0")
        for i, p in enumerate(p for p in parts if hidden.get(p.stem)):
            ids = ", ".join(str(int(r)) for r in sorted(hidden[p.stem]))
            con.register(f"_{name}_{i + 1}", ds.dataset([str(p)], schema=schema, format="parquet"))
            selects.append(f"SELECT * FROM _{name}_{i + 1} WHERE record_id NOT IN ({ids})")
        if not selects:
            con.register(f"_{name}_0", schema.empty_table())
            selects.append(f"SELECT * FROM _{name}_0")
        con.execute(f"CREATE VIEW {name} AS " + " UNION ALL ".join(selects))
    con.execute("SET lock_configuration = true")
    return con


_ALLOWED = None


def _allowed_types():
    global _ALLOWED
    if _ALLOWED is None:
        import duckdb

        _ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
    return _ALLOWED


def check(con, query: str) -> None:
    """Raise :class:`QueryError` unless ``query`` is exactly one SELECT/EXPLAIN statement."""
    import duckdb

    if not isinstance(query, str) or not query.strip():
        raise QueryError("empty query")
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"query does not parse: {redact(str(e).splitlines()[0])}") from None
    if len(stmts) != 1:
        raise QueryError(f"one statement per query (got {len(stmts)}); the store's SQL is read-only")
    kind = stmts[0].type
    if kind not in _allowed_types():
        raise QueryError(f"{kind.name} statements are refused: the store's SQL is read-only "
                         "(only SELECT/EXPLAIN; no COPY, ATTACH, INSTALL/LOAD, SET, CREATE or writes)")


def run(con, query: str, params: Sequence | None = None) -> pa.Table:
    """Run one read-only statement on a :func:`connect` connection; a pyarrow Table."""
    import duckdb

    check(con, query)
    try:
        rel = con.sql(query, params=params) if params is not None else con.sql(query)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as e:
        raise QueryError(f"{type(e).__name__}: {redact(str(e).splitlines()[0])}") from None


def select_where(con, table: str, predicate: str, columns: Sequence[str] = ("patient_id",)) -> pa.Table:
    """``columns`` of ``table``'s rows matching ``predicate``: one SQL expression, parsed as such."""
    import duckdb

    if not isinstance(predicate, str) or not predicate.strip():
        raise QueryError("empty predicate")
    bare = _QUOTED.sub("''", predicate)
    if "--" in bare or "/*" in bare or ";" in bare:
        raise QueryError(f"not a predicate (one SQL expression over {table}): comments and ';' are refused")
    try:
        expr = duckdb.SQLExpression(predicate)
    except duckdb.Error as e:
        raise QueryError(f"not a predicate (one SQL expression over {table}): "
                         f"{redact(str(e).splitlines()[0])}") from None
    try:
        return con.table(table).filter(expr).select(*columns).to_arrow_table()
    except duckdb.Error as e:
        raise QueryError(f"{type(e).__name__}: {redact(str(e).splitlines()[0])}") from None
