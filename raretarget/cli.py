"""Moved to :mod:`raretarget.apps.cli` (issue 18); this name stays for a release: it *is* that module, and
``python -m raretarget.cli ...`` runs it."""

import sys

from raretarget.apps import cli as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
