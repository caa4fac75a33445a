"""End to end through the public API: ingest → train → embed → build_index → search (all query forms)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json

import numpy as np
import pyarrow as pa
import pytest

from raretarget import Engine
from raretarget.synth.cohort import read_truth
from raretarget.index import IndexMismatchError
from raretarget.index.generations import vectors_of
from conftest import DATA, store_text

pytestmark = pytest.mark.slow
TINY = {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 2, "batch_size": 16,
        "encoders.image.arch": "small", "model.knowledge.steps": 0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from raretarget.cohort import generate

    tmp = tmp_path_factory.mktemp("pipe")
    generate(tmp / "cohort", n_patients=24, seed=11)
    eng = Engine.open(tmp / "store", create=True)
    eng.ingest([tmp / "cohort" / "fhir", tmp / "cohort" / "dicom", tmp / "cohort" / "vcf"])
    summary = eng.train(**TINY)
    counts = eng.embed()
    info = eng.build_index()
    return eng, tmp, summary, counts, info


def test_status_counts_match(world):
    eng, tmp, summary, counts, info = world
    st = eng.status()
    assert st["model"] == summary["model_version"] == info["model_version"]
    assert st["embeddings"] == counts == info["counts"]
    assert st["index"]["count"] == sum(counts.values())
    assert counts["patient"] == st["tables"]["patients"] and counts["image"] == st["tables"]["images"]
    assert (tmp / "store" / "models" / summary["model_version"] / "model.safetensors").exists()


def test_embeddings_normalised_fixed_size(world):
    eng, *_ = world
    g = eng._generations()
    for m in ("note", "image", "labs", "patient", "gene"):
        t = g.read_embeddings(eng.status()["model"], m)
        assert t.schema.field("vector").type == pa.list_(pa.float32(), 32)
        v = vectors_of(t)
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
        assert t.column("record_id").null_count == 0 and len(set(t.column("record_id").to_pylist())) == t.num_rows


def _check(hits, k, modalities=None):
    assert hits.column_names == ["rank", "score", "modality", "record_id", "patient_id", "gene", "source_ref"]
    assert 0 < hits.num_rows <= k
    assert hits.column("rank").to_pylist() == list(range(1, hits.num_rows + 1))
    s = hits.column("score").to_numpy()
    assert (np.diff(s) <= 1e-6).all() and (s <= 1.0001).all() and (s >= -1.0001).all()
    if modalities:
        assert set(hits.column("modality").to_pylist()) <= set(modalities)


def test_text_and_hpo_queries(world):
    eng, *_ = world
    hits = eng.search("progressive proximal weakness with raised creatine kinase", k=10)
    _check(hits, 10)
    g = eng.search(phenotypes=["HP:0003198", "HP:0003236"], k=7, modalities=["gene"])
    _check(g, 7, ["gene"])
    assert g.column("gene").null_count == 0 and all(r.startswith("gene:") for r in g.column("source_ref").to_pylist())
    notes = eng.search(phenotypes=["HP:0001250"], excluded=["HP:0001252"], k=5, modalities=["note", "patient"])
    _check(notes, 5, ["note", "patient"])
    assert notes.column("patient_id").null_count == 0
    with pytest.raises(ValueError, match="exactly one"):
        eng.search("x", phenotypes=["HP:0001250"])
    with pytest.raises(ValueError, match="unknown HPO"):
        eng.search(phenotypes=["HP:9999999"])
    # the one query rule (raretarget.query.spec): an unknown id next to known ones is dropped and noted
    mixed = eng.search(phenotypes=["HP:0001250", "HP:9999999"], k=3)
    assert mixed.num_rows == 3
    assert json.loads(mixed.schema.metadata[b"query_notes"]) == {"HP:9999999": "unknown HPO id, skipped"}


def test_phenopacket_query_equals_its_terms(world):
    eng, *_ = world
    from raretarget.prioritize import parse_phenopacket

    pp = DATA / "phenopackets" / "marfan_like.json"
    a = eng.search(phenopacket=pp, k=5, modalities=["gene"])
    parsed = parse_phenopacket(pp)
    known = eng.resources.phenotypes.current
    obs = [t for t in parsed.observed if known(t)]
    exc = [t for t in parsed.excluded if known(t)]
    assert "HP:9999999" in parsed.observed and "HP:9999999" not in obs   # fixture's bad id is skipped
    b = eng.search(phenotypes=obs, excluded=exc, k=5, modalities=["gene"])
    assert a.column("gene").to_pylist() == b.column("gene").to_pylist()


def test_patient_query_with_filter_excludes_self(world):
    eng, *_ = world
    pid = eng.sql("select patient_id from patients order by patient_id limit 1").column(0)[0].as_py()
    hits = eng.search(patient=pid, k=5, modalities=["patient", "labs"], where="sex = 'female'")
    _check(hits, 5, ["patient", "labs"])
    females = set(eng.sql("select patient_id from patients where sex='female'").column(0).to_pylist())
    assert pid not in hits.column("patient_id").to_pylist()
    assert set(hits.column("patient_id").to_pylist()) <= females
    with pytest.raises(ValueError, match="unknown patient"):
        eng.search(patient="pt-0000000000000000")


def test_image_query_finds_its_own_image(world):
    eng, tmp, *_ = world
    dcm = sorted((tmp / "cohort" / "dicom").rglob("*.dcm"))[0]
    hits = eng.search(image=dcm, k=3, modalities=["image"])
    _check(hits, 3, ["image"])
    assert hits.column("score")[0].as_py() > 0.999        # the identical pixels are in the index


def test_approximate_index_agrees_with_exact(world):
    eng, *_ = world
    exact = eng.search("seizures and hypotonia", k=10, modalities=["gene"])
    eng.build_index(factory="HNSW32,Flat")
    approx = eng.search("seizures and hypotonia", k=10, modalities=["gene"])
    overlap = len(set(exact.column("gene").to_pylist()) & set(approx.column("gene").to_pylist()))
    assert overlap >= 9
    eng.build_index()


def test_retrained_model_refuses_stale_index_and_no_phi(world):
    eng, tmp, summary, *_ = world
    text = store_text(tmp / "store" / "embeddings") + store_text(tmp / "store" / "index")
    truth = read_truth(tmp / "cohort")
    for p in truth["patients"][:10]:
        assert p["patient"] not in text
    other = eng.train(**{**TINY, "seed": 5, "max_epochs": 1})
    assert other["model_version"] != summary["model_version"]
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        eng.search("seizures", k=3)
    eng.embed()
    eng.build_index()
    _check(eng.search("seizures", k=3), 3)
