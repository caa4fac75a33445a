"""Issue 17, items 1-2: the store's SQL is one read-only connection; nothing leaves or changes the store
through it, and its errors never print an identifier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, store_text
from raretarget import Engine
from raretarget.query.filters import allowed_patients
from raretarget.safe_sql import QueryError

BAD = DATA / "bad"


def _lines(name: str) -> list[str]:
    return [x for x in (BAD / name).read_text().splitlines() if x.strip() and not x.startswith("#")]


@pytest.fixture()
def eng(tmp_path):
    e = Engine.open(tmp_path / "S", create=True)
    e.ingest([DATA / "fhir"])
    return e


def _fill(line: str, eng) -> str:
    links = eng.store.links
    part = eng.store.parts("patients")[0]
    idfile = sorted((links / "ids").glob("*.parquet"))[0]
    return line.format(store=eng.store.root, links=links, part=part, idfile=idfile)


def _originals(eng) -> list[str]:
    t = eng.store.read_links("ids")
    return [o for o in t.column("original").to_pylist() if o and len(o) >= 6]


def _snapshot(eng):
    root = eng.store.root
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_sql_misuse_refused_and_store_unchanged(eng, tmp_path):
    before = _snapshot(eng)
    n = eng.sql("select count(*) from patients").column(0)[0].as_py()
    assert n >= 1
    originals = _originals(eng)
    assert any(o.startswith("MRN-") for o in originals)
    for line in _lines("sql_misuse.txt"):
        q = _fill(line, eng)
        with pytest.raises(QueryError) as ei:
            eng.sql(q)
        msg = str(ei.value)
        assert not any(o in msg for o in originals), (q, msg)
    assert _snapshot(eng) == before                               # no file written, none emptied
    assert not list(tmp_path.glob("**/evil.duckdb")) and not list(tmp_path.glob("**/leak.*"))
    assert eng.sql("select count(*) from patients").column(0)[0].as_py() == n
    assert "MRN-5550123" not in store_text(eng.store.root)


def test_where_misuse_refused_and_no_identifier_in_errors(eng):
    originals = _originals(eng)
    for line in _lines("where_misuse.txt"):
        w = _fill(line, eng)
        with pytest.raises(ValueError) as ei:
            allowed_patients(eng.sql, where=w)
        msg = str(ei.value)
        assert not any(o in msg for o in originals), (w, msg)
        with pytest.raises(ValueError):
            eng.select_where("patients", w)
    # a value of the data never appears in an error message either
    pid = eng.sql("select patient_id from patients limit 1").column(0)[0].as_py()
    with pytest.raises(QueryError) as ei:
        eng.sql("select cast(patient_id as integer) from patients")
    assert pid not in str(ei.value) and "Conversion" in str(ei.value)


def test_structured_filters_and_reads_still_work(eng):
    everyone = set(eng.sql("select patient_id from patients").column(0).to_pylist())
    women = allowed_patients(eng.sql, where="sex = 'female' and patient_id in (select patient_id from conditions)")
    assert women and women <= everyone
    assert eng.sql("select count(*) from conditions where patient_id = ?", [sorted(everyone)[0]]).num_rows == 1
    assert eng.sql("with x as (select * from patients) select count(*) from x").column(0)[0].as_py() == len(everyone)
    assert eng.sql("describe patients").num_rows > 0
    assert eng.sql("explain select * from patients").num_rows >= 1


def test_cli_sql_refuses_copy(eng):
    out = eng.store.root / "leak.csv"
    r = subprocess.run([sys.executable, "-m", "raretarget.cli", "sql", str(eng.store.root),
                        f"copy (select * from read_parquet('{eng.store.links}/ids/*.parquet')) to '{out}'"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and not out.exists()
    assert "Traceback" not in r.stderr and "refused" in (r.stderr + r.stdout)
    assert "MRN-5550123" not in r.stderr + r.stdout
