"""``python -m trackserve``: the same command line as the ``trackserve`` script."""

import sys

from .cli import main

sys.exit(main())
