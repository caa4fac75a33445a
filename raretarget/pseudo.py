"""Moved to :mod:`raretarget.store.pseudo` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.store import pseudo as _module

sys.modules[__name__] = _module
