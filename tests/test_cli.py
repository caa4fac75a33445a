"""Command line: ingest / sql / status / quarantine, and no identifier in what it prints."""

from __future__ import annotations

import json

import pytest

from raretarget.cli import main
from conftest import DATA


def test_cli_ingest_sql_status(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["ingest", store, str(DATA / "fhir"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "quarantined" in out and "rows accepted" in out
    # printed output names files by pseudonymous reference only
    for s in ("bundle_phi", "Quixtonfeld", "MRN-7731942", "Condition.ndjson"):
        assert s not in out
    assert main(["sql", store, "select count(*) as n from conditions", "--format", "json"]) == 0
    n = json.loads(capsys.readouterr().out)[0]["n"]
    assert n == 6                      # 3 in the bundle + 3 in the NDJSON file
    assert main(["status", store]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["tables"]["conditions"] == n and st["quarantined"] > 0
    # the data owner can resolve quarantined records to real paths
    assert main(["quarantine", store, "--show-paths", "--limit", "100"]) == 0
    assert "bundle_phi" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["sql", str(tmp_path / "nope"), "select 1"]) == 2
    assert "not a raretarget store" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "s"), str(tmp_path / "missing-folder")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_generates_ingests_and_reports(tmp_path, capsys):
    out = tmp_path / "demo_store"
    assert main(["demo", "--out", str(out), "--patients", "16", "--seed", "3", "--epochs", "1",
                 "--knowledge-steps", "0"]) == 0
    text = capsys.readouterr().out
    assert "0 quarantined" in text and "patients=16" in text
    assert "index generation 1" in text and "ranked candidate genes" in text and "causal gene" in text
    assert (tmp_path / "demo_store.report" / "index.html").exists()
    assert (tmp_path / "demo_store.report" / "hypothesis.html").exists()
    assert main(["report", str(out), "--out", str(tmp_path / "r2"), "--max-patients", "2"]) == 0
    assert len(list((tmp_path / "r2" / "patients").glob("*.html"))) == 2
    # a second run is idempotent: the same cohort is regenerated and nothing is added
    assert main(["demo", "--out", str(out), "--patients", "16", "--seed", "3", "--no-train"]) == 0
    assert "0 file(s) read" in capsys.readouterr().out
    from raretarget import Engine

    assert Engine.open(out).status()["tables"]["patients"] == 16
