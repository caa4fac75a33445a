"""Moved to :mod:`raretarget.store.schema` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.store import schema as _module

sys.modules[__name__] = _module
