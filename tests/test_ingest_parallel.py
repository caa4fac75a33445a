"""Parallel ingest (issue 19): ``eng.ingest(paths, workers=n)`` gives the store ``workers=1`` gives.

Compared table by table: rows in order, record ids, pseudonyms, shifted dates, scrubbed text, quarantine
(codes, fields, record locators), per-file ledger, and the link folder's records.
"""

from __future__ import annotations

import base64
import json

import pytest

from raretarget import Engine, schema as S
from conftest import DATA, store_text

KEY = bytes(range(32))


def _ingest(tmp_path, name: str, paths, workers: int, **kw):
    eng = Engine.open(tmp_path / name, create=True)
    (eng.store.links / "secret.key").write_bytes(KEY)       # one key: pseudonyms comparable across stores
    eng = Engine.open(tmp_path / name)
    rep = eng.ingest(paths, workers=workers, **kw)
    return eng, rep


def _same_store(a: Engine, b: Engine) -> None:
    for name in list(S.DATA_TABLES) + ["quarantine", "ingested", "deleted"]:
        ta, tb = a.store.read(name), b.store.read(name)
        assert ta.num_rows == tb.num_rows, name
        assert ta.equals(tb), name
    for name in ("ids", "files", "phi", "quarantine"):
        assert a.store.read_links(name).to_pylist() == b.store.read_links(name).to_pylist(), name


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from raretarget.cohort import generate

    out = tmp_path_factory.mktemp("cohort")
    generate(out / "bundles", n_patients=24, seed=3, image_size=16)
    generate(out / "ndjson", n_patients=12, seed=4, fmt="ndjson", imaging_fraction=0.0)
    return out


def test_two_workers_give_the_same_store_as_one(cohort, tmp_path):
    paths = [cohort / "bundles", cohort / "ndjson", DATA / "bad" / "fhir"]
    one, r1 = _ingest(tmp_path, "one", paths, 1, batch_files=7)
    two, r2 = _ingest(tmp_path, "two", paths, 2, batch_files=7)
    assert r1.batches == r2.batches > 3
    assert r1.records == r2.records and r1.accepted == r2.accepted and r1.quarantined == r2.quarantined > 0
    assert r1.conflicts == r2.conflicts
    assert [str(q) for q in r1.quarantine] == [str(q) for q in r2.quarantine]
    assert one.store.read("images").num_rows > 0 and one.store.read("variants").num_rows > 0
    # images link to their patient through the ImagingStudy read in another process
    assert set(two.store.read("images").column("patient_link").to_pylist()) == {"imaging_study"}
    _same_store(one, two)


def test_cross_file_lookups_made_in_workers_are_checked(tmp_path):
    """A note in a file read by a worker that could not know the patient's name yet (the Patient is in a
    Bundle of the same group, read by the other worker): the parent finds the out-of-date answer, reads
    the file itself, and the name is scrubbed exactly as with one worker."""
    src = tmp_path / "in"
    src.mkdir()
    pat = {"resourceType": "Patient", "id": "p1", "name": [{"given": ["Zebulon"], "family": "Quarrington"}],
           "identifier": [{"value": "MRN-77123"}]}
    (src / "a_bundle.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                   "entry": [{"resource": pat}]}))
    note = base64.b64encode(b"Zebulon Quarrington (MRN-77123) seen today.").decode()
    doc = {"resourceType": "DocumentReference", "id": "d1", "subject": {"reference": "Patient/p1"},
           "content": [{"attachment": {"contentType": "text/plain", "data": note}}]}
    same = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "valueQuantity": {"value": 5.1, "unit": "mmol/L", "code": "mmol/L"}}
    (src / "b_docs.ndjson").write_text(json.dumps(doc) + "\n" + json.dumps(same) + "\n")
    other = dict(same, valueQuantity={"value": 9.9, "unit": "mmol/L", "code": "mmol/L"})
    (src / "c_conflict.ndjson").write_text(json.dumps(other) + "\n")       # same id, other content
    one, r1 = _ingest(tmp_path, "one", [src], 1)
    two, r2 = _ingest(tmp_path, "two", [src], 2)
    text = two.store.read("notes").column("text").to_pylist()
    assert len(text) == 1 and "Zebulon" not in text[0] and "Quarrington" not in text[0] and "77123" not in text[0]
    assert r1.conflicts == r2.conflicts == 1
    assert two.store.read("quarantine").column("code").to_pylist() == ["conflicting_duplicate"]
    _same_store(one, two)
    for name in ("Zebulon", "Quarrington", "MRN-77123"):
        assert name not in store_text(tmp_path / "two")


