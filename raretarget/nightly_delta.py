"""Moved to :mod:`raretarget.apps.nightly_delta` (issue 18); this name stays for a release: it *is* that module."""

import sys

from raretarget.apps import nightly_delta as _module

sys.modules[__name__] = _module
