"""``python -m rtnf.apps.report RUN_DIR_OR_TSV``: the same as ``rtnf report``."""

import sys

from .command import main

sys.exit(main())