def test_rerun_and_incremental_ingest_with_workers(cohort, tmp_path):
    """Files already ingested are skipped; a second ingest links to patients of the first (aliases and
    scrub terms from the link folder reach the workers)."""
    first = cohort / "ndjson" / "fhir" / "Patient.ndjson"
    rest = [cohort / "ndjson"]
    one, _ = _ingest(tmp_path, "one", [first], 1)
    one.ingest(rest, workers=1)
    two, _ = _ingest(tmp_path, "two", [first], 2)
    rep = two.ingest(rest, workers=2)
    assert rep.files_already_ingested == 1
    _same_store(one, two)


def test_workers_argument_checked(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            eng.ingest([DATA / "fhir"], workers=bad)


# ---- large files: streamed and committed in parts (issue 17 item 8, issue 20) -------------------------

def _content(eng: Engine) -> dict:
    """Every table's rows sorted by record id, without the batch id (parts have their own)."""
    out = {}
    for name in list(S.DATA_TABLES) + ["quarantine", "ingested", "deleted"]:
        t = eng.store.read(name)
        if "batch_id" in t.column_names:
            t = t.drop_columns(["batch_id"])
        out[name] = sorted(t.to_pylist(), key=lambda r: r["record_id"])
    return out


def _big_ndjson(path, n: int) -> None:
    """One patient, ``n`` Observations, a few bad lines and a conflicting duplicate among them."""
    lines = [json.dumps({"resourceType": "Patient", "id": "p0", "gender": "female",
                         "name": [{"family": "Ostrowska"}]})]
    for i in range(n):
        lines.append(json.dumps({"resourceType": "Observation", "id": f"o{i}", "status": "final",
                                 "subject": {"reference": "Patient/p0"}, "effectiveDateTime": "2020-01-01",
                                 "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                                 "valueQuantity": {"value": 90 + i % 50, "unit": "mg/dL", "code": "mg/dL"}}))
        if i % 9 == 4:
            lines.append("{not json")
    lines.append(lines[3].replace('"value": 92', '"value": 1'))        # o2 again with other content
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def small_large_file(monkeypatch):
    """Every file counts as large, so a test file is committed in parts of a few records."""
    import raretarget.ingest.core as core

    monkeypatch.setattr(core, "LARGE_FILE", 0)


def test_large_file_committed_in_parts_gives_the_same_store(small_large_file, cohort, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _big_ndjson(src / "obs.ndjson", 60)
    paths = [src, cohort / "ndjson", DATA / "bad" / "fhir"]
    whole, r1 = _ingest(tmp_path, "whole", paths, 1, chunk_records=10**9)
    parts, r2 = _ingest(tmp_path, "parts", paths, 1, chunk_records=7)
    assert whole.store.manifest()["version"] == 1                    # one batch, one commit
    assert parts.store.manifest()["version"] > 10                    # rows not held to the end of the file
    assert r1.records == r2.records and r1.accepted == r2.accepted and r1.conflicts == r2.conflicts > 0
    assert r1.quarantined == r2.quarantined > 7
    assert _content(whole) == _content(parts)
    # per-file accounting still holds for the file committed in parts
    led = parts.store.read("ingested").to_pylist()
    assert max(r["records"] for r in led) > 60
    assert all(r["records"] == r["accepted"] + r["ignored"] + r["quarantined"] + r["conflicts"] for r in led)
    # two workers: large files are read (and committed in parts) by the committer, the store is the same
    two, r3 = _ingest(tmp_path, "two", paths, 2, chunk_records=7)
    _same_store(parts, two)


def test_killed_in_the_middle_of_a_large_file_rerun_gives_the_same_store(small_large_file, tmp_path):
    from raretarget import store as store_mod

    src = tmp_path / "in"
    src.mkdir()
    _big_ndjson(src / "obs.ndjson", 60)
    clean, _ = _ingest(tmp_path, "clean", [src], 1, chunk_records=7)
    eng = Engine.open(tmp_path / "killed", create=True)
    (eng.store.links / "secret.key").write_bytes(KEY)
    eng = Engine.open(tmp_path / "killed")
    orig, n = store_mod.Store.commit, {"commits": 0}

    def commit(self, *a, **k):
        n["commits"] += 1
        if n["commits"] == 4:                    # dies before its fourth part is written
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    store_mod.Store.commit = commit
    try:
        with pytest.raises(KeyboardInterrupt):
            eng.ingest([src], chunk_records=7)
    finally:
        store_mod.Store.commit = orig
    killed = Engine.open(tmp_path / "killed")
    assert 0 < killed.store.read("observations").num_rows < 60 and killed.store.read("ingested").num_rows == 0
    rep = killed.ingest([src], chunk_records=7)                     # re-run: reads the whole file again
    assert rep.duplicates > 0
    assert _content(killed) == _content(clean)                      # no row or quarantine entry twice


def test_large_bundles_streamed_give_the_same_store(small_large_file, cohort, tmp_path, monkeypatch):
    """Bundles read entry by entry (three passes, ijson) store what a whole-file read stores, deletes,
    Patients-first scrubbing, urn:uuid references, conflicts and bad entries included."""
    pytest.importorskip("ijson")
    import raretarget.ingest.fhir as fhir

    paths = [cohort / "bundles" / "fhir", DATA / "fhir" / "bundle_phi.json", DATA / "bad" / "fhir"]
    streamed, calls = [], {"n": 0}
    orig = fhir._read_bundle_streamed

    def spy(path, ctx):
        ok = orig(path, ctx)
        calls["n"] += ok
        return ok

    monkeypatch.setattr(fhir, "_read_bundle_streamed", spy)
    a, r1 = _ingest(tmp_path, "streamed", paths, 1, chunk_records=10**9)
    assert calls["n"] >= 25
    monkeypatch.setattr(fhir, "_read_bundle_streamed", lambda path, ctx: False)
    b, r2 = _ingest(tmp_path, "whole", paths, 1, chunk_records=10**9)
    assert r1.records == r2.records and r1.quarantined == r2.quarantined and r1.conflicts == r2.conflicts
    _same_store(a, b)


def test_dispatch_order_hands_heavy_tasks_out_first_within_a_segment():
    from raretarget.ingest.parallel import _dispatch_order

    # two segments (barrier 0: FHIR; barrier 2: DICOM/VCF after the FHIR group is merged)
    tasks = [(0, [0]), (0, [1]), (2, [2]), (2, [3]), (2, [4]), (2, [5])]
    assert _dispatch_order(tasks, [1, 1, 1, 1, 1, 1]) == [0, 1, 2, 3, 4, 5]
    # the long VCF last in input order goes out first, but never ahead of its segment's barrier
    assert _dispatch_order(tasks, [1, 1, 1, 1, 1, 100]) == [0, 1, 5, 2, 3, 4]
    assert _dispatch_order(tasks, [50, 1, 1, 1, 1, 1])[:2] == [0, 1]


def test_heavy_file_read_out_of_order_merges_into_the_same_store(cohort, tmp_path, monkeypatch):
    import raretarget.ingest.parallel as P

    orders = []
    real = P._dispatch_order

    def spy(tasks, cost):
        out = real(tasks, cost)
        orders.append((out, tasks))
        return out

    monkeypatch.setattr(P, "_dispatch_order", spy)
    monkeypatch.setattr(P, "HEAVY", 1.5)         # the tiny cohort's VCF counts as heavy
    paths = [cohort / "bundles"]
    one, _ = _ingest(tmp_path, "one", paths, 1)
    two, _ = _ingest(tmp_path, "two", paths, 2)
    order, tasks = next((o, t) for o, t in orders if o)
    assert order != sorted(order)                # something was handed out ahead of the input order
    _same_store(one, two)


def test_many_small_files_are_committed_in_parts_at_file_boundaries(cohort, tmp_path):
    """A batch of files each below the large-file size but with many rows together is committed in parts once
    it holds chunk_records rows (at a file boundary): the same rows as one commit, the same store with 2 workers."""
    paths = [cohort / "bundles"]
    ref, _ = _ingest(tmp_path, "ref", paths, 1)
    one, r1 = _ingest(tmp_path, "one", paths, 1, chunk_records=40)
    two, r2 = _ingest(tmp_path, "two", paths, 2, chunk_records=40)
    _same_store(one, two)
    for name in S.DATA_TABLES:
        assert one.store.read(name).equals(ref.store.read(name)), name
    parts = lambda e: sum(len(v) for v in e.store.manifest(refresh=True)["tables"].values())  # noqa: E731
    assert parts(one) > parts(ref)
    assert r1.records == r2.records and r1.batches == r2.batches


# ---- bounded memory (issue 20) -------------------------------------------------------------------------

@pytest.fixture
def two_hot_patients(monkeypatch):
    """The committer and the workers keep two patients' scrub terms in memory: the others are spilled."""
    import raretarget.store.phi as phi

    monkeypatch.setattr(phi, "HOT_MAX", 2)


def _names(cohort) -> list[str]:
    pats = [json.loads(x) for x in (cohort / "ndjson" / "fhir" / "Patient.ndjson").read_text().splitlines()]
    return [p["name"][0]["family"] for p in pats]


def test_scrub_terms_spilled_out_of_memory_give_the_same_store(cohort, tmp_path, monkeypatch):
    """NDJSON: every Patient in one file, the notes in another, one file a batch, so every note is scrubbed with
    terms from the committer's cache. With room for two patients' terms in memory (the rest in the unnamed
    temporary file of the link folder, read back when asked for), the notes are scrubbed exactly as before,
    with one worker and with two (whose snapshots hold two patients: the parent re-reads the files)."""
    import raretarget.store.phi as phi

    paths = [cohort / "ndjson"]
    ref, _ = _ingest(tmp_path, "ref", paths, 1, batch_files=1)
    notes = ref.store.read("notes").column("text").to_pylist()
    assert len(notes) == 12 and all("[PHI]" in n for n in notes)
    monkeypatch.setattr(phi, "HOT_MAX", 2)
    one, _ = _ingest(tmp_path, "one", paths, 1, batch_files=1)
    cache = one.ctx.writer.phi_cache
    assert cache.spilled >= 10 and len(cache._hot) <= 2
    _same_store(ref, one)
    two, _ = _ingest(tmp_path, "two", paths, 2, batch_files=1)
    _same_store(ref, two)
    text = store_text(tmp_path / "two")
    assert not any(name in text for name in _names(cohort))
    # the spill file never has a name in the link folder
    assert not [f for f in (tmp_path / "one.links").rglob("*") if f.name.startswith(".phi")]


def test_incremental_ingest_reads_spilled_terms_of_an_earlier_ingest(cohort, tmp_path, two_hot_patients, monkeypatch):
    """A second ingest scrubs its notes with the Patients' terms of the first, loaded from the link folder
    and mostly spilled (two in memory): the store of an unbounded run."""
    import raretarget.store.phi as phi

    first, rest = cohort / "ndjson" / "fhir" / "Patient.ndjson", [cohort / "ndjson"]
    small = {}
    for workers in (1, 2):
        eng, _ = _ingest(tmp_path, f"small{workers}", [first], 1)
        eng = Engine.open(tmp_path / f"small{workers}")              # a new writer: terms from the link folder
        eng.ingest(rest, workers=workers)
        small[workers] = eng
    assert small[1].ctx.writer.phi_cache.spilled >= 10
    monkeypatch.setattr(phi, "HOT_MAX", 10**6)
    ref, _ = _ingest(tmp_path, "ref", [first], 1)
    ref = Engine.open(tmp_path / "ref")
    ref.ingest(rest, workers=1)
    assert ref.ctx.writer.phi_cache.spilled == 0
    _same_store(ref, small[1])
    _same_store(ref, small[2])


def test_lookups_log_is_cut_once_every_worker_has_it(cohort, tmp_path, monkeypatch):
    """The parent's log of merged lookups (scrub terms, aliases, studies: every patient's) keeps only what a live
    worker has not been sent yet; the store is the one of one worker."""
    import raretarget.ingest.parallel as P

    monkeypatch.setattr(P, "LOG_TRIM_MIN", 1)
    seen = {"appended": 0, "left": None}
    real_apply, real_close = P.ParallelReader._apply, P.ParallelReader.close

    def apply(self, batch, res, *a):
        seen["appended"] += len(res["phi"]) + len(res["alias"]) + len(res["study"])
        return real_apply(self, batch, res, *a)

    def close(self):
        seen["left"] = len(self.log)
        return real_close(self)

    monkeypatch.setattr(P.ParallelReader, "_apply", apply)
    monkeypatch.setattr(P.ParallelReader, "close", close)
    paths = [cohort / "bundles", cohort / "ndjson"]
    one, _ = _ingest(tmp_path, "one", paths, 1)
    two, _ = _ingest(tmp_path, "two", paths, 2)
    assert seen["appended"] > 50 and seen["left"] < seen["appended"] // 2
    _same_store(one, two)


def test_identifier_and_study_lookups_are_held_as_digests(cohort, tmp_path, monkeypatch):
    """The committer's identifier → patient and study → patient maps hold 128-bit digests of the keys (~32 bytes an
    entry; a dict of str took 150-330), answer as before, and the workers are sent digests, not identifiers."""
    import pickle

    import raretarget.ingest.parallel as P

    sent = []
    real = P.ParallelReader._dispatch

    def dispatch(self):
        sent.extend((k, key) for k, key, _ in self.log if k in ("alias", "study"))
        return real(self)

    monkeypatch.setattr(P.ParallelReader, "_dispatch", dispatch)
    eng, _ = _ingest(tmp_path, "two", [cohort / "bundles"], 2)
    writer = eng.ctx.writer
    mrns = {}
    for f in (cohort / "bundles" / "fhir").glob("*.json"):
        for e in json.loads(f.read_text())["entry"]:
            r = e["resource"]
            if r["resourceType"] == "Patient":
                mrns.update({i["value"]: r["id"] for i in r.get("identifier") or []})
    assert len(mrns) >= 24
    assert all(writer.known_alias().get(m) == writer.pseudo.patient(pid) for m, pid in mrns.items())
    blob = pickle.dumps((writer.alias_cache, writer.study_cache))
    assert not any(m.encode() in blob for m in mrns)
    studies = eng.store.read("imaging_studies", ["study_uid", "patient_id"]).to_pylist()
    assert studies and all(writer.known_studies().get(s["study_uid"]) == s["patient_id"] for s in studies)
    assert {k for k, _ in sent} == {"alias", "study"}
    assert all(isinstance(key, bytes) and len(key) == 16 for _, key in sent)
