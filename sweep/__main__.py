"""``python -m sweep``: see sweep.cli."""

import sys

from .cli import main

sys.exit(main())
