"""Drift monitoring: per-modality metrics of a night's new vectors vs the store's, thresholds → ok/warn/alarm,
the run log, and the report's drift page with its history."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from raretarget import Engine, cohort
from raretarget.drift import history, modality_drift, status
from raretarget.report import write_report

TINY = {"encoders.text.backbone": "tiny", "model.embed_dim": 32, "max_epochs": 1, "batch_size": 16,
        "model.knowledge.steps": 0}


def _cloud(rng, n, center, spread=0.3):
    x = center + spread * rng.standard_normal((n, center.shape[0]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_metrics_separate_same_from_shifted_vectors():
    rng = np.random.default_rng(0)
    c = rng.standard_normal(32)
    c /= np.linalg.norm(c)
    old = _cloud(rng, 300, c)
    old_ids = np.arange(300)
    same = modality_drift(old_ids, old, np.arange(1000, 1030), _cloud(rng, 30, c), k=10, probes=50)
    far = rng.standard_normal(32)
    shifted = modality_drift(old_ids, old, np.arange(1000, 1030), _cloud(rng, 30, far / np.linalg.norm(far)),
                             k=10, probes=50)
    assert abs(same["centroid_drop"]) < 0.05 and abs(same["nn_drop"]) < 0.05
    assert shifted["centroid_drop"] > 0.3 and shifted["nn_drop"] > 0.1
    assert status({"note": same}) == "ok" and status({"note": same, "image": shifted}) == "alarm"
    assert status({"note": {"centroid_drop": 0.07, "nn_drop": 0.0, "topk_changed": 0.1}}) == "warn"
    # re-embedding the same records unchanged: nothing moves, no probe's top-k changes
    idem = modality_drift(old_ids, old, old_ids[:40], old[:40], k=10, probes=50)
    assert idem["topk_changed"] == 0.0 and abs(idem["centroid_drop"]) < 0.02
    assert modality_drift(old_ids[:2], old[:2], old_ids[:1], old[:1]) is None     # too little to compare


def test_drift_reads_only_its_reference_sample_and_gives_the_same_figures():
    """A night at scale: ``table_drift`` with ``read_vectors`` asks for the vectors of at most ``max_reference``
    sampled ids and gives exactly the figures of the whole-table call."""
    import pyarrow as pa

    from raretarget.apps.drift import table_drift

    rng = np.random.default_rng(1)
    c = rng.standard_normal(16)
    ids = rng.permutation(5000)[:700].astype(np.int64) + 10

    def table(rid, vec):
        return pa.table({"record_id": pa.array(rid, pa.int64()),
                         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.astype(np.float32).ravel()), 16)})

    old = table(ids, _cloud(rng, 700, c))
    new = table(ids[:20], _cloud(rng, 20, c))
    cfg = {"max_reference": 200, "probes": 30}
    whole = table_drift(old, new, k=5, seed=3, cfg=cfg)
    asked = []

    def read_vectors(want):
        asked.append(len(want))
        hit = np.isin(old.column("record_id").to_numpy(), want)
        return old.filter(pa.array(hit)).take(pa.array(np.argsort(-np.flatnonzero(hit))))   # any order

    lazy = table_drift(old.select(["record_id"]), new, k=5, seed=3, cfg=cfg, read_vectors=read_vectors)
    assert lazy == whole and "error" not in whole and asked == [200]


@pytest.fixture(scope="module")
def nightly_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("drift")
    cohort.generate(d / "a", n_patients=16, seed=11)
    cohort.generate(d / "b", n_patients=4, seed=12)
    eng = Engine.open(d / "s", create=True)
    eng.ingest(d / "a")
    eng.train(**TINY)
    eng.embed()
    eng.build_index()
    return d, eng


def test_nightly_run_logs_drift_and_report_draws_history(nightly_store, tmp_path, capsys):
    d, eng = nightly_store
    log = eng.update([d / "b"], drift={"centroid_drop": {"warn": -9.0, "alarm": -8.0}})   # thresholds from config
    assert log["ok"] and log["mode"] == "incremental"
    assert log["drift"] == "alarm"                         # any value crosses a threshold of -8
    m = log["drift_metrics"]
    assert {"patient", "note"} <= set(m) and m["patient"]["n_new"] == 4 and m["patient"]["n_store"] == 16
    for x in ("centroid_drop", "nn_drop", "topk_changed"):
        assert np.isfinite(m["patient"][x])
    assert 0.0 <= m["patient"]["topk_changed"] <= 1.0
    saved = json.loads(Path(log["log_path"]).read_text())
    assert saved["drift"] == "alarm" and saved["drift_metrics"]["patient"] == m["patient"]
    again = eng.update([d / "b"])                          # nothing new: ok, and a point in the history
    assert again["mode"] == "unchanged" and again["drift"] == "ok"
    hist = history(eng.store.root)
    assert [h["drift"] for h in hist] == ["alarm", "ok"]
    index = write_report(eng, tmp_path / "r", max_patients=1)
    page = (tmp_path / "r" / "drift.html").read_text()
    assert "drift.html" in index.read_text()
    assert 'id="drift-status" class="drift-ok">drift: ok<' in page and "alarm" in page
    svgs = page.split("<svg")[1:]
    assert len(svgs) == 3
    for s in svgs:
        ET.fromstring("<svg" + s.split("</svg>")[0] + "</svg>")
    assert "patient" in page and "NaN" not in page and "nan" not in page.split()
    from raretarget.cli import main

    capsys.readouterr()
    assert main(["drift", str(eng.store.root)]) == 0
    out = capsys.readouterr().out
    assert "drift: alarm" in out and "drift: ok" in out and "2 run(s)" in out
