"""Moved to :mod:`raretarget.apps.serve` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.apps import serve as _module

sys.modules[__name__] = _module
