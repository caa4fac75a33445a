"""hpo3's HPO ontology (``pyhpo.Ontology``), set up in one place.

``pyhpo.Ontology`` is a process-wide object of the hpo3 package; building it (``Ontology()``) parses hpo3's
bundled release (~1 s). :func:`ontology` builds it on the first call in a process and returns it; every module
that needs hpo3's graph, genes or diseases calls this instead of building it itself. Importing this module
imports nothing heavy.

The packaged ``hp.obo`` (labels, synonyms, obsolete → replaced_by, SNOMED cross-references) is read separately by
:class:`raretarget.ingest.phenotypes.PhenotypeMapper`.
"""

from __future__ import annotations


def ontology():
    """hpo3's ``Ontology`` (built on first use in this process)."""
    from pyhpo import Ontology

    try:
        len(Ontology.genes)
    except (NameError, RuntimeError):        # not built yet in this process
        Ontology()
    return Ontology
