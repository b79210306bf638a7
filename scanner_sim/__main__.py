"""``python -m scanner_sim`` runs the ``scanner-sim`` command."""

import sys

from .cli import main

sys.exit(main())
