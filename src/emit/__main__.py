"""``python -m emit ...`` (what ``torchrun -m emit`` runs): the ``emit`` command line."""

import sys

from emit.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
