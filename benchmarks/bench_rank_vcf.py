"""Time ``Engine.rank_targets(phenotypes=, excluded=, vcf=path, k=None)`` on exome-sized VEP VCFs (issue 16 goal:
≤ 500 ms per case including reading a 25k-record VCF; first call < 5 s).

VCFs: ``scripts/bench_phenopackets.py``'s simulated exome background (~22,760 records since 2026-12-01, sourced
parameters) plus the case's causal gene as a rare missense, written with its ``write_vcf`` (VEP CSQ, GRCh38 contig names). Cases
(observed/excluded HPO terms, causal gene): the first ``--cases`` rows of ``cases_dev.tsv.gz`` in
``../shared/data/phenopackets``. The VCFs are written before any timing. Reported:

* ``fresh_process``: a new Python process, empty store: ``import_s`` (``from raretarget import Engine``),
  ``first_call_s`` (the first ``rank_targets`` call: hpo3 ontology, knowledge base, gene table, VCF read, ranking)
  and ``knowledge_again_s`` (``engine.knowledge()`` of a second Engine in that process: the KB build without the
  ontology load);
* ``per_case_s``: mean / median / max over all cases in one warm Engine (KB and phenotype model built), and
  ``read_s``: the VCF read alone (:func:`raretarget.ingest.vcf.read_variants`, gene table already loaded), of every
  carried allele (``all_alleles``) and as ``rank_targets`` reads it (``as_ranking``: alleles with a population AF
  ≥ ``COMMON_AF`` skipped before their CSQ entries are picked);
* ``phenotype_only_per_case_s``: the same queries without the VCF;
* ``--no-csq``: the same VCFs with the CSQ field removed and real GRCh38 positions (genes by position);
* ``--vep-transcripts T``: each record's CSQ rewritten as VEP ``--everything`` writes it: T entries (the
  simulated consequence on a MANE/canonical transcript, then T − 1 others: intron, upstream, downstream, NMD, UTR,
  non-coding exon, synonymous) of 88 fields each, the AF / ClinVar / REVEL fields at the end.

    python benchmarks/bench_rank_vcf.py --cases 10 [--no-csq | --vep-transcripts 8]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def load_light_cases(data: Path, n: int) -> list[dict]:
    out = []
    with gzip.open(data / "cases_dev.tsv.gz", "rt", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if not r["gene_symbols"] or not r["hpo_observed"]:
                continue
            truth = [x for x in r["gene_symbols"].split(";") if x]
            vt = pa.Table.from_pylist([{"gene": truth[0], "hgvsc": "c.100A>G", "hgvsp": "p.(Lys34Glu)",
                                        "zygosity": "het"}])
            out.append({"phenopacket_id": r["phenopacket_id"], "truth": truth, "variant_table": vt,
                        "observed": [x for x in r["hpo_observed"].split(";") if x],
                        "excluded": [x for x in r["hpo_excluded"].split(";") if x]})
            if len(out) >= n:
                break
    return out


def strip_csq(src: Path, dst: Path, build: str = "GRCh38") -> None:
    """The same calls without CSQ, each moved into its gene (first base of the gene's interval + offset)."""
    from raretarget.ingest.intervals import gene_intervals

    iv = gene_intervals(build)
    start = {g: (c, s) for c, s, _e, g in iv.rows()}
    out = []
    with gzip.open(src, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("##INFO=<ID=CSQ"):
                continue
            if line.startswith("##contig"):
                continue
            if line.startswith("#"):
                out.append(line.replace("##reference=GRCh38", f"##reference={build}"))
                continue
            p = line.rstrip("\n").split("\t")
            sym = p[7].split("|")[3]
            hit = start.get(sym)
            if hit is None:
                continue
            p[0], p[1] = "chr" + hit[0], str(hit[1] + int(p[1]) % 997)
            p[7] = "."
            out.append("\t".join(p) + "\n")
    head = [x for x in out if x.startswith("#")]
    body = sorted((x for x in out if not x.startswith("#")), key=lambda x: (x.split("\t")[0], int(x.split("\t")[1])))
    with gzip.open(dst, "wt", encoding="utf-8") as f:
        f.writelines(head + body)


#: VEP --everything-like CSQ: the choosing fields first, ~60 others, the frequency / ClinVar / REVEL fields last
WIDE_FIELDS = (["Allele", "Consequence", "IMPACT", "SYMBOL", "Gene", "Feature_type", "Feature", "BIOTYPE", "EXON",
                "INTRON", "HGVSc", "HGVSp", "cDNA_position", "CDS_position", "Protein_position", "Amino_acids",
                "Codons", "Existing_variation", "DISTANCE", "STRAND", "FLAGS", "SYMBOL_SOURCE", "HGNC_ID",
                "CANONICAL", "MANE_SELECT"] + [f"X{i}" for i in range(60)] + ["gnomADe_AF", "CLIN_SIG", "REVEL_score"])
OTHER_TRANSCRIPTS = [("intron_variant", "MODIFIER"), ("upstream_gene_variant", "MODIFIER"),
                     ("downstream_gene_variant", "MODIFIER"), ("NMD_transcript_variant", "MODIFIER"),
                     ("3_prime_UTR_variant", "MODIFIER"), ("non_coding_transcript_exon_variant", "MODIFIER"),
                     ("synonymous_variant", "LOW")]


def widen_csq(src: Path, dst: Path, transcripts: int) -> None:
    """The same calls with each CSQ value written as ``transcripts`` VEP entries of :data:`WIDE_FIELDS`."""
    with gzip.open(src, "rt", encoding="utf-8") as f, gzip.open(dst, "wt", encoding="utf-8") as w:
        for line in f:
            if line.startswith("##INFO=<ID=CSQ"):
                w.write('##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl '
                        'VEP. Format: ' + "|".join(WIDE_FIELDS) + '">\n')
                continue
            if line.startswith("#"):
                w.write(line)
                continue
            p = line.rstrip("\n").split("\t")
            a = p[7][4:].split("|")      # Allele|Consequence|IMPACT|SYMBOL|HGVSc|HGVSp|gnomADe_AF|CLIN_SIG

            def entry(cons: str, imp: str, k: int) -> str:
                d = {"Allele": a[0], "Consequence": cons, "IMPACT": imp, "SYMBOL": a[3], "Gene": "ENSG00000000001",
                     "Feature_type": "Transcript", "Feature": f"ENST0000000000{k}", "BIOTYPE": "protein_coding",
                     "HGVSc": a[4] if k == 0 else "", "HGVSp": a[5] if k == 0 else "",
                     "CANONICAL": "YES" if k == 0 else "", "MANE_SELECT": "NM_000001.1" if k == 0 else "",
                     "gnomADe_AF": a[6], "CLIN_SIG": a[7]}
                return "|".join(d.get(c, "") for c in WIDE_FIELDS)

            es = [entry(a[1], a[2], 0)] + [entry(c, i, k + 1) for k, (c, i) in
                                           enumerate((OTHER_TRANSCRIPTS * transcripts)[:transcripts - 1])]
            p[7] = "CSQ=" + ",".join(es)
            w.write("\t".join(p) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "phenopackets"))
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-csq", action="store_true")
    ap.add_argument("--vep-transcripts", type=int, default=0, help="rewrite each CSQ as this many 88-field VEP "
                    "entries (0: as simulated, one 8-field entry)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from bench_phenopackets import simulate, write_vcf  # noqa: E402
    from raretarget import Engine
    from raretarget.prioritize import KnowledgeBase

    cases = load_light_cases(Path(a.data), a.cases)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rank-vcf-"))
    # the gene pool for the background: KB genes + druggability genes, as bench_phenopackets does
    kb = KnowledgeBase.from_hpo3()
    pool = sorted(set(kb.genes) | set(kb.druggability))
    ar_genes = sorted(g for g, m in kb.inheritance.items() if m == {"AR"})
    del kb
    paths, records = [], []
    for k, c in enumerate(cases):
        p = tmp / f"case{k}.vcf.gz"
        write_vcf(simulate(c, a.seed, False, pool, ar_genes), p)
        if a.vep_transcripts:
            q = tmp / f"case{k}.wide.vcf.gz"
            widen_csq(p, q, a.vep_transcripts)
            p = q
        if a.no_csq:
            q = tmp / f"case{k}.nocsq.vcf.gz"
            strip_csq(p, q)
            p = q
        with gzip.open(p, "rt") as f:
            records.append(sum(1 for line in f if not line.startswith("#")))
        paths.append(p)
    print(f"{len(paths)} VCFs written, {int(np.mean(records))} records each", file=sys.stderr, flush=True)

    # first call: a fresh process (imports timed apart), empty store, one rank_targets call with a VCF
    snippet = (
        "import json, sys, time; c = time.process_time; w = time.perf_counter; t0, c0 = w(), c(); "
        "from raretarget import Engine; t1, c1 = w(), c(); eng = Engine.open(sys.argv[1], create=True); "
        "r = eng.rank_targets(phenotypes=json.loads(sys.argv[3]), excluded=json.loads(sys.argv[4]), vcf=sys.argv[2], k=None); "
        "t2, c2 = w(), c(); e2 = Engine.open(sys.argv[1] + '2', create=True); t3 = w(); e2.knowledge(); t4 = w(); "
        "e3 = Engine.open(sys.argv[1] + '3', create=True); t5 = w(); e3.knowledge().phenotype_model(); t6 = w(); "
        "print(json.dumps({'import_s': t1 - t0, 'first_call_s': t2 - t1, 'first_call_cpu_s': c2 - c1, "
        "'knowledge_again_s': t4 - t3, 'knowledge_and_phenotype_model_again_s': t6 - t5}))")
    out = subprocess.run([sys.executable, "-c", snippet, str(tmp / "first"), str(paths[0]),
                          json.dumps(cases[0]["observed"]), json.dumps(cases[0]["excluded"])],
                         capture_output=True, text=True, check=True)
    first = json.loads(out.stdout.strip().splitlines()[-1])
    eng = Engine.open(tmp / "store", create=True)
    eng.knowledge().phenotype_model()     # built once per Engine (the first call above times it)
    times, cpu, top1, ranks = [], [], 0, []
    for c, p in zip(cases, paths):
        t1, c1 = time.perf_counter(), time.process_time()
        t = eng.rank_targets(phenotypes=c["observed"], excluded=c["excluded"], vcf=p, k=None)
        times.append(time.perf_counter() - t1)
        cpu.append(time.process_time() - c1)
        genes = t.column("gene").to_pylist()
        r = min((genes.index(g) + 1 for g in c["truth"] if g in genes), default=len(genes) + 1)
        ranks.append(r)
        top1 += r == 1
    t1, c1 = time.perf_counter(), time.process_time()
    for c in cases:
        eng.rank_targets(phenotypes=c["observed"], excluded=c["excluded"], k=None)
    pheno_only = (time.perf_counter() - t1) / len(cases)
    pheno_only_cpu = (time.process_time() - c1) / len(cases)
    # the VCF read alone: every carried allele (the baseline), and as the ranking reads it (common alleles, AF ≥
    # COMMON_AF, skipped before their CSQ entries are picked)
    read: dict[str, list[float]] = {"all_alleles": [], "as_ranking": []}
    read_cpu: dict[str, list[float]] = {"all_alleles": [], "as_ranking": []}
    try:
        from raretarget.ingest.vcf import read_variants
        from raretarget.vocab.variants import COMMON_AF
    except ImportError:
        read_variants = None
    if read_variants is not None:
        for p in paths:
            for key, kw in (("all_alleles", {}), ("as_ranking", {"max_af": COMMON_AF})):
                t0, c0 = time.perf_counter(), time.process_time()
                read_variants(p, eng.resources, **kw)
                read[key].append(time.perf_counter() - t0)
                read_cpu[key].append(time.process_time() - c0)
    res = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "command": "python benchmarks/bench_rank_vcf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cases": len(paths), "records_per_vcf": int(np.mean(records)), "no_csq": a.no_csq,
        "vep_transcripts": a.vep_transcripts,
        "fresh_process": {k: round(v, 3) for k, v in first.items()},
        "load_average_1min_at_end": round(__import__("os").getloadavg()[0], 2),
        "phenotype_only_per_case_s": round(pheno_only, 3), "phenotype_only_per_case_cpu_s": round(pheno_only_cpu, 3),
        "per_case_s": {"mean": round(statistics.mean(times), 3), "median": round(statistics.median(times), 3),
                       "max": round(max(times), 3), "cpu_mean": round(statistics.mean(cpu), 3),
                       "cpu_median": round(statistics.median(cpu), 3)} if times else None,
        "read_s": {k: {"mean": round(statistics.mean(v), 3), "median": round(statistics.median(v), 3),
                       "max": round(max(v), 3), "cpu_mean": round(statistics.mean(read_cpu[k]), 3)}
                   for k, v in read.items() if v} or None,
        "causal_rank": {"top1": top1, "median": statistics.median(ranks)},
    }
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
