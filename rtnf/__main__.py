"""``python -m rtnf``: same as the ``rtnf`` command."""

import sys

from .cli import main

sys.exit(main())
