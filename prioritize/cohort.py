"""Renamed :mod:`raretarget.prioritize.enrichment` (issue 18: "cohort" is the generated cohort of
:mod:`raretarget.synth.cohort`; this module is the enrichment statistics); this name stays for a release: it *is*
that module."""

import sys

from raretarget.prioritize import enrichment as _module

sys.modules[__name__] = _module
