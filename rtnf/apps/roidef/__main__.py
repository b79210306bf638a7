"""``python -m rtnf.apps.roidef``: same as ``rtnf roi``."""

import sys

from .cli import main

sys.exit(main())
