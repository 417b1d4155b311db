"""``python -m pitguard`` (and ``torchrun -m pitguard``): the same as the ``pitguard`` console script."""

import sys

from pitguard.cli import main

sys.exit(main())
