"""``python -m gradlab``: the same command line as the ``gradlab`` console script."""

import sys

from gradlab.cli import main

sys.exit(main())
