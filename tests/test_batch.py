"""Batch ranking: YAML/JSONL/CSV hypotheses, one table each, bad hypotheses skipped with a reason."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from raretarget import Engine
from raretarget.prioritize.batch import load_hypotheses, run_batch
from conftest import DATA, ROOT


def test_batch_from_each_format(tmp_path):
    eng = Engine.open(tmp_path / "s", create=True)          # no patients: knowledge evidence only
    pp = DATA / "phenopackets" / "marfan_like.json"
    (tmp_path / "h.yaml").write_text(
        "- id: seizures\n  phenotypes: [HP:0001250, HP:0001263]\n  k: 5\n"
        f"- id: marfan\n  phenopacket: {pp}\n"
        "- id: bad-term\n  phenotypes: [HP:9999999]\n"
        "- id: empty\n")
    (tmp_path / "h.jsonl").write_text(json.dumps({"id": "j1", "phenotypes": ["HP:0001250"]}) + "\n{broken\n")
    (tmp_path / "h.csv").write_text("id,phenotypes\nc1,HP:0001250;HP:0001263\n")
    hyps = load_hypotheses(tmp_path / "h.yaml") + load_hypotheses(tmp_path / "h.jsonl") + \
        load_hypotheses(tmp_path / "h.csv")
    s = run_batch(eng, hyps, tmp_path / "out", k=10, progress=False)
    status = {h["id"]: h for h in s["hypotheses"]}
    assert s["ok"] == 4 and s["skipped"] == 3
    assert status["bad-term"]["status"] == "skipped" and "give a query" in status["bad-term"]["reason"]
    assert "no query" in status["empty"]["reason"] and "malformed JSON" in status["line2"]["reason"]
    t = pq.read_table(tmp_path / "out" / "seizures.parquet")
    assert t.num_rows == 5 and (tmp_path / "out" / "seizures.csv").exists()
    marfan = pq.read_table(tmp_path / "out" / "marfan.parquet").to_pylist()
    # the phenopacket's terms were used: FBN1 matches best; druggability may put a near-identical, druggable
    # Marfan-like gene (TGFBR1, Loeys-Dietz) ahead of it in the total
    assert max(marfan, key=lambda r: r["phenotype_ic"])["gene"] == "FBN1"
    assert "FBN1" in [r["gene"] for r in marfan[:3]]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["ok"] == 4


def test_hydra_script(tmp_path):
    Engine.open(tmp_path / "s", create=True)
    (tmp_path / "h.csv").write_text("id,phenotypes\nc1,HP:0001250;HP:0001263\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "rank_candidates.py"), f"store={tmp_path / 's'}",
                        f"hypotheses={tmp_path / 'h.csv'}", f"out={tmp_path / 'o'}", "k=3"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ranked 1 of 1" in r.stdout
    assert pq.read_table(tmp_path / "o" / "c1.parquet").num_rows == 3
