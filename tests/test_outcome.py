"""Outcome prediction from embeddings (raretarget.outcome)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raretarget.outcome import (auroc, choose_l2, evaluate_features, fit_logistic, predict_outcome,
                                stratified_hash_split)


def _brute_auroc(s, y):
    pos = [a for a, t in zip(s, y) if t]
    neg = [a for a, t in zip(s, y) if not t]
    tot = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return tot / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.random(n) < 0.4
    y[0], y[1] = True, False
    s = rng.integers(0, 6, size=n).astype(float) if seed % 2 else rng.normal(size=n)   # with / without ties
    assert auroc(s, y) == pytest.approx(_brute_auroc(s, y), abs=1e-12)


def test_auroc_edge_cases():
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert auroc([0, 1], [0, 1]) == 1.0
    assert auroc([1, 0], [0, 1]) == 0.0
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [1, 1])


def test_logistic_fits_and_l2_shrinks():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    weak, strong = fit_logistic(X, y, 1e-3), fit_logistic(X, y, 100.0)
    assert np.abs(weak[:-1]).sum() > 10 * np.abs(strong[:-1]).sum()
    assert np.argmax(np.abs(weak[:-1])) == 0
    l2, cv = choose_l2(X, y)
    assert set(cv) and cv[l2] > 0.9


def _synthetic(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    signal = rng.normal(size=(n, 24))
    signal[:, :3] += 2.5 * y[:, None]
    noise = rng.normal(size=(n, 24))
    test = rng.random(n) < 0.3
    return y, signal, noise, test


def test_separable_modality_vs_noise():
    noise_auc = []
    for seed in range(3):
        y, signal, noise, test = _synthetic(n=600, seed=seed)
        r = evaluate_features({"signal": signal, "noise": noise}, y, test, seed=0)
        assert r["signal"]["auroc"] > 0.9
        assert r["fused"]["auroc"] > 0.9
        assert r["signal"]["n_test_with_modality"] == test.sum() and r["signal"]["coverage"] == 1.0
        assert r["fused"]["modalities"] == ["signal", "noise"]
        noise_auc.append(r["noise"]["auroc"])
    assert abs(np.mean(noise_auc) - 0.5) < 0.1, noise_auc     # ~180 test patients each: sd ≈ 0.045


def test_missing_modality_is_evaluated_on_its_patients_only():
    y, signal, noise, test = _synthetic(seed=1)
    rng = np.random.default_rng(1)
    missing = rng.random(len(y)) < 0.25
    signal[missing] = np.nan
    r = evaluate_features({"signal": signal, "noise": noise, "patient": noise}, y, test, seed=0)
    assert r["signal"]["n_test_with_modality"] == int((test & ~missing).sum())
    assert r["signal"]["coverage"] == pytest.approx((test & ~missing).sum() / test.sum())
    assert r["signal"]["auroc"] > 0.9
    assert r["fused"]["n_test_with_modality"] == test.sum()       # zero-filled + missing indicator
    assert r["fused"]["auroc"] > 0.75
    assert "patient" not in r["fused"]["modalities"]


def test_one_class_in_a_modality_is_reported_not_raised():
    y, signal, noise, test = _synthetic(seed=2)
    only_neg = np.where(y[:, None] == 0, signal, np.nan)
    r = evaluate_features({"neg": only_neg, "noise": noise}, y, test)
    assert r["neg"]["auroc"] is None and "one class" in r["neg"]["note"]


def test_stratified_hash_split_is_deterministic_and_stratified():
    pids = [f"pt-{i:04x}" for i in range(100)]
    y = np.array([1] * 10 + [0] * 90)
    a, b = stratified_hash_split(pids, y, 0.3, 0), stratified_hash_split(pids, y, 0.3, 0)
    assert (a == b).all()
    assert a[y == 1].sum() == 3 and a[y == 0].sum() == 27
    assert not (stratified_hash_split(pids, y, 0.3, 1) == a).all()


# ---- end to end on a tiny trained store -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_store(cohort_store):
    eng = cohort_store(30, 0).eng
    eng.train(**{"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 16,
                 "model.knowledge.steps": 0})
    eng.embed()
    return eng


def _frequent_hpo(eng, n_patients):
    """A leaf HPO id of the conditions table that 30–70 % of the patients have (or the closest)."""
    t = eng.sql("select hpo_id, count(distinct patient_id) as n from conditions where hpo_id is not null "
                "group by 1 order by 2 desc, 1").to_pylist()
    return min(t, key=lambda r: abs(r["n"] / n_patients - 0.5))["hpo_id"]


def test_end_to_end_keys(tiny_store):
    eng = tiny_store
    n = eng.sql("select count(distinct patient_id) from patients").column(0)[0].as_py()
    target = _frequent_hpo(eng, n)
    r = predict_outcome(eng, target, seed=0)
    for k in ("target", "n_train", "n_test", "positives", "split", "results"):
        assert k in r
    assert r["target"] == target and r["n_train"] + r["n_test"] >= 10
    assert 0 < r["positives"] < r["n_train"] + r["n_test"]
    assert "fused" in r["results"] and "patient" in r["results"]
    assert set(r["results"]) - {"fused", "patient"} <= {"note", "image", "labs", "variants"}
    for m, res in r["results"].items():
        for k in ("auroc", "accuracy", "n_test_with_modality"):
            assert k in res, (m, k)
        assert res["auroc"] is None or 0.0 <= res["auroc"] <= 1.0
    # a positive for the term is positive for its ancestor too (descendants count)
    parents = eng.resources.phenotypes.terms[target].parents
    if parents:
        r2 = predict_outcome(eng, parents[0], seed=0)
        assert r2["positives"] >= r["positives"]


def test_end_to_end_targets_and_refusals(tiny_store):
    eng = tiny_store
    code = eng.sql("select code, count(distinct patient_id) n from conditions where code is not null "
                   "group by 1 order by 2 desc, 1 limit 1").to_pylist()[0]["code"]
    a = predict_outcome(eng, code, modalities=["labs"])
    b = predict_outcome(eng, f"SNOMED:{code}", modalities=["labs"])
    c = predict_outcome(eng, f"sql:code = '{code}'", modalities=["labs"])
    assert a["positives"] == b["positives"] == c["positives"] > 0
    assert set(a["results"]) == {"labs", "fused", "patient"}
    with pytest.raises(ValueError, match="both classes"):
        predict_outcome(eng, "sql:false")
    pids = eng.sql("select distinct patient_id from patients order by 1").column(0).to_pylist()
    with pytest.raises(ValueError, match="both classes"):
        predict_outcome(eng, "all", labels={p: 1 for p in pids})
    with pytest.raises(ValueError, match="labelled patient"):
        predict_outcome(eng, "few", labels={p: i % 2 for i, p in enumerate(pids[:6])})
    lab = {p: int(i % 3 == 0) for i, p in enumerate(pids)}
    r = predict_outcome(eng, "explicit", labels=lab)
    assert r["positives"] == sum(lab[p] for p in pids if p in lab) and r["target"] == "explicit"


def test_outcomes_render_in_the_report(tmp_path):
    from raretarget import Engine
    from raretarget.report import _outcomes

    res = {"target": "HP:0000822", "n_train": 40, "n_test": 10, "positives": 12,
           "results": {"labs": {"auroc": 0.875, "accuracy": 0.8}, "fused": {"auroc": 0.9, "accuracy": 0.9},
                       "image": {"auroc": None, "accuracy": None}}}
    html = _outcomes([res])
    assert "0.875 / 0.80" in html and "0.900 / 0.90" in html and "HP:0000822" in html
    eng = Engine.open(tmp_path / "s", create=True)
    page = eng.report(tmp_path / "r", outcomes=[res])
    assert "Outcome prediction" in page.read_text()
