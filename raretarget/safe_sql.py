"""Moved to :mod:`raretarget.store.safe_sql` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.store import safe_sql as _module

sys.modules[__name__] = _module
