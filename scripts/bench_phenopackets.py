"""Phenotype → causal-gene ranking benchmark on solved GA4GH Phenopackets (phenopacket-store).

For every case all genes of the knowledge base are ranked and the rank of the causal gene is recorded
(ties count half: rank = 1 + #higher + #tied/2; a case with several causal genes keeps the best one; a causal
gene missing from the universe counts as rank = universe size + 1). Settings:

  (a)  phenotype    – ``phenotype_ic`` only, with the chosen method (gene-level ``query`` or ``disease``) and
                      excluded-term penalty λ; (a0) the same with the gene-level method and λ = 0;
  (b)  phenomizer   – baseline: symmetric Resnik best-match average (hpo3 "BMA": row and column best matches
                      averaged together) of the observed terms vs the gene's HPO annotation union, no excluded
                      terms; (b2) the same against each of the gene's diseases, best disease (Phenomizer proper
                      ranks diseases; this is its gene-level reading);
  (c)  pheno+vcf    – phenotype_ic + variant + knowledge (druggability 0) on a simulated exome: the case's
                      causal variant(s) spiked into ~200 background genes (see :func:`background`);
                      (c1) with the settings of conf/prioritize/default.yaml; (c0) with the untuned settings
                      (gene-level, λ 0, variant 1, knowledge 0.1, unannotated 0);
  (d)  variant-only – the ``variant`` component alone over the same simulated variants.

The causal variant keeps the packet's zygosity (allelic state; two het variants = compound het) and HGVS; its
consequence impact is read off the HGVS (``fs``/``Ter``/splice ±1/2 → HIGH, else MODERATE); ClinVar
significance = the packet's ACMG class for a random half of the cases (``--clinvar-frac``), none otherwise
(novel variant); AF absent or ≤ 5e-5.

Nothing is fitted to the reported cases: with ``--tune``, on the *tune* half of the cohorts (deterministic hash
of the cohort name), the phenotype method and λ are chosen by phenotype-only MRR, then the weights of variant
and knowledge (phenotype weight 1) and the phenotype score of unannotated genes by phenotype+VCF top-1; every setting is reported on the other (*report*)
half. Without ``--tune`` the settings of ``conf/prioritize/default.yaml`` are used on all cases.

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
from raretarget.prioritize.scorers import (PhenotypeIC, diseases_to_query, gene_max, genes_to_query,  # noqa: E402
                                           query_to_diseases)


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


def phenotype_parts(kb, scorer, observed: list[int], excluded: list[int]) -> dict[str, np.ndarray]:
    """Per-gene pieces of the phenotype scores for one case (KB gene order): ``query`` / ``disease`` (the
    ``PhenotypeIC`` methods before the penalty, from :meth:`PhenotypeIC.parts`), ``pen`` (the penalty per unit λ),
    ``bma_gene`` / ``bma_disease`` (the Phenomizer-style baselines: symmetric Resnik BMA against gene annotation
    unions / against each disease, gene = best of its diseases)."""
    G = len(kb.genes)
    if not observed:
        z = np.zeros(G)
        return {"query": z, "disease": z, "pen": z, "bma_gene": z, "bma_disease": z}
    p = scorer.parts(observed, excluded, methods=["query", "disease"], with_penalty=True)
    best = p["best"]
    back = genes_to_query(kb, observed) * kb.n_gene_terms
    bma_g = (best.sum(axis=0) + back) / (len(observed) + np.maximum(kb.n_gene_terms, 1))
    bd = query_to_diseases(kb, observed)
    bma_d_per = (bd.sum(axis=0) + diseases_to_query(kb, observed)) / (len(observed) + np.maximum(kb.n_dis_terms, 1))
    bma_d, arg = gene_max(kb, bma_d_per)
    bma_d = np.where(arg >= 0, bma_d, bma_g)
    return {"query": p["query"], "disease": p["disease"], "pen": p["pen"], "bma_gene": bma_g, "bma_disease": bma_d}


def simulate(case: dict, n: int, seed: int, clinvar_frac: float, pool, ar_genes) -> pa.Table:
    rng = np.random.default_rng([seed, n, int(hashlib.sha256(case["phenopacket_id"].encode()).hexdigest()[:8], 16)])
    rows = causal_rows(case, rng, clinvar_frac) + background(rng, pool, ar_genes, set(case["truth"]))
    return pa.Table.from_pylist(rows, schema=pa.schema(VARIANT_COLUMNS))


def case_components(kb, P_var, P_kn, ph, case: dict, n: int, seed: int, clinvar_frac: float, pool, ar_genes):
    """Everything a setting needs for one case, in the gene order of the variant query (KB genes first)."""
    obs, _ = kb.resolve_terms(case["observed"])
    exc, _ = kb.resolve_terms(case["excluded"])
    exc = [e for e in exc if e not in obs]
    parts = phenotype_parts(kb, ph, obs, exc)
    vt = simulate(case, n, seed, clinvar_frac, pool, ar_genes)
    q, _ = P_var.query(case["observed"], case["excluded"], variants=vt)
    var = next(c for c in P_var.components(q) if c.name == "variant").scores
    kn = next(c for c in P_kn.components(q) if c.name == "knowledge").scores
    G, n_all = len(kb.genes), len(q.genes)
    pad = lambda x: np.concatenate([x, np.zeros(n_all - G)])  # noqa: E731  (genes only seen in variants)
    unann = np.ones(n_all, bool)
    unann[:G] = kb.n_gene_terms == 0
    return {"parts": {k: pad(v) for k, v in parts.items()}, "variant": var, "knowledge": kn, "gene_pos": q.gene_pos,
            "has_obs": bool(obs), "unannotated": unann}


def pheno_score(cc: dict, method: str, lam: float, unannotated: float = 0.0) -> np.ndarray:
    p = cc["parts"]
    pos = 0.5 * (p["query"] + p["disease"]) if method == "blend" else p[method]
    return np.where(cc["unannotated"], unannotated, np.clip(pos - lam * p["pen"], 0.0, 1.0))


def combined(cc: dict, method: str, lam: float, w_var: float, w_kn: float, unannotated: float = 0.0) -> np.ndarray:
    """The Prioritizer's weighted mean (phenotype weight 1; phenotype absent without observed terms)."""
    ph = pheno_score(cc, method, lam, unannotated)
    w_ph = 1.0 if cc["has_obs"] else 0.0
    return (w_ph * ph + w_var * cc["variant"] + w_kn * cc["knowledge"]) / (w_ph + w_var + w_kn)


