"""``python -m exactforge.cli``: the same as the ``exactforge`` command."""

import sys

from . import main

sys.exit(main())
