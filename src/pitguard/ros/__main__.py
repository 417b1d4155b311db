"""``python -m pitguard.ros``: the node, as the ``pitguard-node`` console script runs it."""

import sys

from pitguard.ros import main

sys.exit(main())
