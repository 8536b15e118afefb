"""``python -m fusedrnn``: the ``fusedrnn`` command (see :mod:`fusedrnn.cli`)."""
import sys

from .cli import main

sys.exit(main())
