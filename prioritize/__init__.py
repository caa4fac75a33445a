"""raretarget.prioritize: rank genes (diagnosis / target candidates) from phenotypes, variants and knowledge.

    from raretarget.prioritize import KnowledgeBase, rank_genes
    kb = KnowledgeBase.from_hpo3()          # build once, pass around (no global state)
    table = rank_genes(["HP:0001250", "HP:0001263"], excluded=["HP:0000252"], kb=kb, top=20)

Components (each per gene in [0, 1], see :mod:`raretarget.prioritize.scorers`): ``phenotype_ic``,
``knowledge``, ``druggability``, ``variant``, and the precomputed ``cohort`` / ``embedding`` hooks.
"""

from .knowledge import KnowledgeBase, Disease, load_druggability
from .phenopacket import ParsedPhenopacket, parse_phenopacket
from .rank import Prioritizer, default_config, load_config, rank_genes
from .scorers import SCORERS, Scorer, register_scorer, build_scorers

__all__ = ["KnowledgeBase", "Disease", "load_druggability", "parse_phenopacket", "ParsedPhenopacket",
           "rank_genes", "Prioritizer", "load_config", "default_config", "DEFAULT_CONFIG", "SCORERS", "Scorer", "register_scorer",
           "build_scorers"]


def __getattr__(name: str):
    # DEFAULT_CONFIG is read from the packaged YAML on access, not at import
    if name == "DEFAULT_CONFIG":
        return default_config()
    raise AttributeError(name)