METHODS = ("query", "disease", "blend")
LAMBDAS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
W_VARIANT = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
W_KNOWLEDGE = (0.05, 0.1, 0.2)        # > 0: the knowledge column (evidence) stays in every ranking
UNANNOTATED = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--cases", type=int, default=None, help="random subset of N cases (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune", action="store_true",
                    help="choose method/λ and the phenotype+VCF weights on the tune half, report on the other half")
    ap.add_argument("--clinvar-frac", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="write per-setting metrics (JSON)")
    a = ap.parse_args(argv)

    t0 = time.time()
    kb = KnowledgeBase.from_hpo3()
    t_kb = time.time() - t0
    cases = load_cases(Path(a.data), a.cases, a.seed)
    t_load = time.time() - t0 - t_kb
    print(f"KB {kb} in {t_kb:.1f}s; {len(cases)} cases loaded in {t_load:.1f}s", file=sys.stderr)

    cfg = load_config()
    ph_cfg = cfg["phenotype_ic"]
    chosen = {"method": ph_cfg.get("method", "query"), "penalty": float(ph_cfg.get("penalty", 0.0)),
              "unannotated": float(ph_cfg.get("unannotated", 0.0)),
              "variant": float(cfg["variant"]["weight"] if isinstance(cfg["variant"], dict) else cfg["variant"]),
              "knowledge": float(cfg["knowledge"]["weight"] if isinstance(cfg["knowledge"], dict) else cfg["knowledge"])}
    shipped = dict(chosen)
    off = {"phenotype_ic": 0, "knowledge": 0, "druggability": 0, "cohort": 0, "embedding": 0}
    P_var = Prioritizer(kb, {**off, "variant": dict(cfg["variant"], weight=1.0)})
    P_kn = Prioritizer(kb, {**off, "variant": 0, "knowledge": dict(cfg["knowledge"], weight=1.0)})
    pool = sorted(set(kb.genes) | set(kb.druggability))
    ar_genes = sorted(g for g, m in kb.inheritance.items() if m == {"AR"})
    ph = PhenotypeIC(kb)
    comp = lambda c, n: case_components(kb, P_var, P_kn, ph, c, n, a.seed, a.clinvar_frac, pool, ar_genes)  # noqa: E731

    tuned = None
    if a.tune:
        tune = [(n, c) for n, c in enumerate(cases) if c["split"] == "tune"]
        ph_ranks = {(m, lam): [] for m in METHODS for lam in LAMBDAS}
        cc_all = []
        for n, c in tune:
            cc = comp(c, n)
            for (m, lam), rr in ph_ranks.items():
                rr.append(rank_of(pheno_score(cc, m, lam), cc["gene_pos"], c["truth"]))
            cc_all.append((c, cc))
        ph_res = {k: summarise(v) for k, v in ph_ranks.items()}
        m_best, lam_best = max(ph_res, key=lambda k: (ph_res[k]["mrr"], -k[1]))
        comb_res = {}
        for wv in W_VARIANT:
            for wk in W_KNOWLEDGE:
                for u in UNANNOTATED:
                    comb_res[(wv, wk, u)] = summarise([rank_of(combined(cc, m_best, lam_best, wv, wk, u),
                                                               cc["gene_pos"], c["truth"]) for c, cc in cc_all])
        wv_best, wk_best, u_best = max(comb_res, key=lambda k: (comb_res[k]["top1"], comb_res[k]["mrr"]))
        chosen = {"method": m_best, "penalty": lam_best, "unannotated": u_best, "variant": wv_best,
                  "knowledge": wk_best}
        tuned = {"n_tune": len(tune), "chosen": chosen,
                 "phenotype_grid_mrr": {f"{m}/λ={lam}": round(v["mrr"], 4) for (m, lam), v in ph_res.items()},
                 "combined_grid_top1": {f"w_variant={wv}/w_knowledge={wk}/unannotated={u}": round(v["top1"], 4)
                                        for (wv, wk, u), v in comb_res.items()}}
        del cc_all
        print(f"tuned on {len(tune)} tune-split cases: {chosen}", file=sys.stderr)
        report = [(n, c) for n, c in enumerate(cases) if c["split"] == "report"]
    else:
        report = list(enumerate(cases))
    cases = [c for _, c in report]

    ranks: dict[str, list[float]] = {"a_phenotype": [], "a0_phenotype_gene_level": [], "b_phenomizer_gene": [],
                                     "b2_phenomizer_disease": [], "c_pheno_vcf": [], "c1_pheno_vcf_shipped_config": [],
                                     "c0_pheno_vcf_gene_level": [],
                                     "d_variant_only": []}
    t_case = time.time()
    for n, c in report:
        cc = comp(c, n)
        gp, tr = cc["gene_pos"], c["truth"]
        # no variant table: unannotated genes get 0, as in the Prioritizer
        ranks["a_phenotype"].append(rank_of(pheno_score(cc, chosen["method"], chosen["penalty"]), gp, tr))
        ranks["a0_phenotype_gene_level"].append(rank_of(pheno_score(cc, "query", 0.0), gp, tr))
        ranks["b_phenomizer_gene"].append(rank_of(cc["parts"]["bma_gene"], gp, tr))
        ranks["b2_phenomizer_disease"].append(rank_of(cc["parts"]["bma_disease"], gp, tr))
        ranks["c_pheno_vcf"].append(rank_of(combined(cc, chosen["method"], chosen["penalty"], chosen["variant"],
                                                     chosen["knowledge"], chosen["unannotated"]), gp, tr))
        ranks["c1_pheno_vcf_shipped_config"].append(rank_of(combined(
            cc, shipped["method"], shipped["penalty"], shipped["variant"], shipped["knowledge"], shipped["unannotated"]),
            gp, tr))
        ranks["c0_pheno_vcf_gene_level"].append(rank_of(combined(cc, "query", 0.0, 1.0, 0.1), gp, tr))
        ranks["d_variant_only"].append(rank_of(cc["variant"], gp, tr))
    dt = time.time() - t_case
    n_universe = len(kb.genes)
    out = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''} python {platform.python_version()}",
        "command": "python scripts/bench_phenopackets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hpo": "hpo3 built-in HPO", "n_cases": len(cases), "universe_genes": n_universe,
        "causal_gene_annotated": float(np.mean([any(g in kb.gene_index for g in c["truth"]) for c in cases])),
        "chosen": chosen, "shipped": shipped, "tuning": tuned, "seconds_total_loop": dt,
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
