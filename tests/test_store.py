"""Store: atomic commits, orphan cleanup, reader snapshots, link folder outside the store, schema."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from raretarget import Engine, schema as S
from raretarget.pseudo import Pseudonymizer, parse_datetime
from raretarget.store import Store, StoreError
from conftest import DATA


def test_open_requires_create_and_keeps_key_outside(tmp_path):
    with pytest.raises(StoreError, match="not a raretarget store"):
        Store.open(tmp_path / "s")
    st = Store.open(tmp_path / "s", create=True)
    assert (tmp_path / "s.links" / "secret.key").stat().st_size == 32
    assert not any(p.name == "secret.key" for p in (tmp_path / "s").rglob("*"))
    with pytest.raises(StoreError, match="outside the store"):
        Store.open(tmp_path / "t", create=True, links=tmp_path / "t" / "links")
    # a store shared without its link folder can be read but not written
    other = Engine.open(tmp_path / "s", links=tmp_path / "elsewhere")
    assert other.status()["tables"]["patients"] == 0
    with pytest.raises(StoreError, match="key not found"):
        other.ingest([DATA / "fhir" / "Patient.ndjson"])
    assert st.manifest()["version"] == 0


def test_orphan_parts_from_a_killed_writer_are_invisible_and_removed(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)
    eng.ingest([DATA / "fhir" / "Patient.ndjson"])
    orphan = tmp_path / "s" / "tables" / "patients" / "bdeadbeef.parquet"
    import pyarrow.parquet as pq

    pq.write_table(S.conform("patients", {"source_ref": ["x"], "patient_id": ["pt-x"]}), orphan)
    assert eng.status()["tables"]["patients"] == 1                 # not in the manifest: not visible
    assert eng.sql("select count(*) from patients").column(0)[0].as_py() == 1
    eng.ingest([DATA / "fhir" / "Condition.ndjson"])               # next writer cleans it up
    assert not orphan.exists()


def test_reader_keeps_its_snapshot_during_a_commit(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)
    eng.ingest([DATA / "fhir" / "Patient.ndjson"])
    reader = Store.open(tmp_path / "s")
    before = reader.manifest()
    writer = Engine.open(tmp_path / "s")
    writer.ingest([DATA / "fhir" / "bundle_phi.json"])
    assert reader.manifest() == before                              # still its version...
    assert reader.count("patients") == 1
    assert reader.manifest(refresh=True)["version"] == before["version"] + 1   # ...until it refreshes
    assert reader.count("patients") == 2


def test_manifest_is_replaced_atomically(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)
    eng.ingest([DATA / "fhir" / "bundle_phi.json"])
    man = json.loads((tmp_path / "s" / "_manifest.json").read_text())
    for table, parts in man["tables"].items():
        for p in parts:
            assert (tmp_path / "s" / "tables" / table / p).exists()
    assert not list((tmp_path / "s").rglob(".*.tmp-*"))


def test_conform_fills_nulls_computes_ids_and_rejects_unknown_columns():
    t = S.conform("notes", {"source_ref": ["a", "b"], "text": ["x", "y"]})
    assert t.schema == S.TABLES["notes"]
    assert t.column("patient_id").null_count == 2
    ids = t.column("record_id").to_pylist()
    assert ids == S.record_ids("notes", ["a", "b"]).tolist() and ids[0] != ids[1]
    assert S.record_ids("notes", ["a"])[0] != S.record_ids("variants", ["a"])[0]
    with pytest.raises(KeyError, match="unknown column"):
        S.conform("notes", {"source_ref": ["a"], "txet": ["typo"]})


def test_pseudonyms_keyed_stable_and_shifts_keep_intervals():
    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    assert a.patient("123") == a.patient("123") != b.patient("123")
    assert a.patient("123").startswith("pt-") and "123" not in a.patient("123")
    assert a.uid("1.2.3").startswith("2.25.") and a.uid("1.2.3") != a.uid("1.2.4")
    pid = a.patient("123")
    d1, d2 = a.shift("2020-01-01", pid), a.shift("2020-03-01T12:00:00+02:00", pid)
    assert (d2 - d1) == (parse_datetime("2020-03-01T12:00:00+02:00") - parse_datetime("2020-01-01"))
    assert d1 != parse_datetime("2020-01-01")
    assert 1 <= abs(a.shift_days(pid)) <= 365
    assert a.shift("2020-01-01", None) is None               # no patient: no unshifted date
    links = a.drain()
    assert ("pt-" in links[0][0]) and any(o == "123" for _, o, _ in links)
    assert parse_datetime("20200102").day == 2 and parse_datetime("2020").month == 1
    assert parse_datetime("not a date") is None


def test_pseudonymizer_memory_is_bounded_and_answers_stay_the_same(monkeypatch):
    """drain() empties the pseudonym and date-shift caches past CACHE_MAX entries (an ingest meets every patient
    once: one cached shift each would grow with the store); what is recomputed is the same."""
    monkeypatch.setattr(Pseudonymizer, "CACHE_MAX", 10)
    a = Pseudonymizer(b"k" * 32)
    first = {f"p{i}": (a.patient(f"p{i}"), a.shift_days(f"pt-{i}")) for i in range(50)}
    a.drain()
    assert len(a._cache) == 0 and len(a._shift) == 0
    assert {k: (a.patient(k), a.shift_days(f"pt-{k[1:]}")) for k in first} == first


def test_phi_terms_answer_like_a_dict_with_most_of_them_spilled(tmp_path, monkeypatch):
    """PhiTerms (the committer's scrub terms per patient) keeps HOT_MAX patients' terms in memory, writes the
    others to an unnamed file in the given folder and reads them back: the answers of a dict (last put wins),
    ids of any form, empty lists and None included; without a folder nothing is spilled."""
    import random

    from raretarget.store import phi

    monkeypatch.setattr(phi, "HOT_MAX", 3)
    rng = random.Random(5)
    ids = [f"pt-{rng.getrandbits(64):016x}" for _ in range(40)] + ["odd-id", "pt-notahexnumber"]
    for folder in (tmp_path, None):
        cache, ref = phi.PhiTerms(folder), {}
        for step in range(600):
            pid = rng.choice(ids)
            if rng.random() < 0.4:
                terms = rng.choice([[], None, [f"Name{step}", "MRN-1", "é ü \x00 \"q\""]])
                cache.put(pid, terms)
                ref[pid] = terms
            else:
                assert cache.get(pid) == ref.get(pid)
            assert len(cache._hot) <= 3
        assert all(cache.get(p) == ref.get(p) for p in ids)
        assert (cache.spilled > 30) == (folder is not None)
    assert list(tmp_path.iterdir()) == []          # the spill file never has a name
