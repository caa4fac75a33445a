"""Nightly incremental update: updates/deletes in the store, incremental re-embedding, crash safety."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from raretarget import Engine, cohort
from raretarget.index.generations import Generations, vectors_of
from raretarget.apps.nightly import STAGES

ROOT = Path(__file__).resolve().parents[1]
TINY = {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 16,
        "model.knowledge.steps": 0}


def _observations(cohort_dir: Path, n: int = 2) -> list[dict]:
    """The first ``n`` Observations of the first bundle, with a plain Patient/<id> subject."""
    d = json.loads(sorted((cohort_dir / "fhir").glob("*.json"))[0].read_text())
    pat = next(e["resource"] for e in d["entry"] if e["resource"]["resourceType"] == "Patient")
    obs = [e["resource"] for e in d["entry"] if e["resource"]["resourceType"] == "Observation"
           and "valueQuantity" in e["resource"]][:n]
    for o in obs:
        o["subject"] = {"reference": f"Patient/{pat['id']}"}
    return obs


def _make_night(base_cohort: Path, new_cohort: Path, out: Path) -> Path:
    """New patients + one updated Observation + one deleted Observation (Bulk Data deleted/ listing)."""
    shutil.copytree(new_cohort, out / "new")
    upd, gone = _observations(base_cohort)
    upd["valueQuantity"]["value"] = float(upd["valueQuantity"]["value"]) * 3 + 1
    (out / "updates.ndjson").write_text(json.dumps(upd) + "\n")
    (out / "deleted").mkdir()
    (out / "deleted" / "Observation.ndjson").write_text(json.dumps({"resourceType": "Observation", "id": gone["id"]}) + "\n")
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("nightly")
    cohort.generate(d / "a", n_patients=20, seed=11)
    cohort.generate(d / "b", n_patients=4, seed=12)
    night = _make_night(d / "a", d / "b", d / "night")
    eng = Engine.open(d / "s0", create=True)
    eng.ingest(d / "a")
    eng.train(**TINY)
    eng.embed()
    eng.build_index()
    return {"dir": d, "store": d / "s0", "night": night, "cohort": d / "a"}


def _clone(base, name: str) -> Path:
    dst = base["dir"] / name
    shutil.copytree(base["store"], dst)
    shutil.copytree(Path(str(base["store"]) + ".links"), Path(str(dst) + ".links"))
    return dst


def _state(path: Path) -> dict:
    """Everything a nightly run decides: live table rows, embeddings, index ids of the current generation."""
    eng = Engine.open(path)
    tables = {}
    for t in ("patients", "conditions", "observations", "notes", "images", "variants"):
        tables[t] = sorted(map(repr, eng.sql(f"select * from {t}").to_pylist()))
    gens = Generations(path)
    ver = eng.current_model()["model_version"]
    emb, ids = {}, {}
    for m in gens.embedding_counts(ver):
        e = gens.read_embeddings(ver, m).sort_by("record_id")
        emb[m] = (e.column("record_id").to_pylist(), vectors_of(e))
    for m, idx in gens.open(model_version=ver).items():
        ids[m] = sorted(idx.ids().tolist())
    return {"tables": tables, "emb": emb, "index": ids, "current": gens.current()["generation"]}


def _assert_consistent(st: dict) -> None:
    assert set(st["emb"]) == set(st["index"])
    for m, (rids, _) in st["emb"].items():
        assert len(rids) == len(set(rids)), f"duplicate embedding rows in {m}"
        assert sorted(rids) == st["index"][m], f"index ids != embedding ids in {m}"


def _assert_same(a: dict, b: dict) -> None:
    assert a["tables"] == b["tables"]
    assert a["index"] == b["index"] and a["current"] == b["current"]
    assert set(a["emb"]) == set(b["emb"])
    for m in a["emb"]:
        assert a["emb"][m][0] == b["emb"][m][0]
        np.testing.assert_allclose(a["emb"][m][1], b["emb"][m][1], atol=1e-4)


# ---- store: updates and deletes (no model) -------------------------------------------------------
def test_store_update_and_delete_round_trip(tmp_path):
    src = tmp_path / "a"
    cohort.generate(src, n_patients=3, seed=5)
    eng = Engine.open(tmp_path / "s", create=True)
    eng.ingest(src)
    n_obs = eng.store.count("observations")
    upd, gone = _observations(src)
    old_v = float(upd["valueQuantity"]["value"])
    upd["valueQuantity"]["value"] = old_v + 100.0
    (tmp_path / "u1.ndjson").write_text(json.dumps(upd) + "\n")
    rep = eng.ingest(tmp_path / "u1.ndjson")
    assert rep.updated == 1 and rep.duplicates == 0 and rep.deleted == 0
    assert eng.store.count("observations") == n_obs == eng.sql("select count(*) from observations").column(0)[0].as_py()
    assert eng.store.read("observations").num_rows == n_obs
    vals = eng.sql("select original_value from observations where original_value in (?, ?)", [old_v, old_v + 100.0])
    assert vals.column(0).to_pylist() == [old_v + 100.0]
    # the same content again (another file): a duplicate, not an update
    (tmp_path / "u2.ndjson").write_text(json.dumps(upd) + "\n\n")
    rep = eng.ingest(tmp_path / "u2.ndjson")
    assert rep.updated == 0 and rep.duplicates == 1 and sum(rep.accepted.values()) == 0
    # delete by a transaction Bundle entry
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "DELETE", "url": f"Observation/{gone['id']}"}},
                        {"request": {"method": "DELETE", "url": f"Observation/{upd['id']}"}}]}
    (tmp_path / "del.json").write_text(json.dumps(bundle))
    rep = eng.ingest(tmp_path / "del.json")
    assert rep.deleted == 2 and rep.quarantined == 0
    assert eng.store.count("observations") == n_obs - 2
    assert eng.sql("select count(*) from observations").column(0)[0].as_py() == n_obs - 2
    assert eng.store.read("observations", ["record_id"]).num_rows == n_obs - 2
    assert eng.status()["tables"]["observations"] == n_obs - 2
    # deleting again finds nothing; re-adding the resource brings it back as a new row
    (tmp_path / "del2.json").write_text(json.dumps({**bundle, "id": "again"}))
    assert eng.ingest(tmp_path / "del2.json").deleted == 0
    upd["valueQuantity"]["value"] = old_v + 7.0
    (tmp_path / "u3.ndjson").write_text(json.dumps(upd) + "\n")
    rep = eng.ingest(tmp_path / "u3.ndjson")
    assert rep.accepted["observations"] == 1 and rep.updated == 0
    assert eng.store.count("observations") == n_obs - 1


# ---- nightly -------------------------------------------------------------------------------------
def test_update_round_trip_and_run_log(base):
    path = _clone(base, "s_round")
    eng = Engine.open(path)
    before = eng.status()
    log = eng.update([base["night"]])
    assert log["ok"] and log["published"] and log["mode"] == "incremental"
    c = log["counts"]
    assert c["updated"] == 1 and c["deleted"] == 1 and c["patients_changed"] == 5
    assert log["generation_after"] == before["index"]["generation"] + 1 and log["recall_min"] >= 0.95
    st = eng.status()
    assert st["tables"]["patients"] == before["tables"]["patients"] + 4
    assert sum(st["tables"].values()) == sum(before["tables"].values()) + c["in"] - c["deleted"]
    assert st["embeddings"]["patient"] == 24 and st["index"]["count"] == sum(st["embeddings"].values())
    _assert_consistent(_state(path))
    new_pid = eng.sql("select patient_id from patients order by patient_id").column(0).to_pylist()
    hits = eng.search(patient=new_pid[0], k=5, modalities=["patient"])
    assert hits.num_rows == 5
    text = Path(log["log_path"]).read_text()
    assert "pt-" not in text and json.loads(text)["counts"]["updated"] == 1
    # nothing new: no new generation, still ok
    again = eng.update([base["night"]])
    assert again["ok"] and not again["published"] and again["mode"] == "unchanged"
    # the generation has no record of its batches (e.g. built by an older version): full rebuild
    cur = json.loads((path / "index" / "CURRENT").read_text())
    cur.pop("batches")
    (path / "index" / "CURRENT").write_text(json.dumps(cur))
    full = eng.update([])
    assert full["mode"] == "full" and full["published"]
    _assert_consistent(_state(path))


def test_night_leaves_untouched_modalities_alone(base):
    """A night that only adds lab Observations for one existing patient re-embeds that patient, but the gene
    table (model-only) is neither rewritten nor re-checked, and its index files are shared with the base."""
    path = _clone(base, "s_untouched")
    eng = Engine.open(path)
    ver = eng.current_model()["model_version"]
    gene_file = path / "embeddings" / ver / "gene.parquet"
    stamp = gene_file.stat().st_mtime_ns
    night = base["dir"] / "night_labs"
    night.mkdir(exist_ok=True)
    obs = _observations(base["cohort"], 1)[0]
    obs["id"] = "night-labs-obs-1"
    obs["valueQuantity"]["value"] = float(obs["valueQuantity"]["value"]) + 7
    (night / "obs.ndjson").write_text(json.dumps(obs) + "\n")
    log = eng.update([night])
    assert log["published"] and log["counts"]["patients_changed"] == 1
    assert "gene" not in log["recall_checked"] and "patient" in log["recall_checked"]
    assert set(log["recall"]) == set(log["recall_checked"])
    assert gene_file.stat().st_mtime_ns == stamp
    cur = json.loads((path / "index" / "CURRENT").read_text())
    old = path / "index" / f"gen-{cur['base_generation']:06d}" / "gene"
    new = path / "index" / f"gen-{cur['generation']:06d}" / "gene"
    assert all(os.path.samefile(f, new / f.name) for f in old.iterdir() if f.is_file())
    _assert_consistent(_state(path))


def test_recall_failure_does_not_publish_and_exits_nonzero(base):
    path = _clone(base, "s_fail")
    cur = (path / "index" / "CURRENT").read_text()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "nightly.py"), f"store={path}",
                        f"inputs=[{base['night']}]", "recall_threshold=1.01"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert (path / "index" / "CURRENT").read_text() == cur
    logs = sorted((path / "runs").glob("*.json"))
    assert len(logs) == 1 and "below threshold" in json.loads(logs[0].read_text())["failure"]
    assert not (path / "index" / f"gen-{json.loads(cur)['generation'] + 1:06d}").exists()


def test_killed_run_converges(base):
    ref = _clone(base, "s_ref")
    Engine.open(ref).update([base["night"]])
    want = _state(ref)
    _assert_consistent(want)
    # the run is killed with SIGKILL right after a stage, through nightly's after_stage callback (test-side only)
    code = ("import os, signal, sys; from raretarget import Engine; from raretarget.apps.nightly import update; "
            "kill = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == sys.argv[3] else None; "
            "update(Engine.open(sys.argv[1]), [sys.argv[2]], after_stage=kill, batch_files=4)")
    for stage in STAGES:
        path = _clone(base, f"s_kill_{stage}")
        r = subprocess.run([sys.executable, "-c", code, str(path), str(base["night"]), stage],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == -9, (stage, r.stderr[-2000:])
        log = Engine.open(path).update([base["night"]])
        assert log["ok"], (stage, log)
        got = _state(path)
        _assert_consistent(got)
        _assert_same(got, want)


def test_reader_never_sees_half_published_generation(base):
    path = _clone(base, "s_read")
    eng = Engine.open(path)
    old = Engine.open(path)
    pids = old.sql("select patient_id from patients order by 1").column(0).to_pylist()
    before = {p: old.search(patient=p, k=30, modalities=["patient"]) for p in pids}   # loads the current generation
    ver = old.current_model()["model_version"]

    def patient_vecs():
        t = Generations(path).read_embeddings(ver, "patient")
        return dict(zip(t.column("patient_id").to_pylist(), vectors_of(t)))

    vecs_before = patient_vecs()
    stop, seen, errors = threading.Event(), [], []

    def reader():
        gens = Generations(path)
        while not stop.is_set():
            try:
                info = gens.current()
                idx = gens.open(generation=info)
                assert {m: len(i) for m, i in idx.items()} == info["counts"]
                seen.append(info["generation"])
            except Exception as e:          # pragma: no cover - the failure being tested
                errors.append(repr(e))

    th = threading.Thread(target=reader)
    th.start()
    try:
        log = eng.update([base["night"]])
    finally:
        stop.set()
        th.join()
    assert log["published"] and not errors and seen
    # the reader that opened before keeps its consistent (old) view, also for a patient whose fused
    # vector the night changed (its query vector comes from the old view too)
    vecs_after = patient_vecs()
    changed = [p for p in pids if not np.array_equal(vecs_before[p], vecs_after[p])]
    assert changed
    for p in pids:
        after = old.search(patient=p, k=30, modalities=["patient"])
        assert after.column("record_id").to_pylist() == before[p].column("record_id").to_pylist(), p
        assert after.column("score").to_pylist() == before[p].column("score").to_pylist(), p
    assert eng.status()["index"]["generation"] == log["generation_after"]


def test_sharded_embedding_equals_one_process(base):
    """embed(workers=2) (two spawned processes over hash shards, then a merge) writes the same rows as one
    process; a merge refuses a missing shard or shards of different store states."""
    path = _clone(base, "shards")
    eng = Engine.open(path)
    ver = eng.current_model()["model_version"]
    gens = Generations(path)
    one = {m: gens.read_embeddings(ver, m).sort_by("record_id") for m in gens.embedding_counts(ver)}
    counts = eng.embed(workers=2)
    assert counts == {m: t.num_rows for m, t in one.items()}
    for m, t in one.items():
        two = gens.read_embeddings(ver, m).sort_by("record_id")
        assert two.column("record_id").to_pylist() == t.column("record_id").to_pylist()
        assert two.column("patient_id").to_pylist() == t.column("patient_id").to_pylist()
        np.testing.assert_allclose(vectors_of(two), vectors_of(t), atol=1e-5)
    assert not (gens.emb_dir / ver / "_shards").exists()            # parts removed after the merge
    from raretarget.encoders.data import shard_of, store_patients

    pids = store_patients(eng)
    assert {shard_of(p, 2) for p in pids} == {0, 1}                  # both shards had patients
    eng.embed_shard(0, 2)
    with pytest.raises(RuntimeError, match="shard 1 of 2 is missing"):
        eng.merge_shards(2)
    eng.ingest(base["night"] / "new")                               # store changes between the shards
    eng.embed_shard(1, 2)
    with pytest.raises(RuntimeError, match="different store states"):
        eng.merge_shards(2)
    with pytest.raises(ValueError):
        eng.embed_shard(2, 2)


def test_cli_embed_split_over_machines(base, capsys):
    """The several-machines workflow: each shard run separately, then a merge and a new index generation."""
    from raretarget.cli import main

    path = _clone(base, "cli_shards")
    before = Engine.open(path).status()
    for i in range(3):
        assert main(["embed", str(path), "--shard", str(i), "--shards", "3"]) == 0
    assert main(["embed", str(path), "--merge", "3", "--index"]) == 0
    out = capsys.readouterr().out
    assert "merged 3 shards" in out and "index generation" in out
    after = Engine.open(path).status()
    assert after["embeddings"] == before["embeddings"]
    assert after["index"]["generation"] == before["index"]["generation"] + 1
    assert main(["embed", str(path), "--merge", "3"]) == 2                  # parts are gone: clear error
    assert "missing" in capsys.readouterr().err


# ---- delta nights (issue 20): delta embedding files + a base + delta index -------------------------------
NO_COMPACT = {"compact_fraction": 1.0, "compact_every": 99}


def _labs_night(base, name: str, obs_id: str, n: int) -> Path:
    """A night with one new lab Observation of the first patient: the latest of that lab (a later date each
    night, so which value the labs encoder takes does not depend on ties) with another value."""
    night = base["dir"] / name
    night.mkdir(exist_ok=True)
    obs = _observations(base["cohort"], 1)[0]
    obs["id"] = obs_id
    obs["valueQuantity"]["value"] = float(obs["valueQuantity"]["value"]) + 11 * n
    obs["effectiveDateTime"] = f"2031-01-{n:02d}T00:00:00Z"
    (night / "obs.ndjson").write_text(json.dumps(obs) + "\n")
    return night


def _exact_search_matches(path: Path) -> None:
    """Every indexed modality: the published index's search == exact search over the logical table."""
    eng = Engine.open(path)
    ver = eng.current_model()["model_version"]
    gens = Generations(path)
    rng = np.random.default_rng(0)
    for m, idx in gens.open(model_version=ver).items():
        t = gens.read_embeddings(ver, m)
        ids, vecs = t.column("record_id").to_numpy(), vectors_of(t)
        q = vecs[rng.choice(len(ids), min(20, len(ids)), replace=False)]
        k = min(10, len(ids))
        s, i = idx.search(q, k)
        ex = q @ vecs.T
        np.testing.assert_allclose(s, -np.sort(-ex, axis=1)[:, :k], atol=1e-4)
        for qi in range(len(q)):          # ids: equal up to ties at the k-th score
            assert set(i[qi].tolist()) == set(ids[np.argsort(-ex[qi], kind="stable")[:k]].tolist()) or \
                np.isclose(s[qi, -1], s[qi, -2], atol=1e-6), (m, qi)


