"""Phenotype → causal-gene ranking benchmark on solved GA4GH Phenopackets (phenopacket-store).

For every case all genes of the knowledge base are ranked and the rank of the causal gene is recorded
(ties count half: rank = 1 + #higher + #tied/2; a case with several causal genes keeps the best one; a causal
gene missing from the universe counts as rank = universe size + 1). Settings:

  (a) phenotype     – ``phenotype_ic`` only: observed terms, excluded terms as negative evidence;
  (b) phenomizer    – baseline: symmetric Resnik best-match average (hpo3 "BMA": row and column best matches
                      averaged together) of the observed terms vs the gene's HPO annotations, no excluded terms;
  (c) pheno+vcf     – phenotype_ic + variant (+ knowledge 0.1; druggability 0) on a simulated exome: the case's
                      causal variant(s) spiked into ~200 background genes (see :func:`background`);
  (d) variant-only  – the ``variant`` component alone over the same simulated variants.

The causal variant keeps the packet's zygosity (allelic state; two het variants = compound het) and HGVS; its
consequence impact is read off the HGVS (``fs``/``Ter``/splice ±1/2 → HIGH, else MODERATE); ClinVar
significance = the packet's ACMG class for a random half of the cases (``--clinvar-frac``), none otherwise
(novel variant); AF absent or ≤ 5e-5.

Nothing is fitted to the reported cases: with ``--tune`` the excluded-term penalty λ is chosen on the *tune*
half of the cohorts (deterministic hash of the cohort name) and every setting is then reported on the other
(*report*) half; without ``--tune`` the weights of ``conf/prioritize/default.yaml`` are used on all cases.

    python scripts/bench_phenopackets.py --cases 1000 [--tune] [--seed 0] [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import platform
import re
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "phenopackets"

from raretarget.prioritize import KnowledgeBase, Prioritizer, load_config, parse_phenopacket  # noqa: E402
from raretarget.prioritize.phenopacket import VARIANT_COLUMNS  # noqa: E402
from raretarget.prioritize.scorers import genes_to_query, query_to_genes  # noqa: E402


def split_of(cohort: str) -> str:
    return "tune" if int(hashlib.sha256(cohort.encode()).hexdigest(), 16) % 2 == 0 else "report"


def load_cases(data: Path, n: int | None, seed: int) -> list[dict]:
    with gzip.open(data / "cases_dev.tsv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    variants: dict[str, pa.Table | None] = {}
    with tarfile.open(data / "phenopackets_dev.tar.xz", "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".json"):
                pp = json.load(tf.extractfile(m))
                parsed = parse_phenopacket(pp)
                variants[pp.get("id")] = parsed.variants
    rows = [r for r in rows if r["gene_symbols"]]
    if n is not None and n < len(rows):
        rng = np.random.default_rng(seed)
        rows = [rows[i] for i in sorted(rng.choice(len(rows), n, replace=False))]
    for r in rows:
        r["observed"] = [x for x in r["hpo_observed"].split(";") if x]
        r["excluded"] = [x for x in r["hpo_excluded"].split(";") if x]
        r["truth"] = [x for x in r["gene_symbols"].split(";") if x]
        r["variant_table"] = variants.get(r["phenopacket_id"])
        r["split"] = split_of(r["cohort"])
    return rows


def impact_from_hgvs(hgvsc: str | None, hgvsp: str | None) -> tuple[str, str]:
    c, p = hgvsc or "", hgvsp or ""
    if "fs" in p:
        return "frameshift_variant", "HIGH"
    if "Ter" in p or "*" in p:
        return "stop_gained", "HIGH"
    if re.search(r"c\.-?\d+[+-][12][ACGT]", c):
        return "splice_donor_variant" if "+" in c else "splice_acceptor_variant", "HIGH"
    if re.search(r"p\.\(?[A-Z][a-z]{2}\d+[A-Z][a-z]{2}\)?", p):
        return "missense_variant", "MODERATE"
    if re.search(r"(del|dup|ins)", c) and not p:
        return "frameshift_variant", "HIGH"
    if "Met1" in p:
        return "start_lost", "HIGH"
    if not c and not p:
        return "transcript_ablation", "HIGH"      # structural variant without HGVS
    return "missense_variant", "MODERATE"


def causal_rows(case: dict, rng: np.random.Generator, clinvar_frac: float) -> list[dict]:
    t = case["variant_table"]
    rows = t.to_pylist() if t is not None else []
    rows = [r for r in rows if r.get("gene") in case["truth"]] or [{"gene": case["truth"][0], "zygosity": "het"}]
    known = rng.random() < clinvar_frac
    out = []
    for r in rows:
        csq, imp = impact_from_hgvs(r.get("hgvsc"), r.get("hgvsp"))
        out.append({**{k: None for k, _ in VARIANT_COLUMNS}, "gene": r["gene"], "hgvsc": r.get("hgvsc"),
                    "hgvsp": r.get("hgvsp"), "consequence": csq, "impact": imp,
                    "clinvar": r.get("clinvar") if known else None,
                    "af": None if rng.random() < 0.5 else float(10 ** rng.uniform(-6.3, -4.3)),
                    "zygosity": r.get("zygosity") or "het"})
    return out


def background(rng: np.random.Generator, pool: list[str], ar_genes: list[str], exclude: set[str],
               n_genes: int = 200) -> list[dict]:
    """~200 background genes: 3 het P/LP carrier variants in AR genes, 60 rare damaging VUS (het; 20% HIGH,
    80% MODERATE; ClinVar VUS or absent), 2 rare homozygous missense VUS, the rest benign/common (AF 1-50%,
    LOW/MODIFIER/MODERATE, ClinVar benign/likely benign/absent, het or hom)."""
    ar = [g for g in rng.choice(ar_genes, 6, replace=False) if g not in exclude][:3]
    genes = [g for g in rng.choice(pool, n_genes + 20, replace=False) if g not in exclude and g not in ar]
    rows = []
    base = {k: None for k, _ in VARIANT_COLUMNS}
    for g in ar:
        rows.append({**base, "gene": g, "consequence": "stop_gained", "impact": "HIGH",
                     "clinvar": str(rng.choice(["pathogenic", "likely_pathogenic"])),
                     "af": float(10 ** rng.uniform(-4, -2.7)), "zygosity": "het"})
    n_rest = n_genes - len(ar)
    for k, g in enumerate(genes[:n_rest]):
        if k < 60:
            high = rng.random() < 0.2
            rows.append({**base, "gene": g, "consequence": "frameshift_variant" if high else "missense_variant",
                         "impact": "HIGH" if high else "MODERATE",
                         "clinvar": "uncertain_significance" if rng.random() < 0.5 else None,
                         "af": None if rng.random() < 0.3 else float(10 ** rng.uniform(-5.5, -3)), "zygosity": "het"})
        elif k < 62:
            rows.append({**base, "gene": g, "consequence": "missense_variant", "impact": "MODERATE",
                         "clinvar": None, "af": float(10 ** rng.uniform(-4, -3)), "zygosity": "hom_alt"})
        else:
            imp = str(rng.choice(["LOW", "MODIFIER", "MODERATE"], p=[0.4, 0.3, 0.3]))
            rows.append({**base, "gene": g, "consequence": {"LOW": "synonymous_variant", "MODIFIER": "intron_variant",
                                                          "MODERATE": "missense_variant"}[imp], "impact": imp,
                         "clinvar": str(rng.choice(["benign", "likely_benign", "none"], p=[0.4, 0.3, 0.3])),
                         "af": float(10 ** rng.uniform(-2, -0.3)),
                         "zygosity": str(rng.choice(["het", "hom_alt"], p=[0.7, 0.3]))})
            if rows[-1]["clinvar"] == "none":
                rows[-1]["clinvar"] = None
    return rows


def rank_of(scores: np.ndarray, genes_pos: dict[str, int], truth: list[str]) -> float:
    best = float(len(scores) + 1)
    for g in truth:
        i = genes_pos.get(g)
        if i is None:
            continue
        s = scores[i]
        r = 1 + np.sum(scores > s) + 0.5 * (np.sum(scores == s) - 1)
        best = min(best, float(r))
    return best


def summarise(ranks: list[float]) -> dict:
    r = np.array(ranks)
    if not len(r):
        return {"n": 0}
    return {"n": int(len(r)), "top1": float(np.mean(r <= 1)), "top3": float(np.mean(r <= 3)),
            "top10": float(np.mean(r <= 10)), "median_rank": float(np.median(r)), "mrr": float(np.mean(1 / r))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--cases", type=int, default=None, help="random subset of N cases (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune", action="store_true", help="choose λ on the tune half, report on the other half")
    ap.add_argument("--clinvar-frac", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="write per-setting metrics (JSON)")
    a = ap.parse_args(argv)

    t0 = time.time()
    kb = KnowledgeBase.from_hpo3()
    t_kb = time.time() - t0
    cases = load_cases(Path(a.data), a.cases, a.seed)
    t_load = time.time() - t0 - t_kb
    print(f"KB {kb} in {t_kb:.1f}s; {len(cases)} cases loaded in {t_load:.1f}s", file=sys.stderr)

    base_cfg = {"knowledge": 0, "druggability": 0, "variant": 0, "cohort": 0, "embedding": 0}
    penalty = float(load_config()["phenotype_ic"]["penalty"])
    tuned = None
    if a.tune:
        grid = [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]
        tune_cases = [c for c in cases if c["split"] == "tune"]
        res = {}
        for lam in grid:
            P = Prioritizer(kb, {**base_cfg, "phenotype_ic": {"penalty": lam}})
            rr = []
            for c in tune_cases:
                q, _ = P.query(c["observed"], c["excluded"])
                rr.append(rank_of(P.components(q)[0].scores, q.gene_pos, c["truth"]))
            res[lam] = summarise(rr)
        penalty = max(grid, key=lambda l: res[l]["mrr"])
        tuned = {"grid": {str(k): v for k, v in res.items()}, "chosen_penalty": penalty, "n_tune": len(tune_cases)}
        print(f"tuned on {len(tune_cases)} tune-split cases: λ={penalty} "
              + ", ".join(f"{k}:{v['mrr']:.3f}" for k, v in res.items()), file=sys.stderr)
        cases = [c for c in cases if c["split"] == "report"]

    P_pheno = Prioritizer(kb, {**base_cfg, "phenotype_ic": {"penalty": penalty}})
    P_vcf = Prioritizer(kb, {"phenotype_ic": {"weight": 1.0, "penalty": penalty}, "variant": 1.0, "knowledge": 0.1,
                             "druggability": 0, "cohort": 0, "embedding": 0})
    P_var = Prioritizer(kb, {"phenotype_ic": 0, "variant": 1.0, "knowledge": 0, "druggability": 0, "cohort": 0,
                             "embedding": 0})
    pool = sorted(set(kb.genes) | set(kb.druggability))
    ar_genes = sorted(g for g, m in kb.inheritance.items() if m == {"AR"})
    ranks: dict[str, list[float]] = {"a_phenotype": [], "b_phenomizer": [], "c_pheno_vcf": [], "d_variant_only": []}
    t_case = time.time()
    for n, c in enumerate(cases):
        rng = np.random.default_rng([a.seed, n, int(hashlib.sha256(c["phenopacket_id"].encode()).hexdigest()[:8], 16)])
        q, _ = P_pheno.query(c["observed"], c["excluded"])
        ranks["a_phenotype"].append(rank_of(P_pheno.components(q)[0].scores, q.gene_pos, c["truth"]))
        # (b) Phenomizer-style symmetric Resnik BMA, no excluded terms
        if q.observed:
            best, _ = query_to_genes(kb, q.observed)
            back = genes_to_query(kb, q.observed) * kb.n_gene_terms
            bma = (best.sum(axis=0) + back) / (len(q.observed) + np.maximum(kb.n_gene_terms, 1))
        else:
            bma = np.zeros(len(kb.genes))
        ranks["b_phenomizer"].append(rank_of(bma, {g: i for i, g in enumerate(kb.genes)}, c["truth"]))
        # (c)/(d) simulated exome
        rows = causal_rows(c, rng, a.clinvar_frac) + background(rng, pool, ar_genes, set(c["truth"]))
        vt = pa.Table.from_pylist(rows, schema=pa.schema(VARIANT_COLUMNS))
        q2, _ = P_vcf.query(c["observed"], c["excluded"], variants=vt)
        comps = P_vcf.components(q2)
        ranks["c_pheno_vcf"].append(rank_of(P_vcf.combine(comps, {s.name: s.weight for s in P_vcf.scorers}),
                                            q2.gene_pos, c["truth"]))
        vcomp = next(x for x in comps if x.name == "variant")
        ranks["d_variant_only"].append(rank_of(vcomp.scores, q2.gene_pos, c["truth"]))
    dt = time.time() - t_case
    n_universe = len(kb.genes)
    out = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''} python {platform.python_version()}",
        "command": "python scripts/bench_phenopackets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hpo": "hpo3 built-in HPO", "n_cases": len(cases), "universe_genes": n_universe,
        "causal_gene_annotated": float(np.mean([any(g in kb.gene_index for g in c["truth"]) for c in cases])),
        "penalty": penalty, "tuning": tuned, "seconds_total_loop": dt,
        "seconds_per_case_all_settings": dt / max(len(cases), 1), "seconds_kb_build": t_kb,
        "results": {k: summarise(v) for k, v in ranks.items()},
    }
    print(json.dumps(out, indent=1))
    print("\n| setting | n | top-1 | top-3 | top-10 | median rank | MRR |\n|---|---|---|---|---|---|---|")
    for k, v in out["results"].items():
        print(f"| {k} | {v['n']} | {v['top1']:.3f} | {v['top3']:.3f} | {v['top10']:.3f} | {v['median_rank']:.1f} | "
              f"{v['mrr']:.3f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
