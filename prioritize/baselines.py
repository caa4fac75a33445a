"""The field's phenotype → gene baselines, for benchmarks and tests (not used by the ranking itself).

* :func:`phenomizer` – Köhler et al., AJHG 2009: Resnik similarity with OMIM-based information content, combined
  as the best-match average taken both ways (``funSimAvg``), query vs each gene's annotation set. Equal to pyhpo's
  ``HPOSet.similarity(gene_set, kind="omim", method="resnik", combine="funSimAvg")`` on the gene's phenotypic
  abnormality terms (``tests/test_phenomodel.py`` checks it on fixed sets).
* :func:`hpo3_gene_enrichment` – hpo3's hypergeometric gene enrichment (``pyhpo.helper.batch_gene_enrichment``),
  run as hpo3 ships it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .knowledge import KnowledgeBase
from .scorers import genes_to_query, query_to_genes


def phenomizer(kb: KnowledgeBase, observed: Sequence[int]) -> np.ndarray:
    """Symmetric Resnik ``funSimAvg`` of the query (KB term indices) vs each KB gene ``[G]``:
    ``½ (mean_q max_s IC(MICA(q, s)) + mean_s max_q IC(MICA(s, q)))``, ``s`` over the gene's annotations, with
    the KB's information content (OMIM-based for ``KnowledgeBase.from_hpo3()``)."""
    if not len(observed):
        return np.zeros(len(kb.genes))
    best, _ = query_to_genes(kb, list(observed))
    return 0.5 * (best.mean(axis=0) + genes_to_query(kb, list(observed)))


def hpo3_gene_enrichment(term_lists: Sequence[Sequence[str]], gene_index: Mapping[str, int], n_genes: int
                         ) -> list[np.ndarray]:
    """One ``pyhpo.helper.batch_gene_enrichment`` call over all queries → per query ``−log10 p`` per gene of
    ``gene_index`` ``[n_genes]`` (0 where hpo3 returns nothing: no query term is annotated to the gene). Ids hpo3
    does not know are left out of that query."""
    from pyhpo import HPOSet
    from pyhpo.helper import batch_gene_enrichment

    from raretarget.vocab.hpo import ontology

    Ontology = ontology()
    sets = []
    for ts in term_lists:
        ok = []
        for t in ts:
            try:
                Ontology.get_hpo_object(t)
                ok.append(t)
            except (KeyError, RuntimeError, ValueError, NameError):
                pass
        sets.append(HPOSet.from_queries(ok) if ok else HPOSet([]))
    out = []
    for res in batch_gene_enrichment(sets) if sets else []:
        s = np.zeros(n_genes)
        for e in res:
            i = gene_index.get(e["item"].name)
            if i is not None:
                s[i] = max(s[i], -np.log10(max(float(e["enrichment"]), 1e-300)))
        out.append(s)
    return out
