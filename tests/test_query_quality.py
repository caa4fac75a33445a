"""Query quality on the generated cohort, measured as recall@k over every disease (not one example)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raretarget import Engine
from raretarget.synth.cohort import read_truth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from raretarget.cohort import generate

    tmp = tmp_path_factory.mktemp("quality")
    generate(tmp / "c", n_patients=60, seed=21)
    eng = Engine.open(tmp / "s", create=True)
    eng.ingest([tmp / "c" / "fhir", tmp / "c" / "dicom", tmp / "c" / "vcf"])
    # MiniLM text tower (shipped weights, frozen); gene alignment phase off: genes are ranked by rank_targets here
    eng.train(max_epochs=2, eval_untrained=False, **{"model.knowledge.steps": 0})
    eng.embed()
    eng.build_index()
    truth = read_truth(tmp / "c")
    disease_of = {eng.pseudo.patient(p["patient"]): p["disease_id"] for p in truth["patients"]}
    diseases = [d for d in truth["diseases"] if sum(v == d["disease_id"] for v in disease_of.values()) >= 2]
    return eng, disease_of, diseases


def test_phenotype_query_finds_the_disease_patients(world):
    eng, disease_of, diseases = world
    k = 5
    recalls, base = [], []
    for d in diseases:
        n = sum(v == d["disease_id"] for v in disease_of.values())
        hits = eng.search(phenotypes=d["hpo"][:8], k=k, modalities=["note"])
        got = [disease_of.get(p) == d["disease_id"] for p in hits.column("patient_id").to_pylist()]
        recalls.append(sum(got) / min(k, n))
        base.append(n / len(disease_of))
    # mean recall@5 of same-disease patients, against what random ranking gives (the disease's share)
    assert np.mean(recalls) > 5 * np.mean(base) and np.mean(recalls) > 0.4


def test_phenotype_query_ranks_the_causal_gene_near_the_top(world):
    eng, _, diseases = world
    ranks = []
    for d in diseases:
        t = eng.rank_targets(phenotypes=d["hpo"][:8], k=10)
        genes = t.column("gene").to_pylist()
        ranks.append(genes.index(d["genes"][0]) + 1 if d["genes"][0] in genes else 99)
    recall_at_3 = np.mean([r <= 3 for r in ranks])
    assert recall_at_3 >= 0.8, ranks
