"""``python -m raretarget ...``: the ``raretarget`` command (:mod:`raretarget.apps.cli`)."""

import sys

from raretarget.apps.cli import main

sys.exit(main())
