"""Issue 20, passes and memory that must not grow with the store: a full embedding pass splits the store by patient
chunk in one pass over each table (raretarget.store.partition) instead of filtering the whole store once per chunk;
the ingest writer reads only the alias rows of the pseudonym links."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raretarget.store import Store
from raretarget.store import schema as S
from raretarget.store.artifacts import Artifacts
from raretarget.store.partition import SAMPLE_TABLES, patient_partitions


@pytest.fixture()
def store(cohort_store, tmp_path):
    """A private copy of a generated store (this module writes to it), with one observation row hidden."""
    src = cohort_store(12, 3).eng.store
    shutil.copytree(src.root, tmp_path / "s")
    shutil.copytree(src.links, tmp_path / "s.links")
    st = Store.open(tmp_path / "s")
    obs = st.read("observations", ["record_id", "patient_id"], with_part=True)
    rid, pid, part = obs.column("record_id")[0].as_py(), obs.column("patient_id")[0].as_py(), obs.column("_part")[0].as_py()
    row = {"record_id": 1, "table_name": "observations", "target_id": rid, "part": part, "patient_id": pid,
           "reason": "delete", "batch_id": "bhide"}
    with st.writer():
        st.commit("bhide", {"deleted": pa.Table.from_pylist([row], S.TABLES["deleted"])}, {})
    st.hidden_rid = rid
    return st


def _chunks(st: Store, size: int) -> list[list[str]]:
    pids = sorted(set(st.read("patients", ["patient_id"]).column(0).to_pylist()))
    return [pids[i:i + size] for i in range(0, len(pids), size)]


def test_each_chunk_store_holds_exactly_its_patients_rows(store):
    chunks = _chunks(store, 5)
    assert len(chunks) >= 3
    with patient_partitions(store, chunks, buffer_bytes=1) as subs:      # flush after every part: many row groups
        assert len(subs) == len(chunks)
        for chunk, sub in zip(chunks, subs):
            for name in SAMPLE_TABLES:
                whole = store.read(name)
                want = whole.filter(pc.is_in(whole.column("patient_id"), value_set=pa.array(chunk)))
                got = sub.read(name)
                assert got.equals(want.cast(got.schema)), name          # same rows, same (part) order
            assert store.hidden_rid not in sub.read("observations").column("record_id").to_pylist()
            assert sub.read("conditions").num_rows == 0                  # only the sample tables are split
            # the readers' SQL runs on it as on a store
            n = sub.sql("select count(*) from notes").column(0)[0].as_py()
            assert n == sub.read("notes").num_rows
        scratch = Artifacts(store.root).scratch_dir
        assert len(list(scratch.iterdir())) == 1
    assert list(scratch.iterdir()) == []                                 # deleted on exit
    assert store.read("observations").num_rows == whole_rows(store)      # the store itself is untouched


def whole_rows(st: Store) -> int:
    return sum(t.num_rows for _, t in st.iter_parts("observations"))


def test_a_failed_pass_leaves_no_scratch_and_a_killed_one_is_cleaned(store):
    scratch = Artifacts(store.root).scratch_dir
    with pytest.raises(RuntimeError):
        with patient_partitions(store, _chunks(store, 4)):
            raise RuntimeError("boom")
    assert list(scratch.iterdir()) == []
    # a folder left by a process that is gone is removed by the next pass; a live process's is kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = scratch / f"partition-{int(dead.stdout)}@{host}-x"
    live = scratch / f"partition-{os.getppid()}@{host}-y"
    other = scratch / f"partition-{int(dead.stdout)}@not-{host}-z"      # another machine sharing the folder
    for d in (stale, live, other):
        d.mkdir()
    with patient_partitions(store, _chunks(store, 4)):
        pass
    assert not stale.exists() and live.exists() and other.exists()


def test_a_patient_in_two_chunks_is_refused(store):
    c = _chunks(store, 4)
    with pytest.raises(ValueError, match="two chunks"):
        with patient_partitions(store, [c[0], c[0][:1]]):
            pass


def test_a_chunked_embedding_pass_reads_the_store_once_whatever_the_chunk_count(cohort_store, monkeypatch):
    """The number of whole-store queries of ``embed_store`` does not grow with the number of chunks (it grew by
    five per chunk before)."""
    from raretarget.encoders import pipeline
    from raretarget.store import safe_sql

    eng = cohort_store(14, 5).eng
    if eng.current_model() is None:
        eng.train(**{"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 8,
                     "encoders.image.arch": "small", "model.knowledge.steps": 0, "data.num_workers": 0})
    root = eng.store.root
    seen = []
    real = safe_sql.connect

    def spy(st):
        seen.append(st.root == root)
        return real(st)

    monkeypatch.setattr(safe_sql, "connect", spy)
    counts = {}
    for size in (7, 2):
        seen.clear()
        counts[size] = pipeline.embed_store(eng.store, batch_size=16, device="cpu", chunk_patients=size)
        assert sum(not s for s in seen) >= 5                 # the chunks were read from their own stores
        whole = sum(seen)
        if size == 7:
            first = whole
    assert whole == first and counts[7] == counts[2]


def test_alias_links_are_read_without_the_other_pseudonyms(store, monkeypatch):
    """The ingest writer's alias map comes from the ``alias`` rows of the ``ids`` links alone (a filtered scan):
    the same map as from the whole table, whose other rows (~5M at 100k patients) are not held."""
    from raretarget.store.writer import StoreWriter

    whole = store.read_links("ids")
    assert set(whole.column("kind").to_pylist()) > {"alias"}
    want = {o: p for p, o, k in zip(whole.column("pseudo").to_pylist(), whole.column("original").to_pylist(),
                                     whole.column("kind").to_pylist()) if k == "alias"}
    only = store.read_links("ids", kind="alias")
    assert set(only.column("kind").to_pylist()) == {"alias"} and only.num_rows == len(
        [k for k in whole.column("kind").to_pylist() if k == "alias"])
    w = StoreWriter.__new__(StoreWriter)
    w.store, w.alias_cache = store, None
    got = w.known_alias()
    assert len(want) > 0 and all(got.get(o) == p for o, p in want.items()) and got.get("not an identifier") is None


def _trained(cohort_store):
    """The shared 14-patient generated store with a (tiny) trained model: ``(engine, model info, loaded model)``."""
    from raretarget.encoders.training import load_model

    eng = cohort_store(14, 5).eng
    if eng.current_model() is None:
        eng.train(**{"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 8,
                     "encoders.image.arch": "small", "model.knowledge.steps": 0, "data.num_workers": 0})
    model = eng.current_model()
    return eng, model, load_model(model["path"], device="cpu")


def test_a_night_embeds_its_patients_from_partitions(cohort_store, monkeypatch):
    """The nightly's re-embedding of the changed patients reads them from partitions (the store's tables scanned
    once, no SQL over the whole store), chunk by chunk, and gives the rows of a direct call."""
    import numpy as np

    from raretarget.apps import nightly
    from raretarget.encoders import pipeline
    from raretarget.index.generations import vectors_of
    from raretarget.store import safe_sql

    eng, model, net = _trained(cohort_store)
    pids = sorted(set(eng.store.read("patients", ["patient_id"]).column(0).to_pylist()))[:7]
    want = pipeline.embedding_tables(eng.store, net, model["model_version"], batch_size=16, patients=pids)
    real_chunks, real_connect = pipeline.patient_chunks, safe_sql.connect
    monkeypatch.setattr(pipeline, "patient_chunks", lambda ids, n=None: real_chunks(ids, 3))
    main = []
    monkeypatch.setattr(safe_sql, "connect", lambda st: (main.append(st.root == eng.store.root), real_connect(st))[1])
    got = nightly._embed_patients(eng.store, net, model["model_version"], 16, pids)
    assert main and not any(main)                         # every query went to a chunk's own store
    assert set(got) == set(want)
    for m in want:
        a, b = want[m].sort_by("record_id"), got[m].sort_by("record_id")
        assert a.column("record_id").equals(b.column("record_id")), m
        assert np.allclose(vectors_of(a), vectors_of(b), atol=1e-5), m


def test_sample_patients_by_part_groups_equals_the_one_query(store):
    """``sample_patients`` runs the readers' conditions on groups of parts: the same patients as one SQL union over
    the store (hidden rows out), whatever the group size; and every one of them gets a sample."""
    from raretarget.encoders import data as D

    loincs = D.panel_loincs()
    q = " union ".join([f"select distinct patient_id from {t} where {w}" for t, w in D._HAS.items()]
                       + [f"select distinct patient_id from observations where {D._labs_filter(loincs)}"])
    want = sorted(store.sql(q).column(0).to_pylist())
    assert len(want) >= 10
    assert D.sample_patients(store) == want
    assert D.sample_patients(store, group_bytes=1) == want               # one part per group
    assert D.sample_patients(store.root) == want                         # a path
    assert [s["patient_id"] for s in D.load_store_samples(store)] == want


def test_parts_are_written_in_bounded_row_groups_and_read_in_batches(store, tmp_path):
    """A written part holds row groups of at most ROW_GROUP_ROWS rows (a reader decodes a row group whole), and
    ``iter_parts(batch_rows=)`` streams a table in batches that concatenate to ``read``."""
    import pyarrow.parquet as pq

    from raretarget.store.io import ROW_GROUP_ROWS, atomic_write_parquet

    t = pa.table({"x": pa.array(range(ROW_GROUP_ROWS * 3 + 5), pa.int64())})
    atomic_write_parquet(tmp_path / "p.parquet", t)
    md = pq.ParquetFile(tmp_path / "p.parquet").metadata
    assert md.num_row_groups == 4 and max(md.row_group(i).num_rows for i in range(4)) == ROW_GROUP_ROWS
    for name in ("observations", "notes"):
        batches = [b for _, b in store.iter_parts(name, batch_rows=7)]
        assert max(b.num_rows for b in batches) <= 7
        assert pa.concat_tables(batches).equals(store.read(name))       # hidden rows out, same order
    assert store.hidden_rid not in pa.concat_tables(
        [b for _, b in store.iter_parts("observations", ["record_id"], batch_rows=5)]).column(0).to_pylist()


def test_a_chunk_without_a_modality_gives_that_modality_typed_and_empty(cohort_store):
    """Chunks are concatenated per modality (the night, the embedding pass): a chunk whose patients have no image
    (or note ...) must give the modality's table its schema, not a null-typed ``modality`` column (a night failed
    with "Schema at index 2 was different" when its chunk of 3 patients drew none with an image)."""
    import pyarrow as pa

    from raretarget.encoders import pipeline

    eng, model, net = _trained(cohort_store)
    imaged = set(eng.store.read("images", ["patient_id"]).column(0).to_pylist())
    pids = sorted(set(eng.store.read("patients", ["patient_id"]).column(0).to_pylist()))
    some = [p for p in pids if p in imaged][:2]
    none = [p for p in pids if p not in imaged][:2]
    assert some and none
    a = pipeline.embedding_tables(eng.store, net, model["model_version"], batch_size=16, patients=some)
    b = pipeline.embedding_tables(eng.store, net, model["model_version"], batch_size=16, patients=none)
    for m in set(a) & set(b):
        assert b[m].schema.field("modality").type == pa.string(), m
        assert pa.concat_tables([a[m], b[m]]).num_rows == a[m].num_rows + b[m].num_rows
    assert "image" in a and (b.get("image") is None or b["image"].num_rows == 0)


def test_sparse_partitions_decode_only_the_parts_of_the_listed_patients(cohort_store, tmp_path, monkeypatch):
    """``sparse=True`` (a night's few changed patients): the same rows as a full split, and the parts holding none
    of the listed patients are not decoded; a whole-table read (one dataset scan) equals the parts read one by one."""
    from raretarget import Engine

    src = cohort_store(12, 3)
    eng = Engine.open(tmp_path / "many", create=True)
    eng.ingest([src.root / "c" / k for k in ("fhir", "dicom", "vcf")], batch_files=3)     # many small parts
    st = eng.store
    parts = st.parts("patients")
    assert len(parts) >= 3
    one = st.iter_parts("patients", ["patient_id"])
    stem, first = next(one)
    pids = sorted(set(first.column(0).to_pylist()))
    for name in S.DATA_TABLES:          # the dataset scan gives the per-part rows, in part order
        assert st.read(name).equals(pa.concat_tables([t for _, t in st.iter_parts(name)]) if st.parts(name)
                                    else st.read(name)), name
    decoded: dict[str, set] = {}
    real = Store.iter_parts

    def spy(self, table, columns=None, batch_rows=None, stems=None):
        if self.root == st.root:        # the split's scan of the store (not the chunk stores' own reads)
            decoded[table] = set(p.stem for p in self.parts(table)) if stems is None else set(stems)
        return real(self, table, columns, batch_rows, stems)

    monkeypatch.setattr(Store, "iter_parts", spy)
    with patient_partitions(st, [pids], sparse=True) as (sub,):
        got = {t: sub.read(t) for t in SAMPLE_TABLES}
    assert stem in decoded["patients"] and len(decoded["patients"]) < len(parts)
    with patient_partitions(st, [pids]) as (sub,):
        want = {t: sub.read(t) for t in SAMPLE_TABLES}
    assert decoded["patients"] == {p.stem for p in parts}            # not sparse: every part
    for t in SAMPLE_TABLES:
        assert got[t].equals(want[t]), t
    assert set(got["patients"].column("patient_id").to_pylist()) == set(pids)
