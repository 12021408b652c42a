"""``python -m reclor_lab`` is the ``reclor-lab`` command."""

import sys

from reclor_lab.cli import main

sys.exit(main())