def test_delta_night_equals_rewrite_night(base):
    """A delta night (only delta files beside the base, a base + delta index) gives the same logical store,
    index ids and search results as a night that rewrites whole files; later nights accumulate deltas, and a
    compaction folds them into new base files and a plain index with the same contents."""
    delta, full = _clone(base, "s_delta"), _clone(base, "s_rewrite")
    ver = Engine.open(delta).current_model()["model_version"]
    vdir = delta / "embeddings" / ver
    stamps = {f.name: f.stat().st_mtime_ns for f in vdir.glob("*.parquet")}
    night2 = _labs_night(base, "night_delta2", "night-delta-obs-2", 2)
    logs = []
    for night in (base["night"], night2):
        logs.append(Engine.open(delta).update([night], **NO_COMPACT))
        ref = Engine.open(full).update([night], delta=False)
        assert logs[-1]["published"] and ref["published"] and logs[-1]["recall_min"] >= 0.95
        _assert_same(_state(delta), _state(full))
        _exact_search_matches(delta)
    # nothing rewritten: the base embedding files are the ones the full embed wrote
    assert {f.name: f.stat().st_mtime_ns for f in vdir.glob("*.parquet")} == stamps
    man = json.loads((vdir / "_delta" / "DELTAS.json").read_text())
    assert [d["seq"] for d in man["deltas"]] == [1, 2] and "patient" in man["deltas"][1]["modalities"]
    cur = Generations(delta).current()
    assert cur["delta"]["patient"]["nights"] == 2 and not cur["compacted"] and "gene" not in cur["delta"]
    assert logs[0]["embeddings_delta"]["patient"]["upserts"] == logs[0]["counts"]["patients_changed"]
    # the patient whose labs changed is found by its new vector
    eng = Engine.open(delta)
    pid = eng.sql("select patient_id from patients order by 1 limit 1").column(0)[0].as_py()
    assert eng.search(patient=pid, k=5, modalities=["patient"]).num_rows == 5
    # a night without deltas (delta=False) on a store in the delta state folds them and rewrites whole files
    night3 = _labs_night(base, "night_delta3", "night-delta-obs-3", 3)
    for p in (delta, full):
        assert Engine.open(p).update([night3], delta=False)["published"]
    _assert_same(_state(delta), _state(full))
    cur = Generations(delta).current()
    assert "delta" not in cur and (vdir / "patient.parquet").stat().st_mtime_ns != stamps["patient.parquet"]
    # a night under a schedule that compacts: new base files, no live deltas, a plain index
    night4 = _labs_night(base, "night_delta4", "night-delta-obs-4", 4)
    stamp = (vdir / "patient.parquet").stat().st_mtime_ns
    log = Engine.open(delta).update([night4], compact_every=1)
    Engine.open(full).update([night4], delta=False)
    assert log["published"] and "patient" in log["embeddings_compacted"]
    cur = Generations(delta).current()
    assert "patient" in cur["compacted"] and "patient" not in cur["delta"]
    from raretarget.index import embedding_delta as ED

    assert ED.live(vdir, "patient") == [] and (vdir / "patient.parquet").stat().st_mtime_ns != stamp
    _assert_same(_state(delta), _state(full))
    _exact_search_matches(delta)


