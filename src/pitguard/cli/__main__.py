"""``python -m pitguard.cli``: the same as the ``pitguard`` console script."""

import sys

from pitguard.cli import main

sys.exit(main())
