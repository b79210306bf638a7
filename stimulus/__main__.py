"""``python -m stimulus``: run the feedback screen."""

import sys

from stimulus.cli import main

sys.exit(main())
