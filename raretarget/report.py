"""Moved to :mod:`raretarget.apps.report` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.apps import report as _module

sys.modules[__name__] = _module
