"""``python -m emit.cli ...``: the ``emit`` command line."""

import sys

from emit.cli.app import main

sys.exit(main())
