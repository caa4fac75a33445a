"""Moved to :mod:`raretarget.synth.cohort` (issue 18: the generator is not public API and is no relation of
:mod:`raretarget.prioritize.enrichment`, the enrichment statistics); this name stays for a release: it *is* that module."""

import sys

from raretarget.synth import cohort as _module

sys.modules[__name__] = _module
