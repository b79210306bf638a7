"""``python -m rtnf.apps.console``: the console without the ``rtnf`` command."""

import sys

from .cli import main

sys.exit(main())
