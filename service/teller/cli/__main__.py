"""``python -m teller.cli``: what tests, the benchmark and the container run."""

import sys

from teller.cli import main

sys.exit(main())