@pytest.mark.parametrize("stage", ["embed", "index"])
def test_killed_delta_night_converges(base, stage):
    """SIGKILL after the delta files are committed (or after the base + delta generation is written): the
    re-run drops the unpublished attempt's deltas and ends with the same store as an uninterrupted night."""
    ref = _clone(base, f"s_dref_{stage}")
    Engine.open(ref).update([base["night"]], **NO_COMPACT)
    want = _state(ref)
    path = _clone(base, f"s_dkill_{stage}")
    code = ("import os, signal, sys; from raretarget import Engine; from raretarget.apps.nightly import update; "
            "kill = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == sys.argv[3] else None; "
            "update(Engine.open(sys.argv[1]), [sys.argv[2]], after_stage=kill, compact_fraction=1.0, compact_every=99)")
    r = subprocess.run([sys.executable, "-c", code, str(path), str(base["night"]), stage],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    log = Engine.open(path).update([base["night"]], **NO_COMPACT)
    assert log["ok"] and log["published"], log
    got = _state(path)
    _assert_consistent(got)
    _assert_same(got, want)
    ver = Engine.open(path).current_model()["model_version"]
    man = json.loads((path / "embeddings" / ver / "_delta" / "DELTAS.json").read_text())
    assert len(man["deltas"]) == 1                      # the killed attempt's delta was dropped, not stacked
    names = {f.name for f in (path / "embeddings" / ver / "_delta").iterdir()}
    assert names == {f.name for f in (ref / "embeddings" / ver / "_delta").iterdir()}


def test_watch_worker_loads_the_model_once_and_equals_separate_nights(base, monkeypatch):
    """A long-lived worker (``Engine.watch``) runs night after night on one drop folder: it loads the model once
    (not each night), a failed run does not stop it, and the store it leaves equals two separate ``update``s."""
    import raretarget.apps.nightly as nightly
    import raretarget.encoders.training as training

    nights = [_labs_night(base, f"night_w{n}", f"night-watch-obs-{n}", n) for n in (1, 2)]
    sep = _clone(base, "s_watch_sep")
    eng_sep = Engine.open(sep)
    for night in nights:
        assert eng_sep.update([night])["published"]

    path = _clone(base, "s_watch")
    drop = base["dir"] / "drop_w"
    drop.mkdir()
    shutil.copy(nights[0] / "obs.ndjson", drop / "night1.ndjson")
    loads = []
    real_load = training.load_model
    monkeypatch.setattr(training, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    real_update, calls = nightly.update, []

    def flaky_update(eng, paths, **cfg):          # the second run fails once: the worker must go on
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk hiccup")
        return real_update(eng, paths, **cfg)

    monkeypatch.setattr(nightly, "update", flaky_update)

    def sleep(seconds):                           # between runs: the next night's file lands in the drop folder
        assert 0 <= seconds <= 5
        if len(calls) == 2:
            shutil.copy(nights[1] / "obs.ndjson", drop / "night2.ndjson")

    eng = Engine.open(path)
    logs = list(nightly.watch(eng, [drop], every=5, runs=3, sleep=sleep, device="cpu"))
    assert [x["published"] for x in logs] == [True, False, True]
    assert logs[1] == {"ok": False, "published": False, "error": "OSError: disk hiccup"}
    assert logs[0]["counts"]["files"] == 1 and logs[2]["counts"]["files_already_ingested"] == 1
    assert len(loads) == 1, "the worker reloaded the model"
    # the searcher opened after the nights lends the worker's model too ("auto" is the CPU here)
    assert eng.searcher().model is eng.loaded_model("cpu") and len(loads) == 1
    _assert_same(_state(path), _state(sep))


def test_hydra_nightly_every_runs_as_a_worker(base):
    path = _clone(base, "s_watch_hydra")
    night = _labs_night(base, "night_w_hydra", "night-watch-hydra-obs", 4)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "nightly.py"), f"store={path}", f"inputs=[{night}]",
                        "every=0", "runs=2", "device=cpu"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    modes = [json.loads(m.group(0))["mode"] for m in re.finditer(r"(?ms)^\{$.*?^\}$", r.stdout)]
    assert modes == ["incremental", "unchanged"]
    assert len(list((path / "runs").glob("*.json"))) == 2


def test_cli_update_every_runs_as_a_worker(base, capsys):
    from raretarget.cli import main

    path = _clone(base, "s_watch_cli")
    night = _labs_night(base, "night_w_cli", "night-watch-cli-obs", 3)
    assert main(["update", str(path), str(night), "--every", "0", "--runs", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("published: True") == 1 and out.count("mode unchanged") == 1
    assert main(["update", str(path), "--runs", "2"]) == 2
