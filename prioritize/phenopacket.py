"""Moved to :mod:`raretarget.query.phenopacket` (issue 18: the query forms live in ``query/``); this name stays
for a release: it *is* that module."""

import sys

from raretarget.query import phenopacket as _module

sys.modules[__name__] = _module
