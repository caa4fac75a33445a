"""Moved to :mod:`raretarget.apps.outcome` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.apps import outcome as _module

sys.modules[__name__] = _module
