"""``python -m trainingloop`` is the ``trainingloop`` command."""

import sys

from trainingloop.cli import main

if __name__ == "__main__":
    sys.exit(main())
