"""``python -m pyfed``: the same as the ``pyfed`` command."""

import sys

from .cli import main

sys.exit(main())
