"""Ray as the engine past one machine (issue 20): ``ingest(..., ray=True)`` and ``embed(ray=True)`` on a local
``ray.init(num_cpus=2)`` write what the single-process path writes (one committer in the driver).

Skipped when Ray is not installed (``pip install 'raretarget[distributed]'``). On 2 cores the jobs run one
actor each (a pool of 2 takes both CPUs and starves Ray Data's own tasks).
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

from raretarget import Engine
from conftest import DATA
from test_ingest_parallel import KEY, _same_store


TINY = {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 16,
        "model.knowledge.steps": 0}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'raretarget[distributed]'")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from raretarget.cohort import generate

    out = tmp_path_factory.mktemp("cohort")
    generate(out / "bundles", n_patients=16, seed=3, image_size=16)
    generate(out / "ndjson", n_patients=8, seed=4, fmt="ndjson", imaging_fraction=0.0)
    return out


def _fresh(tmp_path, name):
    eng = Engine.open(tmp_path / name, create=True)
    (eng.store.links / "secret.key").write_bytes(KEY)        # one key: pseudonyms comparable across stores
    return Engine.open(tmp_path / name)


@pytest.mark.slow
def test_ray_ingest_and_embed_equal_one_process(local_ray, cohort, tmp_path):
    from raretarget.index.generations import Generations, vectors_of

    paths = [cohort / "bundles", cohort / "ndjson", DATA / "bad" / "fhir"]
    one = _fresh(tmp_path, "one")
    r1 = one.ingest(paths, batch_files=7)
    two = _fresh(tmp_path, "two")
    r2 = two.ingest(paths, batch_files=7, ray=True)
    assert r1.batches == r2.batches > 3
    assert r1.records == r2.records and r1.accepted == r2.accepted and r1.quarantined == r2.quarantined > 0
    assert [str(q) for q in r1.quarantine] == [str(q) for q in r2.quarantine]
    assert two.store.read("images").num_rows > 0 and two.store.read("variants").num_rows > 0
    _same_store(one, two)            # every table row by row, and the link folder's records
    from raretarget import distributed

    st = distributed.last_ingest       # the files were read in Ray actors (not all re-read in the driver)
    assert st["jobs"] >= 2 and st["files_from_ray"] > st["fallbacks"] and st["files_from_ray"] >= r2.files // 2
    # a re-run (e.g. after a killed job) skips every file and leaves the store as it is
    again = two.ingest(paths, batch_files=7, ray=True)
    assert again.files == 0 and again.files_already_ingested == r2.files
    _same_store(one, two)

    # embedding over patient partitions: the same rows as Engine.embed() in this process
    one.train(**TINY)
    one.embed()
    ver = one.current_model()["model_version"]
    shutil.copytree(one.store.root, tmp_path / "three")
    shutil.copytree(one.store.links, tmp_path / "three.links")
    gens1 = Generations(one.store.root)
    three = Engine.open(tmp_path / "three")
    gens3 = Generations(three.store.root)
    for m in gens3.embedding_counts(ver):
        (gens3.emb_dir / ver / f"{m}.parquet").unlink()
    from raretarget.cli import main

    assert main(["embed", str(three.store.root), "--ray", "--index"]) == 0      # the local Ray started above
    counts = gens3.embedding_counts(ver)
    expect = {m: gens1.read_embeddings(ver, m).sort_by("record_id") for m in gens1.embedding_counts(ver)}
    assert counts == {m: t.num_rows for m, t in expect.items()} and counts["patient"] >= 24
    for m, t in expect.items():
        got = gens3.read_embeddings(ver, m).sort_by("record_id")
        assert got.column("record_id").to_pylist() == t.column("record_id").to_pylist(), m
        assert got.column("patient_id").to_pylist() == t.column("patient_id").to_pylist(), m
        np.testing.assert_allclose(vectors_of(got), vectors_of(t), atol=1e-5)
    assert not (gens3.emb_dir / ver / "_shards").exists()         # partitions merged and removed
    assert Engine.open(three.store.root).status()["index"]["generation"] >= 1


def test_without_ray_the_error_names_the_extra(monkeypatch):
    from raretarget import distributed

    monkeypatch.setitem(sys.modules, "ray", None)               # import ray -> ImportError
    with pytest.raises(ImportError, match=r"raretarget\[distributed\]"):
        distributed.require_ray()


def test_cli_without_ray_names_the_extra(monkeypatch, tmp_path, capsys):
    from raretarget.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["ingest", str(tmp_path / "s"), str(DATA / "bad" / "fhir"), "--ray", "-q"]) == 2
    assert "raretarget[distributed]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()           # checked before the store is created
